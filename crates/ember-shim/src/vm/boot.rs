//! Booting the VM: the pool drive and the boot drives, the shared directory, the
//! agent's block mounts, the metadata document, and the watch for a VMM that dies.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ember_agent_api::{BlockRootfs, MountBlockRequest};
use ember_sandbox::share::SharedDir;
use ember_sandbox::{Pool, Sandbox, SandboxConfig};
use ember_ttrpc::{Code, Status};
use ember_vmm::VmmKind;

use super::{err, fifo, BootSpec, Booted, Phase, VmHost, POOL_FILE};

impl VmHost {
    /// Boots the VM described by `spec` and waits for its agent. On failure nothing
    /// is left running and the VM is absent again.
    pub async fn boot(self: &Arc<Self>, spec: BootSpec) -> Result<(), Status> {
        let generation = {
            let mut s = self.state.lock().unwrap();
            if s.phase != Phase::Absent {
                return Err(err(
                    Code::AlreadyExists,
                    format!("VM {} is already {}", self.id, s.phase.name()),
                ));
            }
            s.phase = Phase::Booting;
            s.explicit = spec.explicit;
            s.exit_after_all = spec.exit_after_all;
            s.stop_requested = false;
            s.generation += 1;
            s.generation
        };
        match self.boot_inner(spec, generation).await {
            Ok(()) => Ok(()),
            Err(e) => {
                self.teardown_vm(Duration::ZERO).await;
                let mut s = self.state.lock().unwrap();
                s.phase = Phase::Absent;
                s.explicit = false;
                s.booted = None;
                Err(e)
            }
        }
    }

