//! The task state of one shim: its microVM and the container inside, with their
//! processes ([`process`]), translated from containerd's task API into agent calls.

mod process;

pub use process::Proc;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use containerd_client::events as ev;
use ember_agent_api::{AgentClient, StdioConfig};
use ember_sandbox::{Sandbox, SandboxConfig};
use ember_ttrpc::{Code, Status};
use ember_vmm::Drive;
use tokio::sync::Notify;

use crate::config::RuntimeConfig;
use crate::events::Publisher;
use crate::rootfs::{self, BlockRootfs};
use ember_shim_api::*;

/// Drive id (virtio-blk serial) of the container rootfs.
const ROOTFS_DRIVE: &str = "rootfs";
/// Exit status reported when the VM disappeared under a process.
pub const LOST_STATUS: u32 = 255;
struct Container {
    bundle: String,
    rootfs: BlockRootfs,
    init: Arc<Proc>,
    execs: HashMap<String, Arc<Proc>>,
    paused: bool,
}

/// The shim's whole state.
pub struct Task {
    pub namespace: String,
    config: RuntimeConfig,
    /// This shim's directory: VM sockets and logs, the rootfs image.
    pub state_dir: PathBuf,
    publisher: Publisher,
    agent: Mutex<Option<AgentClient>>,
    sandbox: tokio::sync::Mutex<Option<Sandbox>>,
    containers: Mutex<HashMap<String, Container>>,
    /// The VM's shared directory (host bind mounts), on a VMM that has one.
    shared: Mutex<Option<ember_sandbox::share::SharedDir>>,
    /// Serialises Create and Delete.
    lifecycle: tokio::sync::Mutex<()>,
    pub shutdown: Notify,
}

fn err(code: Code, msg: impl Into<String>) -> Status {
    Status::new(code, msg)
}

fn agent_err(e: ember_ttrpc::Error) -> Status {
    match e {
        ember_ttrpc::Error::Status(s) => s,
        ember_ttrpc::Error::Closed => err(Code::Unavailable, "the microVM is gone"),
        other => err(other.code(), other.to_string()),
    }
}

impl Task {
    pub fn new(
        namespace: String,
        config: RuntimeConfig,
        state_dir: PathBuf,
        publisher: Publisher,
    ) -> Arc<Self> {
        Arc::new(Task {
            namespace,
            config,
            state_dir,
            publisher,
            agent: Mutex::new(None),
            sandbox: tokio::sync::Mutex::new(None),
            containers: Mutex::new(HashMap::new()),
            shared: Mutex::new(None),
            lifecycle: tokio::sync::Mutex::new(()),
            shutdown: Notify::new(),
        })
    }

    fn agent(&self) -> Result<AgentClient, Status> {
        self.agent
            .lock()
            .unwrap()
            .clone()
            .ok_or_else(|| err(Code::FailedPrecondition, "no microVM is running"))
    }

    fn proc(&self, id: &str, exec_id: &str) -> Result<Arc<Proc>, Status> {
        let c = self.containers.lock().unwrap();
        let c = c
            .get(id)
            .ok_or_else(|| err(Code::NotFound, format!("container {id} not found")))?;
        if exec_id.is_empty() {
            Ok(c.init.clone())
        } else {
            c.execs.get(exec_id).cloned().ok_or_else(|| {
                err(
                    Code::NotFound,
                    format!("process {exec_id} of {id} not found"),
                )
            })
        }
    }

    /// The bundle of container `id` and whether it is paused.
    fn container_info(&self, id: &str) -> (String, bool) {
        let c = self.containers.lock().unwrap();
        c.get(id)
            .map(|c| (c.bundle.clone(), c.paused))
            .unwrap_or_default()
    }

