//! The v2 runtime (`io.containerd.runtime.v2.task`): one shim process per task,
//! started through the shim binary that the container's runtime name selects
//! (`io.containerd.ember.v2` → `containerd-shim-ember-v2`), spoken to over ttrpc.
//!
//! Each task has a bundle directory, `<state>/<namespace>/<id>/`, holding the
//! spec (`config.json`), the `rootfs` mount point, the shim's `address` and the
//! runtime name (`runtime`). After a restart the daemon finds its tasks again from
//! these directories: a shim that still answers is adopted, one that does not is
//! cleaned up through the binary's `delete` action.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use containerd_client::events::TaskExit;
use ember_metadata::Error as E;
use ember_shim_api::{CreateTaskRequest, Mount, ShimClient};

use crate::events::Exchange;
use crate::metrics::{label, Metrics};
pub use crate::shim_binary::shim_binary;
use crate::shim_binary::{is_runc, with_runc_root};
pub(crate) use crate::shim_log::{follow_shim_log, ShimLog};

/// Why a runtime call failed: the daemon's own error classes, or a shim's answer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Daemon(#[from] ember_metadata::Error),
    #[error("{0}")]
    Shim(#[from] ember_ttrpc::Error),
}

pub type Result<T> = std::result::Result<T, Error>;

/// One task: its shim and where it lives.
pub struct ShimTask {
    pub namespace: String,
    pub id: String,
    pub runtime: String,
    pub bundle: PathBuf,
    /// The shim's socket: tasks of one VM share it.
    pub address: String,
    /// The VM the container's annotations place it in, if they name one.
    pub vm_id: Option<String>,
    pub client: ShimClient,
    /// The init process's pid.
    pub pid: u32,
    /// The shim's pid, as its Connect answers (0 when it did not).
    pub shim_pid: u32,
    /// Set once the task is deleted: its shim may exit from then on.
    exit_expected: AtomicBool,
    /// Copies the shim's log into the daemon's; stopped when the task goes.
    log: ShimLog,
}

/// The exit status reported for a task whose shim died.
pub const SHIM_GONE_STATUS: u32 = 255;

/// What `create` needs besides the container.
pub struct CreateOpts {
    pub rootfs: Vec<Mount>,
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
    pub options: Option<prost_types::Any>,
}

/// The task manager: starts, tracks and removes shims.
pub struct TaskManager {
    /// This manager, for the tasks that watch shims.
    me: std::sync::Weak<TaskManager>,
    events: Arc<Exchange>,
    state: PathBuf,
    grpc_address: String,
    ttrpc_address: String,
    tasks: Mutex<HashMap<(String, String), Arc<ShimTask>>>,
    /// runc's state root for the tasks of runc shims: the daemon's own, so that its
    /// tasks never meet a containerd's (runc's default root) on the same host.
    runc_root: PathBuf,
    pub(crate) metrics: Arc<Metrics>,
    /// Addresses of the shims that CreateVM started, for the log to tell a
    /// container joining one from a shim started for it.
    pub(crate) vm_shims: Mutex<std::collections::HashSet<String>>,
}

impl TaskManager {
    pub fn new(
        state: PathBuf,
        grpc_address: &Path,
        events: Arc<Exchange>,
        metrics: Arc<Metrics>,
    ) -> Arc<TaskManager> {
        // Beside the bundles' directory, in the daemon's state directory.
        let runc_root = state
            .parent()
            .map(|p| p.join("runc"))
            .unwrap_or_else(|| state.join("runc"));
        Arc::new_cyclic(|me| TaskManager {
            runc_root,
            me: me.clone(),
            events,
            state,
            grpc_address: grpc_address.display().to_string(),
            ttrpc_address: crate::ttrpc::address(grpc_address).display().to_string(),
            tasks: Mutex::default(),
            metrics,
            vm_shims: Mutex::default(),
        })
    }

