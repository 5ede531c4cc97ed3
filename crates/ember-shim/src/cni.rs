//! A CNI runtime: finds a named network in a configuration directory, runs its
//! plugin chain (ADD in order, each given the previous result; DEL in reverse with
//! the cached result), parses results of CNI 0.3.x, 0.4.0 and 1.0.0, passes
//! `CNI_ARGS` and caches ADD's result as libcni does (`<cache>/results/...`).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Attempts at starting a plugin whose file is busy being written (ETXTBSY).
const TEXT_BUSY_TRIES: u32 = 50;

/// libcni's default cache directory.
pub const DEFAULT_CACHE_DIR: &str = "/var/lib/cni";
/// libcni's default plugin directory.
pub const DEFAULT_BIN_DIR: &str = "/opt/cni/bin";
/// How long one plugin may run.
const PLUGIN_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum CniError {
    #[error("CNI network {name}: {why}")]
    Config { name: String, why: String },
    #[error("CNI plugin {plugin} not found in {path}")]
    NoPlugin { plugin: String, path: String },
    #[error("CNI plugin {plugin} ({command}) of network {network} failed: {msg}")]
    Plugin {
        network: String,
        plugin: String,
        command: &'static str,
        msg: String,
    },
    #[error("CNI result of network {network}: {why}")]
    Result { network: String, why: String },
}

/// A network of the configuration directory: its plugin chain.
#[derive(Debug, Clone, PartialEq)]
pub struct Network {
    pub name: String,
    pub cni_version: String,
    pub plugins: Vec<Value>,
    pub file: PathBuf,
}

/// Where and for what the plugins run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Invocation {
    pub container_id: String,
    pub netns: PathBuf,
    pub ifname: String,
    pub args: Vec<(String, String)>,
    pub bin_path: Vec<PathBuf>,
    pub cache_dir: PathBuf,
}

/// The parts of a CNI result the VM needs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CniResult {
    pub raw: Value,
    /// MAC of the interface in the sandbox (`Invocation::ifname`).
    pub mac: String,
    /// Its addresses, CIDR.
    pub addresses: Vec<String>,
    /// (destination CIDR, gateway or empty).
    pub routes: Vec<(String, String)>,
    pub nameservers: Vec<String>,
    pub search: Vec<String>,
    pub options: Vec<String>,
}

fn cfg_err(name: &str, why: impl Into<String>) -> CniError {
    CniError::Config {
        name: name.into(),
        why: why.into(),
    }
}

/// Finds network `name` in `dir` (`*.conflist`, `*.conf`, `*.json`, in name order, as
/// libcni does; a `.conf` holds a single plugin).
pub fn find_network(dir: &Path, name: &str) -> Result<Network, CniError> {
    let rd = std::fs::read_dir(dir)
        .map_err(|e| cfg_err(name, format!("reading {}: {e}", dir.display())))?;
    let mut files: Vec<PathBuf> = rd
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            matches!(
                p.extension().and_then(|x| x.to_str()),
                Some("conflist" | "conf" | "json")
            )
        })
        .collect();
    files.sort();
    for f in files {
        let Ok(bytes) = std::fs::read(&f) else {
            continue;
        };
        let Ok(v) = serde_json::from_slice::<Value>(&bytes) else {
            tracing::warn!("{}: not JSON; skipped", f.display());
            continue;
        };
        if v.get("name").and_then(Value::as_str) != Some(name) {
            continue;
        }
        let version = v
            .get("cniVersion")
            .and_then(Value::as_str)
            .unwrap_or("0.4.0")
            .to_string();
        let plugins = match v.get("plugins") {
            Some(Value::Array(p)) => p.clone(),
            Some(_) => {
                return Err(cfg_err(
                    name,
                    format!("{}: plugins is not a list", f.display()),
                ))
            }
            None => vec![v.clone()],
        };
        if plugins.is_empty() {
            return Err(cfg_err(name, format!("{}: no plugins", f.display())));
        }
        for p in &plugins {
            if p.get("type")
                .and_then(Value::as_str)
                .is_none_or(str::is_empty)
            {
                return Err(cfg_err(
                    name,
                    format!("{}: a plugin without a type", f.display()),
                ));
            }
        }
        return Ok(Network {
            name: name.into(),
            cni_version: version,
            plugins,
            file: f,
        });
    }
    Err(cfg_err(
        name,
        format!("no configuration of that name in {}", dir.display()),
    ))
}

fn find_plugin(kind: &str, path: &[PathBuf]) -> Result<PathBuf, CniError> {
    if kind.contains('/') {
        return Err(CniError::NoPlugin {
            plugin: kind.into(),
            path: "(a plugin type is a bare name)".into(),
        });
    }
    path.iter()
        .map(|d| d.join(kind))
        .find(|p| p.is_file())
        .ok_or_else(|| CniError::NoPlugin {
            plugin: kind.into(),
            path: path
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(":"),
        })
}

