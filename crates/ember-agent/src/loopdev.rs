//! Loop devices over a region of a block device (or file): `/dev/loop-control`
//! hands out a free number, `LOOP_CONFIGURE` binds it with an offset and size
//! limit in one call, and `LOOP_CTL_REMOVE` deletes the device once it is unbound
//! again, so a VM that maps and unmaps many regions keeps no idle devices around.
//!
//! The kernel's loop ioctls are not in the `libc` crate; their numbers and the
//! `loop_config` layout come from `<linux/loop.h>` (stable UAPI).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const LOOP_CLR_FD: libc::c_ulong = 0x4C01;
const LOOP_CONFIGURE: libc::c_ulong = 0x4C0A;
const LOOP_CTL_REMOVE: libc::c_ulong = 0x4C81;
const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
/// `_IOR(0x12, 114, size_t)`: the size of a block device in bytes.
const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;

const LO_FLAGS_READ_ONLY: u32 = 1;
const LO_FLAGS_AUTOCLEAR: u32 = 4;
const LO_FLAGS_DIRECT_IO: u32 = 16;

/// Major number of loop block devices.
const LOOP_MAJOR: u32 = 7;

/// `struct loop_info64`.
#[repr(C)]
#[derive(Clone, Copy)]
struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; 64],
    lo_crypt_name: [u8; 64],
    lo_encrypt_key: [u8; 32],
    lo_init: [u64; 2],
}

/// `struct loop_config` (`LOOP_CONFIGURE`).
#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

/// Serialises handing out and removing loop numbers within the agent, so one
/// caller never removes a number another has just been given.
static ALLOC: Mutex<()> = Mutex::new(());

/// A loop device the agent bound, held open: with autoclear the kernel unbinds it
/// at its last close, so it must stay open until it is mounted (the mount then
/// holds it, and unmounting unbinds it). Call [`release`] afterwards to delete the
/// node.
#[derive(Debug)]
pub struct LoopDevice {
    pub number: u32,
    pub path: PathBuf,
    /// Whether the kernel accepted direct I/O for it.
    pub direct_io: bool,
    pub file: File,
}

/// What to map: `[offset, offset + length)` of `backing`.
#[derive(Debug, Clone)]
pub struct Region<'a> {
    pub backing: &'a Path,
    pub offset: u64,
    pub length: u64,
    pub read_only: bool,
}

fn ioctl_err(what: &str, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

/// The size in bytes of a block device or regular file.
pub fn size_of(f: &File) -> io::Result<u64> {
    let md = f.metadata()?;
    if md.file_type().is_block_device() {
        let mut size: u64 = 0;
        // SAFETY: BLKGETSIZE64 writes one u64 through the pointer, which points at
        // the live local `size`; `f` is an open block device for the whole call.
        crate::sys::check(unsafe { libc::ioctl(f.as_raw_fd(), BLKGETSIZE64, &mut size) })
            .map_err(|e| ioctl_err("BLKGETSIZE64", e))?;
        Ok(size)
    } else {
        Ok(md.len())
    }
}

/// Checks that the region is well formed and lies inside a backing of `size` bytes.
pub fn check_region(offset: u64, length: u64, size: u64) -> Result<(), String> {
    if length == 0 {
        return Err("region length is 0".into());
    }
    if !offset.is_multiple_of(512) || !length.is_multiple_of(512) {
        return Err(format!(
            "region offset {offset} and length {length} must be multiples of 512"
        ));
    }
    match offset.checked_add(length) {
        Some(end) if end <= size => Ok(()),
        _ => Err(format!(
            "region [{offset}, {}) lies beyond the end of the device ({size} bytes)",
            offset.saturating_add(length)
        )),
    }
}

fn control() -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/loop-control")
        .map_err(|e| ioctl_err("opening /dev/loop-control", e))
}

