//! The processes of a task (the container's init and its execs) and the task API
//! calls on them, answering as runc's shim does: a terminal process has no stderr,
//! resizing a process without a terminal does nothing, an exec created and never
//! started can be deleted, and calls on processes that exited get the same codes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use containerd_client::events as ev;
use ember_agent_api::{AgentClient, CreateProcessRequest, OutputStream, StdioConfig};
use ember_ttrpc::{Code, Status};
use tokio::sync::watch;

use super::{err, Task};
use crate::stdio;
use crate::vm::LOST_STATUS;
use ember_shim_api::*;

/// How long output may keep flowing after a process exited (children holding the pipe).
const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(2);

/// What runc's shim reports as the exit time of a process that never ran: Go's zero
/// time (0001-01-01T00:00:00Z).
fn zero_time() -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: -62_135_596_800,
        nanos: 0,
    }
}

/// One process: a container's init (exec id "") or an exec.
pub struct Proc {
    pub container_id: String,
    pub exec_id: String,
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
    pub(super) pid: AtomicU32,
    pub(super) started: AtomicBool,
    pub(super) exit: watch::Sender<Option<(u32, SystemTime)>>,
    close_stdin: watch::Sender<bool>,
}

impl Proc {
    pub(super) fn new(
        container_id: &str,
        exec_id: &str,
        stdin: &str,
        stdout: &str,
        stderr: &str,
        terminal: bool,
    ) -> Arc<Self> {
        Arc::new(Proc {
            container_id: container_id.into(),
            exec_id: exec_id.into(),
            stdin: stdin.into(),
            stdout: stdout.into(),
            stderr: stderr.into(),
            terminal,
            pid: AtomicU32::new(0),
            started: AtomicBool::new(false),
            exit: watch::channel(None).0,
            close_stdin: watch::channel(false).0,
        })
    }

    pub fn pid(&self) -> u32 {
        self.pid.load(Ordering::SeqCst)
    }

    pub fn exited(&self) -> Option<(u32, SystemTime)> {
        *self.exit.borrow()
    }

    fn started(&self) -> bool {
        self.started.load(Ordering::SeqCst)
    }

    async fn wait(&self) -> (u32, SystemTime) {
        let mut rx = self.exit.subscribe();
        let v = rx.wait_for(|e| e.is_some()).await.map(|v| *v);
        match v {
            Ok(Some(e)) => e,
            _ => (LOST_STATUS, SystemTime::now()),
        }
    }
}

impl Task {
    /// Opens a process's stdio and starts its pumps and its exit watcher. A
    /// terminal carries both output streams: no stderr is opened for it.
    pub(super) async fn attach_stdio(
        self: &Arc<Self>,
        agent: &AgentClient,
        p: &Arc<Proc>,
    ) -> Result<(), Status> {
        let stderr = if p.terminal { "" } else { p.stderr.as_str() };
        let (out, errs) = stdio::open_outputs(&p.stdout, stderr, &self.namespace, &p.container_id)
            .await
            .map_err(|e| err(Code::Internal, e.to_string()))?;
        let input = stdio::open_input(&p.stdin).map_err(|e| err(Code::Internal, e.to_string()))?;
        let pump = |stream, to| {
            tokio::spawn(stdio::pump_output(
                agent.clone(),
                p.container_id.clone(),
                p.exec_id.clone(),
                stream,
                to,
            ))
        };
        let mut pumps = vec![pump(OutputStream::Stdout, out)];
        if !p.terminal {
            pumps.push(pump(OutputStream::Stderr, errs));
        }
        if let Some(input) = input {
            tokio::spawn(stdio::pump_input(
                agent.clone(),
                p.container_id.clone(),
                p.exec_id.clone(),
                input,
                p.close_stdin.subscribe(),
            ));
        }
        tokio::spawn(watch_exit(self.clone(), agent.clone(), p.clone(), pumps));
        Ok(())
    }

