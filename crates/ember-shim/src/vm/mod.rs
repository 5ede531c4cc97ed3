//! The VM side of a shim: the one microVM it owns (boot, pool drive, lifecycle,
//! metadata, description), shared by every container the shim runs.
//!
//! A VM is *implicit* when it was booted for a container's Create (it goes with the
//! last container) and *explicit* when made by `CreateVM` (it stays until `StopVM`,
//! or until its last container is deleted with `ExitAfterAllTasksDeleted`).

mod balloon;
mod boot;
mod fifo;
mod jail;
pub mod metadata;
mod spec;

pub use spec::BootSpec;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use ember_agent_api::AgentClient;
use ember_sandbox::share::SharedDir;
use ember_sandbox::{Pool, Region, Sandbox};
use ember_ttrpc::{Code, Status};
use ember_vmm::{Accel, VmmKind};
use tokio::sync::Notify;

use crate::config::RuntimeConfig;

/// Exit status of processes whose VM vanished under them.
pub const LOST_STATUS: u32 = 255;
/// Exit status of processes whose VM was stopped by `StopVM` (128 + SIGKILL).
pub const STOPPED_STATUS: u32 = 137;

/// Where the VM is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Not booted (yet, or again: an implicit VM whose containers are all gone).
    Absent,
    Booting,
    Running,
    Paused,
    /// `StopVM` is under way; new containers are refused.
    Stopping,
    /// Stopped by `StopVM`; the shim goes once its containers are deleted.
    Stopped,
    /// The VMM died under the shim.
    Lost,
}

impl Phase {
    pub fn name(self) -> &'static str {
        match self {
            Phase::Absent => "absent",
            Phase::Booting => "booting",
            Phase::Running => "running",
            Phase::Paused => "paused",
            Phase::Stopping => "stopping",
            Phase::Stopped | Phase::Lost => "stopped",
        }
    }

    fn up(self) -> bool {
        matches!(self, Phase::Running | Phase::Paused)
    }
}

/// What a booted VM is, as `GetVMInfo` and `Describe` report it.
#[derive(Debug, Clone)]
pub struct Booted {
    pub vcpus: u8,
    pub memory_mib: u32,
    pub vmm: VmmKind,
    pub accel: Accel,
    pub vmm_pid: u32,
    pub started_at: SystemTime,
    /// The VMM's control socket (QMP, or Firecracker's API).
    pub socket_path: PathBuf,
    /// Firecracker's hybrid vsock socket, QEMU's agent channel socket.
    pub vsock_path: PathBuf,
    pub cgroup: String,
    pub log_fifo: String,
    pub metrics_fifo: String,
    pub shared_dir: Option<PathBuf>,
    /// The runtime configuration the VM was sized from.
    pub config: RuntimeConfig,
    pub timings: ember_sandbox::BootTimings,
    pub balloon: Option<ember_vmm::BalloonConfig>,
}

struct State {
    phase: Phase,
    explicit: bool,
    exit_after_all: bool,
    /// The VM was stopped on purpose: processes it takes with it exit 137, not 255.
    stop_requested: bool,
    booted: Option<Booted>,
    /// Bumped at every boot, so a monitor of an earlier boot never acts on a later one.
    generation: u64,
}

/// The one microVM of a shim.
pub struct VmHost {
    /// The VM's id: the group its containers name, or the container id of an
    /// ungrouped shim.
    pub id: String,
    pub namespace: String,
    /// Whether containers name this VM (else it is one container's own).
    pub grouped: bool,
    pub config: RuntimeConfig,
    /// Why the runtime configuration did not load when the shim started serving
    /// (it serves with the defaults and refuses to boot VMs, with this message).
    pub config_error: Option<String>,
    /// The shim's state directory: `vm/` (VMM sockets and logs, `shared/`), `pool`,
    /// `containers/<id>/`.
    pub dir: PathBuf,
    sandbox: tokio::sync::Mutex<Option<Sandbox>>,
    agent: Mutex<Option<AgentClient>>,
    state: Mutex<State>,
    pool: Mutex<Option<Arc<Pool>>>,
    /// The VM's shared directory (host bind mounts), on a VMM that has one.
    shared: Mutex<Option<SharedDir>>,
    metadata: Mutex<Option<serde_json::Value>>,
    /// Serialises metadata changes with their pushes to the agent.
    metadata_lock: tokio::sync::Mutex<()>,
    /// Ids of the containers in the VM.
    members: Mutex<BTreeSet<String>>,
    /// Serialises boots, stops, container creates and deletes.
    pub lifecycle: tokio::sync::Mutex<()>,
    /// Tells the copiers of the log and metrics FIFOs to stop.
    fifo_stop: Mutex<Option<tokio::sync::watch::Sender<bool>>>,
    /// What Ember made for the VM's network (taps, redirects, its namespace).
    pub(crate) net: tokio::sync::Mutex<Option<crate::net::VmNet>>,
    /// Fires when the shim may exit.
    pub shutdown: Notify,
    shutting_down: AtomicBool,
}