/// Opens `/dev/loop<n>`, creating the node when devtmpfs has not (yet).
fn open_node(n: u32) -> io::Result<(PathBuf, File)> {
    let path = PathBuf::from(format!("/dev/loop{n}"));
    let deadline = Instant::now() + Duration::from_millis(500);
    while !path.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    if !path.exists() {
        let dev = nix::sys::stat::makedev(LOOP_MAJOR.into(), n.into());
        match nix::sys::stat::mknod(
            &path,
            nix::sys::stat::SFlag::S_IFBLK,
            nix::sys::stat::Mode::from_bits_truncate(0o660),
            dev,
        ) {
            Ok(()) | Err(nix::errno::Errno::EEXIST) => {}
            Err(e) => return Err(ioctl_err(&format!("mknod {}", path.display()), e.into())),
        }
    }
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(&path)
        .map_err(|e| ioctl_err(&format!("opening {}", path.display()), e))?;
    Ok((path, f))
}

fn configure(dev: &File, backing: &File, r: &Region, flags: u32) -> io::Result<()> {
    // SAFETY: LoopConfig is plain C data (integers and byte arrays); all-zero bytes
    // are a valid value and mean "no name, no encryption, default block size".
    let mut cfg: LoopConfig = unsafe { std::mem::zeroed() };
    cfg.fd = backing.as_raw_fd() as u32;
    cfg.info.lo_offset = r.offset;
    cfg.info.lo_sizelimit = r.length;
    cfg.info.lo_flags = flags;
    let name = r.backing.as_os_str().as_encoded_bytes();
    let n = name.len().min(cfg.info.lo_file_name.len() - 1);
    cfg.info.lo_file_name[..n].copy_from_slice(&name[..n]);
    // SAFETY: LOOP_CONFIGURE only reads a `struct loop_config`, whose layout
    // LoopConfig reproduces; the pointer is to the live local `cfg`. `dev` and the
    // fd in it (`backing`) are open for the whole call.
    crate::sys::check(unsafe { libc::ioctl(dev.as_raw_fd(), LOOP_CONFIGURE, &cfg) })?;
    Ok(())
}

fn open_backing(r: &Region, direct: bool) -> io::Result<File> {
    let mut flags = libc::O_CLOEXEC;
    if direct {
        flags |= libc::O_DIRECT;
    }
    OpenOptions::new()
        .read(true)
        .write(!r.read_only)
        .custom_flags(flags)
        .open(r.backing)
        .map_err(|e| ioctl_err(&format!("opening {}", r.backing.display()), e))
}

/// Whether the bound device reads (direct I/O a backing cannot do fails only here).
fn reads(dev: &File) -> bool {
    use std::os::unix::fs::FileExt;
    let mut b = [0u8; 4096];
    dev.read_at(&mut b, 0).is_ok()
}

/// Binds a free loop device to the region (autoclear; read-only when asked; direct
/// I/O when the backing takes it, else buffered).
pub fn attach(r: &Region) -> io::Result<LoopDevice> {
    let backing = open_backing(r, false)?;
    let size = size_of(&backing)?;
    check_region(r.offset, r.length, size)
        .map_err(|m| io::Error::new(io::ErrorKind::InvalidInput, m))?;
    let direct = open_backing(r, true).ok();
    let mut base = LO_FLAGS_AUTOCLEAR;
    if r.read_only {
        base |= LO_FLAGS_READ_ONLY;
    }
    let _g = ALLOC.lock().unwrap_or_else(|p| p.into_inner());
    let ctl = control()?;
    let mut last = None;
    for _ in 0..16 {
        // SAFETY: LOOP_CTL_GET_FREE takes no argument and returns a number (or -1);
        // `ctl` is an open /dev/loop-control for the whole call.
        let n = crate::sys::check(unsafe { libc::ioctl(ctl.as_raw_fd(), LOOP_CTL_GET_FREE) })
            .map_err(|e| ioctl_err("LOOP_CTL_GET_FREE", e))? as u32;
        let (path, dev) = match open_node(n) {
            Ok(x) => x,
            Err(e) => {
                last = Some(e);
                continue;
            }
        };
        let mut res = Err(io::Error::from_raw_os_error(libc::EINVAL));
        if let Some(d) = &direct {
            res = configure(&dev, d, r, base | LO_FLAGS_DIRECT_IO);
            if res.is_ok() && !reads(&dev) {
                // SAFETY: LOOP_CLR_FD takes no argument; `dev` is the open device we
                // just bound.
                unsafe { libc::ioctl(dev.as_raw_fd(), LOOP_CLR_FD, 0) };
                res = Err(io::Error::from_raw_os_error(libc::EINVAL));
            }
        }
        // Whatever direct I/O did not take (EINVAL, EOPNOTSUPP, ...), buffered may.
        let res = match res {
            Ok(()) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => Err(e),
            Err(_) => configure(&dev, &backing, r, base).map(|_| false),
        };
        match res {
            Ok(dio) => {
                // The kernel may turn direct I/O off itself.
                let direct_io = dio
                    && std::fs::read_to_string(format!("/sys/block/loop{n}/loop/dio"))
                        .map(|s| s.trim() == "1")
                        .unwrap_or(dio);
                return Ok(LoopDevice {
                    number: n,
                    path,
                    direct_io,
                    file: dev,
                });
            }
            // Taken by someone else (outside the agent) in between: try the next.
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => last = Some(e),
            Err(e) => return Err(ioctl_err("LOOP_CONFIGURE", e)),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("no free loop device")))
}