    pub async fn start(&self, id: &str, exec_id: &str) -> Result<u32, Status> {
        let p = self.proc(id, exec_id)?;
        if p.started.swap(true, Ordering::SeqCst) {
            // runc's shim answers these without a class (Unknown).
            let what = if p.exited().is_some() {
                "stopped"
            } else {
                "running"
            };
            return Err(err(Code::Unknown, format!("cannot start a {what} process")));
        }
        if exec_id.is_empty() {
            // Interfaces a client gave the VM's namespace after Create (CNI on the
            // task pid, OCI hooks) reach the guest before the container runs.
            if let Err(e) = crate::net::wire_late(&self.vm).await {
                p.started.store(false, Ordering::SeqCst);
                return Err(e);
            }
        }
        let guest_pid = match self.agent()?.start_process(id, exec_id).await {
            Ok(pid) => pid,
            Err(e) => {
                p.started.store(false, Ordering::SeqCst);
                return Err(self.agent_err(e));
            }
        };
        // A container's init keeps the task pid Create gave (the VMM's).
        let pid = if exec_id.is_empty() && p.pid() != 0 {
            p.pid()
        } else {
            p.pid.store(guest_pid, Ordering::SeqCst);
            guest_pid
        };
        if exec_id.is_empty() {
            self.publisher.publish(
                "/tasks/start",
                "TaskStart",
                &ev::TaskStart {
                    container_id: id.into(),
                    pid,
                },
            );
            if let Some(h) = self.hooks_of(id) {
                h.poststart(pid).await;
            }
        } else {
            self.publisher.publish(
                "/tasks/exec-started",
                "TaskExecStarted",
                &ev::TaskExecStarted {
                    container_id: id.into(),
                    exec_id: exec_id.into(),
                    pid,
                },
            );
        }
        Ok(pid)
    }

    pub async fn exec(self: &Arc<Self>, req: ExecProcessRequest) -> Result<(), Status> {
        if req.exec_id.is_empty() {
            return Err(err(Code::InvalidArgument, "an exec id is required"));
        }
        let init = self.proc(&req.id, "")?;
        if init.exited().is_some() {
            return Err(err(Code::Unknown, "cannot exec in a stopped state"));
        }
        let spec = req.spec.as_ref().ok_or_else(|| {
            err(
                Code::InvalidArgument,
                "the exec request has no process spec",
            )
        })?;
        if self.execs(&req.id, |e| e.contains_key(&req.exec_id)) {
            return Err(err(
                Code::AlreadyExists,
                format!("id {}: already exists", req.exec_id),
            ));
        }
        let agent = self.agent()?;
        agent
            .create_process(&CreateProcessRequest {
                container_id: req.id.clone(),
                exec_id: req.exec_id.clone(),
                process_json: spec.value.clone(),
                stdio: Some(StdioConfig {
                    terminal: req.terminal,
                    stdin: !req.stdin.is_empty(),
                }),
            })
            .await
            .map_err(|e| self.agent_err(e))?;
        let p = Proc::new(
            &req.id,
            &req.exec_id,
            &req.stdin,
            &req.stdout,
            &req.stderr,
            req.terminal,
        );
        if let Err(e) = self.attach_stdio(&agent, &p).await {
            let _ = agent.remove_process(&req.id, &req.exec_id).await;
            return Err(e);
        }
        self.execs(&req.id, |e| e.insert(req.exec_id.clone(), p));
        self.publisher.publish(
            "/tasks/exec-added",
            "TaskExecAdded",
            &ev::TaskExecAdded {
                container_id: req.id.clone(),
                exec_id: req.exec_id.clone(),
            },
        );
        Ok(())
    }

    pub fn state(&self, id: &str, exec_id: &str) -> Result<StateResponse, Status> {
        let p = self.proc(id, exec_id)?;
        let (bundle, paused) = self.container_info(id);
        let (status, exit_status, exited_at) = match p.exited() {
            Some((s, at)) => (TaskStatus::Stopped, s, Some(timestamp(at))),
            None if !p.started() => (TaskStatus::Created, 0, None),
            None if paused => (TaskStatus::Paused, 0, None),
            None => (TaskStatus::Running, 0, None),
        };
        Ok(StateResponse {
            id: id.into(),
            bundle,
            pid: p.pid(),
            status: status as i32,
            stdin: p.stdin.clone(),
            stdout: p.stdout.clone(),
            stderr: p.stderr.clone(),
            terminal: p.terminal,
            exit_status,
            exited_at,
            exec_id: exec_id.into(),
        })
    }

