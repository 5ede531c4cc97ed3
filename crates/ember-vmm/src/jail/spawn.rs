//! Starting a VMM inside its jail.
//!
//! The process `Command` forks (the *keeper*) joins the VM's cgroup and network
//! namespace, unshares mount, pid, ipc and uts namespaces and forks once more: only
//! that second child (the VMM) is pid 1 of the new pid namespace. The keeper reports
//! the VMM's host pid over a pipe, closes every other descriptor and waits for it,
//! exiting as it exits, so the `Child` the backend holds ends with the VMM; killing
//! the keeper kills the VMM through its parent-death signal. The VMM pivots into the
//! jail root, drops every capability (bounding, permitted, effective, inheritable,
//! ambient), switches to the VM's uid and gid, sets no_new_privs and marks every
//! inherited descriptor close-on-exec before the exec.
//!
//! Everything both children need is prepared before the first fork: after it only
//! async-signal-safe system calls run, nothing allocates.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use crate::Error;

/// One mount made in the VMM's mount namespace before it pivots.
#[derive(Debug)]
pub(crate) struct MountStep {
    pub src: CString,
    pub dst: CString,
    pub fstype: Option<CString>,
    pub flags: libc::c_ulong,
    /// Remount the bind read-only (with nosuid, nodev) afterwards.
    pub read_only: bool,
}

/// A device node made in the jail's own /dev.
#[derive(Debug)]
pub(crate) struct DevNode {
    pub path: CString,
    pub rdev: libc::dev_t,
    pub mode: libc::mode_t,
    pub uid: u32,
    pub gid: u32,
}

/// What the pre-exec code of a jailed spawn does.
#[derive(Debug)]
pub(crate) struct SpawnPlan {
    pub root: CString,
    pub mounts: Vec<MountStep>,
    /// The jail's /dev: a small tmpfs (so its nodes work wherever the jail directory
    /// lives, a `nodev` filesystem included), its subdirectories and nodes.
    pub dev: CString,
    pub dev_dirs: Vec<CString>,
    pub dev_nodes: Vec<DevNode>,
    pub uid: u32,
    pub gid: u32,
    /// `cgroup.procs` of each hierarchy of the VM's cgroup, open for writing.
    pub cgroup_procs: Vec<OwnedFd>,
    pub netns: Option<OwnedFd>,
    pub hostname: CString,
    /// Write end of the pipe on which the keeper reports the VMM's host pid.
    pub pid_tx: OwnedFd,
    /// Where the owner's argument strings are (`/proc/self/stat`'s arg_start and
    /// arg_end): the keeper renames itself there.
    pub argv_area: Option<(usize, usize)>,
}

/// This process's argument area, from `/proc/self/stat` (fields 48 and 49).
pub(crate) fn argv_area() -> Option<(usize, usize)> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let rest = stat.rsplit_once(')')?.1;
    // `rest` starts at field 3 (state).
    let f: Vec<&str> = rest.split_whitespace().collect();
    let start = f.get(48 - 3)?.parse().ok()?;
    let end = f.get(49 - 3)?.parse().ok()?;
    Some((start, end))
}

/// The read end of the pid pipe, kept by the parent.
#[derive(Debug)]
pub(crate) struct PidReceiver(OwnedFd);

/// A pipe whose ends are close-on-exec.
fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: pipe2 writes two descriptors into the array we pass.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just created and are owned by nothing else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// The pid pipe: (the parent's end, the keeper's end).
pub(crate) fn pid_pipe() -> Result<(PidReceiver, OwnedFd), Error> {
    let (r, w) = pipe()?;
    Ok((PidReceiver(r), w))
}

impl PidReceiver {
    /// The VMM's host pid, as the keeper reports it (None: the keeper died first).
    pub fn receive(self, timeout: Duration) -> Result<u32, Error> {
        let mut pfd = libc::pollfd {
            fd: self.0.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: poll on one valid pollfd.
        let n = unsafe { libc::poll(&mut pfd, 1, timeout.as_millis() as libc::c_int) };
        if n <= 0 {
            return Err(Error::Control(
                "the jailed VMM's keeper did not report the VMM's pid".into(),
            ));
        }
        let mut buf = [0u8; 4];
        // SAFETY: reading at most 4 bytes into a 4-byte buffer.
        let got = unsafe { libc::read(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), 4) };
        if got != 4 {
            return Err(Error::Control(
                "the jailed VMM exited before it started".into(),
            ));
        }
        Ok(u32::from_ne_bytes(buf))
    }
}

