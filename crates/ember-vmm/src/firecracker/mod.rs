//! Firecracker backend (REST API over its unix socket, hybrid vsock).
//!
//! `start` runs `firecracker --api-sock <state_dir>/firecracker.sock --id <id>` with its
//! stdout and stderr (the guest serial console, plus Firecracker's own early errors) in
//! `<state_dir>/console.log`, configures the VM over the API (logger → `vmm.log`,
//! metrics → `metrics.json`, boot source, machine config, drives, vsock) and issues
//! `InstanceStart`.
//!
//! Differences to other backends that callers should know:
//! - Firecracker is KVM-only: `Accel::Tcg` is rejected, `Auto` means KVM.
//! - Firecracker cannot hot-plug drives. [`Vm::attach_drive`] swaps the backing file of
//!   a drive that was configured before boot (a placeholder), anything else is
//!   `Error::Unsupported`.
//! - The virtio-blk serial Firecracker shows the guest is derived from the backing
//!   file (device, inode, mtime), not from [`Drive::id`]; drives appear in the guest in
//!   the order of `VmConfig::drives` (`vda`, `vdb`, ...).
//! - No shared directory: `VmConfig::shared_dir` is `Error::Unsupported` at `start`.
//!   A balloon is configured before boot (`PUT /balloon`) and driven through
//!   `PATCH /balloon`, `GET /balloon` and `GET|PATCH /balloon/statistics`.
//! - Templates are Firecracker snapshots (see `snapshot`): a Build needs a memory
//!   file, a Restore starts from `PUT /snapshot/load` instead of booting, and the
//!   template's drive files must still exist when a clone is restored.

mod api;
mod balloon;
mod config;
mod launch;
mod serial;
mod snapshot;
mod vsock;

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use tokio::process::Child;

use crate::jail::Jail;
use crate::logs::quote_guest;
use crate::process::{file_tail, proc_stats, require_file, vm_exit};
use crate::{
    Accel, BalloonConfig, BalloonStats, BoxedAgentStream, Drive, Error, TemplateMode, Vm, VmConfig,
    VmExit, VmStats, VmmKind,
};

pub use serial::disk_serial;

use api::ApiClient;
use config::{json, Action, ActionType, DrivePatch, VmState, VmStateBody};

/// Longest path a unix socket address can hold (`sun_path`, with its NUL).
const MAX_SOCKET_PATH: usize = 107;

/// Room left in the vsock path for the `_<port>` suffix of guest-initiated connections.
const VSOCK_SUFFIX_ROOM: usize = 11;

/// How long an exited process's last console output may take to be copied.
const CONSOLE_SETTLE: Duration = Duration::from_millis(500);

/// How much console the boot errors carry.
const BOOT_ERROR_TAIL: usize = 4096;

const BINARY_HINT: &str = "set FIRECRACKER_BIN or vmm_binary to a firecracker executable";
const KERNEL_HINT: &str = "build it with `guest/build.sh` (or set EMBER_KERNEL; Firecracker boots an uncompressed ELF vmlinux on x86_64)";
const INITRD_HINT: &str =
    "build it with `guest/build.sh` (or set EMBER_INITRD), or leave the initrd unset";
const DRIVE_HINT: &str = "create the drive's backing file before configuring the VM";

/// Files and sockets of one VM inside its state directory.
#[derive(Debug, Clone)]
struct Paths {
    api_socket: PathBuf,
    vsock: PathBuf,
    console: PathBuf,
    vmm_log: PathBuf,
    metrics: PathBuf,
}

impl Paths {
    fn new(state_dir: &Path) -> Self {
        Self {
            api_socket: state_dir.join("firecracker.sock"),
            vsock: state_dir.join("vsock.sock"),
            console: state_dir.join("console.log"),
            vmm_log: state_dir.join("vmm.log"),
            metrics: state_dir.join("metrics.json"),
        }
    }

