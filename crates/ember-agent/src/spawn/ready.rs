//! A spawn helper started ahead of time. Forking the multi-threaded agent and
//! executing it again is the slowest part of starting a container process in an
//! emulated guest (tens of milliseconds), so one helper is kept waiting: it has
//! already been executed and blocks on a socket until it is handed a process's
//! descriptors, then goes on exactly as a helper started for that process would.
//! A guest saved as a template holds one, so even a clone's first container
//! starts without the fork.
//!
//! The hand-over is one message on a `SOCK_SEQPACKET` pair: two bytes (whether a
//! start pipe and a console socket follow) and the descriptors stdin, stdout,
//! stderr, the plan pipe, the report pipe, then the optional two.

use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use nix::sys::socket::{
    recvmsg, sendmsg, socketpair, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags,
    SockFlag, SockType,
};

use crate::sys;

/// The argument that makes a helper wait for its process (`__spawn --ready <fd>`).
pub const READY_ARG: &str = "--ready";

/// How long after the last hand-over a new helper is started: not while a burst
/// of container starts (or the process just started) wants the CPU.
const REFILL_DELAY: Duration = Duration::from_millis(250);

/// The most descriptors one hand-over carries.
const MAX_FDS: usize = 7;

struct Waiting {
    pid: i32,
    sock: OwnedFd,
}

static WAITING: Mutex<Option<Waiting>> = Mutex::new(None);
/// Hand-overs so far: a refill waits until none happened for `REFILL_DELAY`.
static TAKEN: AtomicU64 = AtomicU64::new(0);

/// The descriptors of one process, as the helper must have them.
pub struct Handover<'a> {
    pub stdio: [&'a OwnedFd; 3],
    pub plan: &'a OwnedFd,
    pub report: &'a OwnedFd,
    pub start: Option<&'a OwnedFd>,
    pub console: Option<&'a OwnedFd>,
}

/// Starts a waiting helper unless one is there. Blocking (a fork and exec).
pub fn prepare() {
    let mut w = WAITING.lock().unwrap_or_else(|e| e.into_inner());
    if w.is_some() {
        return;
    }
    match start() {
        Ok(h) => *w = Some(h),
        Err(e) => tracing::warn!("starting a spawn helper ahead of time: {e}"),
    }
}

fn start() -> io::Result<Waiting> {
    let (ours, theirs) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )?;
    let fd = theirs.as_raw_fd();
    let pid = super::exec_helper(
        &[READY_ARG.to_string(), fd.to_string()],
        [Stdio::null(), Stdio::null(), Stdio::null()],
        &[fd],
    )?;
    drop(theirs);
    Ok(Waiting { pid, sock: ours })
}

/// Hands `h` to the waiting helper, if there is one that takes it: its pid.
/// Schedules the start of the next one.
pub fn hand_over(h: &Handover) -> Option<i32> {
    let w = WAITING.lock().unwrap_or_else(|e| e.into_inner()).take()?;
    let n = TAKEN.fetch_add(1, Ordering::SeqCst) + 1;
    std::thread::Builder::new()
        .name("spawn-refill".into())
        .spawn(move || {
            std::thread::sleep(REFILL_DELAY);
            if TAKEN.load(Ordering::SeqCst) == n {
                prepare();
            }
        })
        .ok();
    let mut fds: Vec<RawFd> = h.stdio.iter().map(|f| f.as_raw_fd()).collect();
    fds.extend([h.plan.as_raw_fd(), h.report.as_raw_fd()]);
    fds.extend(h.start.map(|f| f.as_raw_fd()));
    fds.extend(h.console.map(|f| f.as_raw_fd()));
    let flags = [h.start.is_some() as u8, h.console.is_some() as u8];
    let sent = sendmsg::<()>(
        w.sock.as_raw_fd(),
        &[IoSlice::new(&flags)],
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::MSG_NOSIGNAL,
        None,
    );
    match sent {
        Ok(_) => Some(w.pid),
        Err(e) => {
            // It died while waiting (the reaper has its exit): spawn as usual.
            tracing::warn!("the waiting spawn helper {} is gone: {e}", w.pid);
            None
        }
    }
}

/// The waiting helper's side (`__spawn --ready <fd>`): blocks for a hand-over,
/// makes the process's stdio fds 0-2 and returns (plan, report, start, console)
/// for the helper to go on with; `None` when the agent closed the socket.
pub fn wait_for_process(sock: RawFd) -> io::Result<Option<(RawFd, RawFd, RawFd, RawFd)>> {
    let Some(sock) = sys::take_inherited_fd(sock) else {
        return Ok(None);
    };
    let mut flags = [0u8; 2];
    let mut space = nix::cmsg_space!([RawFd; MAX_FDS]);
    let mut fds: Vec<OwnedFd> = Vec::new();
    let got = loop {
        let mut iov = [IoSliceMut::new(&mut flags)];
        match recvmsg::<()>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Ok(msg) => {
                for c in msg.cmsgs()? {
                    if let ControlMessageOwned::ScmRights(raw) = c {
                        // SAFETY: the kernel just installed these descriptors in
                        // this process for this message; nothing else owns them.
                        fds.extend(raw.into_iter().map(|f| unsafe { OwnedFd::from_raw_fd(f) }));
                    }
                }
                break msg.bytes;
            }
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    };
    if got == 0 {
        return Ok(None);
    }
    let (has_start, has_console) = (flags[0] == 1, flags[1] == 1);
    let want = 5 + has_start as usize + has_console as usize;
    if got != 2 || fds.len() != want {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a hand-over of {} descriptors, want {want}", fds.len()),
        ));
    }
    let mut it = fds.into_iter();
    for target in 0..3 {
        let f = it.next().expect("counted");
        sys::dup_onto_stdio(f.as_raw_fd(), target)?;
    }
    let plan = it.next().expect("counted").into_raw_fd();
    let report = it.next().expect("counted").into_raw_fd();
    let start = if has_start {
        it.next().expect("counted").into_raw_fd()
    } else {
        -1
    };
    let console = if has_console {
        it.next().expect("counted").into_raw_fd()
    } else {
        -1
    };
    Ok(Some((plan, report, start, console)))
}