    pub async fn wait(&self, id: &str, exec_id: &str) -> Result<WaitResponse, Status> {
        let p = self.proc(id, exec_id)?;
        let (status, at) = p.wait().await;
        Ok(WaitResponse {
            exit_status: status,
            exited_at: Some(timestamp(at)),
        })
    }

    pub async fn kill(&self, req: KillRequest) -> Result<(), Status> {
        let p = self.proc(&req.id, &req.exec_id)?;
        if !req.exec_id.is_empty() && !p.started() {
            return Err(err(Code::FailedPrecondition, "process not created"));
        }
        if p.exited().is_some() {
            return Err(err(Code::NotFound, "process already finished"));
        }
        self.agent()?
            .signal_process(&req.id, &req.exec_id, req.signal, req.all)
            .await
            .map_err(|e| self.agent_err(e))
    }

    /// Deletes an exec: one that exited, or one that was never started.
    pub(super) async fn delete_exec(
        &self,
        id: &str,
        exec_id: &str,
    ) -> Result<DeleteResponse, Status> {
        let p = self.proc(id, exec_id)?;
        let exit = match p.exited() {
            Some((status, at)) => (status, timestamp(at)),
            None if !p.started() => (0, zero_time()),
            // Without a class (Unknown), as runc's shim answers.
            None => return Err(err(Code::Unknown, "cannot delete a running process")),
        };
        if let Ok(agent) = self.agent() {
            if let Err(e) = agent.remove_process(id, exec_id).await {
                tracing::warn!("forgetting exec {exec_id} in the guest: {e}");
            }
        }
        self.execs(id, |e| e.remove(exec_id));
        Ok(DeleteResponse {
            pid: p.pid(),
            exit_status: exit.0,
            exited_at: Some(exit.1),
        })
    }

    pub async fn resize_pty(&self, req: ResizePtyRequest) -> Result<(), Status> {
        let p = self.proc(&req.id, &req.exec_id)?;
        if !p.terminal {
            return Ok(());
        }
        self.agent()?
            .resize_pty(&req.id, &req.exec_id, req.width, req.height)
            .await
            .map_err(|e| self.agent_err(e))
    }

    pub fn close_io(&self, req: CloseIoRequest) -> Result<(), Status> {
        let p = self.proc(&req.id, &req.exec_id)?;
        if req.stdin {
            p.close_stdin.send_replace(true);
        }
        Ok(())
    }

    /// Runs `f` on the execs of container `id` (an empty map when it is gone).
    fn execs<T>(&self, id: &str, f: impl FnOnce(&mut HashMap<String, Arc<Proc>>) -> T) -> T {
        let mut c = self.containers.lock().unwrap();
        match c.get_mut(id) {
            Some(c) => f(&mut c.execs),
            None => f(&mut HashMap::new()),
        }
    }
}

/// Waits for a process to exit, lets its output drain, records the exit and tells containerd.
async fn watch_exit(
    task: Arc<Task>,
    agent: AgentClient,
    p: Arc<Proc>,
    pumps: Vec<tokio::task::JoinHandle<()>>,
) {
    let (status, at) = match agent.wait_process(&p.container_id, &p.exec_id).await {
        Ok(w) => (
            w.exit_status,
            SystemTime::UNIX_EPOCH + Duration::from_nanos(w.exited_at_ns.max(0) as u64),
        ),
        Err(e) => {
            tracing::warn!("lost process {}/{}: {e}", p.container_id, p.exec_id);
            (task.vm.lost_status(), SystemTime::now())
        }
    };
    if !p.started() {
        // Deleted before it ran: it never exited.
        return;
    }
    for h in pumps {
        let _ = tokio::time::timeout(DRAIN_AFTER_EXIT, h).await;
    }
    p.exit.send_replace(Some((status, at)));
    let id = if p.exec_id.is_empty() {
        p.container_id.clone()
    } else {
        p.exec_id.clone()
    };
    task.publisher.publish(
        "/tasks/exit",
        "TaskExit",
        &ev::TaskExit {
            container_id: p.container_id.clone(),
            id,
            pid: p.pid(),
            exit_status: status,
            exited_at: Some(timestamp(at)),
        },
    );
}
