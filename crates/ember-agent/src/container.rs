//! What runs inside the cloned container processes (single-threaded, in the spawn
//! helper's copy of the address space): namespaces, rootfs and mounts, pivot_root,
//! process attributes and `execve`.

use std::ffi::CString;
use std::io;
use std::os::fd::RawFd;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::sched::{setns, CloneFlags};
use nix::sys::signal::{sigprocmask, SigSet, SigmaskHow};
use nix::sys::stat::{Mode, SFlag};
use nix::unistd::{AccessFlags, Gid, Uid};
use oci_spec::runtime::{LinuxNamespaceType, Mount, Process, Spec};

use crate::spawn::{report, Plan};
use crate::sys::{self, check, cpath, cstr};

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

fn err(msg: impl std::fmt::Display, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{msg}: {e}"))
}

/// Namespace clone flags for a container init; joins namespaces given by path
/// (network, ...) right here in the helper. Unsupported ones are reported and skipped.
pub fn prepare_init_namespaces(spec: &Spec, report_fd: RawFd) -> io::Result<libc::c_int> {
    let mut flags =
        libc::CLONE_NEWNS | libc::CLONE_NEWPID | libc::CLONE_NEWUTS | libc::CLONE_NEWIPC;
    let namespaces = spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().clone())
        .unwrap_or_default();
    for ns in namespaces {
        let flag = match ns.typ() {
            LinuxNamespaceType::Mount => libc::CLONE_NEWNS,
            LinuxNamespaceType::Pid => libc::CLONE_NEWPID,
            LinuxNamespaceType::Uts => libc::CLONE_NEWUTS,
            LinuxNamespaceType::Ipc => libc::CLONE_NEWIPC,
            LinuxNamespaceType::Cgroup => libc::CLONE_NEWCGROUP,
            LinuxNamespaceType::Network => libc::CLONE_NEWNET,
            LinuxNamespaceType::User => {
                report(
                    report_fd,
                    "log",
                    "user namespaces are not supported; ignored",
                );
                continue;
            }
            LinuxNamespaceType::Time => {
                report(
                    report_fd,
                    "log",
                    "time namespaces are not supported; ignored",
                );
                continue;
            }
        };
        match ns.path() {
            None => flags |= flag,
            Some(path) => {
                // Join the given namespace instead of creating one.
                flags &= !flag;
                let res = std::fs::File::open(path)
                    .and_then(|f| Ok(setns(&f, CloneFlags::from_bits_retain(flag))?));
                if let Err(e) = res {
                    report(
                        report_fd,
                        "log",
                        &format!("joining namespace {}: {e}; ignored", path.display()),
                    );
                    if flag != libc::CLONE_NEWNET {
                        flags |= flag;
                    }
                }
            }
        }
    }
    Ok(flags)
}

/// Joins the namespaces of a running container init (for exec processes).
pub fn join_namespaces(init_pid: i32) -> io::Result<()> {
    let mut fds = Vec::new();
    // The mount namespace last: after it, /proc/<pid> paths may no longer resolve.
    for (name, flag) in [
        ("cgroup", libc::CLONE_NEWCGROUP),
        ("ipc", libc::CLONE_NEWIPC),
        ("uts", libc::CLONE_NEWUTS),
        ("net", libc::CLONE_NEWNET),
        ("pid", libc::CLONE_NEWPID),
        ("mnt", libc::CLONE_NEWNS),
    ] {
        let theirs = format!("/proc/{init_pid}/ns/{name}");
        let ours = format!("/proc/self/ns/{name}");
        let (Ok(a), Ok(b)) = (std::fs::metadata(&theirs), std::fs::metadata(&ours)) else {
            if name == "mnt" || name == "pid" {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("container init {init_pid} is gone"),
                ));
            }
            continue;
        };
        use std::os::unix::fs::MetadataExt;
        if a.ino() == b.ino() && a.dev() == b.dev() {
            continue;
        }
        let f = std::fs::File::open(&theirs).map_err(|e| err(&theirs, e))?;
        fds.push((f, flag, theirs));
    }
    for (f, flag, name) in &fds {
        setns(f, CloneFlags::from_bits_retain(*flag))
            .map_err(|e| err(format!("setns {name}"), e.into()))?;
    }
    Ok(())
}

