//! Creating a container: in a VM booted for it (its rootfs a boot drive), or in the
//! VM that already runs (its rootfs written into a fresh region of the pool drive).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use containerd_client::events as ev;
use ember_agent_api::{AgentClient, StdioConfig};
use ember_sandbox::POOL_DRIVE;
use ember_ttrpc::{Code, Status};
use ember_vmm::Drive;

use super::{cleanup_rootfs, err, watch_oom, Container, Proc, Storage, Task};
use crate::config::{annotation, RuntimeConfig};
use crate::rootfs;
use crate::sizing::{self, Host};
use crate::vm::{BootSpec, Phase};
use crate::volumes::{self, Transport};
use ember_shim_api::*;

/// Annotations that size or shape the VM (ignored by a container that joins one).
const SIZING_KEYS: &[&str] = &[
    annotation::VMM,
    annotation::VCPUS,
    annotation::MEMORY_MIB,
    annotation::KERNEL_ARGS,
    annotation::ACCEL,
];

/// Drive id (virtio-blk serial) of the rootfs of a VM's first container.
const ROOTFS_DRIVE: &str = "rootfs";

/// What the container's spec says.
struct Bundle {
    dir: PathBuf,
    spec: serde_json::Value,
    annotations: HashMap<String, String>,
}

fn read_bundle(bundle: &str) -> Result<Bundle, Status> {
    let dir = PathBuf::from(bundle);
    let bytes = std::fs::read(dir.join("config.json")).map_err(|e| {
        err(
            Code::InvalidArgument,
            format!("reading the bundle's config.json: {e}"),
        )
    })?;
    let spec: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|e| err(Code::InvalidArgument, format!("parsing config.json: {e}")))?;
    let annotations = spec
        .get("annotations")
        .and_then(|a| serde_json::from_value(a.clone()).ok())
        .unwrap_or_default();
    Ok(Bundle {
        dir,
        spec,
        annotations,
    })
}