    /// Removes the sockets Firecracker binds; it refuses to start if they exist.
    fn remove_sockets(&self) -> std::io::Result<()> {
        for p in [&self.api_socket, &self.vsock] {
            match std::fs::remove_file(p) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        Ok(())
    }
}

/// A microVM run by Firecracker.
#[derive(Debug)]
pub struct FirecrackerVm {
    config: VmConfig,
    paths: Paths,
    api: ApiClient,
    child: Option<Child>,
    pid: Option<u32>,
    /// `InstanceStart` succeeded.
    booted: bool,
    /// How the process ended, once it did.
    exit: Option<VmExit>,
    /// The VMM's jail, while it runs.
    jail: Option<Jail>,
    /// The configuration as Firecracker sees it (jail paths when jailed).
    seen: VmConfig,
    /// The tasks copying the log and metrics FIFOs into capped files.
    drains: Vec<tokio::task::JoinHandle<()>>,
    /// The tasks copying the process's stdout and stderr (the console) into its
    /// capped file: they end at the pipes' end, after the process.
    console_drains: Vec<tokio::task::JoinHandle<()>>,
    /// The jail's spawn plan and pid pipe, between `prepare_jail` and `spawn`.
    plan: Option<crate::jail::SpawnPlan>,
    pid_rx: Option<crate::jail::PidReceiver>,
    /// Log and metrics FIFOs as Firecracker sees them, and the console's log.
    seen_log: Option<(PathBuf, PathBuf, crate::logs::SharedLog)>,
}

impl FirecrackerVm {
    /// Checks the configuration and the files it names; starts nothing.
    pub fn new(config: VmConfig) -> Result<Self, Error> {
        if config.accel == Accel::Tcg {
            return Err(Error::InvalidConfig(
                "Firecracker runs guests on KVM only; TCG was requested".into(),
            ));
        }
        if config.vcpus == 0 {
            return Err(Error::InvalidConfig("vcpus must be at least 1".into()));
        }
        if config.memory_mib == 0 {
            return Err(Error::InvalidConfig("memory_mib must be at least 1".into()));
        }
        crate::nic::check(&config.nics)?;
        require_file("firecracker binary", &config.vmm_binary, BINARY_HINT)?;
        snapshot::check_config(&config)?;
        // A clone's kernel comes from its template's snapshot.
        if !matches!(config.template, Some(TemplateMode::Restore { .. })) {
            require_file("guest kernel", &config.kernel, KERNEL_HINT)?;
            if let Some(initrd) = &config.initrd {
                require_file("guest initramfs", initrd, INITRD_HINT)?;
            }
        }
        for (i, drive) in config.drives.iter().enumerate() {
            check_drive_id(&drive.id)?;
            if config.drives[..i].iter().any(|d| d.id == drive.id) {
                return Err(Error::InvalidConfig(format!(
                    "drive id {:?} is used twice",
                    drive.id
                )));
            }
            require_file("drive backing file", &drive.path, DRIVE_HINT)?;
        }
        if !config.state_dir.is_dir() {
            return Err(Error::InvalidConfig(format!(
                "state_dir {} does not exist or is not a directory",
                config.state_dir.display()
            )));
        }
        let paths = Paths::new(&config.state_dir);
        for (sock, room) in [(&paths.api_socket, 0), (&paths.vsock, VSOCK_SUFFIX_ROOM)] {
            if sock.as_os_str().len() + room > MAX_SOCKET_PATH {
                return Err(Error::InvalidConfig(format!(
                    "socket path {} is too long for a unix socket; use a shorter state_dir",
                    sock.display()
                )));
            }
        }
        Ok(Self {
            api: ApiClient::new(&paths.api_socket),
            paths,
            seen: config.clone(),
            config,
            child: None,
            pid: None,
            booted: false,
            exit: None,
            jail: None,
            drains: Vec::new(),
            console_drains: Vec::new(),
            plan: None,
            pid_rx: None,
            seen_log: None,
        })
    }

    /// The file holding the guest serial console.
    pub fn console_path(&self) -> &Path {
        &self.paths.console
    }

