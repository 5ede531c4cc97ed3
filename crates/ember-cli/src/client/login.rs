//! `ember login` / `ember logout`: registry credentials checked against the
//! registry and kept in docker's `config.json` (`$DOCKER_CONFIG/config.json` or
//! `~/.docker/config.json`, `auths.<server>.auth` = base64 `user:password`), where
//! pull and push find them when the daemon asks.

use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use base64::Engine as _;
use ember_registry::client::Call;
use ember_registry::{Credentials, HostsConfig, Reference, Registry};

/// Docker Hub's key in `config.json`.
pub const DOCKER_HUB_KEY: &str = "https://index.docker.io/v1/";

#[derive(clap::Args, Debug)]
#[command(about = "Log in to a registry (credentials kept in docker's config.json)")]
pub struct LoginArgs {
    /// Registry host (`host[:port]`); Docker Hub when omitted.
    server: Option<String>,
    #[arg(short, long)]
    username: String,
    /// Read the password from standard input.
    #[arg(long)]
    password_stdin: bool,
    /// Speak plain HTTP to the registry.
    #[arg(long)]
    plain_http: bool,
}

#[derive(clap::Args, Debug)]
#[command(about = "Forget the credentials of a registry")]
pub struct LogoutArgs {
    /// Registry host; Docker Hub when omitted.
    server: Option<String>,
}

/// The `config.json` credentials are kept in.
pub fn config_path() -> Result<PathBuf> {
    if let Some(d) = std::env::var_os("DOCKER_CONFIG").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(d).join("config.json"));
    }
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .context("neither DOCKER_CONFIG nor HOME is set")?;
    Ok(PathBuf::from(home).join(".docker").join("config.json"))
}

/// The registry host a server argument names (`https://`, paths dropped).
fn host_of(server: &str) -> String {
    let s = server
        .trim_start_matches("https://")
        .trim_start_matches("http://");
    s.split('/').next().unwrap_or_default().to_string()
}

/// The key of a registry host in `config.json`: Docker Hub's own for docker.io.
pub fn server_key(host: &str) -> String {
    match host_of(host).as_str() {
        "" | "docker.io" | "index.docker.io" | "registry-1.docker.io" => DOCKER_HUB_KEY.into(),
        h => h.to_string(),
    }
}

fn load(path: &std::path::Path) -> Result<serde_json::Map<String, serde_json::Value>> {
    match std::fs::read(path) {
        Ok(b) if b.iter().all(u8::is_ascii_whitespace) => Ok(Default::default()),
        Ok(b) => match serde_json::from_slice(&b) {
            Ok(serde_json::Value::Object(m)) => Ok(m),
            Ok(_) => bail!("{} is not a JSON object", path.display()),
            Err(e) => bail!("{}: {e}", path.display()),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Default::default()),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

fn save(path: &std::path::Path, cfg: &serde_json::Map<String, serde_json::Value>) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().context("config path without a directory")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = dir.join(".config.json.tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    serde_json::to_writer_pretty(&mut f, cfg)?;
    drop(f);
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

/// The stored credentials of registry `host`, if any.
pub fn stored(host: &str) -> Result<Option<(String, String)>> {
    let cfg = load(&config_path()?)?;
    let key = server_key(host);
    let Some(auths) = cfg.get("auths").and_then(|a| a.as_object()) else {
        return Ok(None);
    };
    let entry = auths.get(&key).or_else(|| {
        auths
            .iter()
            .find(|(k, _)| server_key(k) == key)
            .map(|(_, v)| v)
    });
    let Some(auth) = entry.and_then(|e| e.get("auth")).and_then(|a| a.as_str()) else {
        return Ok(None);
    };
    let raw = base64::engine::general_purpose::STANDARD
        .decode(auth.trim())
        .with_context(|| format!("the stored credentials of {key} are not base64"))?;
    let text = String::from_utf8(raw).context("stored credentials are not UTF-8")?;
    let (u, p) = text
        .split_once(':')
        .with_context(|| format!("the stored credentials of {key} are not user:password"))?;
    Ok(Some((u.to_string(), p.to_string())))
}

/// Checks credentials against the registry's `/v2/` (a challenge answered).
async fn verify(host: &str, user: &str, password: &str, plain_http: bool) -> Result<()> {
    let domain = if server_key(host) == DOCKER_HUB_KEY {
        "docker.io".to_string()
    } else {
        host.to_string()
    };
    let reference = Reference::parse(&format!("{domain}/library/ember-login"))
        .with_context(|| format!("bad registry name {host:?}"))?;
    let hosts = HostsConfig {
        default_scheme: if plain_http { "http".into() } else { "".into() },
        ..Default::default()
    };
    let registry = Registry::new(
        hosts,
        Arc::new(ember_registry::auth::Static(Credentials::Basic {
            username: user.to_string(),
            secret: password.to_string(),
        })),
    );
    let repo = registry.repository(&reference, false)?;
    let target = repo
        .hosts()
        .first()
        .cloned()
        .context("no host for the registry")?;
    let resp = repo
        .send(&target, &Call::new(http::Method::GET, "/v2/"))
        .await
        .map_err(|e| anyhow::anyhow!("login to {host} refused: {e}"))?;
    let status = resp.status();
    if !status.is_success() {
        bail!("login to {host} refused: the registry answered {status}");
    }
    Ok(())
}

pub async fn login(a: LoginArgs) -> Result<i32> {
    let host = host_of(a.server.as_deref().unwrap_or("docker.io"));
    if !a.password_stdin {
        bail!("give the password on standard input (--password-stdin)");
    }
    let mut password = String::new();
    std::io::stdin()
        .read_to_string(&mut password)
        .context("reading the password")?;
    let password = password.trim_end_matches(['\n', '\r']).to_string();
    if a.username.is_empty() || password.is_empty() {
        bail!("a user name and a password are needed");
    }
    verify(&host, &a.username, &password, a.plain_http).await?;
    let path = config_path()?;
    let mut cfg = load(&path)?;
    let auths = cfg
        .entry("auths")
        .or_insert_with(|| serde_json::Value::Object(Default::default()));
    let Some(auths) = auths.as_object_mut() else {
        bail!("{}: \"auths\" is not an object", path.display());
    };
    let auth =
        base64::engine::general_purpose::STANDARD.encode(format!("{}:{password}", a.username));
    auths.insert(server_key(&host), serde_json::json!({ "auth": auth }));
    save(&path, &cfg)?;
    println!("Login Succeeded");
    Ok(0)
}

pub async fn logout(a: LogoutArgs) -> Result<i32> {
    let key = server_key(a.server.as_deref().unwrap_or("docker.io"));
    let path = config_path()?;
    let mut cfg = load(&path)?;
    let removed = cfg
        .get_mut("auths")
        .and_then(|a| a.as_object_mut())
        .map(|a| {
            let before = a.len();
            a.retain(|k, _| server_key(k) != key);
            before != a.len()
        })
        .unwrap_or(false);
    if !removed {
        eprintln!("ember: not logged in to {key}");
        return Ok(0);
    }
    save(&path, &cfg)?;
    println!("Removing login credentials for {key}");
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        assert_eq!(server_key("docker.io"), DOCKER_HUB_KEY);
        assert_eq!(server_key(DOCKER_HUB_KEY), DOCKER_HUB_KEY);
        assert_eq!(server_key("registry-1.docker.io"), DOCKER_HUB_KEY);
        assert_eq!(server_key("127.0.0.1:5000"), "127.0.0.1:5000");
        assert_eq!(server_key("https://example.com/v2/"), "example.com");
    }
}