fn fail(report_fd: RawFd, e: io::Error, code: i32) -> ! {
    report(report_fd, "error", &e.to_string());
    sys::exit_now(code)
}

/// Body of the cloned container init. Never returns.
pub fn init_child(plan: &Plan, report_fd: RawFd, start_fd: RawFd, console_fd: RawFd) -> ! {
    let Plan::Init {
        spec,
        rootfs,
        terminal,
        ..
    } = plan
    else {
        sys::exit_now(1)
    };
    reset_signals();
    if let Err(e) = setup_init(spec, rootfs, *terminal, report_fd, console_fd) {
        fail(report_fd, e, 1);
    }
    // As runc does: a process that cannot be found fails the create, not the start.
    if let Err(e) = find_executable(&spec.process().clone().unwrap_or_default()) {
        fail(report_fd, e, 127);
    }
    report(report_fd, "ready", "");
    // Wait for StartProcess. Only this process takes the start pipe's read end.
    let Some(start) = sys::take_inherited_fd(start_fd) else {
        sys::exit_now(1)
    };
    let mut b = [0u8; 1];
    loop {
        match nix::unistd::read(&start, &mut b) {
            Ok(1) => break,
            Err(Errno::EINTR) => continue,
            // The agent dropped the start pipe: the container was removed before start.
            _ => sys::exit_now(1),
        }
    }
    drop(start);
    let process = spec.process().clone().unwrap_or_default();
    let e = exec_process(&process);
    fail(report_fd, e, 127)
}

/// Body of a cloned exec process (already in the container's namespaces).
pub fn exec_child(plan: &Plan, report_fd: RawFd, console_fd: RawFd) -> ! {
    let Plan::Exec {
        process,
        terminal,
        winsize,
        ..
    } = plan
    else {
        sys::exit_now(1)
    };
    reset_signals();
    if *terminal {
        container_pty(console_fd, *winsize);
    }
    if let Err(e) = session(*terminal) {
        fail(report_fd, e, 1);
    }
    let e = exec_process(process);
    fail(report_fd, e, 127)
}

fn reset_signals() {
    // Raw signal(), not nix's: its `Signal` cannot name the real-time signals.
    for sig in 1..libc::SIGRTMAX() {
        if sig != libc::SIGKILL && sig != libc::SIGSTOP {
            // SAFETY: SIG_DFL installs no handler of ours, so no Rust code can run in
            // signal context; signal() only changes the disposition (a number that
            // cannot be changed, e.g. reserved by libc, just fails with EINVAL).
            unsafe { libc::signal(sig, libc::SIG_DFL) };
        }
    }
    let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
}

fn session(terminal: bool) -> io::Result<()> {
    let _ = nix::unistd::setsid();
    if terminal {
        // SAFETY: TIOCSCTTY takes an integer argument (0: do not steal), no pointer;
        // fd 0 is the process's stdin (a bad fd gives an error).
        check(unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) }).map_err(|e| err("TIOCSCTTY", e))?;
    }
    Ok(())
}

