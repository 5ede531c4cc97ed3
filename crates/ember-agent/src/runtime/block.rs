//! Mounting a `BlockRootfs`: a whole virtio disk found by its serial, or a region
//! of one (the VM's pool drive) mapped through a loop device. Container rootfs and
//! `MountBlock` share this code.

use std::path::{Path, PathBuf};
use std::time::Duration;

use ember_agent_api::BlockRootfs;
use ember_ttrpc::Status;

use super::rootfs::find_block_by_serial;
use super::{internal, PATH_ROOTFS_PREFIX, R};
use crate::container::parse_mount_options;
use crate::loopdev::{self, LoopDevice, Region};
use crate::sys;

/// How long a freed loop device may take to unbind before it is left in place.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(5);

/// A mounted block filesystem and the loop device under it, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockMount {
    pub target: PathBuf,
    pub loop_number: Option<u32>,
}

/// The device node or image file `r` names: a guest file (`file`), by serial, or a
/// host path (testing aid).
fn device_of(r: &BlockRootfs) -> R<PathBuf> {
    if !r.file.is_empty() {
        let p = PathBuf::from(&r.file);
        if !p.is_absolute() {
            return Err(Status::invalid_argument(format!(
                "the image file {} is not an absolute path",
                r.file
            )));
        }
        return match std::fs::metadata(&p) {
            Ok(m) if !m.is_dir() => Ok(p),
            Ok(_) => Err(Status::invalid_argument(format!(
                "the image file {} is a directory",
                p.display()
            ))),
            Err(e) => Err(Status::not_found(format!(
                "image file {}: {e}",
                p.display()
            ))),
        };
    }
    if let Some(p) = r.serial.strip_prefix(PATH_ROOTFS_PREFIX) {
        let p = PathBuf::from(p);
        if !p.exists() {
            return Err(Status::not_found(format!("{} does not exist", p.display())));
        }
        return Ok(p);
    }
    if r.serial.is_empty() {
        return Err(Status::invalid_argument("the device serial is empty"));
    }
    find_block_by_serial(&r.serial, Duration::from_secs(5))
        .map_err(|e| Status::not_found(e.to_string()))
}

/// Whether `r` names a directory used as it is (`path:/dir`, testing aid).
pub(super) fn is_plain_dir(r: &BlockRootfs) -> bool {
    r.file.is_empty()
        && r.serial
            .strip_prefix(PATH_ROOTFS_PREFIX)
            .is_some_and(|p| Path::new(p).is_dir())
}

/// Mount flags and data for `r`: its options as mount(8) `-o` takes them, plus
/// `read_only`.
fn flags_and_data(r: &BlockRootfs) -> (libc::c_ulong, String) {
    let opts: Vec<String> = r
        .options
        .split(',')
        .map(str::trim)
        .filter(|o| !o.is_empty())
        .map(String::from)
        .collect();
    let (mut flags, _prop, data, _bind) = parse_mount_options(&opts);
    flags &= !(libc::MS_BIND | libc::MS_REC);
    if r.read_only {
        flags |= libc::MS_RDONLY;
    }
    (flags, data)
}

/// Mounts the filesystem `r` describes at `target` (which must exist). Blocking.
pub(super) fn mount(r: &BlockRootfs, target: &Path) -> R<BlockMount> {
    let dev = device_of(r)?;
    let is_file = std::fs::metadata(&dev).is_ok_and(|m| m.is_file());
    let mut lo: Option<LoopDevice> = None;
    let (source, what) = if r.length > 0 || r.offset > 0 || is_file {
        let length = if r.length > 0 {
            r.length
        } else {
            // The whole file (or the rest of the device after `offset`).
            let f = std::fs::File::open(&dev).map_err(|e| internal("opening device", e))?;
            let size = loopdev::size_of(&f).map_err(|e| internal("device size", e))?;
            size.saturating_sub(r.offset)
        };
        let region = Region {
            backing: &dev,
            offset: r.offset,
            length,
            read_only: r.read_only,
        };
        let l = loopdev::attach(&region).map_err(|e| {
            let msg = format!(
                "mapping [{}, {}) of {}: {e}",
                r.offset,
                r.offset.saturating_add(length),
                dev.display()
            );
            if e.kind() == std::io::ErrorKind::InvalidInput {
                Status::invalid_argument(msg)
            } else {
                Status::internal(msg)
            }
        })?;
        tracing::debug!(
            "{} maps [{}, {}) of {} (direct I/O: {})",
            l.path.display(),
            r.offset,
            r.offset + length,
            dev.display(),
            l.direct_io
        );
        let what = format!(
            "{} (region at {} of {})",
            l.path.display(),
            r.offset,
            dev.display()
        );
        let src = l.path.clone();
        lo = Some(l);
        (src, what)
    } else {
        (dev.clone(), dev.display().to_string())
    };
    let fstype = if r.fstype.is_empty() {
        "ext4"
    } else {
        r.fstype.as_str()
    };
    let (flags, data) = flags_and_data(r);
    if let Err(e) = sys::mount(source.to_str(), target, Some(fstype), flags, Some(&data)) {
        if let Some(l) = lo {
            let n = l.number;
            loopdev::detach(l);
            if let Err(e) = loopdev::release(n, RELEASE_TIMEOUT) {
                tracing::warn!("{e}");
            }
        }
        return Err(Status::invalid_argument(format!(
            "mounting {what} as {fstype} on {}: {e}",
            target.display()
        )));
    }
    // The mount holds the device now; closing ours leaves autoclear to the unmount.
    Ok(BlockMount {
        target: target.to_path_buf(),
        loop_number: lo.map(|l| l.number),
    })
}

/// How long a thread keeps trying to delete a device something still held.
const LATE_RELEASE_TIMEOUT: Duration = Duration::from_secs(600);

/// Deletes the loop device of an unmounted filesystem once the kernel has let go of
/// it (autoclear). Blocking for up to `RELEASE_TIMEOUT`; a device still held then
/// (a container that binds the mount is still being torn down) is deleted later by
/// a thread of its own.
pub(super) fn release_loop(number: Option<u32>) {
    let Some(n) = number else { return };
    if loopdev::release(n, RELEASE_TIMEOUT).is_ok() {
        return;
    }
    tracing::info!("loop{n} is still in use; deleting it once it is free");
    let spawned = std::thread::Builder::new()
        .name(format!("release-loop{n}"))
        .spawn(move || {
            if let Err(e) = loopdev::release(n, LATE_RELEASE_TIMEOUT) {
                tracing::warn!("loop{n} stays: {e}");
            }
        });
    if let Err(e) = spawned {
        tracing::warn!("loop{n} stays: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_become_flags_and_data() {
        let r = BlockRootfs {
            options: "nosuid, noexec,errors=remount-ro,,bind".into(),
            read_only: true,
            ..Default::default()
        };
        let (f, d) = flags_and_data(&r);
        assert_eq!(f, libc::MS_NOSUID | libc::MS_NOEXEC | libc::MS_RDONLY);
        assert_eq!(d, "errors=remount-ro");
        let (f, d) = flags_and_data(&BlockRootfs::default());
        assert_eq!((f, d.as_str()), (0, ""));
    }
}
