//! The daemon's configuration: containerd's TOML format (version 2), the subset
//! emberd understands, with defaults so that no file is needed.
//!
//! ```toml
//! version = 2
//! root = "/var/lib/emberd"
//! state = "/run/emberd"
//! disabled_plugins = ["io.containerd.snapshotter.v1.native"]
//! required_plugins = ["io.containerd.snapshotter.v1.overlayfs"]
//!
//! [grpc]
//!   address = "/run/emberd/emberd.sock"
//!   uid = 0
//!   gid = 0
//!
//! [debug]
//!   level = "info"
//!
//! [metrics]
//!   address = "127.0.0.1:1338"   # Prometheus text at /v1/metrics; none when empty
//!   grpc_histogram = false       # gRPC handling times as well
//!
//! [plugins."io.containerd.snapshotter.v1.overlayfs"]
//!   root_path = "/srv/overlay"
//!
//! [proxy_plugins.remote]
//!   type = "snapshot"   # or "content", "diff" (see `crate::proxy`)
//!   address = "/run/remote-snapshotter.sock"
//! ```
//!
//! Plugin sections are keyed by `TYPE.ID` (version 2) or by `ID` (version 1).
//! Unknown keys are ignored with a warning, as containerd does.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Deserialize;

pub const DEFAULT_ROOT: &str = "/var/lib/emberd";
pub const DEFAULT_STATE: &str = "/run/emberd";
pub const DEFAULT_ADDRESS: &str = "/run/emberd/emberd.sock";
/// The kinds of `[proxy_plugins]` emberd can use.
pub const PROXY_TYPES: [&str; 3] = ["snapshot", "content", "diff"];

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct Config {
    pub version: i64,
    pub root: PathBuf,
    pub state: PathBuf,
    pub disabled_plugins: Vec<String>,
    pub required_plugins: Vec<String>,
    pub grpc: GrpcConfig,
    pub debug: DebugConfig,
    pub metrics: MetricsConfig,
    pub plugins: BTreeMap<String, toml::Value>,
    pub proxy_plugins: BTreeMap<String, ProxyPlugin>,
    /// Everything else in the file, kept to warn about it.
    #[serde(flatten)]
    pub unknown: BTreeMap<String, toml::Value>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct GrpcConfig {
    pub address: PathBuf,
    pub uid: u32,
    pub gid: u32,
    #[serde(flatten)]
    pub unknown: BTreeMap<String, toml::Value>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct DebugConfig {
    pub level: String,
    #[serde(flatten)]
    pub unknown: BTreeMap<String, toml::Value>,
}

/// `[metrics]`: where Prometheus metrics are served (none when `address` is empty).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct MetricsConfig {
    pub address: String,
    pub grpc_histogram: bool,
    #[serde(flatten)]
    pub unknown: BTreeMap<String, toml::Value>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ProxyPlugin {
    #[serde(rename = "type")]
    pub kind: String,
    pub address: PathBuf,
    #[serde(default)]
    pub platform: String,
}

impl Default for GrpcConfig {
    fn default() -> Self {
        GrpcConfig {
            address: DEFAULT_ADDRESS.into(),
            uid: 0,
            gid: 0,
            unknown: BTreeMap::new(),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            version: 2,
            root: DEFAULT_ROOT.into(),
            state: DEFAULT_STATE.into(),
            disabled_plugins: vec![],
            required_plugins: vec![],
            grpc: GrpcConfig::default(),
            debug: DebugConfig::default(),
            metrics: MetricsConfig::default(),
            plugins: BTreeMap::new(),
            proxy_plugins: BTreeMap::new(),
            unknown: BTreeMap::new(),
        }
    }
}

impl Config {
    pub fn parse(text: &str) -> Result<Config> {
        let cfg: Config = toml::from_str(text).context("parsing the configuration")?;
        if !(0..=2).contains(&cfg.version) {
            bail!("unsupported configuration version {}", cfg.version);
        }
        if !cfg.metrics.address.is_empty() {
            crate::metrics::http::parse_address(&cfg.metrics.address)
                .context("[metrics] address")?;
        }
        for (name, p) in &cfg.proxy_plugins {
            if !PROXY_TYPES.contains(&p.kind.as_str()) {
                bail!(
                    "proxy plugin {name:?}: type {:?} is not supported (one of {PROXY_TYPES:?})",
                    p.kind
                );
            }
            if p.address.as_os_str().is_empty() {
                bail!("proxy plugin {name:?}: address is required");
            }
        }
        Ok(cfg)
    }

    pub fn load(path: &Path) -> Result<Config> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Config::parse(&text).with_context(|| format!("in {}", path.display()))
    }

    /// Keys of the file that emberd does not know.
    pub fn unknown_keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = self.unknown.keys().cloned().collect();
        keys.extend(self.grpc.unknown.keys().map(|k| format!("grpc.{k}")));
        keys.extend(self.debug.unknown.keys().map(|k| format!("debug.{k}")));
        keys.extend(self.metrics.unknown.keys().map(|k| format!("metrics.{k}")));
        keys
    }

    /// The configuration section of a plugin.
    pub fn plugin(&self, plugin_type: &str, id: &str) -> Option<&toml::Value> {
        let uri = format!("{plugin_type}.{id}");
        self.plugins.get(&uri).or_else(|| {
            if self.version < 2 {
                self.plugins.get(id)
            } else {
                None
            }
        })
    }

    pub fn is_disabled(&self, plugin_type: &str, id: &str) -> bool {
        let uri = format!("{plugin_type}.{id}");
        self.disabled_plugins
            .iter()
            .any(|d| d == &uri || (self.version < 2 && d == id))
    }
}

