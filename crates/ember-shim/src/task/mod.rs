//! The containers of a shim, all in its one VM ([`crate::vm`]), with their
//! processes ([`process`]), translated from containerd's task API into agent calls.

mod create;
mod layered;
mod process;

pub use process::Proc;

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use containerd_client::events as ev;
use ember_agent_api::AgentClient;
use ember_sandbox::Region;
use ember_ttrpc::{Code, Status};

use crate::events::Publisher;
use crate::rootfs::BlockRootfs;
use crate::vm::VmHost;
use ember_shim_api::*;

/// How long the shim of a named VM with nothing left waits before it exits.
const GROUPED_LINGER: Duration = Duration::from_millis(300);

/// Where a container's root filesystem lives.
enum Storage {
    /// A boot drive of the VM: the first container of a VM booted for it.
    BootDrive(BlockRootfs),
    /// A region of the VM's pool drive.
    Region(Region),
    /// An EROFS snapshot handed over as it is (layer images, writable image).
    Layered(layered::LayeredStorage),
}

struct Container {
    bundle: String,
    storage: Storage,
    init: Arc<Proc>,
    execs: HashMap<String, Arc<Proc>>,
    paused: bool,
    hooks: crate::hooks::ContainerHooks,
}

/// The shim's containers and their processes, over its VM.
pub struct Task {
    pub namespace: String,
    pub vm: Arc<VmHost>,
    publisher: Publisher,
    containers: Mutex<HashMap<String, Container>>,
}

fn err(code: Code, msg: impl Into<String>) -> Status {
    Status::new(code, msg)
}

impl Task {
    pub fn new(vm: Arc<VmHost>, publisher: Publisher) -> Arc<Self> {
        Arc::new(Task {
            namespace: vm.namespace.clone(),
            vm,
            publisher,
            containers: Mutex::new(HashMap::new()),
        })
    }

    fn agent(&self) -> Result<AgentClient, Status> {
        self.vm.agent()
    }

    /// An agent call's error as the client sees it. A closed connection means the
    /// VM is gone, and says which: the call may have raced the VM's loss being
    /// recorded (after which new containers are refused by `admit`, naming it too).
    fn agent_err(&self, e: ember_ttrpc::Error) -> Status {
        match e {
            ember_ttrpc::Error::Status(s) => s,
            ember_ttrpc::Error::Closed => err(
                Code::Unavailable,
                format!("VM {} is gone (its agent connection closed)", self.vm.id),
            ),
            other => err(other.code(), other.to_string()),
        }
    }

