//! The `ShimCgroup` runtime option (`containerd.runc.v1.Options.shim_cgroup`): the
//! shim moves itself (and so the microVM it starts afterwards) into that cgroup, in
//! every mounted hierarchy (cgroup v2's one, or each of v1's).

use std::io;
use std::path::{Path, PathBuf};

/// The mount points of the cgroup hierarchies, from `/proc/self/mountinfo`.
fn hierarchies(mountinfo: &str) -> Vec<PathBuf> {
    mountinfo
        .lines()
        .filter_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            let fstype = post.split_whitespace().next()?;
            if fstype != "cgroup" && fstype != "cgroup2" {
                return None;
            }
            pre.split_whitespace().nth(4).map(PathBuf::from)
        })
        .collect()
}

/// `path` under a hierarchy's mount point (`path` is absolute in the hierarchy).
fn under(mount: &Path, path: &str) -> PathBuf {
    mount.join(path.trim_start_matches('/'))
}

/// Moves process `pid` into cgroup `path` of every hierarchy, creating it where
/// it is missing.
pub fn join(path: &str, pid: u32) -> io::Result<()> {
    if path.split('/').any(|c| c == "..") {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("shim cgroup {path:?} leaves its hierarchy"),
        ));
    }
    let mounts = hierarchies(&std::fs::read_to_string("/proc/self/mountinfo")?);
    if mounts.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            "no cgroup hierarchy is mounted",
        ));
    }
    for m in mounts {
        let dir = under(&m, path);
        std::fs::create_dir_all(&dir)
            .and_then(|()| std::fs::write(dir.join("cgroup.procs"), pid.to_string()))
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", dir.display())))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hierarchies_of_v1_and_v2() {
        let mi = "\
25 30 0:23 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
26 25 0:24 / /sys/fs/cgroup/memory rw,nosuid - cgroup cgroup rw,memory
27 25 0:25 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw
28 30 0:26 / /proc rw - proc proc rw";
        assert_eq!(
            hierarchies(mi),
            [
                PathBuf::from("/sys/fs/cgroup/memory"),
                PathBuf::from("/sys/fs/cgroup/unified")
            ]
        );
        assert_eq!(
            under(Path::new("/sys/fs/cgroup/memory"), "/a/b"),
            PathBuf::from("/sys/fs/cgroup/memory/a/b")
        );
        assert!(join("/a/../../x", 1).is_err());
    }
}