pub fn err(code: Code, msg: impl Into<String>) -> Status {
    Status::new(code, msg)
}

impl VmHost {
    pub fn new(
        id: String,
        grouped: bool,
        namespace: String,
        config: Result<RuntimeConfig, String>,
        dir: PathBuf,
    ) -> Arc<Self> {
        let (config, config_error) = match config {
            Ok(c) => (c, None),
            Err(e) => (RuntimeConfig::default(), Some(e)),
        };
        Arc::new(VmHost {
            id,
            grouped,
            namespace,
            config,
            config_error,
            dir,
            sandbox: tokio::sync::Mutex::new(None),
            agent: Mutex::new(None),
            state: Mutex::new(State {
                phase: Phase::Absent,
                explicit: false,
                exit_after_all: false,
                stop_requested: false,
                booted: None,
                generation: 0,
            }),
            pool: Mutex::new(None),
            shared: Mutex::new(None),
            metadata: Mutex::new(None),
            metadata_lock: tokio::sync::Mutex::new(()),
            members: Mutex::new(BTreeSet::new()),
            lifecycle: tokio::sync::Mutex::new(()),
            fifo_stop: Mutex::new(None),
            net: tokio::sync::Mutex::new(None),
            shutdown: Notify::new(),
            shutting_down: AtomicBool::new(false),
        })
    }

    /// The runtime configuration, when it loaded.
    pub fn usable_config(&self) -> Result<&RuntimeConfig, Status> {
        match &self.config_error {
            None => Ok(&self.config),
            Some(e) => Err(err(Code::FailedPrecondition, e.clone())),
        }
    }

    pub fn phase(&self) -> Phase {
        self.state.lock().unwrap().phase
    }

    pub fn booted(&self) -> Option<Booted> {
        self.state.lock().unwrap().booted.clone()
    }

    /// The agent of the running VM.
    pub fn agent(&self) -> Result<AgentClient, Status> {
        self.agent
            .lock()
            .unwrap()
            .clone()
            .ok_or_else(|| self.no_microvm())
    }

    /// A VM whose agent or pool is gone, e.g. a Create that raced its VMM's death.
    fn no_microvm(&self) -> Status {
        self.admit().err().unwrap_or_else(|| {
            err(
                Code::FailedPrecondition,
                format!("VM {} has no running microVM", self.id),
            )
        })
    }

    /// The exit status of a process whose agent connection broke.
    pub fn lost_status(&self) -> u32 {
        if self.state.lock().unwrap().stop_requested {
            STOPPED_STATUS
        } else {
            LOST_STATUS
        }
    }

    /// Checks the `id` named by a VM control call.
    pub fn check_id(&self, id: &str) -> Result<(), Status> {
        if id.is_empty() {
            return Err(err(Code::InvalidArgument, "a VMID is required"));
        }
        if id != self.id {
            return Err(err(
                Code::NotFound,
                format!("VM {id} not found (this shim owns VM {})", self.id),
            ));
        }
        Ok(())
    }

    /// Whether a new container may join: refused while the VM stops or after it
    /// stopped or died.
    pub fn admit(&self) -> Result<(), Status> {
        let phase = self.phase();
        let why = match phase {
            Phase::Stopping => "is stopping",
            Phase::Stopped => "was stopped",
            Phase::Lost => "is gone (its VMM exited)",
            _ => return Ok(()),
        };
        Err(err(
            Code::FailedPrecondition,
            format!("VM {} {why}", self.id),
        ))
    }

