//! Creating containers and exec processes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ember_agent_api::{CreateContainerRequest, CreateProcessRequest};
use ember_ttrpc::Status;
use oci_spec::runtime::{Process, Spec};
use tokio::sync::watch;

use super::layers::prepare_layered;
use super::process::{make_stdio, Pending, Proc};
use super::remove::{cleanup_now, Cleanup};
use super::rootfs::prepare_rootfs;
use super::{internal, validate_id, Agent, Container, R};
use crate::cgroup::Cgroup;
use crate::spawn::{self, Plan};
use crate::sys;

impl Agent {
    pub async fn create_container(self: &Arc<Self>, req: CreateContainerRequest) -> R<u32> {
        let id = req.container_id.clone();
        validate_id("container id", &id)?;
        {
            let containers = self.containers.lock().unwrap();
            let mut creating = self.creating.lock().unwrap();
            if containers.contains_key(&id) || !creating.insert(id.clone()) {
                return Err(Status::already_exists(format!(
                    "container {id:?} already exists"
                )));
            }
        }
        let res = self.create_inner(req).await;
        self.creating.lock().unwrap().remove(&id);
        res
    }

    async fn create_inner(self: &Arc<Self>, req: CreateContainerRequest) -> R<u32> {
        {
            let mut named: Vec<&[u8]> = vec![&req.spec_json];
            named.extend(req.rootfs.iter().map(|r| r.file.as_bytes()));
            named.extend(req.layers.iter().map(|r| r.file.as_bytes()));
            named.extend(req.upper.iter().map(|r| r.file.as_bytes()));
            crate::identity::ensure_shared_for(&named).map_err(Status::internal)?;
        }
        let id = req.container_id.clone();
        let spec: Spec = serde_json::from_slice(&req.spec_json)
            .map_err(|e| Status::invalid_argument(format!("bad OCI spec JSON: {e}")))?;
        let process = spec
            .process()
            .clone()
            .ok_or_else(|| Status::invalid_argument("spec has no process"))?;
        if process.args().as_ref().is_none_or(|a| a.is_empty()) {
            return Err(Status::invalid_argument("spec process.args is empty"));
        }
        let confinement = crate::container::policy::prepare(&spec)
            .map_err(|e| Status::invalid_argument(format!("container {id:?}: {e}")))?;
        for w in &confinement.warnings {
            tracing::warn!(container = %id, "{w}");
        }
        let rootfs_cfg = match (&req.rootfs, req.layers.is_empty()) {
            (_, false) => None,
            (Some(r), true) => Some(r.clone()),
            (None, true) => return Err(Status::invalid_argument("rootfs is required")),
        };
        let stdio_cfg = req.stdio.clone().unwrap_or_default();
        let state_dir = self.cfg.state_dir.join(&id);
        std::fs::create_dir_all(&state_dir).map_err(|e| internal("creating state dir", e))?;

        let mut cleanup = Cleanup {
            state_dir: Some(state_dir.clone()),
            cgroup: None,
            loop_numbers: Vec::new(),
        };
        // Before the spec's mounts, which may name them.
        self.write_files(&req.files)?;
        let (rootfs, rootfs_loops) = {
            let sd = state_dir.clone();
            let (layers, upper) = (req.layers.clone(), req.upper.clone());
            tokio::task::spawn_blocking(move || match rootfs_cfg {
                Some(r) => prepare_rootfs(&r, &sd).map(|(root, l)| (root, l.into_iter().collect())),
                None => prepare_layered(&layers, upper.as_ref(), &sd),
            })
            .await
            .map_err(|e| internal("rootfs", e))??
        };
        cleanup.loop_numbers = rootfs_loops.clone();
        let cg = match &self.cgroup_parent {
            Some(parent) => {
                let cg = Cgroup::create(parent, &id).map_err(|e| internal("creating cgroup", e))?;
                cleanup.cgroup = Some(cg.clone());
                let res = spec.linux().as_ref().and_then(|l| l.resources().as_ref());
                if let Some(res) = res {
                    cg.apply(res).map_err(|e| {
                        Status::invalid_argument(format!("applying resources: {e}"))
                    })?;
                }
                Some(cg)
            }
            None => {
                tracing::warn!(container = %id, "no cgroups: device rules not enforced");
                None
            }
        };
        let console = process
            .console_size()
            .map(|b| (b.width() as u32, b.height() as u32));
        let terminal = stdio_cfg.terminal;
        let mut parts = make_stdio(&stdio_cfg).map_err(|e| internal("creating stdio", e))?;
        let pty = parts.pty.take();
        let plan = Plan::Init {
            spec: Box::new(spec.clone()),
            rootfs,
            cgroup: cg.as_ref().map(|c| c.path.clone()),
            terminal,
            metadata_dir: self
                .cfg
                .metadata_dir
                .is_dir()
                .then(|| self.cfg.metadata_dir.clone()),
            name_files: crate::network::files::for_container(&self.cfg.network_dir, &spec),

            seccomp: confinement.seccomp.clone(),
        };
        let (pty, console_child) = pty.unzip();
        let (spawned, outcome) = spawn::spawn(&plan, parts.child, console_child)
            .await
            .map_err(|e| internal("spawning container init", e))?;
        self.reaper.register(spawned.helper_pid);
        let init = Arc::new(Proc {
            exec_id: String::new(),
            terminal,
            pid: AtomicI32::new(0),
            pending: tokio::sync::Mutex::new(None),
            stdin: tokio::sync::Mutex::new(parts.stdin),
            stdin_enabled: stdio_cfg.stdin,
            stdout: parts.stdout,
            stderr: parts.stderr,
            pty_master: Mutex::new(None),
            pty_size: Mutex::new(console),
            exit: watch::channel(None).0,
        });
        if let Some(setup) = pty {
            init.attach_pty(setup).await;
        }
        let container = Arc::new(Container {
            id: id.clone(),
            cgroup: cg,
            state_dir,
            rootfs_loops,
            init: init.clone(),
            execs: Mutex::new(HashMap::new()),
            removing: AtomicBool::new(false),
            oom_seen: AtomicU64::new(0),
            seccomp: confinement.seccomp,
        });
        if let Some(pid) = outcome.pid {
            self.watch_exit(&container, &init, pid);
        }
        let mut outcome = outcome;
        if let (Some(cg), true, None) = (&container.cgroup, outcome.ready, &outcome.error) {
            // Once the init has made the container's /dev, before anything runs:
            // from here on the spec's device rules decide every open and mknod.
            let devices = spec
                .linux()
                .as_ref()
                .and_then(|l| l.resources().as_ref())
                .and_then(|r| r.devices().as_ref());
            if let Err(e) = crate::container::device_cgroup::apply(&cg.path, devices) {
                outcome.error = Some(e.to_string());
            }
        }
        if !outcome.ready || outcome.error.is_some() {
            if let Some(pid) = outcome.pid {
                let _ = sys::kill(pid, libc::SIGKILL);
                let _ = tokio::time::timeout(Duration::from_secs(5), init.wait()).await;
            }
            drop(cleanup_now(&container, &mut cleanup).await);
            let msg = outcome
                .error
                .unwrap_or_else(|| "container init exited during setup".into());
            return Err(Status::failed_precondition(format!(
                "creating container {id:?}: {msg}"
            )));
        }
        *init.pending.lock().await = Some(Pending::Init(spawned));
        cleanup.disarm();
        self.containers.lock().unwrap().insert(id, container);
        Ok(outcome.pid.unwrap_or(0) as u32)
    }