/// Unbinds a loop device nothing else uses (a failed mount's device); the kernel
/// lets go of it when `dev` is closed here.
pub fn detach(dev: LoopDevice) {
    // SAFETY: LOOP_CLR_FD takes no argument; `dev.file` is the open loop device.
    let _ = unsafe { libc::ioctl(dev.file.as_raw_fd(), LOOP_CLR_FD, 0) };
    drop(dev);
}

/// Waits until the device is unbound (autoclear after the last unmount) and
/// deletes it. Gives up after `timeout` (the device stays; it is reused later).
pub fn release(number: u32, timeout: Duration) -> io::Result<()> {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(5);
    loop {
        let res = {
            let _g = ALLOC.lock().unwrap_or_else(|p| p.into_inner());
            let ctl = control()?;
            // SAFETY: LOOP_CTL_REMOVE takes the device number as an integer argument;
            // `ctl` is an open /dev/loop-control for the whole call.
            crate::sys::check(unsafe {
                libc::ioctl(ctl.as_raw_fd(), LOOP_CTL_REMOVE, number as libc::c_ulong)
            })
        };
        match res {
            Ok(_) => return Ok(()),
            // Already gone.
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(250));
            }
            Err(e) => return Err(ioctl_err(&format!("removing loop{number}"), e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uapi_layout() {
        assert_eq!(std::mem::size_of::<LoopInfo64>(), 232);
        assert_eq!(std::mem::size_of::<LoopConfig>(), 304);
    }

    #[test]
    fn regions_are_checked() {
        assert!(check_region(1 << 20, 1 << 20, 4 << 20).is_ok());
        assert!(check_region(0, 4 << 20, 4 << 20).is_ok());
        let e = check_region(3 << 20, 2 << 20, 4 << 20).unwrap_err();
        assert!(e.contains("beyond the end"), "{e}");
        assert!(check_region(u64::MAX - 511, 1024, 4 << 20).is_err());
        assert!(check_region(100, 1024, 4 << 20)
            .unwrap_err()
            .contains("512"));
        assert!(check_region(0, 0, 4 << 20).is_err());
    }
}

#[cfg(test)]
mod host_tests {
    use super::*;

    /// Binds a region of a file on the host (root only).
    #[test]
    fn attach_a_file_region() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIPPED: not root");
            return;
        }
        let d = std::env::temp_dir().join(format!("ember-loop-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let f = d.join("pool");
        std::fs::File::create(&f).unwrap().set_len(8 << 20).unwrap();
        let dev = attach(&Region {
            backing: &f,
            offset: 1 << 20,
            length: 4 << 20,
            read_only: false,
        })
        .unwrap();
        let size = size_of(&File::open(&dev.path).unwrap()).unwrap();
        assert_eq!(size, 4 << 20);
        let n = dev.number;
        detach(dev);
        release(n, Duration::from_secs(5)).unwrap();
        assert!(!Path::new(&format!("/sys/block/loop{n}")).exists());
        std::fs::remove_dir_all(&d).unwrap();
    }
}