    pub fn members(&self) -> Vec<String> {
        self.members.lock().unwrap().iter().cloned().collect()
    }

    pub fn join(&self, container: &str) {
        self.members.lock().unwrap().insert(container.to_string());
    }

    /// Whether `container` is the last one of an implicit clone of a template: its
    /// VM is killed when it goes, and nothing in the guest needs undoing first.
    pub fn disposable_with(&self, container: &str) -> bool {
        let last = {
            let m = self.members.lock().unwrap();
            m.len() == 1 && m.contains(container)
        };
        let (up, explicit) = {
            let s = self.state.lock().unwrap();
            (s.phase.up(), s.explicit)
        };
        last && up && self.disposable(explicit)
    }

    /// Whether the VM is an implicit clone of a template (not `explicit`): it holds
    /// nothing its last container did not take along (its pool drive goes next,
    /// shared-directory writes are synchronous).
    fn disposable(&self, explicit: bool) -> bool {
        !explicit && self.booted().is_some_and(|b| b.timings.from_template)
    }

    /// Removes a container; stops the VM when it was the last one of an implicit
    /// VM (or of an explicit one that exits after all tasks), and lets the shim
    /// exit when nothing is left for it to serve.
    pub async fn leave(&self, container: &str) {
        let empty = {
            let mut m = self.members.lock().unwrap();
            m.remove(container);
            m.is_empty()
        };
        if !empty {
            return;
        }
        let (phase, explicit, exit_after_all) = {
            let s = self.state.lock().unwrap();
            (s.phase, s.explicit, s.exit_after_all)
        };
        if phase.up() && (!explicit || exit_after_all) {
            // A disposable clone is killed rather than powered off.
            let grace = if self.disposable(explicit) {
                Duration::ZERO
            } else {
                Duration::from_secs(10)
            };
            self.stop(grace, Phase::Absent).await;
        }
        // After StopVM (of any VM) the shim goes with the last container; an explicit
        // VM's shim also when its VMM died or it exits after all tasks.
        if phase == Phase::Stopped || (explicit && (exit_after_all || phase == Phase::Lost)) {
            self.exit_shim();
        }
    }

    /// Whether the shim may exit now: no containers left and no explicit VM
    /// running (containerd's `Shutdown` is ignored otherwise).
    pub fn may_exit(&self) -> bool {
        if !self.members.lock().unwrap().is_empty() {
            return false;
        }
        let s = self.state.lock().unwrap();
        !(s.explicit && matches!(s.phase, Phase::Booting | Phase::Running | Phase::Paused))
    }

    /// Lets the serving loop end.
    pub fn exit_shim(&self) {
        if !self.shutting_down.swap(true, Ordering::SeqCst) {
            self.shutdown.notify_one();
        }
    }

    /// The pool drive of the running VM.
    pub fn pool(&self) -> Result<Arc<Pool>, Status> {
        self.pool
            .lock()
            .unwrap()
            .clone()
            .ok_or_else(|| self.no_microvm())
    }

    /// Gives a container's region back (hole punch); a VM already gone took its pool
    /// file with it.
    pub fn release_region(&self, region: Region) {
        if let Some(pool) = self.pool.lock().unwrap().clone() {
            if let Err(e) = pool.release(region) {
                tracing::warn!("releasing {region:?}: {e}");
            }
        }
    }

    /// The VM's shared directory, on a VMM that shares host directories.
    pub fn shared_dir(&self) -> Option<SharedDir> {
        self.shared.lock().unwrap().clone()
    }

    /// Configures the guest's network; a VM restored from a template finds its
    /// NICs by the template's MACs and gives them the asked-for ones.
    pub async fn configure_network(
        &self,
        req: &ember_agent_api::ConfigureNetworkRequest,
    ) -> Result<(), ember_ttrpc::Error> {
        let (agent, req) = {
            let sb = self.sandbox.lock().await;
            let Some(sb) = sb.as_ref() else {
                return Err(ember_ttrpc::Error::Status(Status::new(
                    Code::FailedPrecondition,
                    format!("VM {} is not running", self.id),
                )));
            };
            (sb.agent().clone(), sb.guest_network(req))
        };
        agent.configure_network(&req).await
    }