    pub async fn create_process(self: &Arc<Self>, req: CreateProcessRequest) -> R<()> {
        let c = self.container(&req.container_id)?;
        if req.exec_id.is_empty() {
            return Err(Status::invalid_argument(
                "exec_id must not be empty (it names the init process)",
            ));
        }
        validate_id("exec id", &req.exec_id)?;
        let process: Process = serde_json::from_slice(&req.process_json)
            .map_err(|e| Status::invalid_argument(format!("bad OCI process JSON: {e}")))?;
        if process.args().as_ref().is_none_or(|a| a.is_empty()) {
            return Err(Status::invalid_argument("process.args is empty"));
        }
        if c.removing.load(Ordering::SeqCst) {
            return Err(Status::failed_precondition("container is being removed"));
        }
        if c.init.exited().is_some() {
            return Err(Status::failed_precondition(format!(
                "container {:?} is not running",
                c.id
            )));
        }
        let cfg = req.stdio.clone().unwrap_or_default();
        let console = process
            .console_size()
            .map(|b| (b.width() as u32, b.height() as u32));
        let mut execs = c.execs.lock().unwrap();
        if execs.contains_key(&req.exec_id) {
            return Err(Status::already_exists(format!(
                "process {:?} already exists in container {:?}",
                req.exec_id, c.id
            )));
        }
        let mut parts = make_stdio(&cfg).map_err(|e| internal("creating stdio", e))?;
        let p = Arc::new(Proc {
            exec_id: req.exec_id.clone(),
            terminal: cfg.terminal,
            pid: AtomicI32::new(0),
            pending: tokio::sync::Mutex::new(Some(Pending::Exec {
                process: Box::new(process),
                stdio: parts.child,
                pty: parts.pty.take(),
            })),
            stdin: tokio::sync::Mutex::new(parts.stdin),
            stdin_enabled: cfg.stdin,
            stdout: parts.stdout,
            stderr: parts.stderr,
            pty_master: Mutex::new(None),
            pty_size: Mutex::new(console),
            exit: watch::channel(None).0,
        });
        execs.insert(req.exec_id, p);
        Ok(())
    }
}