impl Task {
    pub async fn create(self: &Arc<Self>, req: CreateTaskRequest) -> Result<u32, Status> {
        let _l = self.vm.lifecycle.lock().await;
        let t0 = std::time::Instant::now();
        if self.containers.lock().unwrap().contains_key(&req.id) {
            return Err(err(
                Code::AlreadyExists,
                format!("container {} already exists", req.id),
            ));
        }
        if !req.checkpoint.is_empty() {
            return Err(err(
                Code::Unimplemented,
                "checkpoint/restore is not supported",
            ));
        }
        self.vm.admit()?;
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
        let bundle = read_bundle(&req.bundle)?;
        let base = self.vm.usable_config()?;
        // ctr shows no warnings: the shim's log is where they go.
        for key in sizing::unknown_annotations(&bundle.annotations) {
            let hint = crate::config::closest(key, annotation::KNOWN)
                .map(|k| format!(" (did you mean {k}?)"))
                .unwrap_or_default();
            tracing::warn!(
                container = %req.id,
                "unknown annotation {key} ignored{hint}; Ember reads {}",
                annotation::KNOWN.join(", ")
            );
        }
        let boots = self.vm.phase() == Phase::Absent;
        // A VM booted for the container is sized by it; one it joins stays as it is
        // (the container's limits apply to its own cgroup in the guest).
        let host = Host::probe();
        let cfg = if boots {
            sizing::for_boot(base, &bundle.spec, &bundle.annotations, &host)
        } else {
            base.clone().with_annotations(&bundle.annotations, &host)
        }
        .map_err(|e| err(Code::InvalidArgument, e.to_string()))?;
        let resized = SIZING_KEYS
            .iter()
            .any(|k| bundle.annotations.contains_key(*k));
        // Host mounts that cannot reach the VM are refused before anything is made.
        let can_share = if boots {
            matches!(cfg.vmm, ember_vmm::VmmKind::Qemu)
        } else {
            self.vm.shared_dir().is_some()
        };
        volumes::check(&bundle.spec, &bundle.dir, can_share)?;
        // The VM's network namespace (checked also for a container that joins: the
        // VM's is the one it runs in).
        let network = crate::net::request_from_spec(&bundle.spec).map_err(|e| e.status())?;
        let hooks = crate::hooks::Hooks::from_spec(&bundle.spec)?;
        let (storage, device, build_ms, boot) = if boots {
            self.boot_for(&req, &bundle.dir, cfg, network).await?
        } else {
            self.place_in_pool(&req, &bundle.dir, resized.then_some(&cfg))
                .await?
        };
        // Host bind mounts: shared through the running VM's shared directory, or
        // single files copied in; the spec's sources are rewritten for the guest.
        let mut spec = bundle.spec;
        let shared = self.vm.shared_dir();
        let transport = shared
            .as_ref()
            .map(Transport::Shared)
            .unwrap_or(Transport::CopyFiles);
        let volumes = match volumes::prepare(&mut spec, &bundle.dir, &req.id, transport) {
            Ok(v) => v,
            Err(e) => {
                self.undo_create(&storage, &bundle.dir, boots).await;
                return Err(e.into());
            }
        };
        let spec_json = serde_json::to_vec(&spec).map_err(|e| err(Code::Internal, e.to_string()));
        let agent = match spec_json.and_then(|s| Ok((s, self.agent()?))) {
            Ok(a) => a,
            Err(e) => {
                self.undo_volumes(&req.id);
                self.undo_create(&storage, &bundle.dir, boots).await;
                return Err(e);
            }
        };
        let (spec_json, agent) = agent;
        let t_agent = std::time::Instant::now();
        let created = agent
            .create_container(&ember_agent_api::CreateContainerRequest {
                container_id: req.id.clone(),
                spec_json,
                rootfs: device.rootfs,
                layers: device.layers,
                upper: device.upper,
                stdio: Some(StdioConfig {
                    terminal: req.terminal,
                    stdin: !req.stdin.is_empty(),
                }),
                files: volumes.files,
            })
            .await;
        // The task's pid is the VMM's: in the VM's network namespace, as clients that
        // run CNI on /proc/<pid>/ns/net expect. Its processes' guest pids are in Pids.
        let vmm_pid = self.vm.booted().map(|b| b.vmm_pid).filter(|p| *p != 0);
        let pid = match created {
            Ok(r) => vmm_pid.unwrap_or(r.pid),
            Err(e) => {
                self.undo_volumes(&req.id);
                self.undo_create(&storage, &bundle.dir, boots).await;
                return Err(self.agent_err(e));
            }
        };
        let state = crate::hooks::State {
            oci_version: spec
                .get("ociVersion")
                .and_then(|v| v.as_str())
                .unwrap_or("1.0.2")
                .into(),
            id: req.id.clone(),
            status: "created".into(),
            pid,
            bundle: req.bundle.clone(),
            annotations: bundle.annotations.clone(),
        };
        if let Err(e) = self.after_create_hooks(&hooks, &state).await {
            let _ = agent.remove_container(&req.id).await;
            self.undo_volumes(&req.id);
            self.undo_create(&storage, &bundle.dir, boots).await;
            return Err(e);
        }
        let init = Proc::new(
            &req.id,
            "",
            &req.stdin,
            &req.stdout,
            &req.stderr,
            req.terminal,
        );
        init.pid.store(pid, Ordering::SeqCst);
        let mut timings = serde_json::json!({
            "id": req.id,
            "phase": "create",
            "joined": !boots,
            "rootfs_ms": build_ms,
            "agent_create_ms": t_agent.elapsed().as_secs_f64() * 1e3,
            "create_total_ms": t0.elapsed().as_secs_f64() * 1e3,
        });
        if let Some(b) = boot {
            timings["vmm_ready_ms"] = (b.vmm_ready.as_secs_f64() * 1e3).into();
            timings["agent_ready_ms"] = (b.agent_ready.as_secs_f64() * 1e3).into();
            timings["identity_ready_ms"] = (b.identity_ready.as_secs_f64() * 1e3).into();
            timings["from_template"] = b.from_template.into();
        }
        self.record_timings(timings);
        if let Err(e) = self.attach_stdio(&agent, &init).await {
            let _ = agent.remove_container(&req.id).await;
            self.undo_volumes(&req.id);
            self.undo_create(&storage, &bundle.dir, boots).await;
            return Err(e);
        }
        self.containers.lock().unwrap().insert(
            req.id.clone(),
            Container {
                bundle: req.bundle.clone(),
                storage,
                init: init.clone(),
                execs: HashMap::new(),
                paused: false,
                hooks: crate::hooks::ContainerHooks {
                    hooks,
                    state: Some(state),
                },
            },
        );
        self.vm.join(&req.id);
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

    /// The step between a container made in the VM and Create's answer: the
    /// `createRuntime` and `prestart` hooks on the host, then whatever they set up
    /// for the sandbox (network interfaces) is wired to the VM.
    async fn after_create_hooks(
        &self,
        hooks: &crate::hooks::Hooks,
        state: &crate::hooks::State,
    ) -> Result<(), Status> {
        crate::hooks::after_create(hooks, state).await?;
        // Interfaces a hook gave the VM's namespace (dockerd's libnetwork prestart
        // hook adds its veth there) are joined to the VM's NICs now; those a client
        // adds after Create (CNI on the task pid) are joined at Start.
        crate::net::wire_late(&self.vm).await
    }

    /// Boots the VM for its first container, whose rootfs image is a boot drive.
    async fn boot_for(
        self: &Arc<Self>,
        req: &CreateTaskRequest,
        bundle: &Path,
        cfg: RuntimeConfig,
        network: crate::net::NetRequest,
    ) -> Result<Placed, Status> {
        let layered = rootfs::erofs::describe(&req.rootfs);
        // EROFS layers reach a VM booted for them as drives of their own, which a
        // template's fixed device set cannot offer: such a VM boots.
        if layered.is_none() && crate::vm::VmHost::templated(&cfg) {
            return self.boot_then_place(req, bundle, cfg, network).await;
        }
        if let Some(layered) = layered {
            if let Some(placed) = self.boot_layered(req, cfg.clone(), layered).await? {
                return Ok(placed);
            }
        }
        let scratch = self.vm.container_dir(&req.id);
        std::fs::create_dir_all(&scratch).map_err(|e| err(Code::Internal, e.to_string()))?;
        let mounts = req.rootfs.clone();
        let b = bundle.to_path_buf();
        let r = tokio::task::spawn_blocking(move || rootfs::prepare(&mounts, &b, &scratch))
            .await
            .map_err(|e| err(Code::Internal, e.to_string()))?
            .map_err(|e| err(Code::Internal, e.to_string()))?;
        tracing::info!(image = %r.image.display(), build_ms = r.build_time.as_millis() as u64, "rootfs ready");
        let drive = Drive {
            id: ROOTFS_DRIVE.into(),
            path: r.image.clone(),
            read_only: r.read_only,
        };
        let mut spec = BootSpec::implicit(cfg, vec![drive]);
        spec.network = network;
        if let Err(e) = self.vm.boot(spec).await {
            cleanup_rootfs(&r, bundle);
            return Err(e);
        }
        let timings = self.booted_for_container();
        let serial = self
            .vm
            .guest_serial(ROOTFS_DRIVE)
            .await
            .unwrap_or_else(|| ROOTFS_DRIVE.into());
        let device = ember_agent_api::BlockRootfs {
            serial,
            fstype: r.fstype.clone(),
            read_only: r.read_only,
            ..Default::default()
        };
        let ms = r.build_time.as_secs_f64() * 1e3;
        Ok((Storage::BootDrive(r), device.into(), ms, timings))
    }

    /// Starts a VM of the template kind (the pool drive only, so every VM of one
    /// sizing has one shape), then places the container in it as in a running one.
    async fn boot_then_place(
        self: &Arc<Self>,
        req: &CreateTaskRequest,
        bundle: &Path,
        cfg: RuntimeConfig,
        network: crate::net::NetRequest,
    ) -> Result<Placed, Status> {
        let mut spec = BootSpec::implicit(cfg, Vec::new());
        spec.network = network;
        self.vm.boot(spec).await?;
        let timings = self.booted_for_container();
        match self.place_in_pool(req, bundle, None).await {
            Ok((storage, device, ms, _)) => Ok((storage, device, ms, timings)),
            Err(e) => {
                self.vm
                    .stop(std::time::Duration::from_secs(2), Phase::Absent)
                    .await;
                Err(e)
            }
        }
    }

    /// Writes the rootfs into a fresh region of the running VM's pool drive;
    /// `asked` is the sizing the container's annotations ask for, if any.
    async fn place_in_pool(
        &self,
        req: &CreateTaskRequest,
        bundle: &Path,
        asked: Option<&RuntimeConfig>,
    ) -> Result<Placed, Status> {
        self.vm.require_up()?;
        if let (Some(b), Some(cfg)) = (self.vm.booted(), asked) {
            if !same_sizing(&b.config, cfg) {
                tracing::info!(
                    container = %req.id,
                    vm = %self.vm.id,
                    "the container's VM sizing annotations are ignored: it joins VM {} as it runs ({} vCPUs, {} MiB)",
                    self.vm.id,
                    b.vcpus,
                    b.memory_mib
                );
            }
        }
        if let Some(layered) = rootfs::erofs::describe(&req.rootfs) {
            if let Some(placed) = self.join_layered(req, layered).await? {
                return Ok(placed);
            }
        }
        let pool = self.vm.pool()?;
        let mounts = req.rootfs.clone();
        let b = bundle.to_path_buf();
        let r = tokio::task::spawn_blocking(move || rootfs::place_in_pool(&mounts, &b, &pool))
            .await
            .map_err(|e| err(Code::Internal, e.to_string()))?
            .map_err(|e| match e {
                // Regions are never reused within a VM: a long-lived VM that made
                // too many containers has to be replaced.
                rootfs::RootfsError::Pool(full @ ember_sandbox::PoolError::Full { .. }) => err(
                    Code::ResourceExhausted,
                    format!("VM {}: {full}", self.vm.id),
                ),
                other => err(Code::Internal, other.to_string()),
            })?;
        tracing::info!(region = ?r.region, build_ms = r.build_time.as_millis() as u64, "rootfs in the pool");
        let serial = self
            .vm
            .guest_serial(POOL_DRIVE)
            .await
            .unwrap_or_else(|| POOL_DRIVE.into());
        let device = ember_agent_api::BlockRootfs {
            serial,
            fstype: r.fstype.clone(),
            read_only: r.read_only,
            offset: r.region.offset,
            length: r.region.length,
            ..Default::default()
        };
        let ms = r.build_time.as_secs_f64() * 1e3;
        Ok((Storage::Region(r.region), device.into(), ms, None))
    }

    /// Gives back what a failed create took; a VM booted for it goes again.
    async fn undo_create(&self, storage: &Storage, bundle: &Path, booted: bool) {
        if booted {
            self.vm
                .stop(std::time::Duration::from_secs(2), Phase::Absent)
                .await;
        }
        self.release_storage(storage, bundle);
    }

    /// Releases the shares made for container `id`.
    pub(super) fn undo_volumes(&self, id: &str) {
        if let Some(shared) = self.vm.shared_dir() {
            if let Err(e) = volumes::release(&shared, id) {
                tracing::warn!("releasing the volumes of {id}: {e}");
            }
        }
    }

    /// After the boot of a VM for a container's Create: its OOM watch starts, and
    /// its boot timings go into the Create's.
    pub(super) fn booted_for_container(&self) -> Option<ember_sandbox::BootTimings> {
        if let Ok(agent) = self.agent() {
            tokio::spawn(watch_oom(agent, self.publisher.clone()));
        }
        self.vm.booted().map(|b| b.timings)
    }

    /// Spawns the OOM watch of a VM booted by `CreateVM`.
    pub fn watch_vm(&self, agent: AgentClient) {
        tokio::spawn(watch_oom(agent, self.publisher.clone()));
    }
}

/// The rootfs of a new container: where it lives, the devices the agent mounts,
/// build time (ms), boot timings when a VM was booted for it.
pub(super) type Placed = (
    Storage,
    GuestRootfs,
    f64,
    Option<ember_sandbox::BootTimings>,
);

/// What the agent mounts as a container's rootfs: one filesystem, or layers under
/// an overlay with a writable layer.
pub(super) struct GuestRootfs {
    pub(super) rootfs: Option<ember_agent_api::BlockRootfs>,
    pub(super) layers: Vec<ember_agent_api::BlockRootfs>,
    pub(super) upper: Option<ember_agent_api::BlockRootfs>,
}

impl From<ember_agent_api::BlockRootfs> for GuestRootfs {
    fn from(r: ember_agent_api::BlockRootfs) -> Self {
        GuestRootfs {
            rootfs: Some(r),
            layers: Vec::new(),
            upper: None,
        }
    }
}

/// Whether two configurations size a VM alike.
fn same_sizing(a: &RuntimeConfig, b: &RuntimeConfig) -> bool {
    (a.vmm, a.vcpus, a.memory_mib, a.accel, &a.kernel_args)
        == (b.vmm, b.vcpus, b.memory_mib, b.accel, &b.kernel_args)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::Publisher;
    use crate::vm::VmHost;

    /// A configuration that broke between `start` and `serve` fails the create
    /// with its message (a ttrpc error), and the shim goes on serving.
    #[tokio::test]
    async fn a_config_broken_at_serve_time_fails_create_with_its_message() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("config.json"), r#"{"ociVersion":"1.0.2"}"#).unwrap();
        let why = "/etc/ember/runtime.toml:3: unknown key `memroy_mib`".to_string();
        let host = VmHost::new(
            "c1".into(),
            false,
            "default".into(),
            Err(why.clone()),
            d.path().join("state"),
        );
        let task = Task::new(host.clone(), Publisher::start(None, "default".into()));
        let req = CreateTaskRequest {
            id: "c1".into(),
            bundle: d.path().display().to_string(),
            ..Default::default()
        };
        let e = task.create(req.clone()).await.unwrap_err();
        assert_eq!(
            (e.code(), e.message()),
            (Code::FailedPrecondition, why.as_str())
        );
        // Nothing was made or booted; the same error comes again.
        assert_eq!(host.phase(), Phase::Absent);
        assert!(!d.path().join("state").exists());
        assert_eq!(task.create(req).await.unwrap_err().message(), why);
    }

    /// Sizes the host cannot give are refused before the rootfs is built or a
    /// VM boots.
    #[tokio::test]
    async fn sizes_the_host_cannot_give_fail_create_before_anything_is_made() {
        let d = tempfile::tempdir().unwrap();
        let spec = serde_json::json!({
            "ociVersion": "1.0.2",
            "annotations": {"io.ember.vm.vcpus": "0"},
        });
        std::fs::write(d.path().join("config.json"), spec.to_string()).unwrap();
        let host = VmHost::new(
            "c1".into(),
            false,
            "default".into(),
            Ok(RuntimeConfig::default()),
            d.path().join("state"),
        );
        let task = Task::new(host.clone(), Publisher::start(None, "default".into()));
        let e = task
            .create(CreateTaskRequest {
                id: "c1".into(),
                bundle: d.path().display().to_string(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert_eq!(
            e.message(),
            "annotation io.ember.vm.vcpus=\"0\": a VM needs at least 1 vCPU"
        );
        assert_eq!(host.phase(), Phase::Absent);
        assert!(!d.path().join("state").exists());
    }
}
