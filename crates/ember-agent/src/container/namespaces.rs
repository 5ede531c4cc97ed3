//! Namespaces of a container init (created or joined by path) and of exec processes (joined).

use std::io;
use std::os::fd::RawFd;

use nix::sched::{setns, CloneFlags};
use oci_spec::runtime::{LinuxNamespaceType, Spec};

use super::err;
use crate::spawn::report;

/// Namespace clone flags for a container init; joins namespaces given by path right
/// here in the helper. Unsupported ones are reported and skipped; the network
/// namespace is always the agent's (the guest's), shared by every container.
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
            // Every container of a VM shares the guest's network (a pod's network):
            // neither a new namespace nor a path (the host's, meaningless here).
            LinuxNamespaceType::Network => continue,
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
                    flags |= flag;
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
