//! Where a registry's API is reached: containerd's hosts directory format
//! (`<dir>/<host[:port]>/hosts.toml`, falling back to `<dir>/_default/hosts.toml`)
//! with mirrors (`[host."URL"]` tables, tried in order), the `server` and its
//! capabilities, CA files, `skip_verify` and extra headers; plus a default scheme
//! and plain-HTTP hosts given by the caller.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::Error;

/// What a host may be used for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    pub pull: bool,
    pub resolve: bool,
    pub push: bool,
}

impl Capabilities {
    pub const ALL: Capabilities = Capabilities {
        pull: true,
        resolve: true,
        push: true,
    };
}

/// One endpoint of a registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryHost {
    /// `http` or `https`.
    pub scheme: String,
    /// `host[:port]` to connect to.
    pub authority: String,
    /// The API's path prefix, `/v2` unless `override_path` says otherwise.
    pub path: String,
    pub capabilities: Capabilities,
    pub ca_files: Vec<PathBuf>,
    pub skip_verify: bool,
    pub headers: BTreeMap<String, String>,
}

impl RegistryHost {
    /// The TLS settings of this host.
    pub fn tls(&self) -> crate::tls::TlsSettings {
        crate::tls::TlsSettings {
            ca_files: self.ca_files.clone(),
            skip_verify: self.skip_verify,
        }
    }

    /// The URL of `rest` (which starts with `/`) under the API prefix.
    pub fn url(&self, rest: &str) -> String {
        format!("{}://{}{}{}", self.scheme, self.authority, self.path, rest)
    }
}

/// How hosts are found for a registry name.
#[derive(Debug, Clone, Default)]
pub struct HostsConfig {
    /// A directory in containerd's `certs.d` / hosts format.
    pub dir: Option<PathBuf>,
    /// `http` or `https` for hosts without configuration; empty: `https`, except
    /// loopback hosts, which get `http`.
    pub default_scheme: String,
    /// Hosts reached over plain HTTP whatever the default.
    pub plain_http: Vec<String>,
    /// Headers sent to every host.
    pub headers: BTreeMap<String, String>,
}

/// Whether `authority` (`host[:port]`) names this machine.
pub fn is_loopback(authority: &str) -> bool {
    let host = match authority.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|c| c.is_ascii_digit()) && !h.ends_with(':') => h,
        _ => authority,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost"
        || host == "::1"
        || host
            .parse::<std::net::Ipv4Addr>()
            .map(|a| a.is_loopback())
            .unwrap_or(false)
}

fn split_url(url: &str) -> Result<(String, String, String), Error> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| Error::Config(format!("host {url:?} has no scheme")))?;
    if scheme != "http" && scheme != "https" {
        return Err(Error::Config(format!("host {url:?}: unsupported scheme")));
    }
    let (authority, path) = match rest.split_once('/') {
        Some((a, p)) => (a.to_string(), format!("/{}", p.trim_end_matches('/'))),
        None => (rest.to_string(), String::new()),
    };
    if authority.is_empty() {
        return Err(Error::Config(format!("host {url:?} has no address")));
    }
    Ok((scheme.to_string(), authority, path))
}

fn strings(v: Option<&toml::Value>) -> Vec<String> {
    match v {
        Some(toml::Value::String(s)) => vec![s.clone()],
        Some(toml::Value::Array(a)) => a
            .iter()
            .filter_map(|x| x.as_str().map(str::to_string))
            .collect(),
        _ => Vec::new(),
    }
}

fn host_entry(
    url: &str,
    t: &toml::Table,
    base: &Path,
    default: bool,
) -> Result<RegistryHost, Error> {
    let (scheme, authority, path) = split_url(url)?;
    let override_path = t
        .get("override_path")
        .and_then(toml::Value::as_bool)
        .unwrap_or(false);
    let path = if override_path || path.ends_with("/v2") {
        path
    } else {
        format!("{path}/v2")
    };
    let capabilities = match t.get("capabilities") {
        None if default => Capabilities::ALL,
        None => Capabilities {
            pull: true,
            resolve: true,
            push: false,
        },
        Some(v) => {
            let c = strings(Some(v));
            Capabilities {
                pull: c.iter().any(|x| x == "pull"),
                resolve: c.iter().any(|x| x == "resolve"),
                push: c.iter().any(|x| x == "push"),
            }
        }
    };
    let ca_files = strings(t.get("ca"))
        .into_iter()
        .map(|c| {
            let p = PathBuf::from(c);
            if p.is_absolute() {
                p
            } else {
                base.join(p)
            }
        })
        .collect();
    let headers = t
        .get("header")
        .and_then(toml::Value::as_table)
        .map(|h| {
            h.iter()
                .map(|(k, v)| (k.clone(), strings(Some(v)).join(", ")))
                .collect()
        })
        .unwrap_or_default();
    Ok(RegistryHost {
        scheme,
        authority,
        path,
        capabilities,
        ca_files,
        skip_verify: t
            .get("skip_verify")
            .and_then(toml::Value::as_bool)
            .unwrap_or(false),
        headers,
    })
}

