//! Device nodes of the container's /dev.

use std::io;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;

use super::err;
use super::rootfs::secure_join;
use nix::errno::Errno;
use nix::sys::stat::{Mode, SFlag};
use nix::unistd::{Gid, Uid};

fn mknod(path: &Path, kind: libc::mode_t, major: u32, minor: u32, mode: u32) -> io::Result<()> {
    let dev = libc::makedev(major, minor);
    let res = nix::sys::stat::mknod(
        path,
        SFlag::from_bits_retain(kind),
        Mode::from_bits_retain(mode & 0o7777),
        dev,
    );
    match res {
        Ok(()) => {}
        Err(Errno::EEXIST) => return Ok(()),
        Err(e) => return Err(err(format!("mknod {}", path.display()), e.into())),
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode & 0o7777))
}

pub(super) fn create_default_devices(rootfs: &Path) -> io::Result<()> {
    let dev = rootfs.join("dev");
    for (name, major, minor) in [
        ("null", 1, 3),
        ("zero", 1, 5),
        ("full", 1, 7),
        ("random", 1, 8),
        ("urandom", 1, 9),
        ("tty", 5, 0),
    ] {
        mknod(&dev.join(name), libc::S_IFCHR, major, minor, 0o666)?;
    }
    for (name, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("ptmx", "pts/ptmx"),
    ] {
        let p = dev.join(name);
        if std::fs::symlink_metadata(&p).is_err() {
            symlink(target, &p).map_err(|e| err(format!("symlink {}", p.display()), e))?;
        }
    }
    Ok(())
}

pub(super) fn create_device(rootfs: &Path, d: &oci_spec::runtime::LinuxDevice) -> io::Result<()> {
    use oci_spec::runtime::LinuxDeviceType;
    let path = secure_join(rootfs, d.path())?;
    if let Some(p) = path.parent() {
        std::fs::create_dir_all(p)?;
    }
    let kind = match d.typ() {
        LinuxDeviceType::B => libc::S_IFBLK,
        LinuxDeviceType::P => libc::S_IFIFO,
        _ => libc::S_IFCHR,
    };
    mknod(
        &path,
        kind,
        d.major() as u32,
        d.minor() as u32,
        d.file_mode().unwrap_or(0o666),
    )?;
    if d.uid().is_some() || d.gid().is_some() {
        nix::unistd::chown(
            &path,
            d.uid().map(Uid::from_raw),
            d.gid().map(Gid::from_raw),
        )?;
    }
    Ok(())
}