/// The text of a plugin's error (the CNI error object on stdout, else stderr).
fn plugin_error(stdout: &[u8], stderr: &[u8], status: &str) -> String {
    if let Ok(v) = serde_json::from_slice::<Value>(stdout) {
        let msg = v.get("msg").and_then(Value::as_str).unwrap_or("");
        let details = v.get("details").and_then(Value::as_str).unwrap_or("");
        if !msg.is_empty() {
            return if details.is_empty() {
                msg.to_string()
            } else {
                format!("{msg}: {details}")
            };
        }
    }
    let err = String::from_utf8_lossy(stderr).trim().to_string();
    if err.is_empty() {
        status.to_string()
    } else {
        format!("{status}: {err}")
    }
}

/// Runs one plugin; its parsed stdout (Null when it printed nothing).
fn exec(
    net: &Network,
    conf: &Value,
    command: &'static str,
    inv: &Invocation,
) -> Result<Value, CniError> {
    let kind = conf.get("type").and_then(Value::as_str).unwrap_or_default();
    let fail = |msg: String| CniError::Plugin {
        network: net.name.clone(),
        plugin: kind.into(),
        command,
        msg,
    };
    let bin = find_plugin(kind, &inv.bin_path)?;
    let args = inv
        .args
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(";");
    let path = std::env::join_paths(&inv.bin_path).unwrap_or_default();
    let mut cmd = Command::new(&bin);
    cmd.env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", &inv.container_id)
        .env("CNI_NETNS", &inv.netns)
        .env("CNI_IFNAME", &inv.ifname)
        .env("CNI_ARGS", args)
        .env("CNI_PATH", path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // ETXTBSY: the plugin file was just written (installed, updated) and a process
    // forked meanwhile still holds it open for writing until its exec; it passes.
    let mut tries = 0;
    let mut child = loop {
        match cmd.spawn() {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && tries < TEXT_BUSY_TRIES => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
            r => break r.map_err(|e| fail(format!("starting {}: {e}", bin.display())))?,
        }
    };
    let input = serde_json::to_vec(conf).unwrap_or_default();
    if let Some(mut i) = child.stdin.take() {
        let _ = i.write_all(&input);
    }
    // Small outputs: read them after the exit, bounded in time.
    let mut out = child.stdout.take();
    let mut err = child.stderr.take();
    let reader = std::thread::spawn(move || {
        let (mut o, mut e) = (Vec::new(), Vec::new());
        if let Some(s) = out.as_mut() {
            let _ = s.read_to_end(&mut o);
        }
        if let Some(s) = err.as_mut() {
            let _ = s.read_to_end(&mut e);
        }
        (o, e)
    });
    let deadline = Instant::now() + PLUGIN_TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(fail(format!("timed out after {PLUGIN_TIMEOUT:?}")));
            }
            Err(e) => return Err(fail(format!("waiting: {e}"))),
        }
    };
    let (stdout, stderr) = reader.join().unwrap_or_default();
    if !status.success() {
        return Err(fail(plugin_error(&stdout, &stderr, &status.to_string())));
    }
    if String::from_utf8_lossy(&stdout).trim().is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_slice(&stdout).map_err(|e| fail(format!("its output is not JSON: {e}")))
}

/// A plugin's configuration as the chain hands it over.
fn plugin_conf(net: &Network, plugin: &Value, prev: Option<&Value>) -> Value {
    let mut c = plugin.clone();
    c["name"] = net.name.clone().into();
    c["cniVersion"] = net.cni_version.clone().into();
    if let Some(p) = prev.filter(|p| !p.is_null()) {
        c["prevResult"] = p.clone();
    }
    c
}

fn cache_file(net: &Network, inv: &Invocation) -> PathBuf {
    inv.cache_dir
        .join("results")
        .join(format!("{}-{}-{}", net.name, inv.container_id, inv.ifname))
}

