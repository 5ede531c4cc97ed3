//! Unprivileged uids for VMMs: one per running VM, taken from a range and held by an
//! exclusive `flock` on `<lock_dir>/<uid>.lock`. The lock dies with its holder, so a
//! uid whose owner was killed (even with SIGKILL) is free again at once; a stale lock
//! file is only a name.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::Error;

/// Where uid locks live by default.
pub const DEFAULT_LOCK_DIR: &str = "/run/ember/uids";

/// A uid held for one VMM. Clones share the lock; the last one dropped frees the uid
/// (and removes its lock file).
#[derive(Debug, Clone)]
pub struct UidLease {
    inner: Arc<Held>,
}

#[derive(Debug)]
struct Held {
    uid: u32,
    path: PathBuf,
    file: File,
}

impl Drop for Held {
    fn drop(&mut self) {
        // Unlink while still holding the lock: a process that opened the old file and
        // waits for it would lock a file without a name, so it re-checks (see `try_lock`).
        let _ = std::fs::remove_file(&self.path);
        let _ = &self.file;
    }
}

impl UidLease {
    pub fn uid(&self) -> u32 {
        self.inner.uid
    }

    /// Takes `uid` if no one holds it.
    pub fn take(lock_dir: &Path, uid: u32) -> Result<Option<UidLease>, Error> {
        std::fs::create_dir_all(lock_dir)?;
        let path = lock_dir.join(format!("{uid}.lock"));
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)?;
        // SAFETY: flock on a descriptor we own, no memory involved.
        let r = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if r != 0 {
            let e = std::io::Error::last_os_error();
            return if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                Ok(None)
            } else {
                Err(e.into())
            };
        }
        // The holder before us may have unlinked the file between our open and flock:
        // the lock only counts when it is on the file the name points at.
        use std::os::unix::fs::MetadataExt;
        let ours = file.metadata()?;
        match std::fs::metadata(&path) {
            Ok(m) if m.ino() == ours.ino() && m.dev() == ours.dev() => {}
            _ => return Ok(None),
        }
        Ok(Some(UidLease {
            inner: Arc::new(Held { uid, path, file }),
        }))
    }

    /// Takes a free uid of `first..first+count`, starting the search at a place
    /// derived from `key` (the VM's id) so that concurrent VMs rarely collide.
    pub fn allocate(lock_dir: &Path, first: u32, count: u32, key: &str) -> Result<UidLease, Error> {
        if count == 0 {
            return Err(Error::InvalidConfig("the jail's uid range is empty".into()));
        }
        use sha2::Digest;
        let h = sha2::Sha256::digest(key.as_bytes());
        let start = u32::from_le_bytes([h[0], h[1], h[2], h[3]]) % count;
        for i in 0..count {
            let uid = first + (start + i) % count;
            if let Some(l) = Self::take(lock_dir, uid)? {
                return Ok(l);
            }
        }
        Err(Error::InvalidConfig(format!(
            "every uid of the jail's range {first}..{} is taken by a running VM",
            first as u64 + count as u64
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_uid_is_not_given_twice_and_is_freed_on_drop() {
        let d = tempfile::tempdir().unwrap();
        let a = UidLease::allocate(d.path(), 1000, 2, "vm").unwrap();
        let b = UidLease::allocate(d.path(), 1000, 2, "vm").unwrap();
        assert_ne!(a.uid(), b.uid());
        assert!(UidLease::allocate(d.path(), 1000, 2, "vm").is_err());
        let freed = a.uid();
        drop(a);
        assert!(!d.path().join(format!("{freed}.lock")).exists());
        let c = UidLease::allocate(d.path(), 1000, 2, "other").unwrap();
        assert_eq!(c.uid(), freed);
        assert!(UidLease::take(d.path(), b.uid()).unwrap().is_none());
    }

    #[test]
    fn a_stale_lock_file_does_not_hold_its_uid() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("7.lock"), b"").unwrap();
        assert_eq!(UidLease::take(d.path(), 7).unwrap().unwrap().uid(), 7);
    }
}