    pub async fn create(self: &Arc<Self>, req: CreateTaskRequest) -> Result<u32, Status> {
        let _l = self.lifecycle.lock().await;
        let t0 = std::time::Instant::now();
        if !self.containers.lock().unwrap().is_empty() {
            return Err(err(
                Code::FailedPrecondition,
                "this shim already runs a container: Ember gives each container its own microVM",
            ));
        }
        if !req.checkpoint.is_empty() {
            return Err(err(
                Code::Unimplemented,
                "checkpoint/restore is not supported",
            ));
        }
        if let Some(cg) = req
            .options
            .as_ref()
            .and_then(|o| RuncOptions::from_any(o).ok().flatten())
            .map(|o| o.shim_cgroup)
            .filter(|c| !c.is_empty())
        {
            crate::cgroup::join(&cg, std::process::id())
                .map_err(|e| err(Code::Internal, format!("moving the shim into {cg}: {e}")))?;
        }
        let bundle = PathBuf::from(&req.bundle);
        let spec_bytes = std::fs::read(bundle.join("config.json")).map_err(|e| {
            err(
                Code::InvalidArgument,
                format!("reading the bundle's config.json: {e}"),
            )
        })?;
        let mut spec: serde_json::Value = serde_json::from_slice(&spec_bytes)
            .map_err(|e| err(Code::InvalidArgument, format!("parsing config.json: {e}")))?;
        let annotations: HashMap<String, String> = spec
            .get("annotations")
            .and_then(|a| serde_json::from_value(a.clone()).ok())
            .unwrap_or_default();
        let cfg = self
            .config
            .clone()
            .with_annotations(&annotations)
            .map_err(|e| err(Code::InvalidArgument, e.to_string()))?;
        let (shared_dir, volumes) = self.prepare_volumes(&cfg, &mut spec, &bundle, &req.id)?;
        let spec_bytes =
            serde_json::to_vec(&spec).map_err(|e| err(Code::Internal, e.to_string()))?;

        let mounts = req.rootfs.clone();
        let (b, s) = (bundle.clone(), self.state_dir.clone());
        let rootfs = tokio::task::spawn_blocking(move || rootfs::prepare(&mounts, &b, &s))
            .await
            .map_err(|e| err(Code::Internal, e.to_string()))
            .and_then(|r| r.map_err(|e| err(Code::Internal, e.to_string())));
        let rootfs = rootfs.inspect_err(|_| self.cleanup_shares())?;
        tracing::info!(image = %rootfs.image.display(), build_ms = rootfs.build_time.as_millis() as u64, "rootfs ready");

        let sandbox = match self.boot(&cfg, &req.id, &rootfs, shared_dir).await {
            Ok(s) => s,
            Err(e) => {
                cleanup_rootfs(&rootfs, &bundle);
                self.cleanup_shares();
                return Err(e);
            }
        };
        let boot_timings = sandbox.timings();
        let agent = sandbox.agent().clone();
        // Exit times are taken in the guest: its clock is the host's.
        if let Err(e) = agent.set_clock(SystemTime::now()).await {
            tracing::warn!("setting the guest clock: {e}");
        }
        let rootfs_serial = sandbox
            .guest_serial(ROOTFS_DRIVE)
            .unwrap_or_else(|| ROOTFS_DRIVE.into());
        if let Some(pid) = sandbox.vm().pid() {
            let _ = std::fs::write(self.state_dir.join("vmm.pid"), pid.to_string());
        }
        *self.sandbox.lock().await = Some(sandbox);
        *self.agent.lock().unwrap() = Some(agent.clone());

        let created = agent
            .create_container(&ember_agent_api::CreateContainerRequest {
                container_id: req.id.clone(),
                spec_json: spec_bytes,
                rootfs: Some(ember_agent_api::BlockRootfs {
                    serial: rootfs_serial,
                    fstype: rootfs.fstype.clone(),
                    options: String::new(),
                    read_only: rootfs.read_only,
                    subpath: String::new(),
                    ..Default::default()
                }),
                stdio: Some(StdioConfig {
                    terminal: req.terminal,
                    stdin: !req.stdin.is_empty(),
                }),
                files: volumes.files,
            })
            .await;
        let pid = match created {
            Ok(r) => r.pid,
            Err(e) => {
                self.stop_vm().await;
                cleanup_rootfs(&rootfs, &bundle);
                self.cleanup_shares();
                return Err(agent_err(e));
            }
        };
        let init = Proc::new(
            &req.id,
            "",
            &req.stdin,
            &req.stdout,
            &req.stderr,
            req.terminal,
        );
        init.pid.store(pid, Ordering::SeqCst);
        self.record_timings(serde_json::json!({
            "id": req.id,
            "phase": "create",
            "rootfs_ms": rootfs.build_time.as_secs_f64() * 1e3,
            "vmm_ready_ms": boot_timings.vmm_ready.as_secs_f64() * 1e3,
            "agent_ready_ms": boot_timings.agent_ready.as_secs_f64() * 1e3,
            "create_total_ms": t0.elapsed().as_secs_f64() * 1e3,
        }));
        if let Err(e) = self.attach_stdio(&agent, &init).await {
            let _ = agent.remove_container(&req.id).await;
            self.stop_vm().await;
            cleanup_rootfs(&rootfs, &bundle);
            self.cleanup_shares();
            return Err(e);
        }
        self.containers.lock().unwrap().insert(
            req.id.clone(),
            Container {
                bundle: req.bundle.clone(),
                rootfs,
                init: init.clone(),
                execs: HashMap::new(),
                paused: false,
            },
        );
        tokio::spawn(watch_oom(agent, self.publisher.clone()));
        self.publisher.publish(
            "/tasks/create",
            "TaskCreate",
            &ev::TaskCreate {
                container_id: req.id.clone(),
                bundle: req.bundle.clone(),
                rootfs: req.rootfs.clone(),
                io: Some(ev::TaskIo {
                    stdin: req.stdin.clone(),
                    stdout: req.stdout.clone(),
                    stderr: req.stderr.clone(),
                    terminal: req.terminal,
                }),
                checkpoint: String::new(),
                pid,
            },
        );
        Ok(pid)
    }

