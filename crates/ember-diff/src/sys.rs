//! Thin wrappers over the `*at` system calls the applier is built from. Every
//! path handed to them is one name relative to a directory descriptor, or is
//! resolved with `openat2(RESOLVE_BENEATH)`, so nothing here follows a symlink out
//! of the root.

use std::ffi::{CString, OsString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

fn cstr(b: &[u8]) -> io::Result<CString> {
    CString::new(b).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "name contains NUL"))
}

fn check(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// Opens a directory (not following a final symlink) by absolute or relative path.
pub fn open_dir(path: &Path) -> io::Result<OwnedFd> {
    let c = cstr(path.as_os_str().as_bytes())?;
    // SAFETY: `c` is a NUL-terminated string that outlives the call; `open` only
    // reads it.
    let fd = check(unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC | libc::O_NOFOLLOW,
        )
    })?;
    // SAFETY: `open` succeeded, so `fd` is a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

const RESOLVE_NO_MAGICLINKS: u64 = 0x02;
const RESOLVE_BENEATH: u64 = 0x08;

/// Opens `rel` below `dir`, resolving every symlink on the way inside `dir`; a
/// resolution that would leave `dir` (absolute symlinks, `..` above it) fails with
/// `EXDEV`. An empty `rel` opens `dir` itself.
pub fn open_beneath(dir: &impl AsRawFd, rel: &[u8], flags: libc::c_int) -> io::Result<OwnedFd> {
    let rel = if rel.is_empty() { &b"."[..] } else { rel };
    let c = cstr(rel)?;
    let how = OpenHow {
        flags: (flags | libc::O_CLOEXEC) as u64,
        mode: 0,
        resolve: RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS,
    };
    // SAFETY: `c` is a NUL-terminated string and `how` an `OpenHow` laid out as the
    // kernel's `struct open_how` (three u64s, `repr(C)`), passed with its exact
    // size; both outlive the call and the kernel only reads them. `dir` is borrowed
    // for the call, so its descriptor stays open.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir.as_raw_fd(),
            c.as_ptr(),
            &how as *const OpenHow,
            std::mem::size_of::<OpenHow>(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `openat2` succeeded, so `fd` is a new descriptor (it fits a `RawFd`)
    // that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Opens one name in `dir` without following it.
pub fn open_at(
    dir: &impl AsRawFd,
    name: &[u8],
    flags: libc::c_int,
    mode: u32,
) -> io::Result<OwnedFd> {
    let c = cstr(name)?;
    // SAFETY: `c` is a NUL-terminated string that outlives the call, and `dir` is
    // borrowed for it, so its descriptor stays open.
    let fd = check(unsafe {
        libc::openat(
            dir.as_raw_fd(),
            c.as_ptr(),
            flags | libc::O_CLOEXEC | libc::O_NOFOLLOW,
            mode as libc::c_uint,
        )
    })?;
    // SAFETY: `openat` succeeded, so `fd` is a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `lstat` of one name in `dir`; `None` when it does not exist.
pub fn stat_at(dir: &impl AsRawFd, name: &[u8]) -> io::Result<Option<libc::stat>> {
    let c = cstr(name)?;
    // SAFETY: `libc::stat` is a plain C struct of integers, for which all zero bytes
    // are a valid value.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a NUL-terminated string and `st` a writable `stat` that both
    // outlive the call; `dir` is borrowed for it.
    let r = unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            c.as_ptr(),
            &mut st,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ENOENT) {
            return Ok(None);
        }
        return Err(e);
    }
    Ok(Some(st))
}

pub fn fstat(fd: &impl AsRawFd) -> io::Result<libc::stat> {
    // SAFETY: `libc::stat` is a plain C struct of integers, for which all zero bytes
    // are a valid value.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is a writable `stat` that outlives the call; `fd` is borrowed for
    // it.
    check(unsafe { libc::fstat(fd.as_raw_fd(), &mut st) })?;
    Ok(st)
}

pub fn mkdir_at(dir: &impl AsRawFd, name: &[u8], mode: u32) -> io::Result<()> {
    let c = cstr(name)?;
    // SAFETY: `c` is a NUL-terminated string that outlives the call; `dir` is
    // borrowed for it.
    check(unsafe { libc::mkdirat(dir.as_raw_fd(), c.as_ptr(), mode as libc::mode_t) })?;
    Ok(())
}

pub fn mknod_at(dir: &impl AsRawFd, name: &[u8], mode: u32, dev: libc::dev_t) -> io::Result<()> {
    let c = cstr(name)?;
    // SAFETY: `c` is a NUL-terminated string that outlives the call; `dir` is
    // borrowed for it.
    check(unsafe { libc::mknodat(dir.as_raw_fd(), c.as_ptr(), mode as libc::mode_t, dev) })?;
    Ok(())
}

pub fn symlink_at(target: &[u8], dir: &impl AsRawFd, name: &[u8]) -> io::Result<()> {
    let t = cstr(target)?;
    let c = cstr(name)?;
    // SAFETY: `t` and `c` are NUL-terminated strings that outlive the call; `dir` is
    // borrowed for it.
    check(unsafe { libc::symlinkat(t.as_ptr(), dir.as_raw_fd(), c.as_ptr()) })?;
    Ok(())
}

pub fn link_at(
    from_dir: &impl AsRawFd,
    from: &[u8],
    to_dir: &impl AsRawFd,
    to: &[u8],
) -> io::Result<()> {
    let f = cstr(from)?;
    let t = cstr(to)?;
    // SAFETY: `f` and `t` are NUL-terminated strings that outlive the call; both
    // directories are borrowed for it.
    check(unsafe {
        libc::linkat(
            from_dir.as_raw_fd(),
            f.as_ptr(),
            to_dir.as_raw_fd(),
            t.as_ptr(),
            0,
        )
    })?;
    Ok(())
}

pub fn unlink_at(dir: &impl AsRawFd, name: &[u8], is_dir: bool) -> io::Result<()> {
    let c = cstr(name)?;
    let flags = if is_dir { libc::AT_REMOVEDIR } else { 0 };
    // SAFETY: `c` is a NUL-terminated string that outlives the call; `dir` is
    // borrowed for it.
    check(unsafe { libc::unlinkat(dir.as_raw_fd(), c.as_ptr(), flags) })?;
    Ok(())
}

/// A directory [`remove_all_at`] is emptying: its name in the directory it is in,
/// and the children still to remove.
struct Emptying {
    fd: OwnedFd,
    name: Vec<u8>,
    children: Vec<Vec<u8>>,
}

/// Removes one name in `dir`, recursively when it is a directory; never follows
/// symlinks. A loop over a stack of open directories, not recursion: a tree can be
/// thousands of directories deep.
pub fn remove_all_at(dir: &impl AsRawFd, name: &[u8]) -> io::Result<()> {
    // Outermost first; the first is in `dir`, each next one in the one before.
    let mut levels: Vec<Emptying> = Vec::new();
    let innermost =
        |levels: &[Emptying]| levels.last().map_or(dir.as_raw_fd(), |l| l.fd.as_raw_fd());
    let mut next = name.to_vec();
    loop {
        let parent = innermost(&levels);
        match stat_at(&parent, &next)? {
            Some(st) if st.st_mode & libc::S_IFMT == libc::S_IFDIR => {
                let fd = open_at(&parent, &next, libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
                let children = list_dir(&fd)?;
                levels.push(Emptying {
                    fd,
                    name: next,
                    children,
                });
            }
            Some(_) => unlink_at(&parent, &next, false)?,
            None => {}
        }
        // On to the next child of the innermost directory, removing the
        // directories emptied on the way out.
        next = loop {
            let Some(level) = levels.last_mut() else {
                return Ok(());
            };
            if let Some(child) = level.children.pop() {
                break child;
            }
            if let Some(emptied) = levels.pop() {
                drop(emptied.fd);
                unlink_at(&innermost(&levels), &emptied.name, true)?;
            }
        };
    }
}

/// The names in a directory (without `.` and `..`).
pub fn list_dir(dir: &impl AsRawFd) -> io::Result<Vec<Vec<u8>>> {
    let path = format!("/proc/self/fd/{}", dir.as_raw_fd());
    let mut out = Vec::new();
    for e in std::fs::read_dir(path)? {
        out.push(e?.file_name().as_bytes().to_vec());
    }
    Ok(out)
}

pub fn fchown(fd: &impl AsRawFd, uid: u32, gid: u32) -> io::Result<()> {
    // SAFETY: no pointers are passed; `fd` is borrowed for the call.
    check(unsafe { libc::fchown(fd.as_raw_fd(), uid, gid) })?;
    Ok(())
}

pub fn fchmod(fd: &impl AsRawFd, mode: u32) -> io::Result<()> {
    // SAFETY: no pointers are passed; `fd` is borrowed for the call.
    check(unsafe { libc::fchmod(fd.as_raw_fd(), mode as libc::mode_t) })?;
    Ok(())
}

pub fn lchown_at(dir: &impl AsRawFd, name: &[u8], uid: u32, gid: u32) -> io::Result<()> {
    let c = cstr(name)?;
    // SAFETY: `c` is a NUL-terminated string that outlives the call; `dir` is
    // borrowed for it.
    check(unsafe {
        libc::fchownat(
            dir.as_raw_fd(),
            c.as_ptr(),
            uid,
            gid,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })?;
    Ok(())
}

/// chmod of a name known not to be a symlink (a device or fifo just made).
pub fn chmod_at(dir: &impl AsRawFd, name: &[u8], mode: u32) -> io::Result<()> {
    let c = cstr(name)?;
    // SAFETY: `c` is a NUL-terminated string that outlives the call; `dir` is
    // borrowed for it.
    check(unsafe { libc::fchmodat(dir.as_raw_fd(), c.as_ptr(), mode as libc::mode_t, 0) })?;
    Ok(())
}

fn timespec(t: (i64, u32)) -> libc::timespec {
    libc::timespec {
        tv_sec: t.0 as libc::time_t,
        tv_nsec: t.1 as libc::c_long,
    }
}

pub fn futimes(fd: &impl AsRawFd, atime: (i64, u32), mtime: (i64, u32)) -> io::Result<()> {
    let ts = [timespec(atime), timespec(mtime)];
    // SAFETY: `ts` is an array of the two `timespec`s `futimens` reads, alive for
    // the call; `fd` is borrowed for it.
    check(unsafe { libc::futimens(fd.as_raw_fd(), ts.as_ptr()) })?;
    Ok(())
}

pub fn lutimes_at(
    dir: &impl AsRawFd,
    name: &[u8],
    atime: (i64, u32),
    mtime: (i64, u32),
) -> io::Result<()> {
    let c = cstr(name)?;
    let ts = [timespec(atime), timespec(mtime)];
    // SAFETY: `c` is a NUL-terminated string and `ts` the two `timespec`s
    // `utimensat` reads, both alive for the call; `dir` is borrowed for it.
    check(unsafe {
        libc::utimensat(
            dir.as_raw_fd(),
            c.as_ptr(),
            ts.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })?;
    Ok(())
}

pub fn fsetxattr(fd: &impl AsRawFd, name: &str, value: &[u8]) -> io::Result<()> {
    let n = cstr(name.as_bytes())?;
    // SAFETY: `n` is a NUL-terminated string and `value` a slice whose pointer and
    // length are passed together; both outlive the call, which only reads them.
    // `fd` is borrowed for it.
    check(unsafe {
        libc::fsetxattr(
            fd.as_raw_fd(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    })?;
    Ok(())
}

/// A path for one name in `dir`: `/proc/self/fd/N/name`. Resolving it enters
/// `dir` itself (wherever it is now) and then looks up `name` alone, so only that
/// last name is for the caller to not follow.
pub fn fd_path(dir: &impl AsRawFd, name: &[u8]) -> PathBuf {
    let mut p = format!("/proc/self/fd/{}/", dir.as_raw_fd()).into_bytes();
    p.extend_from_slice(name);
    PathBuf::from(OsString::from_vec(p))
}

/// Sets an extended attribute on one name in `dir` without following it.
pub fn lsetxattr_at(dir: &impl AsRawFd, name: &[u8], attr: &str, value: &[u8]) -> io::Result<()> {
    let p = cstr(fd_path(dir, name).as_os_str().as_bytes())?;
    let n = cstr(attr.as_bytes())?;
    // SAFETY: `p` and `n` are NUL-terminated strings and `value` a slice whose
    // pointer and length are passed together; all outlive the call, which only reads
    // them. `dir` is borrowed for it, so the `/proc/self/fd` path names it.
    check(unsafe {
        libc::lsetxattr(
            p.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    })?;
    Ok(())
}

/// The extended attributes of a path (not following a final symlink).
pub fn lxattrs(path: &Path) -> io::Result<Vec<(String, Vec<u8>)>> {
    let p = cstr(path.as_os_str().as_bytes())?;
    let mut names = vec![0u8; 1024];
    let n = loop {
        // SAFETY: `p` is a NUL-terminated string and `names` a buffer whose pointer
        // and length are passed together; the kernel writes at most `names.len()`
        // bytes.
        let r = unsafe { libc::llistxattr(p.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
        if r < 0 {
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::ERANGE) => {
                    names.resize(names.len() * 4, 0);
                    continue;
                }
                Some(libc::ENOTSUP) => return Ok(Vec::new()),
                _ => return Err(e),
            }
        }
        break r as usize;
    };
    let mut out = Vec::new();
    for name in names[..n].split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let cn = cstr(name)?;
        let mut val = vec![0u8; 256];
        let len = loop {
            // SAFETY: `p` and `cn` are NUL-terminated strings and `val` a buffer
            // whose pointer and length are passed together; the kernel writes at
            // most `val.len()` bytes.
            let r = unsafe {
                libc::lgetxattr(p.as_ptr(), cn.as_ptr(), val.as_mut_ptr().cast(), val.len())
            };
            if r < 0 {
                let e = io::Error::last_os_error();
                if e.raw_os_error() == Some(libc::ERANGE) {
                    val.resize(val.len() * 4, 0);
                    continue;
                }
                return Err(e);
            }
            break r as usize;
        };
        val.truncate(len);
        out.push((String::from_utf8_lossy(name).into_owned(), val));
    }
    out.sort();
    Ok(out)
}
