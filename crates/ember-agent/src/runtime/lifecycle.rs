//! Starting, waiting for, signalling and forgetting processes.

use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use ember_agent_api::WaitProcessResponse;
use ember_ttrpc::Status;

use super::process::Pending;
use super::{internal, Agent, R};
use crate::reaper::Exit;
use crate::spawn::{self, Plan, Spawned};
use crate::sys;

impl Agent {
    pub async fn start_process(self: &Arc<Self>, id: &str, exec_id: &str) -> R<u32> {
        let (c, p) = self.process(id, exec_id)?;
        tracing::debug!(container = %id, exec = %exec_id, "start");
        let mut pending = p.pending.lock().await;
        let Some(pend) = pending.take() else {
            return Err(Status::failed_precondition(format!(
                "process {exec_id:?} of container {id:?} was already started"
            )));
        };
        match pend {
            Pending::Init(spawned) => {
                if let Some(e) = p.exited() {
                    return Err(Status::failed_precondition(format!(
                        "container init already exited with status {}",
                        e.status
                    )));
                }
                let Spawned {
                    mut report, start, ..
                } = spawned;
                if let Some(start) = start {
                    sys::write_all(start.as_raw_fd(), b"1")
                        .map_err(|e| internal("signalling the container init to start", e))?;
                }
                tracing::debug!(container = %id, "start byte sent");
                let outcome =
                    tokio::task::spawn_blocking(move || spawn::read_report(&mut report, false))
                        .await
                        .map_err(|e| internal("start", e))?;
                tracing::debug!(container = %id, ?outcome, "started");
                if let Some(err) = outcome.error {
                    // The process exits right after reporting; let its status settle.
                    let _ = tokio::time::timeout(Duration::from_secs(2), p.wait()).await;
                    return Err(Status::failed_precondition(format!(
                        "starting container {id:?}: {err}"
                    )));
                }
                Ok(p.pid() as u32)
            }
            Pending::Exec {
                process,
                stdio,
                pty,
            } => {
                let init_pid = c.init.pid();
                if c.init.exited().is_some() || init_pid <= 0 || c.removing.load(Ordering::SeqCst) {
                    let _ = p.exit.send_replace(Some(Exit {
                        status: 255,
                        at_ns: crate::reaper::now_ns(),
                    }));
                    return Err(Status::failed_precondition(format!(
                        "container {id:?} is not running"
                    )));
                }
                let plan = Plan::Exec {
                    process,
                    init_pid,
                    cgroup: c.cgroup.as_ref().map(|cg| cg.path.clone()),
                    terminal: p.terminal,
                    winsize: *p.pty_size.lock().unwrap(),
                    seccomp: c.seccomp.clone(),
                };
                let (pty, console_child) = pty.unzip();
                let (spawned, outcome) = spawn::spawn(&plan, stdio, console_child)
                    .await
                    .map_err(|e| internal("spawning exec process", e))?;
                if let Some(setup) = pty {
                    p.attach_pty(setup).await;
                }
                self.reaper.register(spawned.helper_pid);
                match outcome.pid {
                    Some(pid) => self.watch_exit(&c, &p, pid),
                    None => {
                        let _ = p.exit.send_replace(Some(Exit {
                            status: 255,
                            at_ns: crate::reaper::now_ns(),
                        }));
                    }
                }
                if let Some(err) = outcome.error {
                    let _ = tokio::time::timeout(Duration::from_secs(2), p.wait()).await;
                    return Err(Status::failed_precondition(format!(
                        "starting process {exec_id:?} in container {id:?}: {err}"
                    )));
                }
                Ok(outcome.pid.unwrap_or(0) as u32)
            }
        }
    }

    /// Forgets an exec process: one that exited, or one created and never started
    /// (its stdio and plan go with it). A running one stays.
    pub async fn remove_process(&self, id: &str, exec_id: &str) -> R<()> {
        if exec_id.is_empty() {
            return Err(Status::invalid_argument(
                "the init process goes with its container",
            ));
        }
        let (c, p) = self.process(id, exec_id)?;
        let never_started = p.pending.lock().await.take().is_some();
        if !never_started && p.exited().is_none() {
            return Err(Status::failed_precondition(format!(
                "process {exec_id:?} of container {id:?} is running"
            )));
        }
        if never_started {
            // Its waiters return.
            let _ = p.exit.send_replace(Some(Exit {
                status: 0,
                at_ns: crate::reaper::now_ns(),
            }));
        }
        c.execs.lock().unwrap().remove(exec_id);
        Ok(())
    }

    pub async fn wait_process(&self, id: &str, exec_id: &str) -> R<WaitProcessResponse> {
        let (_c, p) = self.process(id, exec_id)?;
        let e = p.wait().await;
        Ok(WaitProcessResponse {
            exit_status: e.status,
            exited_at_ns: e.at_ns,
        })
    }

    pub async fn signal_process(&self, id: &str, exec_id: &str, sig: u32, all: bool) -> R<()> {
        if sig == 0 || sig > 64 {
            return Err(Status::invalid_argument(format!("invalid signal {sig}")));
        }
        let sig = sig as i32;
        let (c, p) = self.process(id, exec_id)?;
        if all {
            if !exec_id.is_empty() {
                return Err(Status::invalid_argument(
                    "`all` applies to the init process only",
                ));
            }
            if let Some(cg) = &c.cgroup {
                cg.signal_all(sig)
                    .map_err(|e| internal("signalling the cgroup", e))?;
                return Ok(());
            }
            // Without cgroups: every process we know of.
            let execs: Vec<_> = c.execs.lock().unwrap().values().cloned().collect();
            for q in execs {
                if q.exited().is_none() && q.pid() > 0 {
                    let _ = sys::kill(q.pid(), sig);
                }
            }
        }
        if p.exited().is_some() {
            return Err(Status::not_found(format!(
                "process {exec_id:?} of container {id:?} already exited"
            )));
        }
        let pid = p.pid();
        if pid <= 0 {
            return Err(Status::failed_precondition(format!(
                "process {exec_id:?} was not started"
            )));
        }
        match sys::kill(pid, sig) {
            Ok(()) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Err(Status::not_found(format!(
                "process {exec_id:?} already exited"
            ))),
            Err(e) => Err(internal("kill", e)),
        }
    }
}