    async fn boot(
        &self,
        cfg: &RuntimeConfig,
        id: &str,
        rootfs: &BlockRootfs,
        shared_dir: Option<PathBuf>,
    ) -> Result<Sandbox, Status> {
        let vm_dir = self.state_dir.join("vm");
        std::fs::create_dir_all(&vm_dir).map_err(|e| err(Code::Internal, e.to_string()))?;
        let name: String = id.chars().take(40).collect();
        let sc = SandboxConfig {
            id: name,
            vmm: cfg.vmm,
            vmm_binary: cfg.vmm_binary.clone(),
            kernel: cfg.kernel.clone(),
            initrd: cfg.initrd.clone(),
            kernel_args: cfg.kernel_args.clone(),
            vcpus: cfg.vcpus,
            memory_mib: cfg.memory_mib,
            accel: cfg.accel,
            drives: vec![Drive {
                id: ROOTFS_DRIVE.into(),
                path: rootfs.image.clone(),
                read_only: rootfs.read_only,
            }],
            state_dir: vm_dir,
            boot_timeout: Duration::from_secs(cfg.boot_timeout_secs),
            shared_dir,
            balloon: None,
        };
        let sb = Sandbox::boot(sc)
            .await
            .map_err(|e| err(Code::Internal, format!("starting the microVM: {e}")))?;
        tracing::info!(
            accel = ?sb.vm().accel(),
            agent_ms = sb.timings().agent_ready.as_millis() as u64,
            "microVM ready"
        );
        Ok(sb)
    }