/// CNI ADD of the whole chain. A failing plugin's error is returned after DEL of the
/// chain (as the CNI spec asks), so nothing it made stays.
pub fn add(net: &Network, inv: &Invocation) -> Result<CniResult, CniError> {
    let mut prev = Value::Null;
    for p in &net.plugins {
        match exec(net, &plugin_conf(net, p, Some(&prev)), "ADD", inv) {
            Ok(v) if !v.is_null() => prev = v,
            Ok(_) => {}
            Err(e) => {
                if let Err(d) = del(net, inv, Some(&prev)) {
                    tracing::warn!("cleaning up after a failed CNI ADD: {d}");
                }
                return Err(e);
            }
        }
    }
    let result = parse_result(&net.name, &prev, inv)?;
    let cache = serde_json::json!({
        "kind": "cniCacheV1",
        "containerId": inv.container_id,
        "ifName": inv.ifname,
        "networkName": net.name,
        "cniArgs": inv.args,
        "result": prev,
    });
    let f = cache_file(net, inv);
    let written = f
        .parent()
        .map(std::fs::create_dir_all)
        .unwrap_or(Ok(()))
        .and_then(|_| std::fs::write(&f, serde_json::to_vec(&cache).unwrap_or_default()));
    if let Err(e) = written {
        tracing::warn!("caching the CNI result at {}: {e}", f.display());
    }
    Ok(result)
}

/// The cached ADD result of `inv` on `net`, if any.
pub fn cached_result(net: &Network, inv: &Invocation) -> Option<Value> {
    let b = std::fs::read(cache_file(net, inv)).ok()?;
    let v: Value = serde_json::from_slice(&b).ok()?;
    v.get("result").cloned()
}

/// CNI DEL of the whole chain in reverse (every plugin runs; the first error is
/// returned). The cache entry goes.
pub fn del(net: &Network, inv: &Invocation, prev: Option<&Value>) -> Result<(), CniError> {
    let cached = prev.cloned().or_else(|| cached_result(net, inv));
    let mut first = None;
    for p in net.plugins.iter().rev() {
        if let Err(e) = exec(net, &plugin_conf(net, p, cached.as_ref()), "DEL", inv) {
            first.get_or_insert(e);
        }
    }
    let _ = std::fs::remove_file(cache_file(net, inv));
    first.map_or(Ok(()), Err)
}

fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Reads a 0.3.x/0.4.0/1.0.0 result for the sandbox interface `inv.ifname`.
pub fn parse_result(network: &str, v: &Value, inv: &Invocation) -> Result<CniResult, CniError> {
    let bad = |why: String| CniError::Result {
        network: network.into(),
        why,
    };
    let version = v.get("cniVersion").and_then(Value::as_str).unwrap_or("");
    if version.starts_with("0.1") || version.starts_with("0.2") || v.get("ip4").is_some() {
        return Err(bad(format!(
            "result version {version:?} is not supported (0.3.0 or later)"
        )));
    }
    let ifaces = v
        .get("interfaces")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let ours = ifaces.iter().position(|i| {
        i.get("name").and_then(Value::as_str) == Some(&inv.ifname)
            && i.get("sandbox")
                .and_then(Value::as_str)
                .is_some_and(|s| !s.is_empty())
    });
    let mac = ours
        .and_then(|i| ifaces[i].get("mac").and_then(Value::as_str))
        .unwrap_or("")
        .to_string();
    let mut addresses = Vec::new();
    let mut gateways: Vec<String> = Vec::new();
    for ip in v.get("ips").and_then(Value::as_array).into_iter().flatten() {
        let idx = ip.get("interface").and_then(Value::as_u64);
        if idx.is_some() && ours.is_some() && idx != ours.map(|o| o as u64) {
            continue;
        }
        let Some(addr) = ip.get("address").and_then(Value::as_str) else {
            return Err(bad("an ip without an address".into()));
        };
        if !addr.contains('/') {
            return Err(bad(format!("address {addr} is not in CIDR notation")));
        }
        addresses.push(addr.to_string());
        if let Some(g) = ip.get("gateway").and_then(Value::as_str) {
            gateways.push(g.to_string());
        }
    }
    if addresses.is_empty() {
        return Err(bad(format!("no address for interface {}", inv.ifname)));
    }
    let mut routes = Vec::new();
    for r in v
        .get("routes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let Some(dst) = r.get("dst").and_then(Value::as_str) else {
            return Err(bad("a route without dst".into()));
        };
        let v6 = dst.contains(':');
        // No gw: the network's gateway of that family.
        let gw = r
            .get("gw")
            .and_then(Value::as_str)
            .map(str::to_string)
            .or_else(|| gateways.iter().find(|g| g.contains(':') == v6).cloned())
            .unwrap_or_default();
        routes.push((dst.to_string(), gw));
    }
    let dns = v.get("dns");
    Ok(CniResult {
        raw: v.clone(),
        mac,
        addresses,
        routes,
        nameservers: strings(dns.and_then(|d| d.get("nameservers"))),
        search: strings(dns.and_then(|d| d.get("search"))),
        options: strings(dns.and_then(|d| d.get("options"))),
    })
}

#[cfg(test)]
#[path = "cni_tests.rs"]
pub(crate) mod tests;
