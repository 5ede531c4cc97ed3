//! Thin wrappers over the raw system calls the agent and its spawn helper use.
//!
//! Where `nix` has a safe wrapper it is used; the few raw calls left (on fds known
//! only by number, or with arguments `nix` cannot express) each carry their own
//! `// SAFETY:` reasoning. Helpers marked allocation-free may run between
//! fork/clone and exec.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::mount::{MntFlags, MsFlags};

/// Turns a `-1` return into the current `errno`.
pub fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

pub fn cstr(s: &str) -> io::Result<CString> {
    CString::new(s).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL byte in string"))
}

pub fn cpath(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL byte in path"))
}

/// A close-on-exec pipe: (read end, write end).
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(nix::unistd::pipe2(OFlag::O_CLOEXEC)?)
}

pub fn set_nonblocking(fd: &impl AsFd) -> io::Result<()> {
    let flags = fcntl(fd.as_fd(), FcntlArg::F_GETFL)?;
    fcntl(
        fd.as_fd(),
        FcntlArg::F_SETFL(OFlag::from_bits_retain(flags) | OFlag::O_NONBLOCK),
    )?;
    Ok(())
}

/// The fd flags (`F_GETFD`) of `fd`; `Err(EBADF)` when it is not open.
fn fd_flags(fd: RawFd) -> io::Result<libc::c_int> {
    // SAFETY: F_GETFD takes no argument and only reads the fd table; any integer
    // is fine (an fd that is not open gives EBADF). Async-signal-safe.
    check(unsafe { libc::fcntl(fd, libc::F_GETFD) })
}

/// Whether `fd` is open in this process.
pub fn is_open(fd: RawFd) -> bool {
    fd_flags(fd).is_ok()
}

/// Sets or clears `FD_CLOEXEC` on a descriptor known by number (fds passed to the
/// spawn helper). Async-signal-safe and allocation-free: the spawn code calls it
/// between fork and exec.
pub fn set_cloexec(fd: RawFd, on: bool) -> io::Result<()> {
    let flags = fd_flags(fd)?;
    let flags = if on {
        flags | libc::FD_CLOEXEC
    } else {
        flags & !libc::FD_CLOEXEC
    };
    // SAFETY: F_SETFD takes an integer argument and touches no memory of ours; it
    // changes only the close-on-exec flag of `fd`, which the callers own.
    check(unsafe { libc::fcntl(fd, libc::F_SETFD, flags) })?;
    Ok(())
}

/// mount(2). Errors keep their errno (callers add context).
pub fn mount(
    source: Option<&str>,
    target: &Path,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> io::Result<()> {
    nix::mount::mount(
        source,
        target,
        fstype,
        MsFlags::from_bits_retain(flags),
        data.filter(|d| !d.is_empty()),
    )?;
    Ok(())
}

/// Binds `source` at `target`, then remounts the bind read-only with nosuid, nodev
/// and noexec (a bind takes none of them at first).
pub fn bind_read_only(source: &Path, target: &Path) -> io::Result<()> {
    mount(source.to_str(), target, None, libc::MS_BIND, None)?;
    mount(
        None,
        target,
        None,
        libc::MS_BIND
            | libc::MS_REMOUNT
            | libc::MS_RDONLY
            | libc::MS_NOSUID
            | libc::MS_NODEV
            | libc::MS_NOEXEC,
        None,
    )
}

/// The filesystem magic of `path` (statfs `f_type`).
pub fn fs_magic(path: &Path) -> io::Result<i64> {
    let st = nix::sys::statfs::statfs(path)?;
    Ok(st.filesystem_type().0 as i64)
}

pub const CGROUP2_MAGIC: i64 = 0x6367_7270;

pub fn umount(target: &Path, flags: libc::c_int) -> io::Result<()> {
    nix::mount::umount2(target, MntFlags::from_bits_retain(flags))?;
    Ok(())
}

/// kill(2) with a raw signal number (real-time signals included, which nix's
/// `Signal` cannot name).
/// Sets the wall clock (`CLOCK_REALTIME`) to `unix_ns` nanoseconds after the epoch.
pub fn set_clock(unix_ns: i64) -> io::Result<()> {
    if unix_ns <= 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "time before the epoch",
        ));
    }
    let ts = libc::timespec {
        tv_sec: unix_ns / 1_000_000_000,
        tv_nsec: unix_ns % 1_000_000_000,
    };
    // SAFETY: clock_settime only reads `ts`, a live timespec.
    check(unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &ts) }).map(|_| ())
}