    pub async fn delete(&self, id: &str, exec_id: &str) -> Result<DeleteResponse, Status> {
        if !exec_id.is_empty() {
            return self.delete_exec(id, exec_id).await;
        }
        let p = self.proc(id, "")?;
        let _l = self.lifecycle.lock().await;
        let t0 = std::time::Instant::now();
        if p.exited().is_none() && p.started.load(Ordering::SeqCst) {
            return Err(err(
                Code::FailedPrecondition,
                format!("task {id} is still running"),
            ));
        }
        if let Ok(agent) = self.agent() {
            let _ = tokio::time::timeout(Duration::from_secs(20), agent.remove_container(id)).await;
        }
        if let Some(shared) = self.shared.lock().unwrap().as_ref() {
            if let Err(e) = crate::volumes::release(shared, id) {
                tracing::warn!("releasing the volumes of {id}: {e}");
            }
        }
        // A created-but-never-started init ends with the container; it never ran, so
        // its status is 0, as runc's shim reports.
        let (status, at) = match p.exited() {
            Some(e) => e,
            None => {
                let e = (0, SystemTime::now());
                p.exit.send_replace(Some(e));
                e
            }
        };
        self.stop_vm().await;
        self.cleanup_shares();
        let c = self.containers.lock().unwrap().remove(id);
        if let Some(c) = c {
            cleanup_rootfs(&c.rootfs, Path::new(&c.bundle));
        }
        self.record_timings(serde_json::json!({
            "id": id,
            "phase": "delete",
            "teardown_ms": t0.elapsed().as_secs_f64() * 1e3,
        }));
        self.publisher.publish(
            "/tasks/delete",
            "TaskDelete",
            &ev::TaskDelete {
                container_id: id.into(),
                pid: p.pid(),
                exit_status: status,
                exited_at: Some(timestamp(at)),
                id: id.into(),
            },
        );
        Ok(DeleteResponse {
            pid: p.pid(),
            exit_status: status,
            exited_at: Some(timestamp(at)),
        })
    }

    /// Carries the spec's host bind mounts into the VM (see [`crate::volumes`]): on a
    /// VMM with a shared filesystem, makes the VM's shared directory (returned for
    /// the VM's configuration) and shares them there; else copies single files in.
    fn prepare_volumes(
        &self,
        cfg: &RuntimeConfig,
        spec: &mut serde_json::Value,
        bundle: &Path,
        id: &str,
    ) -> Result<(Option<PathBuf>, crate::volumes::Volumes), Status> {
        use crate::volumes::{prepare, Transport};
        let shared = match cfg.vmm {
            ember_vmm::VmmKind::Qemu => Some(
                ember_sandbox::share::SharedDir::create(&self.state_dir.join("vm"))
                    .map_err(|e| err(Code::Internal, e.to_string()))?,
            ),
            ember_vmm::VmmKind::Firecracker => None,
        };
        let transport = shared
            .as_ref()
            .map(Transport::Shared)
            .unwrap_or(Transport::CopyFiles);
        match prepare(spec, bundle, id, transport) {
            Ok(v) => {
                let path = shared.as_ref().map(|s| s.path().to_path_buf());
                *self.shared.lock().unwrap() = shared;
                Ok((path, v))
            }
            Err(e) => {
                self.cleanup_shares();
                Err(e.into())
            }
        }
    }

    /// Unmounts and removes the VM's shared directory, if any.
    fn cleanup_shares(&self) {
        self.shared.lock().unwrap().take();
        let dir = self
            .state_dir
            .join("vm")
            .join(ember_sandbox::share::DIR_NAME);
        if let Err(e) = ember_sandbox::share::cleanup(&dir) {
            tracing::warn!("cleaning up {}: {e}", dir.display());
        }
    }

    /// Appends a timing record to `$EMBER_SHIM_TIMINGS` (used by the benchmarks).
    fn record_timings(&self, v: serde_json::Value) {
        tracing::info!(timings = %v, "timings");
        if let Some(path) = std::env::var_os("EMBER_SHIM_TIMINGS") {
            use std::io::Write;
            if let Ok(mut f) = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
            {
                let _ = writeln!(f, "{v}");
            }
        }
    }

    async fn stop_vm(&self) {
        self.agent.lock().unwrap().take();
        if let Some(sb) = self.sandbox.lock().await.take() {
            match sb.shutdown().await {
                Ok(exit) => tracing::info!(?exit, "microVM stopped"),
                Err(e) => tracing::warn!("stopping the microVM: {e}"),
            }
        }
        let _ = std::fs::remove_file(self.state_dir.join("vmm.pid"));
    }

    pub async fn pause(&self, id: &str) -> Result<(), Status> {
        self.proc(id, "")?;
        self.agent()?.pause_container(id).await.map_err(agent_err)?;
        if let Some(c) = self.containers.lock().unwrap().get_mut(id) {
            c.paused = true;
        }
        self.publisher.publish(
            "/tasks/paused",
            "TaskPaused",
            &ev::TaskPaused {
                container_id: id.into(),
            },
        );
        Ok(())
    }