/// Reads a typed plugin section (defaults when absent).
pub fn plugin_section<T: serde::de::DeserializeOwned + Default>(
    v: Option<&toml::Value>,
) -> Result<T> {
    match v {
        None => Ok(T::default()),
        Some(v) => Ok(v.clone().try_into()?),
    }
}

/// Parses a duration like `90s`, `15m`, `24h`, `7d` or `1h30m`.
pub fn parse_duration(s: &str) -> Result<std::time::Duration> {
    let mut total = 0u64;
    let mut num = String::new();
    for c in s.trim().chars() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let n: u64 = num.parse().with_context(|| format!("bad duration {s:?}"))?;
        num.clear();
        total += n * match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86400,
            _ => bail!("bad duration unit {c:?} in {s:?}"),
        };
    }
    if !num.is_empty() {
        bail!("duration {s:?} lacks a unit");
    }
    Ok(std::time::Duration::from_secs(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_sections() {
        let c = Config::parse("").unwrap();
        assert_eq!(c.root, Path::new(DEFAULT_ROOT));
        assert_eq!(c.grpc.address, Path::new(DEFAULT_ADDRESS));
        let c = Config::parse(
            r#"
version = 2
root = "/r"
state = "/s"
disabled_plugins = ["io.containerd.snapshotter.v1.native"]
oom_score = 0
[grpc]
  address = "/a.sock"
  max_recv_message_size = 1
[plugins."io.containerd.snapshotter.v1.overlayfs"]
  root_path = "/o"
[proxy_plugins.remote]
  type = "snapshot"
  address = "/p.sock"
"#,
        )
        .unwrap();
        assert_eq!(c.root, Path::new("/r"));
        assert_eq!(c.grpc.address, Path::new("/a.sock"));
        assert!(c.is_disabled("io.containerd.snapshotter.v1", "native"));
        assert!(c
            .plugin("io.containerd.snapshotter.v1", "overlayfs")
            .is_some());
        assert_eq!(c.proxy_plugins["remote"].address, Path::new("/p.sock"));
        assert_eq!(
            c.unknown_keys(),
            vec!["oom_score", "grpc.max_recv_message_size"]
        );
        for kind in PROXY_TYPES {
            let text = format!("[proxy_plugins.x]\ntype = {kind:?}\naddress = \"/x\"");
            assert_eq!(Config::parse(&text).unwrap().proxy_plugins["x"].kind, kind);
        }
        assert!(Config::parse("[proxy_plugins.x]\ntype = \"sandbox\"\naddress = \"/x\"").is_err());
        assert!(Config::parse("[proxy_plugins.x]\ntype = \"diff\"\naddress = \"\"").is_err());
        assert!(Config::parse("version = 3").is_err());
        assert!(Config::parse("root = 5").is_err());
    }

    #[test]
    fn metrics_section() {
        let c = Config::parse("").unwrap();
        assert!(c.metrics.address.is_empty() && !c.metrics.grpc_histogram);
        let c =
            Config::parse("[metrics]\naddress = \"127.0.0.1:1338\"\ngrpc_histogram = true\nx = 1")
                .unwrap();
        assert_eq!(c.metrics.address, "127.0.0.1:1338");
        assert!(c.metrics.grpc_histogram);
        assert_eq!(c.unknown_keys(), vec!["metrics.x"]);
        let e = Config::parse("[metrics]\naddress = \"1338\"").unwrap_err();
        let e = format!("{e:#}");
        assert!(
            e.contains("[metrics] address") && e.contains("\"1338\""),
            "{e}"
        );
        assert!(Config::parse("[metrics]\ngrpc_histogram = \"yes\"").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s").unwrap().as_secs(), 90);
        assert_eq!(parse_duration("1h30m").unwrap().as_secs(), 5400);
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("5x").is_err());
    }
}