/// Opens the process's terminal in the container's devpts (where `/dev/ptmx` leads
/// now), makes it fds 0-2 and sends the master to the agent over `console_fd`.
/// Without a devpts there, keeps the agent's fallback pty (already fds 0-2).
/// Returns the pty number when it opened one.
fn container_pty(console_fd: RawFd, winsize: Option<(u32, u32)>) -> Option<u32> {
    use std::os::fd::AsRawFd;
    // Only this process takes the console socket (once).
    let console = sys::take_inherited_fd(console_fd)?;
    let res = crate::stdio::open_pty_here().and_then(|(master, slave)| {
        let n = crate::stdio::pty_number(master.as_raw_fd())?;
        if let Some((w, h)) = winsize {
            crate::stdio::resize_pty(master.as_raw_fd(), w, h)?;
        }
        for t in 0..3 {
            sys::dup_onto_stdio(slave.as_raw_fd(), t)?;
        }
        drop(slave);
        crate::stdio::send_fd(console.as_raw_fd(), Some(master.as_raw_fd()))?;
        Ok(n)
    });
    let n = match res {
        Ok(n) => Some(n),
        Err(_) => {
            let _ = crate::stdio::send_fd(console.as_raw_fd(), None);
            None
        }
    };
    drop(console);
    n
}

fn setup_init(
    spec: &Spec,
    rootfs: &Path,
    terminal: bool,
    report_fd: RawFd,
    console_fd: RawFd,
) -> io::Result<()> {
    // Nothing we mount may propagate back to the agent's namespace.
    sys::mount(
        None,
        Path::new("/"),
        None,
        libc::MS_REC | libc::MS_PRIVATE,
        None,
    )
    .map_err(|e| err("making / private", e))?;
    // pivot_root needs the new root to be a mount point.
    let root_str = rootfs.to_str().unwrap_or("");
    sys::mount(
        Some(root_str),
        rootfs,
        None,
        libc::MS_BIND | libc::MS_REC,
        None,
    )
    .map_err(|e| err(format!("bind-mounting rootfs {}", rootfs.display()), e))?;

    let mounts = spec.mounts().clone().unwrap_or_default();
    let mut dev_is_tmpfs = false;
    for m in &mounts {
        if m.destination() == Path::new("/dev") && m.typ().as_deref() == Some("tmpfs") {
            dev_is_tmpfs = true;
        }
        do_mount(rootfs, m, report_fd)?;
    }
    if dev_is_tmpfs {
        create_default_devices(rootfs)?;
    }
    let linux = spec.linux().clone().unwrap_or_default();
    for d in linux.devices().clone().unwrap_or_default() {
        create_device(rootfs, &d)?;
    }

    pivot_root(rootfs)?;

    if let Some(sysctl) = linux.sysctl() {
        for (k, v) in sysctl {
            let p = PathBuf::from("/proc/sys").join(k.replace('.', "/"));
            std::fs::write(&p, v).map_err(|e| err(format!("sysctl {k}"), e))?;
        }
    }
    for p in linux.readonly_paths().clone().unwrap_or_default() {
        let p = Path::new(&p);
        if p.exists() {
            let ctx = |e| err(format!("read-only path {}", p.display()), e);
            sys::mount(p.to_str(), p, None, libc::MS_BIND | libc::MS_REC, None).map_err(ctx)?;
            sys::mount(
                None,
                p,
                None,
                libc::MS_BIND
                    | libc::MS_REMOUNT
                    | libc::MS_RDONLY
                    | libc::MS_REC
                    | libc::MS_NOSUID
                    | libc::MS_NODEV
                    | libc::MS_NOEXEC,
                None,
            )
            .map_err(ctx)?;
        }
    }
    for p in linux.masked_paths().clone().unwrap_or_default() {
        let p = Path::new(&p);
        let ctx = |e| err(format!("masked path {}", p.display()), e);
        match std::fs::metadata(p) {
            Ok(md) if md.is_dir() => {
                sys::mount(Some("tmpfs"), p, Some("tmpfs"), libc::MS_RDONLY, None).map_err(ctx)?
            }
            Ok(_) => sys::mount(Some("/dev/null"), p, None, libc::MS_BIND, None).map_err(ctx)?,
            Err(_) => {}
        }
    }
    if spec
        .root()
        .as_ref()
        .and_then(|r| r.readonly())
        .unwrap_or(false)
    {
        sys::mount(
            None,
            Path::new("/"),
            None,
            libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY,
            None,
        )
        .map_err(|e| err("remounting / read-only", e))?;
    }
    if let Some(h) = spec.hostname().as_deref().filter(|h| !h.is_empty()) {
        nix::unistd::sethostname(h).map_err(|e| err("sethostname", e.into()))?;
    }
    if let Some(d) = spec.domainname().as_deref().filter(|h| !h.is_empty()) {
        // SAFETY: the pointer and length describe the live bytes of `d`, which
        // setdomainname only reads (no NUL terminator needed with a length).
        check(unsafe { libc::setdomainname(d.as_ptr() as *const libc::c_char, d.len()) })
            .map_err(|e| err("setdomainname", e))?;
    }
    if terminal {
        let n = container_pty(console_fd, None);
        if dev_is_tmpfs {
            // /dev/console is the container's terminal.
            let console = Path::new("/dev/console");
            let target = match n {
                Some(n) => format!("/dev/pts/{n}"),
                None => "/proc/self/fd/0".to_string(),
            };
            if std::fs::File::create(console).is_ok() {
                let _ = sys::mount(Some(&target), console, None, libc::MS_BIND, None);
            }
        }
    }
    session(terminal)?;
    Ok(())
}

