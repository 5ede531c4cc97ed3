//! The container rootfs in the agent's namespace: block devices by serial, mounts under a state directory.

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ember_agent_api::BlockRootfs;
use ember_ttrpc::Status;

use super::{block, internal, PATH_ROOTFS_PREFIX, R};
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

/// Resolves (and for block devices, mounts) the rootfs: the root directory and the
/// loop device under it, if any. Blocking.
pub(super) fn prepare_rootfs(r: &BlockRootfs, state_dir: &Path) -> R<(PathBuf, Option<u32>)> {
    let (base, loop_number) = if block::is_plain_dir(r) {
        (PathBuf::from(&r.serial[PATH_ROOTFS_PREFIX.len()..]), None)
    } else {
        let mnt = state_dir.join("rootfs-dev");
        std::fs::create_dir_all(&mnt).map_err(|e| internal("creating mount point", e))?;
        let m = block::mount(r, &mnt)?;
        (mnt, m.loop_number)
    };
    let root = if r.subpath.is_empty() {
        Ok(base)
    } else {
        crate::container::secure_join(&base, Path::new(&r.subpath))
            .map_err(|e| internal("rootfs subpath", e))
    }
    .inspect_err(|_| undo(state_dir, loop_number))?;
    if !root.is_dir() {
        undo(state_dir, loop_number);
        return Err(Status::invalid_argument(format!(
            "rootfs {} is not a directory",
            root.display()
        )));
    }
    Ok((root, loop_number))
}

fn undo(state_dir: &Path, loop_number: Option<u32>) {
    unmount_all_under(state_dir);
    block::release_loop(loop_number);
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