    /// Whether VMs of `cfg` start from templates (their first container then goes
    /// into the pool drive, like every later one).
    pub fn templated(cfg: &RuntimeConfig) -> bool {
        cfg.templates && cfg.vmm == VmmKind::Qemu
    }

    /// The serial under which the guest sees drive `id`.
    pub async fn guest_serial(&self, id: &str) -> Option<String> {
        self.sandbox.lock().await.as_ref()?.guest_serial(id)
    }

    /// Directory of one container's host-side files (a built rootfs image).
    pub fn container_dir(&self, container: &str) -> PathBuf {
        container_dir(&self.dir, container)
    }

    /// VM-wide pause (the vCPUs stop).
    pub async fn pause(&self) -> Result<(), Status> {
        let sb = self.running().await?;
        sb.as_ref()
            .expect("running() checked")
            .vm()
            .pause()
            .await
            .map_err(|e| err(Code::Internal, format!("pausing VM {}: {e}", self.id)))?;
        self.set_phase_if(Phase::Running, Phase::Paused);
        Ok(())
    }

    pub async fn resume(&self) -> Result<(), Status> {
        let sb = self.running().await?;
        sb.as_ref()
            .expect("running() checked")
            .vm()
            .resume()
            .await
            .map_err(|e| err(Code::Internal, format!("resuming VM {}: {e}", self.id)))?;
        self.set_phase_if(Phase::Paused, Phase::Running);
        Ok(())
    }

    fn set_phase_if(&self, from: Phase, to: Phase) {
        let mut s = self.state.lock().unwrap();
        if s.phase == from {
            s.phase = to;
        }
    }

    fn not_running(&self) -> Status {
        err(
            Code::FailedPrecondition,
            format!("VM {} is {}", self.id, self.phase().name()),
        )
    }

    fn phase_up(&self) -> bool {
        self.phase().up()
    }

    pub fn require_up(&self) -> Result<(), Status> {
        if self.phase().up() {
            Ok(())
        } else {
            Err(self.not_running())
        }
    }

