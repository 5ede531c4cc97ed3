//! OCI mounts: their options and the mounts themselves, inside the rootfs.

use std::io;
use std::os::fd::RawFd;
use std::path::Path;

use oci_spec::runtime::Mount;

use super::err;
use super::rootfs::secure_join;
use crate::spawn::report;
use crate::sys::{self};

/// Parsed mount options: (flags, propagation flags, fs data, bind, recursive bind).
pub fn parse_mount_options(opts: &[String]) -> (libc::c_ulong, Vec<libc::c_ulong>, String, bool) {
    let mut flags: libc::c_ulong = 0;
    let mut prop = Vec::new();
    let mut data: Vec<&str> = Vec::new();
    let mut bind = false;
    for o in opts {
        let (set, clear): (libc::c_ulong, libc::c_ulong) = match o.as_str() {
            "ro" => (libc::MS_RDONLY, 0),
            "rw" => (0, libc::MS_RDONLY),
            "nosuid" => (libc::MS_NOSUID, 0),
            "suid" => (0, libc::MS_NOSUID),
            "nodev" => (libc::MS_NODEV, 0),
            "dev" => (0, libc::MS_NODEV),
            "noexec" => (libc::MS_NOEXEC, 0),
            "exec" => (0, libc::MS_NOEXEC),
            "sync" => (libc::MS_SYNCHRONOUS, 0),
            "async" => (0, libc::MS_SYNCHRONOUS),
            "dirsync" => (libc::MS_DIRSYNC, 0),
            "noatime" => (libc::MS_NOATIME, 0),
            "atime" => (0, libc::MS_NOATIME),
            "nodiratime" => (libc::MS_NODIRATIME, 0),
            "diratime" => (0, libc::MS_NODIRATIME),
            "relatime" => (libc::MS_RELATIME, 0),
            "norelatime" => (0, libc::MS_RELATIME),
            "strictatime" => (libc::MS_STRICTATIME, 0),
            "nostrictatime" => (0, libc::MS_STRICTATIME),
            "nosymfollow" => (256, 0),
            "bind" => {
                bind = true;
                (libc::MS_BIND, 0)
            }
            "rbind" => {
                bind = true;
                (libc::MS_BIND | libc::MS_REC, 0)
            }
            "private" | "rprivate" | "shared" | "rshared" | "slave" | "rslave" | "unbindable"
            | "runbindable" => {
                let rec = if o.starts_with('r') { libc::MS_REC } else { 0 };
                let p = match o.trim_start_matches('r') {
                    "private" => libc::MS_PRIVATE,
                    "shared" => libc::MS_SHARED,
                    "slave" => libc::MS_SLAVE,
                    _ => libc::MS_UNBINDABLE,
                };
                prop.push(p | rec);
                (0, 0)
            }
            // Options of other tools that mean nothing to the kernel.
            "tmpcopyup" | "mand" | "nomand" | "defaults" => (0, 0),
            other => {
                data.push(other);
                (0, 0)
            }
        };
        flags = (flags | set) & !clear;
    }
    (flags, prop, data.join(","), bind)
}

pub(super) fn do_mount(rootfs: &Path, m: &Mount, report_fd: RawFd) -> io::Result<()> {
    let dest = secure_join(rootfs, m.destination())?;
    let typ = m.typ().as_deref().unwrap_or("");
    let opts = m.options().clone().unwrap_or_default();
    let (flags, prop, data, bind) = parse_mount_options(&opts);
    let ctx = |e: io::Error| err(format!("mount {}", m.destination().display()), e);
    if bind || typ == "bind" {
        let src = m.source().clone().ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, "bind mount without source")
        })?;
        let md = std::fs::metadata(&src)
            .map_err(|e| err(format!("bind source {}", src.display()), e))?;
        if md.is_dir() {
            std::fs::create_dir_all(&dest).map_err(ctx)?;
        } else {
            if let Some(p) = dest.parent() {
                std::fs::create_dir_all(p).map_err(ctx)?;
            }
            if !dest.exists() {
                std::fs::File::create(&dest).map_err(ctx)?;
            }
        }
        let base = libc::MS_BIND | (flags & libc::MS_REC);
        sys::mount(src.to_str(), &dest, None, base, None).map_err(ctx)?;
        let extra = flags & !(libc::MS_BIND | libc::MS_REC);
        if extra != 0 {
            sys::mount(None, &dest, None, base | libc::MS_REMOUNT | extra, None).map_err(ctx)?;
        }
    } else {
        std::fs::create_dir_all(&dest).map_err(ctx)?;
        let fstype = if typ == "cgroup" { "cgroup2" } else { typ };
        let src = m
            .source()
            .as_ref()
            .and_then(|s| s.to_str())
            .unwrap_or(fstype)
            .to_string();
        let res = sys::mount(Some(&src), &dest, Some(fstype), flags, Some(&data));
        if let Err(e) = res {
            if fstype == "cgroup2" || fstype == "mqueue" {
                // Not essential: report and go on.
                report(
                    report_fd,
                    "log",
                    &format!("mount {}: {e}; skipped", m.destination().display()),
                );
            } else {
                return Err(ctx(e));
            }
        }
    }
    for p in prop {
        sys::mount(None, &dest, None, p, None).map_err(ctx)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options() {
        let o: Vec<String> = ["nosuid", "noexec", "nodev", "mode=755", "size=65536k"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let (f, p, d, b) = parse_mount_options(&o);
        assert_eq!(f, libc::MS_NOSUID | libc::MS_NOEXEC | libc::MS_NODEV);
        assert!(p.is_empty());
        assert_eq!(d, "mode=755,size=65536k");
        assert!(!b);
        let o: Vec<String> = ["rbind", "ro", "rprivate"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let (f, p, _, b) = parse_mount_options(&o);
        assert!(b);
        assert_eq!(f, libc::MS_BIND | libc::MS_REC | libc::MS_RDONLY);
        assert_eq!(p, vec![libc::MS_PRIVATE | libc::MS_REC]);
    }
}
