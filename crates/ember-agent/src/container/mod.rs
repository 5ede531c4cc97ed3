//! What runs inside the cloned container processes (single-threaded, in the spawn
//! helper's copy of the address space): namespaces, rootfs and mounts, pivot_root,
//! process attributes and `execve`.

mod caps;
pub mod device_cgroup;
mod devices;
mod exec;
mod mounts;
mod namespaces;
pub mod policy;
pub mod rlimits;
mod rootfs;
pub mod seccomp;
pub mod sysctl;

use std::io;
use std::os::fd::RawFd;

use nix::errno::Errno;
use nix::sys::signal::{sigprocmask, SigSet, SigmaskHow};

use crate::spawn::{report, Plan};
use crate::sys::{self, check};

use exec::{exec_process, find_executable};
pub use mounts::parse_mount_options;
pub use namespaces::{join_namespaces, prepare_init_namespaces};
pub use rootfs::secure_join;
use rootfs::setup_init;

fn err(msg: impl std::fmt::Display, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{msg}: {e}"))
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
        metadata_dir,
        name_files,

        seccomp,
        ..
    } = plan
    else {
        sys::exit_now(1)
    };
    reset_signals();
    if let Err(e) = setup_init(
        spec,
        rootfs,
        metadata_dir.as_deref(),
        name_files,
        *terminal,
        report_fd,
        console_fd,
    ) {
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
    let e = exec_process(&process, seccomp.as_ref());
    fail(report_fd, e, 127)
}

/// Body of a cloned exec process (already in the container's namespaces).
pub fn exec_child(plan: &Plan, report_fd: RawFd, console_fd: RawFd) -> ! {
    let Plan::Exec {
        process,
        terminal,
        winsize,
        seccomp,
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
    let e = exec_process(process, seccomp.as_ref());
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