fn pivot_root(rootfs: &Path) -> io::Result<()> {
    std::env::set_current_dir(rootfs).map_err(|e| err("chdir rootfs", e))?;
    nix::unistd::pivot_root(".", ".").map_err(|e| err("pivot_root", e.into()))?;
    // The old root is stacked under the new one at "."; detach it.
    sys::umount(Path::new("."), libc::MNT_DETACH).map_err(|e| err("umount old root", e))?;
    std::env::set_current_dir("/")?;
    Ok(())
}

/// Joins `path` to `root` resolving symlinks as if `root` were `/`, so that
/// nothing in the container's rootfs can point a mount outside of it.
pub fn secure_join(root: &Path, path: &Path) -> io::Result<PathBuf> {
    let mut todo: Vec<std::ffi::OsString> = path
        .components()
        .rev()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(s.to_os_string()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect();
    let mut resolved: Vec<std::ffi::OsString> = Vec::new();
    let mut links = 0;
    while let Some(c) = todo.pop() {
        if c == ".." {
            resolved.pop();
            continue;
        }
        let mut cand = root.to_path_buf();
        cand.extend(&resolved);
        cand.push(&c);
        match std::fs::symlink_metadata(&cand) {
            Ok(md) if md.file_type().is_symlink() => {
                links += 1;
                if links > 255 {
                    return Err(io::Error::other(format!(
                        "too many symlinks resolving {}",
                        path.display()
                    )));
                }
                let target = std::fs::read_link(&cand)?;
                if target.is_absolute() {
                    resolved.clear();
                }
                for tc in target.components().rev() {
                    match tc {
                        Component::Normal(s) => todo.push(s.to_os_string()),
                        Component::ParentDir => todo.push("..".into()),
                        _ => {}
                    }
                }
            }
            _ => resolved.push(c),
        }
    }
    let mut out = root.to_path_buf();
    out.extend(&resolved);
    Ok(out)
}

/// Parsed mount options: (flags, propagation flags, fs data, bind, recursive bind).
pub fn parse_mount_options(opts: &[String]) -> (libc::c_ulong, Vec<libc::c_ulong>, String, bool) {
    let mut flags: libc::c_ulong = 0;
    let mut prop = Vec::new();
    let mut data: Vec<&str> = Vec::new();
    let mut bind = false;
    for o in opts {
        let (set, clear): (libc::c_ulong, libc::c_ulong) = match o.as_str() {
            "ro" => (libc::MS_RDONLY, 0),
            "rw" => (0, libc::MS_RDONLY),
            "nosuid" => (libc::MS_NOSUID, 0),
            "suid" => (0, libc::MS_NOSUID),
            "nodev" => (libc::MS_NODEV, 0),
            "dev" => (0, libc::MS_NODEV),
            "noexec" => (libc::MS_NOEXEC, 0),
            "exec" => (0, libc::MS_NOEXEC),
            "sync" => (libc::MS_SYNCHRONOUS, 0),
            "async" => (0, libc::MS_SYNCHRONOUS),
            "dirsync" => (libc::MS_DIRSYNC, 0),
            "noatime" => (libc::MS_NOATIME, 0),
            "atime" => (0, libc::MS_NOATIME),
            "nodiratime" => (libc::MS_NODIRATIME, 0),
            "diratime" => (0, libc::MS_NODIRATIME),
            "relatime" => (libc::MS_RELATIME, 0),
            "norelatime" => (0, libc::MS_RELATIME),
            "strictatime" => (libc::MS_STRICTATIME, 0),
            "nostrictatime" => (0, libc::MS_STRICTATIME),
            "nosymfollow" => (256, 0),
            "bind" => {
                bind = true;
                (libc::MS_BIND, 0)
            }
            "rbind" => {
                bind = true;
                (libc::MS_BIND | libc::MS_REC, 0)
            }
            "private" | "rprivate" | "shared" | "rshared" | "slave" | "rslave" | "unbindable"
            | "runbindable" => {
                let rec = if o.starts_with('r') { libc::MS_REC } else { 0 };
                let p = match o.trim_start_matches('r') {
                    "private" => libc::MS_PRIVATE,
                    "shared" => libc::MS_SHARED,
                    "slave" => libc::MS_SLAVE,
                    _ => libc::MS_UNBINDABLE,
                };
                prop.push(p | rec);
                (0, 0)
            }
            // Options of other tools that mean nothing to the kernel.
            "tmpcopyup" | "mand" | "nomand" | "defaults" => (0, 0),
            other => {
                data.push(other);
                (0, 0)
            }
        };
        flags = (flags | set) & !clear;
    }
    (flags, prop, data.join(","), bind)
}

fn do_mount(rootfs: &Path, m: &Mount, report_fd: RawFd) -> io::Result<()> {
    let dest = secure_join(rootfs, m.destination())?;
    let typ = m.typ().as_deref().unwrap_or("");
    let opts = m.options().clone().unwrap_or_default();
    let (flags, prop, data, bind) = parse_mount_options(&opts);
    let ctx = |e: io::Error| err(format!("mount {}", m.destination().display()), e);
    if bind || typ == "bind" {
        let src = m.source().clone().ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, "bind mount without source")
        })?;
        let md = std::fs::metadata(&src)
            .map_err(|e| err(format!("bind source {}", src.display()), e))?;
        if md.is_dir() {
            std::fs::create_dir_all(&dest).map_err(ctx)?;
        } else {
            if let Some(p) = dest.parent() {
                std::fs::create_dir_all(p).map_err(ctx)?;
            }
            if !dest.exists() {
                std::fs::File::create(&dest).map_err(ctx)?;
            }
        }
        let base = libc::MS_BIND | (flags & libc::MS_REC);
        sys::mount(src.to_str(), &dest, None, base, None).map_err(ctx)?;
        let extra = flags & !(libc::MS_BIND | libc::MS_REC);
        if extra != 0 {
            sys::mount(None, &dest, None, base | libc::MS_REMOUNT | extra, None).map_err(ctx)?;
        }
    } else {
        std::fs::create_dir_all(&dest).map_err(ctx)?;
        let fstype = if typ == "cgroup" { "cgroup2" } else { typ };
        let src = m
            .source()
            .as_ref()
            .and_then(|s| s.to_str())
            .unwrap_or(fstype)
            .to_string();
        let res = sys::mount(Some(&src), &dest, Some(fstype), flags, Some(&data));
        if let Err(e) = res {
            if fstype == "cgroup2" || fstype == "mqueue" {
                // Not essential: report and go on.
                report(
                    report_fd,
                    "log",
                    &format!("mount {}: {e}; skipped", m.destination().display()),
                );
            } else {
                return Err(ctx(e));
            }
        }
    }
    for p in prop {
        sys::mount(None, &dest, None, p, None).map_err(ctx)?;
    }
    Ok(())
}

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