    /// Firecracker's own log.
    pub fn vmm_log_path(&self) -> &Path {
        &self.paths.vmm_log
    }

    /// Firecracker's JSON metrics, appended on each flush.
    pub fn metrics_path(&self) -> &Path {
        &self.paths.metrics
    }

    /// The API socket.
    pub fn api_socket_path(&self) -> &Path {
        self.api.socket()
    }

    /// Firecracker's view of the VM: `"Not started"`, `"Running"` or `"Paused"`.
    pub async fn instance_state(&self) -> Result<String, Error> {
        self.ensure_running()?;
        let info = self.api.get_json("/").await?;
        info.get("state")
            .and_then(|s| s.as_str())
            .map(str::to_owned)
            .ok_or_else(|| Error::Control(format!("GET /: no state in {info}")))
    }

    /// Asks Firecracker to write its metrics to `metrics.json` now.
    pub async fn flush_metrics(&self) -> Result<(), Error> {
        self.ensure_running()?;
        self.action(ActionType::FlushMetrics).await
    }

    async fn action(&self, action_type: ActionType) -> Result<(), Error> {
        self.api
            .put("/actions", &json(&Action { action_type }))
            .await
            .map(drop)
    }

    fn ensure_running(&self) -> Result<(), Error> {
        if self.child.is_some() && self.exit.is_none() {
            Ok(())
        } else {
            Err(Error::NotRunning)
        }
    }

    /// The balloon calls need a booted VM configured with a balloon.
    fn balloon_api(&self) -> Result<(), Error> {
        if self.config.balloon.is_none() {
            return Err(Error::NoBalloon);
        }
        self.ensure_booted()
    }

    fn ensure_booted(&self) -> Result<(), Error> {
        self.ensure_running()?;
        if self.booted {
            Ok(())
        } else {
            Err(Error::NotRunning)
        }
    }

    /// Kills the process (if still there), reaps it and records how it ended.
    async fn kill_and_reap(&mut self) -> Result<VmExit, Error> {
        if let Some(exit) = self.exit {
            return Ok(exit);
        }
        let child = self.child.as_mut().ok_or(Error::NotRunning)?;
        // `kill` is SIGKILL and reaps; it fails only if the process was reaped already.
        if let Err(e) = child.kill().await {
            tracing::debug!(id = %self.config.id, "killing firecracker: {e}");
        }
        let status = child.wait().await?;
        Ok(self.record_exit(vm_exit(status)).await)
    }

    /// Records how the process ended, once its console was copied to the end
    /// (for up to `CONSOLE_SETTLE`: a boot error quotes it), and lets go of what
    /// it held.
    pub(super) async fn record_exit(&mut self, exit: VmExit) -> VmExit {
        let deadline = tokio::time::Instant::now() + CONSOLE_SETTLE;
        for d in &mut self.console_drains {
            let _ = tokio::time::timeout_at(deadline, d).await;
        }
        self.exit = Some(exit);
        // The FIFO drains hold a writer end themselves: they end here.
        for d in self.drains.drain(..).chain(self.console_drains.drain(..)) {
            d.abort();
        }
        if let Some(mut j) = self.jail.take() {
            j.remove();
        }
        if let Err(e) = self.paths.remove_sockets() {
            tracing::debug!(id = %self.config.id, "removing sockets: {e}");
        }
        tracing::debug!(id = %self.config.id, ?exit, "firecracker exited");
        exit
    }

    fn boot_error(&self, reason: String) -> Error {
        let log = file_tail(&self.paths.vmm_log, 2048);
        let reason = if log.trim().is_empty() {
            reason
        } else {
            format!(
                "{reason}\n--- vmm.log tail ---\n{}",
                quote_guest(log.trim_end(), "vmm| ")
            )
        };
        Error::Boot {
            reason,
            console: quote_guest(
                &file_tail(&self.paths.console, BOOT_ERROR_TAIL),
                "console| ",
            ),
        }
    }
}

fn check_drive_id(id: &str) -> Result<(), Error> {
    if config::valid_resource_id(id) {
        Ok(())
    } else {
        Err(Error::InvalidConfig(format!(
            "drive id {id:?}: Firecracker drive ids are non-empty and made of letters, digits and '_'"
        )))
    }
}

fn describe_exit(exit: &VmExit) -> String {
    match (exit.code, exit.signal) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        (None, None) => "unknown status".into(),
    }
}

