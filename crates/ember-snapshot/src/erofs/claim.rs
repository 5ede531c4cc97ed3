//! Claiming an active snapshot's writable image for a VM.
//!
//! Whoever uses `rw.ext4` holds `flock(LOCK_EX)` on `rw.ext4.lock` next to it. A VM
//! runtime takes the lock without waiting, unmounts the host's mount of the image
//! (`rw/`; never lazily: a busy mount means someone on the host still uses it, and
//! the claim fails) and hands the image to its VM until it drops the claim. The
//! snapshotter takes the same lock, briefly, before it mounts `rw/` on the host, and
//! refuses to commit or remove a snapshot whose lock someone else holds.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use super::layout::{describe, UPPER_IMAGE, UPPER_LOCK, UPPER_MOUNT};
use crate::{Error, Mount, Result};

/// The exclusive lock on an active snapshot's writable image.
#[derive(Debug)]
pub struct UpperLock {
    file: File,
}

impl UpperLock {
    /// Takes the lock of the snapshot directory `dir` without waiting; `None` when
    /// someone else holds it.
    pub fn try_lock(dir: &Path) -> Result<Option<UpperLock>> {
        let path = dir.join(UPPER_LOCK);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| Error::internal(&format!("opening {}", path.display()), e))?;
        // SAFETY: flock only reads the descriptor, which `file` keeps open.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc == 0 {
            return Ok(Some(UpperLock { file }));
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            return Ok(None);
        }
        Err(Error::internal(&format!("locking {}", path.display()), e))
    }

    /// Whether someone else holds the lock of `dir` right now.
    pub fn held_elsewhere(dir: &Path) -> Result<bool> {
        Ok(Self::try_lock(dir)?.is_none())
    }
}

impl AsRawFd for UpperLock {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.file.as_raw_fd()
    }
}

/// A VM runtime's hold on an active snapshot's writable image: the lock is held and
/// the host's mount of the image is gone until this is dropped (the lock file
/// stays; the snapshotter mounts the image on the host again when asked for the
/// snapshot's mounts after the claim ended).
#[derive(Debug)]
pub struct UpperClaim {
    image: PathBuf,
    _lock: UpperLock,
}

impl UpperClaim {
    /// The writable ext4 image (`<dir>/rw.ext4`, holding `upper/` and `work/`).
    pub fn image(&self) -> &Path {
        &self.image
    }

    /// Ends the claim (the same as dropping it).
    pub fn release(self) {}
}

/// Unmounts `target` if it is mounted (not lazily). `Ok(false)` when nothing was
/// mounted there.
pub(crate) fn unmount_if_mounted(target: &Path) -> std::io::Result<bool> {
    match nix::mount::umount2(target, nix::mount::MntFlags::empty()) {
        Ok(()) => Ok(true),
        // Not a mount point (or gone).
        Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => Ok(false),
        Err(e) => Err(std::io::Error::from(e)),
    }
}

/// Claims the writable image of the active `erofs` snapshot whose mounts are
/// `mounts` (as returned by `Prepare`/`Mounts`): takes the lock, unmounts the host's
/// `rw/` mount and returns the claim. `FailedPrecondition` when the mounts have no
/// erofs writable image, another VM holds it, or the host still uses the mount.
pub fn claim_upper(mounts: &[Mount]) -> Result<UpperClaim> {
    let rootfs = describe(mounts).ok_or_else(|| {
        Error::FailedPrecondition("the mounts are not those of an erofs snapshot".into())
    })?;
    let image = rootfs.upper.ok_or_else(|| {
        Error::FailedPrecondition("the erofs snapshot is a read-only view".into())
    })?;
    let dir = image
        .parent()
        .ok_or_else(|| Error::Internal(format!("{} has no directory", image.display())))?
        .to_path_buf();
    claim_dir(&dir)
}

/// [`claim_upper`] for a snapshot directory.
pub fn claim_dir(dir: &Path) -> Result<UpperClaim> {
    let image = dir.join(UPPER_IMAGE);
    if !image.is_file() {
        return Err(Error::FailedPrecondition(format!(
            "{} is not an active erofs snapshot",
            dir.display()
        )));
    }
    let lock = UpperLock::try_lock(dir)?.ok_or_else(|| {
        Error::FailedPrecondition(format!(
            "{}: in use by a VM (its lock is held)",
            image.display()
        ))
    })?;
    let rw = dir.join(UPPER_MOUNT);
    match unmount_if_mounted(&rw) {
        Ok(_) => {}
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
            return Err(Error::FailedPrecondition(format!(
                "{} is busy on the host (a rootfs mounted from this snapshot is still in use)",
                rw.display()
            )));
        }
        Err(e) => {
            return Err(Error::internal(&format!("unmounting {}", rw.display()), e));
        }
    }
    Ok(UpperClaim { image, _lock: lock })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_is_exclusive_and_released_on_drop() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join(UPPER_IMAGE), b"").unwrap();
        let claim = claim_dir(d.path()).unwrap();
        assert_eq!(claim.image(), d.path().join(UPPER_IMAGE));
        assert!(UpperLock::held_elsewhere(d.path()).unwrap());
        let err = claim_dir(d.path()).unwrap_err();
        assert!(matches!(err, Error::FailedPrecondition(ref m) if m.contains("in use by a VM")));
        claim.release();
        assert!(!UpperLock::held_elsewhere(d.path()).unwrap());
        assert!(d.path().join(UPPER_LOCK).exists());
    }

    #[test]
    fn foreign_mounts_are_refused() {
        let m = Mount {
            kind: "bind".into(),
            source: "/tmp".into(),
            target: String::new(),
            options: vec![],
        };
        assert!(matches!(
            claim_upper(&[m]),
            Err(Error::FailedPrecondition(_))
        ));
    }
}