fn create_default_devices(rootfs: &Path) -> io::Result<()> {
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

fn create_device(rootfs: &Path, d: &oci_spec::runtime::LinuxDevice) -> io::Result<()> {
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

fn rlimit_resource(name: &str) -> Option<libc::__rlimit_resource_t> {
    Some(match name {
        "RLIMIT_CPU" => libc::RLIMIT_CPU,
        "RLIMIT_FSIZE" => libc::RLIMIT_FSIZE,
        "RLIMIT_DATA" => libc::RLIMIT_DATA,
        "RLIMIT_STACK" => libc::RLIMIT_STACK,
        "RLIMIT_CORE" => libc::RLIMIT_CORE,
        "RLIMIT_RSS" => libc::RLIMIT_RSS,
        "RLIMIT_NPROC" => libc::RLIMIT_NPROC,
        "RLIMIT_NOFILE" => libc::RLIMIT_NOFILE,
        "RLIMIT_MEMLOCK" => libc::RLIMIT_MEMLOCK,
        "RLIMIT_AS" => libc::RLIMIT_AS,
        "RLIMIT_LOCKS" => libc::RLIMIT_LOCKS,
        "RLIMIT_SIGPENDING" => libc::RLIMIT_SIGPENDING,
        "RLIMIT_MSGQUEUE" => libc::RLIMIT_MSGQUEUE,
        "RLIMIT_NICE" => libc::RLIMIT_NICE,
        "RLIMIT_RTPRIO" => libc::RLIMIT_RTPRIO,
        "RLIMIT_RTTIME" => libc::RLIMIT_RTTIME,
        _ => return None,
    })
}

/// Capability names in kernel bit order.
const CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// A capability set from OCI names, as a 64-bit mask.
pub fn cap_mask<T: serde::Serialize>(set: Option<&T>) -> u64 {
    let Some(set) = set else { return 0 };
    let names: Vec<String> = serde_json::to_value(set)
        .ok()
        .and_then(|v| serde_json::from_value(v).ok())
        .unwrap_or_default();
    names
        .iter()
        .filter_map(|n| CAPS.iter().position(|c| c == n))
        .fold(0u64, |m, i| m | (1u64 << i))
}

fn last_cap() -> usize {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(CAPS.len() - 1)
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}
#[repr(C)]
#[derive(Default, Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

fn drop_bounding(caps: &oci_spec::runtime::LinuxCapabilities) {
    let bounding = cap_mask(caps.bounding().as_ref());
    for c in 0..=last_cap().min(63) {
        if bounding & (1 << c) == 0 {
            // SAFETY: PR_CAPBSET_DROP takes integer arguments only (no pointers);
            // a capability the kernel does not know gives EINVAL.
            unsafe { libc::prctl(libc::PR_CAPBSET_DROP, c as libc::c_ulong, 0, 0, 0) };
        }
    }
}

fn apply_caps(caps: &oci_spec::runtime::LinuxCapabilities) -> io::Result<()> {
    let effective = cap_mask(caps.effective().as_ref());
    let permitted = cap_mask(caps.permitted().as_ref());
    let inheritable = cap_mask(caps.inheritable().as_ref());
    let ambient = cap_mask(caps.ambient().as_ref());
    let mut hdr = CapHeader {
        version: 0x2008_0522, // _LINUX_CAPABILITY_VERSION_3
        pid: 0,
    };
    let data = [
        CapData {
            effective: effective as u32,
            permitted: permitted as u32,
            inheritable: inheritable as u32,
        },
        CapData {
            effective: (effective >> 32) as u32,
            permitted: (permitted >> 32) as u32,
            inheritable: (inheritable >> 32) as u32,
        },
    ];
    // SAFETY: capset reads a `struct __user_cap_header_struct` and, for version 3,
    // two `struct __user_cap_data_struct`s: `hdr` and `data` are live #[repr(C)]
    // copies of exactly those layouts (u32+i32; three u32 each), and capset may
    // write back only the header's version, which `hdr` allows (mutable).
    if unsafe { libc::syscall(libc::SYS_capset, &mut hdr as *mut CapHeader, data.as_ptr()) } < 0 {
        return Err(err("capset", io::Error::last_os_error()));
    }
    for c in 0..64 {
        if ambient & (1 << c) != 0 {
            // SAFETY: PR_CAP_AMBIENT_RAISE takes integer arguments only (no
            // pointers); a capability not in the permitted set gives EPERM.
            unsafe {
                libc::prctl(
                    libc::PR_CAP_AMBIENT,
                    libc::PR_CAP_AMBIENT_RAISE as libc::c_ulong,
                    c as libc::c_ulong,
                    0,
                    0,
                )
            };
        }
    }
    Ok(())
}

/// Looks `name` up in `PATH` (as `execvp` would, with the container's PATH).
pub fn resolve_executable(
    name: &str,
    path_var: &str,
    is_exec: impl Fn(&Path) -> bool,
) -> Option<PathBuf> {
    if name.contains('/') {
        return Some(PathBuf::from(name));
    }
    path_var
        .split(':')
        .map(|d| if d.is_empty() { "." } else { d })
        .map(|d| Path::new(d).join(name))
        .find(|p| is_exec(p))
}

fn is_executable(p: &Path) -> bool {
    std::fs::metadata(p).map(|m| m.is_file()).unwrap_or(false)
        && nix::unistd::access(p, AccessFlags::X_OK).is_ok()
}

/// Applies the OCI process attributes and execs. Returns only on failure.
/// The executable of a process: its first argument looked up in its own `PATH`.
fn find_executable(p: &Process) -> io::Result<PathBuf> {
    let args = p.args().clone().unwrap_or_default();
    let Some(name) = args.first() else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "process.args is empty",
        ));
    };
    let env = p.env().clone().unwrap_or_default();
    let path_var = env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or(DEFAULT_PATH);
    if name.starts_with('/') && !Path::new(name).exists() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("exec {name:?}: no such file or directory"),
        ));
    }
    resolve_executable(name, path_var, is_executable).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("exec {name:?}: executable file not found in $PATH"),
        )
    })
}