    /// Tracks a task, and cleans it up if its shim goes away while it is tracked.
    fn track(&self, task: Arc<ShimTask>) {
        let key = (task.namespace.clone(), task.id.clone());
        self.lock().insert(key.clone(), task.clone());
        let me = self.me.clone();
        tokio::spawn(async move {
            task.client.closed().await;
            let Some(me) = me.upgrade() else { return };
            let still = {
                let mut tasks = me.lock();
                match tasks.get(&key) {
                    Some(t) if Arc::ptr_eq(t, &task) => tasks.remove(&key).is_some(),
                    _ => false,
                }
            };
            if still {
                me.shim_gone(&task).await;
            } else if task.exit_expected.load(Ordering::SeqCst) {
                tracing::info!(namespace = %task.namespace, id = %task.id, shim_pid = task.shim_pid,
                    address = %task.address, "shim exited (expected: its task was deleted)");
            }
        });
    }

    /// A shim died under a tracked task: the task exits with 255 and is cleaned up,
    /// as containerd does.
    async fn shim_gone(&self, task: &ShimTask) {
        // Shims run detached from emberd (`start` daemonizes them): their exit
        // status is not emberd's to collect.
        tracing::warn!(namespace = %task.namespace, id = %task.id, shim_pid = task.shim_pid,
            address = %task.address, runtime = %task.runtime, exit_status = %"unknown",
            log_tail = %task.log.tail().replace('\n', " | "),
            "shim unexpected exit: the task's shim went away; its task exits with {SHIM_GONE_STATUS}");
        self.metrics.shim_unexpected_exits.inc(vec![label(
            "shim",
            shim_binary(&task.runtime).unwrap_or_default(),
        )]);
        self.events.publish(
            &task.namespace,
            "/tasks/exit",
            &TaskExit {
                container_id: task.id.clone(),
                id: task.id.clone(),
                pid: task.pid,
                exit_status: SHIM_GONE_STATUS,
                exited_at: Some(prost_types::Timestamp::from(std::time::SystemTime::now())),
            },
        );
        self.cleanup_bundle(&task.namespace, &task.id, &task.bundle)
            .await;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), Arc<ShimTask>>> {
        self.tasks.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn get(&self, ns: &str, id: &str) -> Result<Arc<ShimTask>> {
        self.lock()
            .get(&(ns.to_string(), id.to_string()))
            .cloned()
            .ok_or_else(|| E::NotFound(format!("task {id}")).into())
    }

    /// The namespaces that hold tasks, sorted.
    pub fn namespaces(&self) -> Vec<String> {
        let mut v: Vec<String> = self.lock().keys().map(|(ns, _)| ns.clone()).collect();
        v.sort();
        v.dedup();
        v
    }

    pub fn list(&self, ns: &str) -> Vec<Arc<ShimTask>> {
        let mut v: Vec<_> = self
            .lock()
            .values()
            .filter(|t| t.namespace == ns)
            .cloned()
            .collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    fn bundle(&self, ns: &str, id: &str) -> PathBuf {
        self.state.join(ns).join(id)
    }

    /// Creates the task of a container: bundle, shim, shim's Create.
    pub async fn create(
        &self,
        ns: &str,
        id: &str,
        runtime: &str,
        spec: &[u8],
        opts: CreateOpts,
    ) -> Result<Arc<ShimTask>> {
        // Both name the bundle's directories.
        ember_metadata::identifiers::validate_as("task id", id)?;
        ember_metadata::identifiers::validate(ns)?;
        let key = (ns.to_string(), id.to_string());
        if self.lock().contains_key(&key) {
            return Err(E::AlreadyExists(format!("task {id}")).into());
        }
        let binary = shim_binary(runtime)?;
        let options = if is_runc(runtime, &binary) {
            with_runc_root(opts.options, &self.runc_root)?
        } else {
            opts.options
        };
        let bundle = self.bundle(ns, id);
        if bundle.exists() {
            // Left over from a task that was not deleted cleanly.
            self.cleanup_bundle(ns, id, &bundle).await;
        }
        let io = |e: std::io::Error| E::Internal(format!("bundle {}: {e}", bundle.display()));
        std::fs::create_dir_all(bundle.join("rootfs")).map_err(io)?;
        std::fs::write(bundle.join("config.json"), spec).map_err(io)?;
        std::fs::write(bundle.join("runtime"), runtime).map_err(io)?;
        let log = follow_shim_log(&bundle, ns, id)?;
        let t0 = Instant::now();
        let started_at = std::time::SystemTime::now();
        let started = async {
            let address = self
                .start_shim(&binary, ns, id, &bundle, options.as_ref())
                .await?;
            std::fs::write(bundle.join("address"), &address).map_err(io)?;
            let client = ShimClient::connect(&address)
                .await
                .map_err(|e| E::Internal(format!("connecting to the shim at {address}: {e}")))?;
            let joined = self.lock().values().any(|t| t.address == address)
                || self.vm_shims.lock().is_ok_and(|v| v.contains(&address));
            let shim_pid = client.connect_info(id).await.map_or(0, |c| c.shim_pid);
            if joined {
                tracing::info!(namespace = %ns, id = %id, runtime = %runtime, shim_pid, %address, "task joins a running shim");
            } else {
                tracing::info!(namespace = %ns, id = %id, runtime = %runtime, shim_pid, %address, "shim started");
            }
            let resp = client
                .create(&CreateTaskRequest {
                    id: id.to_string(),
                    bundle: bundle.display().to_string(),
                    rootfs: opts.rootfs,
                    terminal: opts.terminal,
                    stdin: opts.stdin,
                    stdout: opts.stdout,
                    stderr: opts.stderr,
                    options: options.clone(),
                    ..Default::default()
                })
                .await;
            match resp {
                Ok(r) => Ok((client, r.pid, address, shim_pid, joined)),
                Err(e @ ember_ttrpc::Error::Status(_)) => {
                    let _ = client.shutdown(id, true).await;
                    Err(Error::from(e))
                }
                // The shim died on the way: its log tells why.
                Err(e) => Err(E::Internal(format!(
                    "{binary} for task {id}: {e}{}",
                    crate::shim_log::explain(&log).await
                ))
                .into()),
            }
        };
        match started.await {
            Ok((client, pid, address, shim_pid, joined)) => {
                if !joined {
                    let vm = crate::vms::spec_vm_id(spec).unwrap_or_else(|| id.to_string());
                    crate::metrics::observe_task_boot(
                        self.metrics.clone(),
                        &address,
                        vm,
                        started_at,
                        t0.elapsed(),
                    );
                }
                let task = Arc::new(ShimTask {
                    namespace: ns.to_string(),
                    id: id.to_string(),
                    runtime: runtime.to_string(),
                    bundle,
                    address,
                    vm_id: crate::vms::spec_vm_id(spec),
                    client,
                    pid,
                    shim_pid,
                    exit_expected: AtomicBool::new(false),
                    log,
                });
                self.track(task.clone());
                Ok(task)
            }
            Err(e) => {
                tracing::warn!(namespace = %ns, id = %id, runtime = %runtime, "task create failed: {e}");
                log.abort();
                self.cleanup_bundle(ns, id, &bundle).await;
                Err(e)
            }
        }
    }

    fn shim_command(
        &self,
        binary: &str,
        ns: &str,
        id: &str,
        bundle: &Path,
    ) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(binary);
        let publish = std::env::current_exe()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|_| "emberd".into());
        cmd.args(["-namespace", ns, "-address", &self.grpc_address])
            .args(["-publish-binary", &publish, "-id", id])
            .current_dir(bundle)
            .env("TTRPC_ADDRESS", &self.ttrpc_address)
            .env("GRPC_ADDRESS", &self.grpc_address)
            .env("NAMESPACE", ns)
            .env("MAX_SHIM_VERSION", "2");
        cmd
    }

