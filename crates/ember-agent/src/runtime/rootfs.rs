//! The container rootfs in the agent's namespace: block devices by serial, mounts under a state directory.

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ember_agent_api::BlockRootfs;
use ember_ttrpc::Status;

use super::{internal, PATH_ROOTFS_PREFIX, R};
use crate::sys;

/// Finds `/dev/<name>` whose `/sys/block/<name>/serial` is `serial`, polling until
/// `timeout` (devices may still be probing). virtio-blk serials are at most 20
/// bytes, so a longer wanted serial matches its first 20 bytes.
pub fn find_block_by_serial(serial: &str, timeout: Duration) -> io::Result<PathBuf> {
    let deadline = Instant::now() + timeout;
    let short: String = serial.chars().take(20).collect();
    loop {
        if let Ok(rd) = std::fs::read_dir("/sys/block") {
            for e in rd.flatten() {
                let s = std::fs::read_to_string(e.path().join("serial")).unwrap_or_default();
                let s = s.trim_end_matches(['\n', '\0']).trim();
                if !s.is_empty() && (s == serial || s == short) {
                    let dev = Path::new("/dev").join(e.file_name());
                    if dev.exists() {
                        return Ok(dev);
                    }
                }
            }
        }
        if Instant::now() > deadline {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("no block device with serial {serial:?}"),
            ));
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Mount points under `prefix` in the agent's namespace, deepest first.
fn mounts_under(prefix: &Path) -> Vec<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut v: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape_mount_path)
        .map(PathBuf::from)
        .filter(|p| p.starts_with(prefix))
        .collect();
    v.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    v.dedup();
    v
}

/// Undoes the octal escapes (`\040`) of /proc/self/mountinfo.
pub fn unescape_mount_path(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub(super) fn unmount_all_under(prefix: &Path) {
    for m in mounts_under(prefix) {
        if let Err(e) = sys::umount(&m, libc::MNT_DETACH) {
            tracing::warn!("unmounting {}: {e}", m.display());
        }
    }
}

/// Resolves (and for block devices, mounts) the rootfs. Blocking.
pub(super) fn prepare_rootfs(r: &BlockRootfs, state_dir: &Path) -> R<PathBuf> {
    let base = if let Some(p) = r.serial.strip_prefix(PATH_ROOTFS_PREFIX) {
        PathBuf::from(p)
    } else {
        if r.serial.is_empty() {
            return Err(Status::invalid_argument("rootfs.serial is empty"));
        }
        let dev = find_block_by_serial(&r.serial, Duration::from_secs(5))
            .map_err(|e| Status::not_found(e.to_string()))?;
        let mnt = state_dir.join("rootfs-dev");
        std::fs::create_dir_all(&mnt).map_err(|e| internal("creating mount point", e))?;
        let fstype = if r.fstype.is_empty() {
            "ext4"
        } else {
            r.fstype.as_str()
        };
        let mut flags = 0;
        if r.read_only {
            flags |= libc::MS_RDONLY;
        }
        sys::mount(dev.to_str(), &mnt, Some(fstype), flags, Some(&r.options)).map_err(|e| {
            Status::failed_precondition(format!("mounting {} ({fstype}): {e}", dev.display()))
        })?;
        mnt
    };
    let root = if r.subpath.is_empty() {
        base
    } else {
        crate::container::secure_join(&base, Path::new(&r.subpath))
            .map_err(|e| internal("rootfs subpath", e))?
    };
    if !root.is_dir() {
        return Err(Status::invalid_argument(format!(
            "rootfs {} is not a directory",
            root.display()
        )));
    }
    Ok(root)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_unescape() {
        assert_eq!(unescape_mount_path("/a\\040b"), "/a b");
        assert_eq!(unescape_mount_path("/plain"), "/plain");
        assert_eq!(unescape_mount_path("/end\\04"), "/end\\04");
    }
}