#[async_trait]
impl Vm for FirecrackerVm {
    fn kind(&self) -> VmmKind {
        VmmKind::Firecracker
    }

    fn accel(&self) -> Accel {
        Accel::Kvm
    }

    async fn start(&mut self) -> Result<(), Error> {
        if self.child.is_some() {
            return Err(Error::InvalidConfig(
                "this VM was started already; create a new one".into(),
            ));
        }
        if self.config.shared_dir.is_some() {
            return Err(Error::Unsupported(
                "a shared directory (virtio-9p/virtio-fs)",
            ));
        }
        self.paths.remove_sockets()?;
        self.prepare_jail()?;
        self.prepare_files()?;
        self.spawn()?;
        let timeout = self.config.boot_timeout;
        let result = match tokio::time::timeout(timeout, self.configure_and_boot()).await {
            Ok(r) => r,
            Err(_) => Err(Error::Control(format!(
                "configuring and booting took longer than the boot timeout of {timeout:?}"
            ))),
        };
        if let Err(e) = result {
            self.booted = false;
            let exit = self.kill_and_reap().await;
            let mut reason = e.to_string();
            if let Ok(exit) = exit {
                reason.push_str(&format!(" (firecracker: {})", describe_exit(&exit)));
            }
            return Err(self.boot_error(reason));
        }
        tracing::info!(id = %self.config.id, pid = ?self.pid, "firecracker VM started");
        Ok(())
    }

    async fn pause(&self) -> Result<(), Error> {
        self.ensure_booted()?;
        self.api
            .patch(
                "/vm",
                &json(&VmStateBody {
                    state: VmState::Paused,
                }),
            )
            .await
            .map(drop)
    }

    async fn resume(&self) -> Result<(), Error> {
        self.ensure_booted()?;
        self.api
            .patch(
                "/vm",
                &json(&VmStateBody {
                    state: VmState::Resumed,
                }),
            )
            .await
            .map(drop)
    }

    async fn stop(&mut self, grace: Duration) -> Result<VmExit, Error> {
        if let Some(exit) = self.exit {
            return Ok(exit);
        }
        let Some(child) = self.child.as_mut() else {
            return Err(Error::NotRunning);
        };
        if let Some(status) = child.try_wait()? {
            return Ok(self.record_exit(vm_exit(status)).await);
        }
        let deadline = tokio::time::Instant::now() + grace;
        if self.booted {
            let api = self.api.clone();
            let polite = async {
                // Drain the counters before the process may be killed.
                let _ = api
                    .put(
                        "/actions",
                        &json(&Action {
                            action_type: ActionType::FlushMetrics,
                        }),
                    )
                    .await;
                // Ctrl-Alt-Del reaches the guest through the i8042 controller, which
                // exists on x86 only.
                if cfg!(target_arch = "x86_64") {
                    if let Err(e) = api
                        .put(
                            "/actions",
                            &json(&Action {
                                action_type: ActionType::SendCtrlAltDel,
                            }),
                        )
                        .await
                    {
                        tracing::debug!("SendCtrlAltDel: {e}");
                    }
                }
            };
            let _ = tokio::time::timeout_at(deadline, polite).await;
        }
        let child = self.child.as_mut().ok_or(Error::NotRunning)?;
        match tokio::time::timeout_at(deadline, child.wait()).await {
            Ok(status) => Ok(self.record_exit(vm_exit(status?)).await),
            Err(_) => {
                tracing::info!(id = %self.config.id, ?grace, "guest did not shut down in time; killing firecracker");
                self.kill_and_reap().await
            }
        }
    }

