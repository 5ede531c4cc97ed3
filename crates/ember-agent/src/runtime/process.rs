//! A process of a container: its state, terminal and stdio.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex};

use ember_agent_api::StdioConfig;
use oci_spec::runtime::Process;
use tokio::sync::watch;

use crate::reaper::Exit;
use crate::spawn::Spawned;
use crate::stdio::{self, OutputBuf, StdinWriter, OUTPUT_BUFFER};
use crate::sys;

/// The pieces of a created process that are not running yet.
pub(super) enum Pending {
    /// Container init waiting on its start pipe.
    Init(Spawned),
    /// Exec process: what to spawn at start.
    Exec {
        process: Box<Process>,
        stdio: [OwnedFd; 3],
        /// The pty setup and the process's end of the console socket.
        pty: Option<(PtySetup, OwnedFd)>,
    },
}

/// A terminal being set up. The process allocates its pty in the container's own
/// devpts (so that `ttyname()` works there) and passes the master back over
/// `console`; until then, and if that fails, it uses the `fallback` pair the agent
/// allocated in its own devpts.
pub(super) struct PtySetup {
    pub(super) fallback_master: OwnedFd,
    /// The agent's end of the console socket (the process's end goes to the helper).
    pub(super) console: OwnedFd,
}

pub struct Proc {
    pub exec_id: String,
    pub(super) terminal: bool,
    pub(super) pid: AtomicI32,
    pub(super) pending: tokio::sync::Mutex<Option<Pending>>,
    /// `None` when stdin was not asked for, or after CloseStdin.
    pub(super) stdin: tokio::sync::Mutex<Option<StdinWriter>>,
    pub(super) stdin_enabled: bool,
    pub(super) stdout: Arc<OutputBuf>,
    pub(super) stderr: Arc<OutputBuf>,
    /// The pty master, once known (terminal processes only).
    pub(super) pty_master: Mutex<Option<OwnedFd>>,
    /// Window size asked for before the pty existed.
    pub(super) pty_size: Mutex<Option<(u32, u32)>>,
    pub(super) exit: watch::Sender<Option<Exit>>,
}

impl Proc {
    /// Wires the terminal of a spawned process: the master it sent, or the fallback.
    pub(super) async fn attach_pty(&self, setup: PtySetup) {
        let master = match stdio::recv_fd(&setup.console) {
            Ok(Some(fd)) => fd,
            Ok(None) => setup.fallback_master,
            Err(e) => {
                tracing::warn!("receiving the pty master: {e}; using the fallback pty");
                setup.fallback_master
            }
        };
        if let Some((w, h)) = *self.pty_size.lock().unwrap() {
            let _ = stdio::resize_pty(master.as_raw_fd(), w, h);
        }
        match master.try_clone() {
            Ok(fd) => self.stdout.spawn_reader(fd),
            Err(e) => {
                tracing::warn!("pty: {e}");
                self.stdout.set_eof();
            }
        }
        if self.stdin_enabled {
            match master.try_clone().and_then(StdinWriter::new) {
                Ok(w) => *self.stdin.lock().await = Some(w),
                Err(e) => tracing::warn!("pty stdin: {e}"),
            }
        }
        *self.pty_master.lock().unwrap() = Some(master);
    }

    pub(super) fn exited(&self) -> Option<Exit> {
        *self.exit.borrow()
    }

    pub(super) fn pid(&self) -> i32 {
        self.pid.load(Ordering::SeqCst)
    }

    pub(super) async fn wait(&self) -> Exit {
        let mut rx = self.exit.subscribe();
        loop {
            if let Some(e) = *rx.borrow_and_update() {
                return e;
            }
            if rx.changed().await.is_err() {
                // Sender gone: cannot happen while we hold &self; be safe anyway.
                return Exit {
                    status: 255,
                    at_ns: 0,
                };
            }
        }
    }
}

/// Creates the stdio of a process: (the process's fds 0/1/2, the agent's Proc parts).
pub(super) struct StdioParts {
    pub(super) child: [OwnedFd; 3],
    pub(super) stdin: Option<StdinWriter>,
    pub(super) stdout: Arc<OutputBuf>,
    pub(super) stderr: Arc<OutputBuf>,
    pub(super) pty: Option<(PtySetup, OwnedFd)>,
}

pub(super) fn make_stdio(cfg: &StdioConfig) -> io::Result<StdioParts> {
    if cfg.terminal {
        let (master, slave) = stdio::open_pty()?;
        let (console, console_child) = stdio::socketpair()?;
        Ok(StdioParts {
            child: [slave.try_clone()?, slave.try_clone()?, slave],
            stdin: None,
            stdout: OutputBuf::new(OUTPUT_BUFFER),
            stderr: OutputBuf::closed(),
            pty: Some((
                PtySetup {
                    fallback_master: master,
                    console,
                },
                console_child,
            )),
        })
    } else {
        let (in_child, stdin) = if cfg.stdin {
            let (r, w) = sys::pipe()?;
            (r, Some(StdinWriter::new(w)?))
        } else {
            (stdio::dev_null()?, None)
        };
        let (out_r, out_w) = sys::pipe()?;
        let (err_r, err_w) = sys::pipe()?;
        let stdout = OutputBuf::new(OUTPUT_BUFFER);
        stdout.spawn_reader(out_r);
        let stderr = OutputBuf::new(OUTPUT_BUFFER);
        stderr.spawn_reader(err_r);
        Ok(StdioParts {
            child: [in_child, out_w, err_w],
            stdin,
            stdout,
            stderr,
            pty: None,
        })
    }
}