    /// The OCI hooks of container `id` (taken out of the lock: they run for a while).
    fn hooks_of(&self, id: &str) -> Option<crate::hooks::ContainerHooks> {
        self.containers
            .lock()
            .unwrap()
            .get(id)
            .map(|c| c.hooks.clone())
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

    pub async fn delete(&self, id: &str, exec_id: &str) -> Result<DeleteResponse, Status> {
        if !exec_id.is_empty() {
            return self.delete_exec(id, exec_id).await;
        }
        let p = self.proc(id, "")?;
        let _l = self.vm.lifecycle.lock().await;
        let t0 = std::time::Instant::now();
        if p.exited().is_none() && p.started.load(Ordering::SeqCst) {
            return Err(err(
                Code::FailedPrecondition,
                format!("task {id} is still running"),
            ));
        }
        // The last container of a disposable clone goes with its VM (killed next):
        // unmounting, freeing its loop device and cgroup in the guest is work for
        // nothing.
        if !self.vm.disposable_with(id) {
            if let Ok(agent) = self.agent() {
                let _ =
                    tokio::time::timeout(Duration::from_secs(20), agent.remove_container(id)).await;
            }
        }
        if let Some(h) = self.hooks_of(id) {
            h.poststop().await;
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
        self.undo_volumes(id);
        let c = self.containers.lock().unwrap().remove(id);
        if let Some(c) = c {
            self.release_storage(&c.storage, Path::new(&c.bundle));
        }
        let _ = std::fs::remove_dir_all(self.vm.container_dir(id));
        self.vm.leave(id).await;
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

    /// Gives back what held a container's root filesystem.
    fn release_storage(&self, storage: &Storage, bundle: &Path) {
        match storage {
            Storage::Region(r) => self.vm.release_region(*r),
            Storage::BootDrive(r) => cleanup_rootfs(r, bundle),
            Storage::Layered(l) => self.release_layered(l),
        }
        let _ = nix::mount::umount2(&bundle.join("rootfs"), nix::mount::MntFlags::MNT_DETACH);
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

    pub async fn pause(&self, id: &str) -> Result<(), Status> {
        self.proc(id, "")?;
        self.agent()?
            .pause_container(id)
            .await
            .map_err(|e| self.agent_err(e))?;
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
            .map_err(|e| self.agent_err(e))?;
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
        let pids = self
            .agent()?
            .list_pids(id)
            .await
            .map_err(|e| self.agent_err(e))?;
        Ok(PidsResponse {
            processes: pids
                .into_iter()
                .map(|pid| ProcessInfo { pid, info: None })
                .collect(),
        })
    }

    pub async fn stats(&self, id: &str) -> Result<StatsResponse, Status> {
        self.proc(id, "")?;
        let s = self
            .agent()?
            .stats(id)
            .await
            .map_err(|e| self.agent_err(e))?;
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
            .map_err(|e| self.agent_err(e))
    }

    pub fn connect(&self, id: &str) -> Result<ConnectResponse, Status> {
        let pid = self.proc(id, "").map(|p| p.pid()).unwrap_or(0);
        Ok(ConnectResponse {
            shim_pid: std::process::id(),
            task_pid: pid,
            version: env!("CARGO_PKG_VERSION").into(),
        })
    }

    /// Whether the shim goes now: at once with `now`, else only when it holds no
    /// container and no explicit VM runs. The shim of a named VM lingers a moment
    /// first (and stays if a container came meanwhile): another container of the
    /// VM whose `start` found this shim may be on its way.
    pub fn request_shutdown(&self, now: bool) -> Result<bool, Status> {
        if now || (self.vm.may_exit() && !self.vm.grouped) {
            self.vm.exit_shim();
            return Ok(true);
        }
        if !self.vm.may_exit() {
            tracing::info!(vm = %self.vm.id, "shutdown ignored: the VM still serves");
            return Ok(false);
        }
        let vm = self.vm.clone();
        tokio::spawn(async move {
            tokio::time::sleep(GROUPED_LINGER).await;
            // A Create under way holds the lock: the shim stays for it.
            let Ok(_quiet) = vm.lifecycle.try_lock() else {
                return;
            };
            if vm.may_exit() {
                vm.exit_shim();
            }
        });
        Ok(false)
    }

    /// Stops everything (the shim exits).
    pub async fn teardown(&self) {
        let all: Vec<(Storage, String)> = self
            .containers
            .lock()
            .unwrap()
            .drain()
            .map(|(_, c)| (c.storage, c.bundle))
            .collect();
        self.vm.teardown().await;
        for (storage, bundle) in all {
            self.release_storage(&storage, Path::new(&bundle));
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

/// Removes a rootfs image built for the container. A VM that still runs keeps the
/// file open as a boot drive: its blocks are punched out first, so the space comes
/// back at once.
fn cleanup_rootfs(r: &BlockRootfs, bundle: &Path) {
    if r.owned {
        if let Ok(f) = std::fs::OpenOptions::new().write(true).open(&r.image) {
            let len = f.metadata().map(|m| m.len()).unwrap_or(0);
            if len > 0 {
                let _ = ember_sandbox::pool::punch_hole(&f, 0, len);
            }
        }
        let _ = std::fs::remove_file(&r.image);
    }
    let _ = nix::mount::umount2(&bundle.join("rootfs"), nix::mount::MntFlags::MNT_DETACH);
}