fn exec_process(p: &Process) -> io::Error {
    match exec_process_inner(p) {
        Ok(never) => match never {},
        Err(e) => e,
    }
}

fn exec_process_inner(p: &Process) -> io::Result<std::convert::Infallible> {
    let args = p.args().clone().unwrap_or_default();
    if args.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "process.args is empty",
        ));
    }
    for rl in p.rlimits().clone().unwrap_or_default() {
        let name = serde_json::to_value(rl.typ())
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        let Some(res) = rlimit_resource(&name) else {
            continue;
        };
        let lim = libc::rlimit {
            rlim_cur: rl.soft(),
            rlim_max: rl.hard(),
        };
        // SAFETY: setrlimit only reads `lim`, a live rlimit.
        check(unsafe { libc::setrlimit(res, &lim) })
            .map_err(|e| err(format!("setrlimit {name}"), e))?;
    }
    if let Some(adj) = p.oom_score_adj() {
        let _ = std::fs::write("/proc/self/oom_score_adj", adj.to_string());
    }
    let user = p.user();
    let cwd = p.cwd().clone();
    // chdir as root first (the user may not be able to reach it), again after setuid.
    let _ = std::env::set_current_dir(&cwd);
    if let Some(caps) = p.capabilities() {
        // Keep the permitted set across setuid; capset below trims it.
        let _ = nix::sys::prctl::set_keepcaps(true);
        drop_bounding(caps);
    }
    let gids: Vec<Gid> = user
        .additional_gids()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(Gid::from_raw)
        .collect();
    nix::unistd::setgroups(&gids).map_err(|e| err("setgroups", e.into()))?;
    let (gid, uid) = (Gid::from_raw(user.gid()), Uid::from_raw(user.uid()));
    nix::unistd::setresgid(gid, gid, gid).map_err(|e| err("setgid", e.into()))?;
    nix::unistd::setresuid(uid, uid, uid).map_err(|e| err("setuid", e.into()))?;
    if let Some(caps) = p.capabilities() {
        apply_caps(caps)?;
    }
    if let Some(mask) = user.umask() {
        nix::sys::stat::umask(Mode::from_bits_truncate(mask as libc::mode_t));
    }
    if !cwd.as_os_str().is_empty() {
        std::env::set_current_dir(&cwd).map_err(|e| err(format!("chdir {}", cwd.display()), e))?;
    }
    if p.no_new_privileges().unwrap_or(false) {
        nix::sys::prctl::set_no_new_privs().map_err(|e| err("no_new_privs", e.into()))?;
    }
    let env = p.env().clone().unwrap_or_default();
    let exe = find_executable(p)?;
    let c_exe = cpath(&exe)?;
    let c_args: Vec<CString> = args.iter().map(|a| cstr(a)).collect::<io::Result<_>>()?;
    let c_env: Vec<CString> = env.iter().map(|a| cstr(a)).collect::<io::Result<_>>()?;
    let Err(e) = nix::unistd::execve(&c_exe, &c_args, &c_env);
    Err(err(format!("exec {}", exe.display()), e.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options() {
        let o: Vec<String> = ["nosuid", "noexec", "nodev", "mode=755", "size=65536k"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let (f, p, d, b) = parse_mount_options(&o);
        assert_eq!(f, libc::MS_NOSUID | libc::MS_NOEXEC | libc::MS_NODEV);
        assert!(p.is_empty());
        assert_eq!(d, "mode=755,size=65536k");
        assert!(!b);
        let o: Vec<String> = ["rbind", "ro", "rprivate"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let (f, p, _, b) = parse_mount_options(&o);
        assert!(b);
        assert_eq!(f, libc::MS_BIND | libc::MS_REC | libc::MS_RDONLY);
        assert_eq!(p, vec![libc::MS_PRIVATE | libc::MS_REC]);
    }

    #[test]
    fn join_stays_inside() {
        let dir = std::env::temp_dir().join(format!("ember-sj-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("a")).unwrap();
        let _ = std::fs::remove_file(dir.join("a/escape"));
        symlink("/../../etc", dir.join("a/escape")).unwrap();
        let _ = std::fs::remove_file(dir.join("rel"));
        symlink("a/../a", dir.join("rel")).unwrap();
        assert_eq!(
            secure_join(&dir, Path::new("/../../x")).unwrap(),
            dir.join("x")
        );
        assert_eq!(
            secure_join(&dir, Path::new("/a/escape/passwd")).unwrap(),
            dir.join("etc/passwd")
        );
        assert_eq!(
            secure_join(&dir, Path::new("rel/f")).unwrap(),
            dir.join("a/f")
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn path_lookup() {
        let found = resolve_executable("sh", "/nope:/bin", |p| p == Path::new("/bin/sh"));
        assert_eq!(found, Some(PathBuf::from("/bin/sh")));
        assert_eq!(resolve_executable("sh", "/nope", |_| false), None);
        assert_eq!(
            resolve_executable("./x", "/bin", |_| false),
            Some(PathBuf::from("./x"))
        );
    }

    #[test]
    fn caps() {
        let set: Vec<&str> = vec!["CAP_CHOWN", "CAP_KILL", "CAP_BOGUS"];
        assert_eq!(cap_mask(Some(&set)), 1 | (1 << 5));
    }
}