fn check(r: libc::c_int) -> std::io::Result<()> {
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Closes every descriptor from 3 up, except `keep`.
fn close_all_but(keep: RawFd) {
    // SAFETY: close_range only closes descriptors; the ranges exclude `keep`.
    unsafe {
        if keep > 3 {
            libc::syscall(libc::SYS_close_range, 3u32, (keep - 1) as u32, 0u32);
        }
        libc::syscall(libc::SYS_close_range, (keep + 1) as u32, u32::MAX, 0u32);
        for fd in 0..3 {
            if fd != keep {
                libc::close(fd);
            }
        }
    }
}

impl SpawnPlan {
    /// Runs in the process `Command` forked, before its exec. Only returns in the
    /// VMM (the grandchild); the keeper never returns.
    ///
    /// # Safety
    /// Must only be called between fork and exec: it forks, and the keeper exits.
    pub(crate) unsafe fn enter(&self) -> std::io::Result<()> {
        if let Some(ns) = &self.netns {
            check(libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET))?;
        }
        for fd in &self.cgroup_procs {
            // "0" moves the writer itself; the VMM forked below inherits the cgroup.
            if libc::write(fd.as_raw_fd(), b"0".as_ptr().cast(), 1) != 1 {
                return Err(std::io::Error::last_os_error());
            }
        }
        check(libc::unshare(
            libc::CLONE_NEWNS | libc::CLONE_NEWPID | libc::CLONE_NEWIPC | libc::CLONE_NEWUTS,
        ))?;
        let mut life = [0 as RawFd; 2];
        check(libc::pipe2(life.as_mut_ptr(), libc::O_CLOEXEC))?;
        let pid = libc::fork();
        if pid < 0 {
            return Err(std::io::Error::last_os_error());
        }
        if pid > 0 {
            self.keep(pid, life[0], life[1]);
        }
        // The VMM: pid 1 of the new pid namespace.
        libc::close(life[1]);
        self.confine()?;
        // Changing credentials cleared the parent-death signal: set it now, then
        // check that the keeper did not die before (its end of the pipe is closed).
        check(libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0))?;
        let mut pfd = libc::pollfd {
            fd: life[0],
            events: libc::POLLIN,
            revents: 0,
        };
        if libc::poll(&mut pfd, 1, 0) != 0 {
            libc::_exit(1);
        }
        libc::close(life[0]);
        Ok(())
    }

    /// The keeper: reports the VMM's pid, waits for it and exits as it did.
    unsafe fn keep(&self, pid: libc::pid_t, life_r: RawFd, life_w: RawFd) -> ! {
        libc::close(life_r);
        // A fork of its owner without an exec: without a name of its own, `ps` (and
        // whoever counts the owner's processes) would take it for the owner. Its
        // copy of the owner's argument strings is overwritten (the kernel shows
        // that memory as the command line), its thread name set.
        if let Some((start, end)) = self.argv_area {
            if end > start + 1 {
                let area = std::slice::from_raw_parts_mut(start as *mut u8, end - start);
                area.fill(0);
                let n = (KEEPER_CMDLINE.len() - 1).min(area.len() - 1);
                area[..n].copy_from_slice(&KEEPER_CMDLINE[..n]);
            }
        }
        libc::prctl(libc::PR_SET_NAME, KEEPER_CMDLINE.as_ptr(), 0, 0, 0);
        let bytes = (pid as u32).to_ne_bytes();
        libc::write(self.pid_tx.as_raw_fd(), bytes.as_ptr().cast(), 4);
        close_all_but(life_w);
        let mut status = 0;
        loop {
            let r = libc::waitpid(pid, &mut status, 0);
            if r == pid {
                break;
            }
            if r < 0 && *libc::__errno_location() != libc::EINTR {
                libc::_exit(255);
            }
        }
        if libc::WIFSIGNALED(status) {
            let sig = libc::WTERMSIG(status);
            libc::signal(sig, libc::SIG_DFL);
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, sig);
            libc::sigprocmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
            libc::kill(libc::getpid(), sig);
            libc::_exit(128 + sig);
        }
        libc::_exit(libc::WEXITSTATUS(status))
    }

    /// The VMM's own confinement, in its new namespaces.
    unsafe fn confine(&self) -> std::io::Result<()> {
        let null = std::ptr::null::<libc::c_char>();
        // Host mounts made later under the jail's sources still arrive (the shared
        // directory's bind mounts), nothing made here goes back.
        check(libc::mount(
            null,
            c"/".as_ptr(),
            null,
            libc::MS_REC | libc::MS_SLAVE,
            std::ptr::null(),
        ))?;
        check(libc::mount(
            self.root.as_ptr(),
            self.root.as_ptr(),
            null,
            libc::MS_BIND,
            std::ptr::null(),
        ))?;
        for m in &self.mounts {
            let fstype = m.fstype.as_ref().map_or(null, |f| f.as_ptr());
            check(libc::mount(
                m.src.as_ptr(),
                m.dst.as_ptr(),
                fstype,
                m.flags,
                std::ptr::null(),
            ))?;
            if m.read_only {
                check(libc::mount(
                    null,
                    m.dst.as_ptr(),
                    null,
                    libc::MS_BIND
                        | libc::MS_REMOUNT
                        | libc::MS_RDONLY
                        | libc::MS_NOSUID
                        | (m.flags & libc::MS_NODEV),
                    std::ptr::null(),
                ))?;
            }
        }
        check(libc::mount(
            c"tmpfs".as_ptr(),
            self.dev.as_ptr(),
            c"tmpfs".as_ptr(),
            libc::MS_NOSUID | libc::MS_NOEXEC,
            c"mode=755,size=64k".as_ptr().cast(),
        ))?;
        for d in &self.dev_dirs {
            check(libc::mkdir(d.as_ptr(), 0o755))?;
        }
        for n in &self.dev_nodes {
            check(libc::mknod(n.path.as_ptr(), libc::S_IFCHR | n.mode, n.rdev))?;
            // mknod's mode went through the umask.
            check(libc::chmod(n.path.as_ptr(), n.mode))?;
            check(libc::chown(n.path.as_ptr(), n.uid, n.gid))?;
        }
        check(libc::chdir(self.root.as_ptr()))?;
        check(libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) as libc::c_int)?;
        // The old root sits on top of the new one: detach it.
        check(libc::umount2(c".".as_ptr(), libc::MNT_DETACH))?;
        check(libc::chdir(c"/".as_ptr()))?;
        check(libc::sethostname(
            self.hostname.as_ptr(),
            self.hostname.as_bytes().len(),
        ))?;
        // Capabilities: the bounding set first (needs CAP_SETPCAP), then the ids
        // (leaving uid 0 clears permitted and effective), then what is left.
        for cap in 0..=63 {
            libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0);
        }
        check(libc::prctl(
            libc::PR_SET_SECUREBITS,
            // NOROOT, NO_CAP_AMBIENT_RAISE, and locked off: NO_SETUID_FIXUP (the
            // uid change must clear the capabilities) and KEEP_CAPS.
            0x01 | 0x02 | 0x08 | 0x20 | 0x40 | 0x80,
            0,
            0,
            0,
        ))?;
        check(libc::setgroups(0, std::ptr::null()))?;
        check(libc::setresgid(self.gid, self.gid, self.gid))?;
        check(libc::setresuid(self.uid, self.uid, self.uid))?;
        let header = CapHeader {
            version: 0x2008_0522,
            pid: 0,
        };
        let data = [CapData::default(); 2];
        check(libc::syscall(libc::SYS_capset, &header, data.as_ptr()) as libc::c_int)?;
        check(libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        ))?;
        check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))?;
        // Whatever the owner had open stays behind at exec (stdio excepted).
        check(libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        ) as libc::c_int)?;
        Ok(())
    }
}

/// The keeper's command line (and, cut to 15 bytes, its name).
static KEEPER_CMDLINE: &[u8] = b"ember-vmm-keeper\0";

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}