    pub async fn resume(&self, id: &str) -> Result<(), Status> {
        self.proc(id, "")?;
        self.agent()?
            .resume_container(id)
            .await
            .map_err(agent_err)?;
        if let Some(c) = self.containers.lock().unwrap().get_mut(id) {
            c.paused = false;
        }
        self.publisher.publish(
            "/tasks/resumed",
            "TaskResumed",
            &ev::TaskResumed {
                container_id: id.into(),
            },
        );
        Ok(())
    }

    pub async fn pids(&self, id: &str) -> Result<PidsResponse, Status> {
        self.proc(id, "")?;
        let pids = self.agent()?.list_pids(id).await.map_err(agent_err)?;
        Ok(PidsResponse {
            processes: pids
                .into_iter()
                .map(|pid| ProcessInfo { pid, info: None })
                .collect(),
        })
    }

    pub async fn stats(&self, id: &str) -> Result<StatsResponse, Status> {
        self.proc(id, "")?;
        let s = self.agent()?.stats(id).await.map_err(agent_err)?;
        let m = cgroup2::Metrics {
            pids: Some(cgroup2::PidsStat {
                current: s.pids_current,
                limit: s.pids_limit,
            }),
            cpu: Some(cgroup2::CpuStat {
                usage_usec: s.cpu_usage_usec,
                user_usec: s.cpu_user_usec,
                system_usec: s.cpu_system_usec,
            }),
            memory: Some(cgroup2::MemoryStat {
                usage: s.memory_usage_bytes,
                usage_limit: s.memory_limit_bytes,
            }),
            memory_events: Some(cgroup2::MemoryEvents {
                oom: s.oom_kills,
                oom_kill: s.oom_kills,
            }),
        };
        Ok(StatsResponse {
            stats: Some(to_any(cgroup2::TYPE_URL, &m)),
        })
    }

    pub async fn update(&self, req: UpdateTaskRequest) -> Result<(), Status> {
        self.proc(&req.id, "")?;
        let resources = req
            .resources
            .ok_or_else(|| err(Code::InvalidArgument, "no resources given"))?;
        self.agent()?
            .update_container(&req.id, resources.value)
            .await
            .map_err(agent_err)
    }

    pub fn connect(&self, id: &str) -> Result<ConnectResponse, Status> {
        let pid = self.proc(id, "").map(|p| p.pid()).unwrap_or(0);
        Ok(ConnectResponse {
            shim_pid: std::process::id(),
            task_pid: pid,
            version: env!("CARGO_PKG_VERSION").into(),
        })
    }

    /// Ends the shim once nothing runs in it (or at once with `now`).
    /// Whether the shim goes: it does when told to at once or when it holds no task.
    pub fn request_shutdown(&self, now: bool) -> Result<bool, Status> {
        if !now && !self.containers.lock().unwrap().is_empty() {
            return Ok(false);
        }
        self.shutdown.notify_one();
        Ok(true)
    }

    /// Stops everything (used when the shim is told to exit at once).
    pub async fn teardown(&self) {
        let ids: Vec<(String, BlockRootfs, String)> = self
            .containers
            .lock()
            .unwrap()
            .drain()
            .map(|(id, c)| (id, c.rootfs, c.bundle))
            .collect();
        self.stop_vm().await;
        self.cleanup_shares();
        for (_, rootfs, bundle) in ids {
            cleanup_rootfs(&rootfs, Path::new(&bundle));
        }
    }
}

async fn watch_oom(agent: AgentClient, publisher: Publisher) {
    while let Ok(e) = agent.wait_oom().await {
        publisher.publish(
            "/tasks/oom",
            "TaskOOM",
            &ev::TaskOom {
                container_id: e.container_id,
            },
        );
    }
}

fn cleanup_rootfs(r: &BlockRootfs, bundle: &Path) {
    if r.owned {
        let _ = std::fs::remove_file(&r.image);
    }
    let _ = nix::mount::umount2(&bundle.join("rootfs"), nix::mount::MntFlags::MNT_DETACH);
}
