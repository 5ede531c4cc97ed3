//! How the helper clones a container process into its cgroup: straight into it
//! with `clone3(CLONE_INTO_CGROUP)` (Linux 5.7+), so that no process is moved
//! between cgroups (a migration takes the cgroup threadgroup lock for writing, the
//! slowest step of a start in an emulated guest); or by the helper joining the
//! cgroup first, as before, where that cannot be used: a new cgroup namespace is
//! rooted at its creator's cgroup, so the helper must already be in the
//! container's, and kernels without `clone3`.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxNamespaceType, Spec};

/// `CLONE_INTO_CGROUP` (include/uapi/linux/sched.h).
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// `struct clone_args` up to `cgroup` (CLONE_ARGS_SIZE_VER2, 88 bytes).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// Whether the init of `spec` gets a cgroup namespace of its own.
pub fn new_cgroup_namespace(spec: &Spec) -> bool {
    spec.linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_ref())
        .is_some_and(|v| {
            v.iter()
                .any(|n| n.typ() == LinuxNamespaceType::Cgroup && n.path().is_none())
        })
}

/// Where the cloned process goes.
pub enum Target {
    /// The helper's own cgroup (no cgroup, or the helper joined it).
    Here,
    /// This cgroup directory, entered by the clone itself.
    Into(PathBuf, OwnedFd),
}

impl Target {
    /// Opens `cgroup` for a clone into it; joins it right away instead when the
    /// clone makes a cgroup namespace.
    pub fn open(cgroup: Option<&Path>, new_cgroupns: bool) -> io::Result<Target> {
        let Some(cg) = cgroup else {
            return Ok(Target::Here);
        };
        if new_cgroupns {
            join(cg)?;
            return Ok(Target::Here);
        }
        let dir = std::fs::File::open(cg).map_err(|e| {
            io::Error::new(e.kind(), format!("opening cgroup {}: {e}", cg.display()))
        })?;
        Ok(Target::Into(cg.to_path_buf(), dir.into()))
    }

    /// `clone()` like fork (no new stack: the child gets a copy of ours), with the
    /// agent as the parent of the new process, in the target cgroup. Returns 0 in
    /// the child.
    pub fn clone_parent(&self, ns_flags: libc::c_int) -> io::Result<i32> {
        if let Target::Into(path, dir) = self {
            match clone3_into(ns_flags, dir) {
                Err(e) if fallback(&e) => join(path)?,
                r => return r,
            }
        }
        clone_here(ns_flags)
    }
}

/// `clone3` is missing or refuses `CLONE_INTO_CGROUP` (an older kernel): the
/// helper joins the cgroup and clones as before.
fn fallback(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSYS) | Some(libc::E2BIG))
}

fn join(cg: &Path) -> io::Result<()> {
    let pid = std::process::id().to_string();
    std::fs::write(cg.join("cgroup.procs"), &pid)
        .map_err(|e| io::Error::new(e.kind(), format!("joining cgroup {}: {e}", cg.display())))
}

fn clone3_into(ns_flags: libc::c_int, dir: &OwnedFd) -> io::Result<i32> {
    let args = CloneArgs {
        flags: (ns_flags as u32 as u64) | libc::CLONE_PARENT as u64 | CLONE_INTO_CGROUP,
        // clone3 wants none with CLONE_PARENT: the child then signals the agent
        // as the helper would (SIGCHLD).
        exit_signal: 0,
        cgroup: dir.as_raw_fd() as u64,
        ..Default::default()
    };
    // SAFETY: clone3 reads `args` (a #[repr(C)] struct clone_args of the size
    // passed, alive for the call). With a zero stack and stack size the child runs
    // on a copy of this stack and address space, as after fork; no pidfd, tid or
    // tls pointers are set. The helper is single-threaded, so the child inherits no
    // lock held by another thread; it never returns into the caller's frames past
    // `run_helper`, ending in execve or `sys::exit_now`.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    if pid < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("clone3: {e}")));
    }
    Ok(pid as i32)
}

fn clone_here(ns_flags: libc::c_int) -> io::Result<i32> {
    let flags = (ns_flags | libc::CLONE_PARENT | libc::SIGCHLD) as libc::c_ulong;
    // SAFETY: the raw clone syscall with a null stack behaves like fork: the child
    // runs on a copy of this stack and address space, and the null ptid/ctid/tls
    // arguments are unused without CLONE_PARENT_SETTID/CHILD_SETTID/SETTLS. The
    // helper is single-threaded (it runs before any runtime or thread is started),
    // so the child inherits no lock held by another thread and may allocate; it
    // never returns into the caller's frames past `run_helper`, ending in execve or
    // `sys::exit_now`. (libc's clone() wrapper is not used: it needs a new stack.)
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone,
            flags,
            0usize,
            std::ptr::null_mut::<libc::c_int>(),
            std::ptr::null_mut::<libc::c_int>(),
            0usize,
        )
    };
    if pid < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("clone: {e}")));
    }
    Ok(pid as i32)
}