/// Parses one `hosts.toml` for registry `domain`; `base` resolves relative CA
/// paths.
pub fn parse_hosts_toml(domain: &str, text: &str, base: &Path) -> Result<Vec<RegistryHost>, Error> {
    let doc: toml::Table = text
        .parse()
        .map_err(|e| Error::Config(format!("hosts.toml of {domain}: {e}")))?;
    let mut out = Vec::new();
    if let Some(hosts) = doc.get("host").and_then(toml::Value::as_table) {
        // The table's keys come sorted; mirrors are tried in the file's order.
        let mut urls: Vec<(&String, &toml::Value)> = hosts.iter().collect();
        urls.sort_by_key(|(u, _)| text.find(&format!("[host.\"{u}\"]")).unwrap_or(usize::MAX));
        for (url, t) in urls {
            let t = t
                .as_table()
                .ok_or_else(|| Error::Config(format!("host {url:?} is not a table")))?;
            out.push(host_entry(url, t, base, false)?);
        }
    }
    if let Some(server) = doc.get("server").and_then(toml::Value::as_str) {
        out.push(host_entry(server, &doc, base, true)?);
    } else {
        out.push(host_entry(
            &format!("https://{}", default_authority(domain)),
            &doc,
            base,
            true,
        )?);
    }
    Ok(out)
}

fn default_authority(domain: &str) -> &str {
    if domain == crate::reference::DEFAULT_DOMAIN {
        "registry-1.docker.io"
    } else {
        domain
    }
}

impl HostsConfig {
    fn scheme_for(&self, domain: &str) -> String {
        if self.plain_http.iter().any(|h| h == domain) {
            return "http".into();
        }
        if !self.default_scheme.is_empty() {
            return self.default_scheme.clone();
        }
        if is_loopback(domain) {
            "http".into()
        } else {
            "https".into()
        }
    }

    /// The hosts to try for registry `domain`, in order.
    pub fn hosts(&self, domain: &str) -> Result<Vec<RegistryHost>, Error> {
        if let Some(dir) = &self.dir {
            let dirname = domain.replace(':', "_");
            for d in [domain, dirname.as_str(), "_default"] {
                let base = dir.join(d);
                let file = base.join("hosts.toml");
                match std::fs::read_to_string(&file) {
                    Ok(text) => {
                        let mut hosts = parse_hosts_toml(domain, &text, &base)?;
                        for h in &mut hosts {
                            if self.plain_http.iter().any(|p| p == &h.authority) {
                                h.scheme = "http".into();
                            }
                            for (k, v) in &self.headers {
                                h.headers.entry(k.clone()).or_insert_with(|| v.clone());
                            }
                        }
                        return Ok(hosts);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(Error::Config(format!("{}: {e}", file.display()))),
                }
            }
        }
        Ok(vec![RegistryHost {
            scheme: self.scheme_for(domain),
            authority: default_authority(domain).to_string(),
            path: "/v2".into(),
            capabilities: Capabilities::ALL,
            ca_files: Vec::new(),
            skip_verify: false,
            headers: self.headers.clone(),
        }])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        let c = HostsConfig::default();
        let h = &c.hosts("docker.io").unwrap()[0];
        assert_eq!(h.url("/"), "https://registry-1.docker.io/v2/");
        assert_eq!(c.hosts("127.0.0.1:5000").unwrap()[0].scheme, "http");
        assert_eq!(c.hosts("localhost").unwrap()[0].scheme, "http");
        assert_eq!(c.hosts("example.com:5000").unwrap()[0].scheme, "https");
        let c = HostsConfig {
            default_scheme: "http".into(),
            ..Default::default()
        };
        assert_eq!(c.hosts("example.com").unwrap()[0].scheme, "http");
        assert!(is_loopback("[::1]:5000"));
        assert!(!is_loopback("10.0.0.1:5000"));
    }

    #[test]
    fn reads_a_hosts_dir() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path().join("reg.example_5000");
        std::fs::create_dir_all(&r).unwrap();
        std::fs::write(
            r.join("hosts.toml"),
            r#"
server = "https://reg.example:5000"
ca = "ca.pem"

[host."https://other/base"]
  override_path = true

[host."http://mirror.local:8080"]
  capabilities = ["pull", "resolve"]
  skip_verify = true
  [host."http://mirror.local:8080".header]
    x-custom = "1"
"#,
        )
        .unwrap();
        let c = HostsConfig {
            dir: Some(d.path().to_path_buf()),
            ..Default::default()
        };
        let h = c.hosts("reg.example:5000").unwrap();
        assert_eq!(h.len(), 3);
        assert_eq!(h[0].url("/x"), "https://other/base/x");
        assert_eq!(h[1].url("/x"), "http://mirror.local:8080/v2/x");
        assert!(!h[1].capabilities.push && h[1].capabilities.pull && h[1].skip_verify);
        assert_eq!(h[1].headers["x-custom"], "1");
        assert_eq!(h[2].url("/"), "https://reg.example:5000/v2/");
        assert!(h[2].capabilities.push);
        assert_eq!(h[2].ca_files, vec![r.join("ca.pem")]);
        // Nothing configured: the default host.
        assert_eq!(
            c.hosts("x.example").unwrap()[0].url("/"),
            "https://x.example/v2/"
        );
        std::fs::write(r.join("hosts.toml"), "server = 3 = 4").unwrap();
        assert!(c.hosts("reg.example:5000").is_err());
    }
}
