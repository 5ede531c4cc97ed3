//! The child reaper: one SIGCHLD-driven loop collects every exited child with
//! `waitpid(-1, WNOHANG)` and hands each exit status to whoever registered its pid.
//!
//! As PID 1 the agent inherits every orphan of the guest, so nothing else in the
//! agent may wait for children (no `Child::wait`): this loop would race it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::oneshot;

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    /// Exit status as a shell reports it: the code, or 128 + signal.
    pub status: u32,
    /// Nanoseconds since the Unix epoch.
    pub at_ns: i64,
}

/// Maps a raw `waitpid` status to the shell convention.
pub fn exit_status(raw: libc::c_int) -> u32 {
    if libc::WIFEXITED(raw) {
        libc::WEXITSTATUS(raw) as u32
    } else if libc::WIFSIGNALED(raw) {
        128 + libc::WTERMSIG(raw) as u32
    } else {
        255
    }
}

pub fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// How long an exit nobody registered for is kept (registration may race the exit).
const UNCLAIMED_TTL: Duration = Duration::from_secs(60);

#[derive(Default)]
struct Inner {
    waiters: HashMap<i32, oneshot::Sender<Exit>>,
    unclaimed: HashMap<i32, (Exit, Instant)>,
}

#[derive(Clone, Default)]
pub struct Reaper {
    inner: Arc<Mutex<Inner>>,
}

impl Reaper {
    /// Starts the reaping loop on the current tokio runtime.
    pub fn start() -> std::io::Result<Reaper> {
        let reaper = Reaper::default();
        let mut sig = signal(SignalKind::child())?;
        let r = reaper.clone();
        tokio::spawn(async move {
            loop {
                r.reap_all();
                // A periodic sweep as well, in case a signal was coalesced away.
                let _ = tokio::time::timeout(Duration::from_secs(1), sig.recv()).await;
            }
        });
        Ok(reaper)
    }

    /// Registers interest in `pid`'s exit. Call it as soon as the pid is known.
    pub fn register(&self, pid: i32) -> oneshot::Receiver<Exit> {
        let (tx, rx) = oneshot::channel();
        let mut g = self.inner.lock().unwrap();
        if let Some((exit, _)) = g.unclaimed.remove(&pid) {
            let _ = tx.send(exit);
        } else {
            g.waiters.insert(pid, tx);
        }
        rx
    }

    /// Collects every exited child now.
    pub fn reap_all(&self) {
        loop {
            let mut raw: libc::c_int = 0;
            // Raw waitpid, not nix's: its WaitStatus cannot represent a death by a
            // real-time signal and would lose that (already reaped) status.
            // SAFETY: `raw` is a live, writable c_int for the status; waitpid touches
            // no other memory of ours.
            let pid = unsafe { libc::waitpid(-1, &mut raw, libc::WNOHANG | libc::__WALL) };
            if pid <= 0 {
                break;
            }
            let exit = Exit {
                status: exit_status(raw),
                at_ns: now_ns(),
            };
            self.deliver(pid, exit);
        }
    }

    fn deliver(&self, pid: i32, exit: Exit) {
        let mut g = self.inner.lock().unwrap();
        if let Some(tx) = g.waiters.remove(&pid) {
            tracing::debug!(pid, status = exit.status, "reaped");
            let _ = tx.send(exit);
        } else {
            let now = Instant::now();
            g.unclaimed
                .retain(|_, (_, t)| now.duration_since(*t) < UNCLAIMED_TTL);
            g.unclaimed.insert(pid, (exit, now));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_mapping() {
        // Exited with code 3: status word 0x0300.
        assert_eq!(exit_status(3 << 8), 3);
        assert_eq!(exit_status(0), 0);
        // Killed by SIGKILL (9).
        assert_eq!(exit_status(9), 137);
        // Killed by SIGTERM with core flag.
        assert_eq!(exit_status(15 | 0x80), 143);
    }

    #[tokio::test]
    async fn register_after_exit_still_delivers() {
        let r = Reaper::default();
        r.deliver(
            4242,
            Exit {
                status: 7,
                at_ns: 1,
            },
        );
        let e = r.register(4242).await.unwrap();
        assert_eq!(e.status, 7);
        let rx = r.register(4243);
        r.deliver(
            4243,
            Exit {
                status: 1,
                at_ns: 2,
            },
        );
        assert_eq!(rx.await.unwrap().status, 1);
    }
}
