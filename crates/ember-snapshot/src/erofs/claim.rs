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
    let busy = || {
        Error::FailedPrecondition(format!(
            "{} is busy on the host (a rootfs mounted from this snapshot is still in use)",
            rw.display()
        ))
    };
    let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    // An overlay keeps its own reference to its upper layer's mount: unmounting
    // `rw/` would succeed and leave the filesystem alive behind the VM's back.
    if overlay_users(&table, &rw) {
        return Err(busy());
    }
    let loop_dev = mount_source(&table, &rw);
    match unmount_if_mounted(&rw) {
        Ok(_) => {}
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => return Err(busy()),
        Err(e) => {
            return Err(Error::internal(&format!("unmounting {}", rw.display()), e));
        }
    }
    if let Some(dev) = loop_dev {
        if loop_still_bound(&dev, &image) {
            // Someone else still holds the filesystem: put the mount back.
            let _ = std::process::Command::new("mount")
                .arg(&dev)
                .arg(&rw)
                .status();
            return Err(busy());
        }
    }
    Ok(UpperClaim { image, _lock: lock })
}

/// Unescapes a mountinfo field (`\\040` for a space and so on).
fn unescape(field: &str) -> String {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() {
            if let Ok(v) = u8::from_str_radix(&field[i + 1..i + 4], 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `(mount point, fs type, source, super options)` of each mountinfo line.
fn mountinfo(table: &str) -> impl Iterator<Item = (String, &str, String, &str)> {
    table.lines().filter_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        let point = unescape(left.split(' ').nth(4)?);
        let mut r = right.split(' ');
        let fstype = r.next()?;
        let source = unescape(r.next()?);
        let opts = r.next().unwrap_or("");
        Some((point, fstype, source, opts))
    })
}

/// Whether an overlay mount uses `rw/upper` or `rw/work`.
fn overlay_users(table: &str, rw: &Path) -> bool {
    let upper = format!("upperdir={}", rw.join("upper").display());
    let work = format!("workdir={}", rw.join("work").display());
    mountinfo(table).any(|(_, fstype, _, opts)| {
        fstype == "overlay"
            && opts
                .split(',')
                .map(unescape)
                .any(|o| o == upper || o == work)
    })
}

/// The device mounted on `target`, when it is a loop device.
fn mount_source(table: &str, target: &Path) -> Option<String> {
    let target = target.to_str()?;
    mountinfo(table)
        .filter(|(point, _, source, _)| point == target && source.starts_with("/dev/loop"))
        .map(|(_, _, source, _)| source)
        .last()
}

/// Whether the loop device `dev` is still bound to `image`.
fn loop_still_bound(dev: &str, image: &Path) -> bool {
    let name = dev.trim_start_matches("/dev/");
    match std::fs::read_to_string(format!("/sys/block/{name}/loop/backing_file")) {
        Ok(f) => {
            let f = f.trim();
            std::fs::canonicalize(image)
                .map(|p| p == Path::new(f))
                .unwrap_or(true)
        }
        Err(_) => false,
    }
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
    fn mountinfo_users() {
        let table = "36 25 0:32 / /var/lib/x/snapshots/3/rw rw,relatime shared:1 - ext4 /dev/loop4 rw\n\
                     40 25 0:33 / /run/b\\040c/rootfs rw - overlay overlay rw,lowerdir=/l,upperdir=/var/lib/x/snapshots/3/rw/upper,workdir=/var/lib/x/snapshots/3/rw/work\n";
        let rw = Path::new("/var/lib/x/snapshots/3/rw");
        assert!(overlay_users(table, rw));
        assert!(!overlay_users(
            table,
            Path::new("/var/lib/x/snapshots/4/rw")
        ));
        assert_eq!(mount_source(table, rw).as_deref(), Some("/dev/loop4"));
        assert_eq!(
            mountinfo(table).nth(1).map(|m| m.0),
            Some("/run/b c/rootfs".to_string())
        );
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