    /// Runs `BINARY ... start` with the task's runtime options on its stdin (as
    /// containerd does: the runc shim takes its `ShimCgroup` from there) and
    /// returns the address it prints.
    pub(crate) async fn start_shim(
        &self,
        binary: &str,
        ns: &str,
        id: &str,
        bundle: &Path,
        options: Option<&prost_types::Any>,
    ) -> Result<String> {
        use prost::Message;
        use tokio::io::AsyncWriteExt;
        let mut cmd = self.shim_command(binary, ns, id, bundle);
        cmd.arg("start")
            .stdin(if options.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let failed = |why: String| {
            tracing::warn!(namespace = %ns, id = %id, binary = %binary, "shim start failed: {why}");
            self.metrics
                .shim_start_failures
                .inc(vec![label("shim", binary.to_string())]);
        };
        let mut child = cmd.spawn().map_err(|e| {
            let e = format!("starting shim {binary}: {e} (is it on PATH?)");
            failed(e.clone());
            E::FailedPrecondition(e)
        })?;
        if let (Some(o), Some(mut stdin)) = (options, child.stdin.take()) {
            // A shim that does not read its options closes the pipe: not an error.
            let _ = stdin.write_all(&o.encode_to_vec()).await;
        }
        let out = child
            .wait_with_output()
            .await
            .map_err(|e| E::Internal(format!("running {binary} start: {e}")))?;
        if !out.status.success() {
            let stderr = crate::shim_log::last_lines(&String::from_utf8_lossy(&out.stderr), 20);
            failed(format!("{}: {stderr}", out.status));
            return Err(
                E::Internal(format!("{binary} start failed ({}): {stderr}", out.status)).into(),
            );
        }
        let address = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if address.is_empty() {
            failed("it printed no address".into());
            return Err(E::Internal(format!("{binary} start printed no address")).into());
        }
        self.metrics
            .shim_starts
            .inc(vec![label("shim", binary.to_string())]);
        Ok(address)
    }

    /// Deletes a task: the shim's Delete, then its shutdown and the bundle.
    ///
    /// A shim that is gone (killed, crashed) cannot answer: its task is cleaned up
    /// through the shim binary's `delete` action and reported as exited with 255,
    /// as containerd does.
    pub async fn delete(&self, ns: &str, id: &str) -> Result<ember_shim_api::DeleteResponse> {
        let task = self.get(ns, id)?;
        let key = (ns.to_string(), id.to_string());
        let resp = match task.client.delete(id, "").await {
            Ok(r) => {
                // Untracked first: the shim's exit is expected now.
                task.exit_expected.store(true, Ordering::SeqCst);
                self.lock().remove(&key);
                let _ = task.client.shutdown(id, false).await;
                let _ = std::fs::remove_dir_all(&task.bundle);
                r
            }
            Err(ember_ttrpc::Error::Status(s)) => return Err(ember_ttrpc::Error::Status(s).into()),
            Err(e) => {
                tracing::warn!(namespace = ns, id, "the shim is gone ({e}): cleaning up");
                self.lock().remove(&key);
                self.cleanup_bundle(ns, id, &task.bundle).await;
                ember_shim_api::DeleteResponse {
                    pid: task.pid,
                    exit_status: SHIM_GONE_STATUS,
                    exited_at: Some(prost_types::Timestamp::from(std::time::SystemTime::now())),
                }
            }
        };
        Ok(resp)
    }

    /// Runs the shim binary's `delete` action for a task whose shim is gone, and
    /// removes its bundle.
    pub(crate) async fn cleanup_bundle(&self, ns: &str, id: &str, bundle: &Path) {
        let runtime = std::fs::read_to_string(bundle.join("runtime")).unwrap_or_default();
        if let Ok(binary) = shim_binary(runtime.trim()) {
            let mut cmd = self.shim_command(&binary, ns, id, bundle);
            cmd.args(["-bundle", &bundle.display().to_string(), "delete"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            match cmd.status().await {
                Ok(s) if s.success() => {}
                r => tracing::warn!(namespace = ns, id, "{binary} delete: {r:?}"),
            }
        }
        let rootfs = bundle.join("rootfs");
        let _ = nix::mount::umount2(&rootfs, nix::mount::MntFlags::MNT_DETACH);
        if let Err(e) = std::fs::remove_dir_all(bundle) {
            tracing::warn!(bundle = %bundle.display(), "removing the bundle: {e}");
        }
    }

    /// Adopts the tasks of a previous run whose shims still answer; cleans up the rest.
    pub async fn recover(&self) {
        for (ns_name, id, bundle) in bundles(&self.state) {
            match self.adopt(&ns_name, &id, &bundle).await {
                Ok(task) => {
                    tracing::info!(namespace = %ns_name, %id, pid = task.pid, "reconnected to a running shim");
                    self.track(task);
                }
                Err(e) => {
                    tracing::info!(namespace = %ns_name, %id, "cleaning up a task that cannot be adopted: {e}");
                    stop_unadopted_shim(&id, &bundle).await;
                    self.cleanup_bundle(&ns_name, &id, &bundle).await;
                }
            }
        }
    }

    async fn adopt(&self, ns: &str, id: &str, bundle: &Path) -> Result<Arc<ShimTask>> {
        let read = |name: &str| {
            std::fs::read_to_string(bundle.join(name))
                .map(|s| s.trim().to_string())
                .map_err(|e| E::Internal(format!("{name}: {e}")))
        };
        let address = read("address")?;
        let runtime = read("runtime")?;
        let client = ShimClient::connect(&address)
            .await
            .map_err(|e| E::Internal(format!("connecting to {address}: {e}")))?;
        let state = client.state(id, "").await?;
        let spec = std::fs::read(bundle.join("config.json")).unwrap_or_default();
        Ok(Arc::new(ShimTask {
            namespace: ns.to_string(),
            id: id.to_string(),
            runtime,
            bundle: bundle.to_path_buf(),
            address,
            vm_id: crate::vms::spec_vm_id(&spec),
            shim_pid: client.connect_info(id).await.map_or(0, |c| c.shim_pid),
            client,
            pid: state.pid,
            exit_expected: AtomicBool::new(false),
            log: follow_shim_log(bundle, ns, id)?,
        }))
    }
}

/// The bundles of a previous run under `root` (`root/<namespace>/<id>/`), as
/// (namespace, id, path).
pub(crate) fn bundles(root: &Path) -> Vec<(String, String, PathBuf)> {
    let Ok(namespaces) = std::fs::read_dir(root) else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for ns in namespaces.flatten() {
        let ns_name = ns.file_name().to_string_lossy().into_owned();
        let Ok(ids) = std::fs::read_dir(ns.path()) else {
            continue;
        };
        for entry in ids.flatten() {
            let id = entry.file_name().to_string_lossy().into_owned();
            found.push((ns_name.clone(), id, entry.path()));
        }
    }
    found
}

/// Asks a shim that still serves but holds no task the daemon can adopt (the daemon
/// died while the task was being created or started) to exit at once. The shim
/// binary's `delete` action runs after this for whatever is left.
pub(crate) async fn stop_unadopted_shim(id: &str, bundle: &Path) {
    const TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
    let Ok(address) = std::fs::read_to_string(bundle.join("address")) else {
        return;
    };
    let stop = async {
        let client = ShimClient::connect(address.trim()).await.ok()?;
        client.shutdown(id, true).await.ok()?;
        client.closed().await;
        Some(())
    };
    if tokio::time::timeout(TIMEOUT, stop).await.is_ok() {
        tracing::info!(%id, "stopped a shim whose task was never adopted");
    }
}