pub fn kill(pid: i32, sig: i32) -> io::Result<()> {
    // SAFETY: kill takes only integers and touches no memory of this process.
    check(unsafe { libc::kill(pid, sig) })?;
    Ok(())
}

/// write(2) on a descriptor known by number. Allocation-free.
pub fn write(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: `buf` is a live slice, valid for reads of `buf.len()` bytes for the
    // whole call; the kernel only reads from it. A bad `fd` gives EBADF.
    let n = unsafe { libc::write(fd, buf.as_ptr() as *const libc::c_void, buf.len()) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Writes the whole buffer to a blocking fd.
pub fn write_all(fd: RawFd, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        match write(fd, buf) {
            Ok(n) => buf = &buf[n..],
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// dup2(2) onto one of the standard descriptors 0-2 (the only targets used here:
/// no `OwnedFd` of this crate holds those numbers, so nothing is closed behind an
/// owner's back). Allocation-free.
pub fn dup_onto_stdio(fd: RawFd, target: RawFd) -> io::Result<()> {
    debug_assert!((0..=2).contains(&target));
    // SAFETY: dup2 takes only integers and touches no memory of ours; `target` is a
    // standard descriptor (see above), so replacing it breaks no ownership.
    check(unsafe { libc::dup2(fd, target) })?;
    Ok(())
}

/// Takes ownership of a descriptor this process got by number (from its argument
/// list): it is closed when the `OwnedFd` drops. `None` for a negative number.
///
/// Only for fds that nothing else in the process owns or closes; the spawn helper
/// and its clone use it for the fds the agent passed them (each taken once).
pub fn take_inherited_fd(fd: RawFd) -> Option<OwnedFd> {
    if fd < 0 {
        return None;
    }
    // SAFETY: `fd` is non-negative and, per this function's contract, an open fd
    // that no other owner in this process holds, so the OwnedFd is its only owner.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `_exit(2)`: ends the process at once, without running atexit handlers or
/// flushing stdio buffers (what a forked/cloned child must do). Async-signal-safe.
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit has no preconditions; it never returns, so no Rust state is
    // observed afterwards (destructors are skipped, which is the point).
    unsafe { libc::_exit(code) }
}

/// Kernel release, as `uname -r` prints it.
pub fn kernel_release() -> String {
    // SAFETY: utsname is plain C data (arrays of c_char) for which all-zero bytes
    // are a valid value.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: `u` is a live, writable utsname; uname only fills it in.
    if unsafe { libc::uname(&mut u) } != 0 {
        return String::new();
    }
    let bytes: Vec<u8> = u
        .release
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Monotonic time since boot (CLOCK_BOOTTIME) in milliseconds.
pub fn uptime_ms() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a live, writable timespec; clock_gettime only fills it in
    // (on failure it stays zero).
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000
}

/// Registers an owned fd with tokio's reactor.
pub fn async_fd(fd: OwnedFd) -> io::Result<tokio::io::unix::AsyncFd<OwnedFd>> {
    // SAFETY: the OwnedFd is moved into the AsyncFd, so it is open now and stays open
    // (and the same fd, which `OwnedFd::as_raw_fd` always returns) until the AsyncFd
    // drops it; no one else can close it meanwhile.
    Ok(unsafe { tokio::io::unix::AsyncFd::register(fd) }?)
}
