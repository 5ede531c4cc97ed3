//! The name-service files the agent keeps for containers that bring none:
//! `resolv.conf` (from the request's DNS) and `hosts`, written under the agent's
//! network directory and bound read-only at `/etc/...` in each container whose spec
//! mounts nothing there.

use std::io::{self, Write};
use std::net::IpAddr;
use std::os::fd::RawFd;
use std::path::{Path, PathBuf};

use ember_agent_api::DnsConfig;
use oci_spec::runtime::Spec;
use serde::{Deserialize, Serialize};

use crate::sys;

pub const RESOLV_CONF: &str = "resolv.conf";
pub const HOSTS: &str = "hosts";

/// A guest file bound at a path of the container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NameFile {
    pub source: PathBuf,
    pub destination: PathBuf,
}

pub fn render_resolv(dns: &DnsConfig) -> String {
    let mut s = String::new();
    for n in &dns.nameservers {
        s.push_str(&format!("nameserver {}\n", n.trim()));
    }
    if !dns.search.is_empty() {
        s.push_str(&format!("search {}\n", dns.search.join(" ")));
    }
    if !dns.options.is_empty() {
        s.push_str(&format!("options {}\n", dns.options.join(" ")));
    }
    s
}

pub fn render_hosts(hostname: &str, addrs: &[IpAddr]) -> String {
    let mut s = String::from("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    if !hostname.is_empty() {
        match addrs.first() {
            Some(a) => s.push_str(&format!("{a}\t{hostname}\n")),
            None => s.push_str(&format!("127.0.1.1\t{hostname}\n")),
        }
    }
    s
}

/// Rewrites `path` in place (truncate and write), so containers that already bind
/// it see the new contents.
fn write_in_place(path: &Path, contents: &str) -> io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)?;
    f.write_all(contents.as_bytes())?;
    f.sync_all()
}

/// Writes `resolv.conf` (when `dns` is given) and `hosts` into `dir`.
pub fn write(
    dir: &Path,
    dns: Option<&DnsConfig>,
    hostname: &str,
    addrs: &[IpAddr],
) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    if let Some(d) = dns {
        write_in_place(&dir.join(RESOLV_CONF), &render_resolv(d))?;
    }
    write_in_place(&dir.join(HOSTS), &render_hosts(hostname, addrs))
}

/// The files of `dir` a container with `spec` gets: those the agent has written and
/// the spec mounts nothing at.
pub fn for_container(dir: &Path, spec: &Spec) -> Vec<NameFile> {
    let mounted: Vec<PathBuf> = spec
        .mounts()
        .as_ref()
        .map(|ms| ms.iter().map(|m| m.destination().clone()).collect())
        .unwrap_or_default();
    let mut out = Vec::new();
    for name in [RESOLV_CONF, HOSTS] {
        let src = dir.join(name);
        let dst = Path::new("/etc").join(name);
        if src.is_file() && !mounted.iter().any(|m| m == &dst) {
            out.push(NameFile {
                source: src,
                destination: dst,
            });
        }
    }
    out
}

/// In the container init, before pivot_root: binds each file read-only. A rootfs
/// where the mount point cannot be made (read-only, a directory there) goes without,
/// with a warning.
pub fn bind(rootfs: &Path, files: &[NameFile], report_fd: RawFd) {
    for f in files {
        let res = crate::container::secure_join(rootfs, &f.destination).and_then(|dest| {
            if dest.is_dir() {
                return Err(io::Error::other("a directory is there"));
            }
            if !dest.exists() {
                if let Some(p) = dest.parent() {
                    std::fs::create_dir_all(p)?;
                }
                std::fs::File::create(&dest)?;
            }
            sys::bind_read_only(&f.source, &dest)
        });
        if let Err(e) = res {
            crate::spawn::report(
                report_fd,
                "log",
                &format!("{} not mounted: {e}", f.destination.display()),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_and_hosts() {
        let d = DnsConfig {
            nameservers: vec!["10.0.0.1".into(), "fd00::1".into()],
            search: vec!["a.test".into(), "b.test".into()],
            options: vec!["ndots:2".into()],
        };
        assert_eq!(
            render_resolv(&d),
            "nameserver 10.0.0.1\nnameserver fd00::1\nsearch a.test b.test\noptions ndots:2\n"
        );
        let h = render_hosts("web", &["10.0.0.5".parse().unwrap()]);
        assert!(h.starts_with("127.0.0.1\tlocalhost\n"), "{h}");
        assert!(h.ends_with("10.0.0.5\tweb\n"), "{h}");
        assert!(render_hosts("web", &[]).ends_with("127.0.1.1\tweb\n"));
        assert!(!render_hosts("", &[]).contains("127.0.1.1"));
    }

    #[test]
    fn spec_mounts_win() {
        let dir = std::env::temp_dir().join(format!("ember-nf-{}", std::process::id()));
        write(&dir, Some(&DnsConfig::default()), "h", &[]).unwrap();
        let spec: Spec = serde_json::from_value(serde_json::json!({
            "ociVersion": "1.0.2",
            "root": {"path": "rootfs"},
            "mounts": [{"destination": "/etc/resolv.conf", "type": "bind", "source": "/x"}]
        }))
        .unwrap();
        let f = for_container(&dir, &spec);
        assert_eq!(
            f,
            vec![NameFile {
                source: dir.join(HOSTS),
                destination: "/etc/hosts".into()
            }]
        );
        let bare: Spec = serde_json::from_value(serde_json::json!({
            "ociVersion": "1.0.2", "root": {"path": "rootfs"}, "mounts": []
        }))
        .unwrap();
        assert_eq!(for_container(&dir, &bare).len(), 2);
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(for_container(&dir, &bare).is_empty());
    }
}