    async fn wait(&mut self) -> Result<VmExit, Error> {
        if let Some(exit) = self.exit {
            return Ok(exit);
        }
        let child = self.child.as_mut().ok_or(Error::NotRunning)?;
        let status = child.wait().await?;
        Ok(self.record_exit(vm_exit(status)).await)
    }

    async fn connect_agent(&self, port: u32) -> Result<BoxedAgentStream, Error> {
        self.ensure_booted()?;
        let stream = vsock::connect(&self.paths.vsock, port).await?;
        Ok(Box::pin(stream))
    }

    async fn attach_drive(&mut self, drive: Drive) -> Result<(), Error> {
        check_drive_id(&drive.id)?;
        let Some(index) = self.config.drives.iter().position(|d| d.id == drive.id) else {
            return Err(Error::Unsupported(
                "hot-plugging a drive that was not configured before boot (Firecracker can only swap the backing file of an existing drive)",
            ));
        };
        if self.config.drives[index].read_only != drive.read_only {
            return Err(Error::InvalidConfig(format!(
                "drive {:?} was configured with read_only={}; Firecracker cannot change that after boot",
                drive.id, self.config.drives[index].read_only
            )));
        }
        require_file("drive backing file", &drive.path, DRIVE_HINT)?;
        if self.child.is_some() {
            // Started: the drive exists in Firecracker, swap its backing file.
            self.ensure_booted()?;
            self.api
                .patch(
                    &format!("/drives/{}", drive.id),
                    &json(&DrivePatch {
                        drive_id: drive.id.clone(),
                        path_on_host: drive.path.clone(),
                    }),
                )
                .await?;
        }
        // Not started yet: `start` configures the drive with the new file.
        self.config.drives[index] = drive;
        Ok(())
    }

    async fn balloon_config(&self) -> Result<BalloonConfig, Error> {
        self.balloon_api()?;
        balloon::get(&self.api).await
    }

    async fn balloon_update(&self, amount_mib: u32) -> Result<(), Error> {
        self.balloon_api()?;
        balloon::update(&self.api, amount_mib).await
    }

    async fn balloon_stats(&self) -> Result<BalloonStats, Error> {
        self.balloon_api()?;
        balloon::stats(&self.api).await
    }

    async fn balloon_update_stats(&self, interval_s: u32) -> Result<(), Error> {
        self.balloon_api()?;
        balloon::update_stats(&self.api, interval_s).await
    }

    async fn save_template(&mut self, state: &Path) -> Result<(), Error> {
        self.save_snapshot(state).await
    }

    fn guest_serial(&self, drive: &Drive) -> String {
        // A drive copied into the jail is another file: its serial is the copy's.
        let copied = drive.read_only
            && self.config.jail.as_ref().map(|j| j.expose)
                == Some(crate::jail::DriveExposePolicy::Copy);
        let path = match (
            &self.jail,
            self.seen.drives.iter().find(|d| d.id == drive.id),
        ) {
            (Some(j), Some(seen)) if copied => j
                .record()
                .dir
                .join("root")
                .join(seen.path.strip_prefix("/").unwrap_or(&seen.path)),
            _ => drive.path.clone(),
        };
        disk_serial(&path).unwrap_or_else(|| drive.id.clone())
    }

    fn stats(&self) -> Result<VmStats, Error> {
        self.ensure_running()?;
        let pid = self.pid.ok_or(Error::NotRunning)?;
        proc_stats(pid)
    }

    fn pid(&self) -> Option<u32> {
        if self.exit.is_none() {
            self.pid
        } else {
            None
        }
    }

    fn console_tail(&self, max_bytes: usize) -> String {
        file_tail(&self.paths.console, max_bytes)
    }

    fn log_tail(&self, max_bytes: usize) -> String {
        file_tail(&self.paths.vmm_log, max_bytes)
    }
}

#[cfg(test)]
mod tests;