    async fn boot_inner(self: &Arc<Self>, spec: BootSpec, generation: u64) -> Result<(), Status> {
        let internal = |e: String| err(Code::Internal, e);
        let cfg = &spec.config;
        let vm_dir = self.dir.join("vm");
        std::fs::create_dir_all(&vm_dir).map_err(|e| internal(e.to_string()))?;
        let pool = Arc::new(
            Pool::create(&self.dir.join(POOL_FILE))
                .map_err(|e| internal(format!("creating the pool drive: {e}")))?,
        );
        // Host directories reach the guest through one shared directory (virtio-9p),
        // where the VMM can share one.
        let shared = match cfg.vmm {
            VmmKind::Qemu => Some(
                SharedDir::create(&vm_dir)
                    .map_err(|e| internal(format!("making the shared directory: {e}")))?,
            ),
            VmmKind::Firecracker => None,
        };
        let shared_dir = shared.as_ref().map(|s| s.path().to_path_buf());
        *self.shared.lock().unwrap() = shared;
        let mut drives = spec.drives.clone();
        drives.push(pool.drive());
        let name: String = self.id.chars().take(40).collect();
        let mut jail = match &spec.jail {
            Some(req) => Some(req.jail_config(&cfg.jailer)?),
            None => cfg.jailer.jail_config(),
        };
        // The VMM's uid is known (and held) before it starts: what it must own
        // (a tap, say) can be made for it first.
        if let Some(j) = jail.as_mut() {
            let uid = j
                .reserve(&self.id)
                .map_err(|e| internal(format!("jailing the VMM: {e}")))?;
            tracing::debug!(vm = %self.id, uid, "VMM jail uid");
        }
        let jail_netns = spec.jail.as_ref().and_then(|j| j.netns.clone());
        // Taps (and the VM's own namespace) before the VMM, which opens them: from the
        // first container's namespace, or those CreateVM's interfaces were given.
        let net = crate::net::prepare_for_boot(spec.network.clone(), self.dir.clone()).await?;
        let fc = spec.fc_network.as_ref();
        *self.net.lock().await = net
            .as_ref()
            .map(|n| n.net.clone())
            .or_else(|| fc.and_then(|f| f.host.clone()));
        let (nics, netns) = match (&net, fc) {
            (Some(n), _) => (n.nics.clone(), Some(n.net.netns.clone())),
            (None, Some(f)) => (f.nics.clone(), f.netns.clone()),
            (None, None) => (Vec::new(), None),
        };
        // A JailerConfig's NetNS applies where no network of its own was made.
        let netns = netns.or(jail_netns);
        // `..Default::default()` keeps fields SandboxConfig gains later at their defaults.
        #[allow(clippy::needless_update)]
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
            drives,
            state_dir: vm_dir.clone(),
            boot_timeout: Duration::from_secs(cfg.boot_timeout_secs),
            shared_dir: shared_dir.clone(),
            balloon: spec.balloon,
            nics,
            jail,
            log_max_bytes: cfg.log_max_bytes,
            netns,
            ..Default::default()
        };
        // Only VMs of the pool drive alone (and the shared directory) have a shape
        // that recurs: drives of one VM's own (CreateVM's, EROFS layers) do not.
        let store = cfg.template_store().filter(|_| spec.drives.is_empty());
        let sb = Sandbox::start(sc, store.as_ref())
            .await
            .map_err(|e| internal(format!("starting the microVM: {e}")))?;
        tracing::info!(
            vm = %self.id,
            accel = ?sb.vm().accel(),
            template = sb.template().unwrap_or("none"),
            ready_ms = sb.timings().identity_ready.as_millis() as u64,
            "microVM ready"
        );
        let agent = sb.agent().clone();
        // Exit times are taken in the guest: its clock is the host's (a clone's was
        // set with its identity).
        if !sb.timings().from_template {
            if let Err(e) = agent.set_clock(SystemTime::now()).await {
                tracing::warn!("setting the guest clock: {e}");
            }
        }
        let pid = sb.vm().pid().unwrap_or(0);
        let _ = std::fs::write(self.dir.join("vmm.pid"), pid.to_string());
        let (socket_path, vsock_path) = match cfg.vmm {
            VmmKind::Qemu => (vm_dir.join("qmp.sock"), vm_dir.join("agent.sock")),
            VmmKind::Firecracker => (vm_dir.join("firecracker.sock"), vm_dir.join("vsock.sock")),
        };
        let booted = Booted {
            vcpus: cfg.vcpus,
            memory_mib: cfg.memory_mib,
            vmm: cfg.vmm,
            accel: sb.vm().accel(),
            vmm_pid: pid,
            started_at: SystemTime::now(),
            socket_path,
            vsock_path,
            cgroup: vmm_cgroup(pid),
            log_fifo: fifo_name(&spec.log_fifo),
            metrics_fifo: fifo_name(&spec.metrics_fifo),
            shared_dir,
            config: cfg.clone(),
            timings: sb.timings(),
            balloon: spec.balloon,
        };
        let mounts: Vec<MountBlockRequest> = spec
            .mounts
            .iter()
            .map(|m| MountBlockRequest {
                device: Some(BlockRootfs {
                    serial: sb.guest_serial(&m.drive).unwrap_or_else(|| m.drive.clone()),
                    fstype: m.fstype.clone(),
                    options: m.options.clone(),
                    read_only: m.read_only,
                    ..Default::default()
                }),
                target: m.target.clone(),
            })
            .collect();
        *self.sandbox.lock().await = Some(sb);
        *self.agent.lock().unwrap() = Some(agent.clone());
        *self.pool.lock().unwrap() = Some(pool);
        for m in &mounts {
            agent.mount_block(m).await.map_err(|e| {
                err(
                    Code::Internal,
                    format!("mounting {} in the guest: {e}", m.target),
                )
            })?;
        }
        // Interfaces there before boot, or CreateVM's: the guest takes their MACs,
        // addresses, routes.
        let guest = net
            .as_ref()
            .and_then(|n| n.guest.as_ref())
            .or(spec.fc_network.as_ref().map(|n| &n.guest))
            .filter(|g| !g.interfaces.is_empty());
        if let Some(req) = guest {
            self.configure_network(req)
                .await
                .map_err(|e| crate::net::configure_err(&e))?;
        }
        // Held until the VM counts as running: a change made meanwhile waits, then
        // goes to the agent.
        let _metadata = self.metadata_lock.lock().await;
        let doc = self.metadata.lock().unwrap().clone();
        if let Some(doc) = doc {
            agent
                .set_metadata(&doc.to_string())
                .await
                .map_err(|e| internal(format!("publishing the metadata: {e}")))?;
        }
        if spec.log_fifo.is_some() || spec.metrics_fifo.is_some() {
            let (tx, rx) = tokio::sync::watch::channel(false);
            if let Some(p) = &spec.log_fifo {
                fifo::spawn_copy(vm_dir.join("vmm.log"), p, rx.clone())
                    .map_err(|e| err(Code::InvalidArgument, e))?;
            }
            if let Some(p) = &spec.metrics_fifo {
                match cfg.vmm {
                    VmmKind::Firecracker => fifo::spawn_copy(vm_dir.join("metrics.json"), p, rx),
                    VmmKind::Qemu => fifo::spawn_stats(pid, p, rx),
                }
                .map_err(|e| err(Code::InvalidArgument, e))?;
            }
            *self.fifo_stop.lock().unwrap() = Some(tx);
        }
        {
            let mut s = self.state.lock().unwrap();
            s.booted = Some(booted);
            s.phase = Phase::Running;
        }
        tokio::spawn(watch_agent(self.clone(), agent, generation));
        Ok(())
    }
}

fn fifo_name(p: &Option<std::path::PathBuf>) -> String {
    p.as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_default()
}

/// The VMM's cgroup (cgroup v2's path, or the first v1 hierarchy's).
fn vmm_cgroup(pid: u32) -> String {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
    let mut first = None;
    for l in text.lines() {
        let mut parts = l.splitn(3, ':');
        let (id, _, path) = (parts.next(), parts.next(), parts.next());
        if id == Some("0") {
            return path.unwrap_or_default().to_string();
        }
        first = first.or(path.map(str::to_string));
    }
    first.unwrap_or_default()
}

/// Watches the agent connection of one boot: when it closes without a stop, the
/// VMM is gone.
async fn watch_agent(vm: Arc<VmHost>, agent: ember_agent_api::AgentClient, generation: u64) {
    while !agent.is_closed() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    vm.vm_lost(generation).await;
}