    /// The sandbox of the running VM, held while the caller talks to its VMM.
    async fn running(&self) -> Result<tokio::sync::MutexGuard<'_, Option<Sandbox>>, Status> {
        self.require_up()?;
        let sb = self.sandbox.lock().await;
        if sb.is_none() {
            return Err(self.not_running());
        }
        Ok(sb)
    }

    /// Stops the VMM (the guest first gets `grace` to power off) and ends in `end`:
    /// `Absent` for an implicit VM that may boot again, `Stopped` after `StopVM`.
    pub async fn stop(&self, grace: Duration, end: Phase) {
        {
            let mut s = self.state.lock().unwrap();
            s.phase = Phase::Stopping;
            s.stop_requested = true;
        }
        self.teardown_vm(grace).await;
        let mut s = self.state.lock().unwrap();
        s.phase = end;
        s.booted = None;
    }

    /// A VM never booted that `StopVM` ends: it refuses containers from now on.
    pub fn mark_stopped(&self) {
        let mut s = self.state.lock().unwrap();
        s.phase = Phase::Stopped;
        s.stop_requested = true;
    }

    /// Takes the VM down and removes its host files (pool, VMM pid).
    async fn teardown_vm(&self, grace: Duration) {
        self.agent.lock().unwrap().take();
        if let Some(tx) = self.fifo_stop.lock().unwrap().take() {
            let _ = tx.send(true);
        }
        if let Some(sb) = self.sandbox.lock().await.take() {
            let r = if grace.is_zero() {
                sb.kill().await
            } else {
                sb.shutdown_within(grace).await
            };
            match r {
                Ok(exit) => tracing::info!(?exit, vm = %self.id, "microVM stopped"),
                Err(e) => tracing::warn!("stopping the microVM: {e}"),
            }
        }
        // The taps go once the VMM that held them is gone.
        crate::net::release_for(self).await;
        self.pool.lock().unwrap().take();
        let _ = std::fs::remove_file(self.dir.join(POOL_FILE));
        self.shared.lock().unwrap().take();
        let shared = self.dir.join("vm").join(ember_sandbox::share::DIR_NAME);
        if let Err(e) = ember_sandbox::share::cleanup(&shared) {
            tracing::warn!("cleaning up {}: {e}", shared.display());
        }
        let _ = std::fs::remove_file(self.dir.join("vmm.pid"));
    }

    /// Called when the agent connection of boot `generation` closed.
    async fn vm_lost(&self, generation: u64) {
        {
            let mut s = self.state.lock().unwrap();
            if s.generation != generation || !matches!(s.phase, Phase::Running | Phase::Paused) {
                return;
            }
            s.phase = Phase::Lost;
        }
        tracing::warn!(vm = %self.id, "the microVM is gone");
        self.teardown_vm(Duration::ZERO).await;
        self.state.lock().unwrap().booted = None;
        if self.members.lock().unwrap().is_empty() {
            self.exit_shim();
        }
    }

    /// Ends everything (the shim exits).
    pub async fn teardown(&self) {
        if self.phase().up() || self.phase() == Phase::Booting {
            self.stop(Duration::from_secs(2), Phase::Stopped).await;
        } else {
            self.teardown_vm(Duration::ZERO).await;
        }
    }

    /// Ember's description of the VM (`ember.vm.v1.VMs`).
    pub fn describe(&self) -> ember_vm_api::ember::VmDescription {
        let (phase, explicit, booted) = {
            let s = self.state.lock().unwrap();
            (s.phase, s.explicit, s.booted.clone())
        };
        let mut d = ember_vm_api::ember::VmDescription {
            vm_id: self.id.clone(),
            state: phase.name().into(),
            containers: self.members(),
            explicit,
            namespace: self.namespace.clone(),
            vmm: vmm_name(self.config.vmm).into(),
            vcpus: self.config.vcpus.into(),
            memory_mib: self.config.memory_mib,
            shared_fs: "none".into(),
            ..Default::default()
        };
        if let Some(b) = booted {
            d.vcpus = b.vcpus.into();
            d.memory_mib = b.memory_mib;
            d.vmm_pid = b.vmm_pid;
            d.vmm = vmm_name(b.vmm).into();
            d.accel = match b.accel {
                Accel::Kvm => "kvm",
                Accel::Tcg => "tcg",
                Accel::Auto => "auto",
            }
            .into();
            d.started_at = b
                .started_at
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|t| t.as_secs() as i64)
                .unwrap_or(0);
            d.shared_fs = if b.shared_dir.is_some() {
                "virtio-9p"
            } else {
                "none"
            }
            .into();
        }
        d
    }

    /// `GetVMInfo`'s answer.
    pub fn info(&self) -> Result<ember_vm_api::fc::GetVmInfoResponse, Status> {
        let b = self.booted().ok_or_else(|| {
            err(
                Code::NotFound,
                format!("VM {} is {}", self.id, self.phase().name()),
            )
        })?;
        Ok(ember_vm_api::fc::GetVmInfoResponse {
            vmid: self.id.clone(),
            socket_path: b.socket_path.display().to_string(),
            log_fifo_path: b.log_fifo.clone(),
            metrics_fifo_path: b.metrics_fifo.clone(),
            cgroup_path: b.cgroup.clone(),
            v_sock_path: b.vsock_path.display().to_string(),
        })
    }
}

/// Name of the pool file in a VM's state directory.
pub const POOL_FILE: &str = "pool";

fn vmm_name(k: VmmKind) -> &'static str {
    match k {
        VmmKind::Qemu => "qemu",
        VmmKind::Firecracker => "firecracker",
    }
}

/// `dir/containers/<id>`, with the id made safe for a file name.
pub fn container_dir(dir: &Path, container: &str) -> PathBuf {
    let safe: String = container
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    dir.join("containers").join(safe)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_vm_without_its_microvm_is_named_in_the_refusal() {
        let dir = tempfile::tempdir().unwrap();
        let vm = VmHost::new(
            "doomed".into(),
            true,
            "ns".into(),
            Ok(RuntimeConfig::default()),
            dir.path().to_path_buf(),
        );
        for e in [vm.agent().err().unwrap(), vm.pool().err().unwrap()] {
            assert_eq!(e.code(), Code::FailedPrecondition);
            assert!(e.message().contains("doomed"), "{}", e.message());
        }
    }
}
