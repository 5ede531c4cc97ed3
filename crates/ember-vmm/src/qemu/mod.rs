//! QEMU `microvm` backend, driven over QMP.
//!
//! The guest sees: an 8250 serial console (QEMU's stdout, drained by the host into a
//! capped `console.log`), one virtio-serial port named `ember.agent` bridged to the
//! unix socket `agent.sock` (the agent channel; it works without `/dev/vhost-vsock`),
//! a virtio-rng, and one
//! virtio-blk device per drive whose serial is the drive id; with `shared_dir` a
//! virtio-9p device (`security_model=passthrough`, tag `ember.shared`; a jailed QEMU
//! gets it from `virtfs-proxy-helper` outside its jail), with
//! `balloon` a virtio-balloon driven over QMP (`balloon`, `query-balloon`, the
//! device's `guest-stats` QOM properties). QEMU's own messages go to `vmm.log`
//! (capped too). With `VmConfig::jail` QEMU runs in its jail (`crate::jail`) under
//! its own seccomp filter (`-sandbox`).

mod accel;
mod balloon;
mod cmdline;
mod fileserver;
mod qmp;
mod template;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::net::UnixStream;
use tokio::process::{Child, Command};

pub use accel::{host_tsc_khz, kvm_device_usable, resolve as resolve_accel, AccelVerdict};
pub use cmdline::{base_kernel_args, AGENT_PORT_NAME, SANDBOX, SERIAL_SYNC};
use cmdline::{build_args, QemuPaths};
pub use fileserver::helper as file_server_helper;
pub use qmp::{Qmp, QmpEvent};

use crate::jail::{jailed_arg0, Jail};
use crate::logs::{drain, quote_guest, CappedLog};
use crate::process::{file_tail, proc_stats, require_file, spawn_confined, vm_exit};
use crate::{
    Accel, BalloonConfig, BalloonStats, BoxedAgentStream, Drive, Error, TemplateMode, Vm, VmConfig,
    VmExit, VmStats, VmmKind,
};

/// Longest drive id: virtio-blk serials are 20 bytes.
pub const MAX_DRIVE_ID: usize = 20;

/// A microVM run by `qemu-system-x86_64 -M microvm`.
pub struct QemuVm {
    config: VmConfig,
    paths: QemuPaths,
    verdict: Option<AccelVerdict>,
    child: Option<Child>,
    qmp: Option<Arc<Qmp>>,
    pid: Option<u32>,
    exit: Option<VmExit>,
    /// The balloon as last configured (None: the VM has no balloon device).
    balloon: std::sync::Mutex<Option<BalloonConfig>>,
    /// The VMM's jail, while it runs.
    jail: Option<Jail>,
    /// The tasks copying QEMU's stdout (the console) and stderr into capped logs.
    drains: Vec<tokio::task::JoinHandle<()>>,
    /// The shared directory's file server of a jailed QEMU.
    file_server: Option<fileserver::FileServer>,
}

/// Finds an executable by name through PATH, or checks a path.
pub fn find_binary(name: &Path) -> Option<PathBuf> {
    if name.components().count() > 1 {
        return name.is_file().then(|| name.to_path_buf());
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

impl QemuVm {
    /// Validates `config`; nothing is started yet.
    pub fn new(mut config: VmConfig) -> Result<Self, Error> {
        config.vmm_binary = find_binary(&config.vmm_binary).ok_or(Error::MissingFile {
            what: "QEMU binary",
            path: config.vmm_binary.clone(),
            hint: "install it with `apt-get install qemu-system-x86`",
        })?;
        require_file(
            "guest kernel",
            &config.kernel,
            "build it with `guest/build.sh` (or set EMBER_KERNEL)",
        )?;
        if let Some(initrd) = &config.initrd {
            require_file(
                "guest initramfs",
                initrd,
                "build it with `guest/build.sh` (or set EMBER_INITRD)",
            )?;
        }
        if !config.state_dir.is_dir() {
            return Err(Error::InvalidConfig(format!(
                "state directory {} does not exist",
                config.state_dir.display()
            )));
        }
        if config.memory_mib < 32 {
            return Err(Error::InvalidConfig(format!(
                "{} MiB of memory is too little for a guest",
                config.memory_mib
            )));
        }
        for d in &config.drives {
            validate_drive(d)?;
        }
        if let Some(dir) = &config.shared_dir {
            if !dir.is_dir() {
                return Err(Error::InvalidConfig(format!(
                    "shared directory {} does not exist",
                    dir.display()
                )));
            }
        }
        if let Some(b) = &config.balloon {
            balloon::target_bytes(config.memory_mib, b.amount_mib)?;
        }
        match &config.template {
            Some(TemplateMode::Build { .. }) if config.jail.is_some() => {
                return Err(Error::Unsupported("building a template in a jail"));
            }
            // A jailed VMM must not be able to write a file other VMs map.
            Some(TemplateMode::Restore {
                memory: Some(_), ..
            }) if config.jail.is_some() => {
                return Err(Error::Unsupported(
                    "a jailed clone of a template whose RAM is a shared file",
                ));
            }
            Some(TemplateMode::Restore { memory, state }) => {
                crate::template_files::check_restore(memory.as_deref(), state, config.memory_mib)?;
            }
            _ => {}
        }
        let paths = QemuPaths::new(&config.state_dir);
        let balloon = std::sync::Mutex::new(config.balloon);
        Ok(QemuVm {
            config,
            paths,
            verdict: None,
            child: None,
            qmp: None,
            pid: None,
            exit: None,
            balloon,
            jail: None,
            drains: Vec::new(),
            file_server: None,
        })
    }

    /// Why the accelerator was chosen (after `start`).
    pub fn accel_reason(&self) -> Option<&str> {
        self.verdict.as_ref().map(|v| v.reason.as_str())
    }

    /// The QMP connection, once started.
    pub fn qmp(&self) -> Option<Arc<Qmp>> {
        self.qmp.clone()
    }

    fn fail(&self, reason: String) -> Error {
        let mut console = quote_guest(&file_tail(&self.paths.console, 4096), "console| ");
        let log = file_tail(&self.paths.log, 2048);
        if !log.trim().is_empty() {
            console.push_str("\n--- QEMU log ---\n");
            console.push_str(&quote_guest(&log, "vmm| "));
        }
        Error::Boot { reason, console }
    }

    /// The balloon's configuration and the QMP connection, or why there are none.
    fn balloon_parts(&self) -> Result<(BalloonConfig, Arc<Qmp>), Error> {
        let cfg = (*self.balloon.lock().unwrap()).ok_or(Error::NoBalloon)?;
        let qmp = self.qmp.clone().ok_or(Error::NotRunning)?;
        Ok((cfg, qmp))
    }

    /// Applies the balloon's boot configuration (before the guest driver runs, QEMU
    /// keeps the target for it).
    async fn configure_balloon(&self, qmp: &Qmp) -> Result<(), Error> {
        let Some(b) = *self.balloon.lock().unwrap() else {
            return Ok(());
        };
        if b.amount_mib > 0 {
            balloon::set_target(qmp, self.config.memory_mib, b.amount_mib).await?;
        }
        if b.stats_interval_s > 0 {
            balloon::set_stats_interval(qmp, b.stats_interval_s).await?;
        }
        Ok(())
    }

    async fn kill_child(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill().await;
            if let Ok(st) = c.wait().await {
                self.exit = Some(vm_exit(st));
            }
        }
        self.exited().await;
    }

    /// After the VMM's exit: the logs are complete, the jail goes.
    async fn exited(&mut self) {
        self.qmp = None;
        if let Some(mut fs) = self.file_server.take() {
            let _ = fs.child.kill().await;
            let _ = tokio::time::timeout(Duration::from_secs(1), fs.drain).await;
        }
        for d in self.drains.drain(..) {
            let _ = tokio::time::timeout(Duration::from_secs(1), d).await;
        }
        if let Some(mut j) = self.jail.take() {
            j.remove();
        }
    }

    /// The VMM's jail (uid, directory, cgroup), while it runs.
    pub fn jail(&self) -> Option<&Jail> {
        self.jail.as_ref()
    }

    /// Spawns QEMU, jailed when the config says so.
    async fn spawn(&mut self, accel: Accel) -> Result<(), Error> {
        let tsc = if accel == Accel::Tcg {
            host_tsc_khz()
        } else {
            None
        };
        let spawn_err = |binary: &Path| {
            let binary = binary.to_path_buf();
            move |source| Error::Spawn { binary, source }
        };
        let console = CappedLog::shared(&self.paths.console, self.config.log_max_bytes)?;
        let log = CappedLog::shared(&self.paths.log, self.config.log_max_bytes)?;
        let (mut cmd, plan, pid_rx) = if self.config.jail.is_some() {
            // The shared directory is served from outside the jail.
            let mut inner = self.config.clone();
            inner.shared_dir = None;
            let (jail, plan, pid_rx) = Jail::prepare(&inner)?;
            let mut seen = jail.vmm_config().clone();
            seen.shared_dir = self.config.shared_dir.clone();
            let mut paths = QemuPaths::new(&seen.state_dir);
            if let Some(dir) = &self.config.shared_dir {
                let socket = jail
                    .run_dir()
                    .join(paths.proxy.file_name().unwrap_or_default());
                let gid = jail.record().gid;
                match fileserver::start(dir, &socket, jail.uid(), gid, log.clone()).await {
                    Ok(fs) => self.file_server = Some(fs),
                    Err(e) => {
                        drop(jail);
                        return Err(e);
                    }
                }
            }
            paths.console_to_stdout = true;
            // The sockets are made in the jail; the host reaches them by their usual
            // names in the state directory.
            for (host, inside) in [
                (&self.paths.qmp, &paths.qmp),
                (&self.paths.agent, &paths.agent),
            ] {
                let _ = std::fs::remove_file(host);
                let target = jail.run_dir().join(inside.file_name().unwrap_or_default());
                std::os::unix::fs::symlink(target, host)?;
            }
            let mut cmd = Command::new(&seen.vmm_binary);
            cmd.arg0(jailed_arg0(&self.config));
            cmd.args(build_args(&seen, accel, &paths, tsc));
            self.jail = Some(jail);
            (cmd, Some(plan), Some(pid_rx))
        } else {
            let mut paths = self.paths.clone();
            paths.console_to_stdout = true;
            let mut cmd = Command::new(&self.config.vmm_binary);
            cmd.args(build_args(&self.config, accel, &paths, tsc));
            if let Some(netns) = &self.config.netns {
                crate::nic::join_in_child(&mut cmd, netns)?;
            }
            (cmd, None, None)
        };
        cmd.kill_on_drop(true);
        let spawned = spawn_confined(cmd, Stdio::piped(), Stdio::piped(), plan);
        let mut child = match spawned {
            Ok(c) => c,
            Err(e) => {
                if let Some(mut j) = self.jail.take() {
                    j.remove();
                }
                return Err(spawn_err(&self.config.vmm_binary)(e));
            }
        };
        if let Some(out) = child.stdout.take() {
            self.drains.push(drain(out, console));
        }
        if let Some(err) = child.stderr.take() {
            self.drains.push(drain(err, log));
        }
        self.pid = match pid_rx {
            Some(rx) => Some(rx.receive(Duration::from_secs(5))?),
            None => child.id(),
        };
        self.child = Some(child);
        Ok(())
    }
}

fn validate_drive(d: &Drive) -> Result<(), Error> {
    if d.id.is_empty()
        || d.id.len() > MAX_DRIVE_ID
        || !d
            .id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
    {
        return Err(Error::InvalidConfig(format!(
            "drive id {:?} must be 1-{MAX_DRIVE_ID} characters of [A-Za-z0-9._-]",
            d.id
        )));
    }
    require_file(
        "drive image",
        &d.path,
        "check the path of the block device image",
    )
}

#[async_trait]
impl Vm for QemuVm {
    fn kind(&self) -> VmmKind {
        VmmKind::Qemu
    }

    fn accel(&self) -> Accel {
        self.verdict
            .as_ref()
            .map(|v| v.accel)
            .unwrap_or(self.config.accel)
    }

    async fn start(&mut self) -> Result<(), Error> {
        if self.child.is_some() {
            return Err(Error::InvalidConfig("the VM is already started".into()));
        }
        crate::nic::check(&self.config.nics)?;
        let verdict = accel::resolve(&self.config).await;
        tracing::info!(vm = %self.config.id, accel = ?verdict.accel, "{}", verdict.reason);
        let accel = verdict.accel;
        self.verdict = Some(verdict);
        for p in [&self.paths.qmp, &self.paths.agent, &self.paths.pidfile] {
            let _ = std::fs::remove_file(p);
        }
        if let Some(TemplateMode::Build {
            memory: Some(path), ..
        }) = &self.config.template
        {
            template::fresh_memory_file(path, self.config.memory_mib)?;
        }
        if let Err(e) = self.spawn(accel).await {
            self.kill_child().await;
            return Err(e);
        }

        // QEMU creates its QMP socket before the guest runs.
        let deadline = Instant::now() + Duration::from_secs(10).min(self.config.boot_timeout);
        loop {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(st)) = c.try_wait() {
                    self.exit = Some(vm_exit(st));
                    self.child = None;
                    self.exited().await;
                    return Err(self.fail(format!("QEMU exited at start ({st})")));
                }
            }
            if self.paths.qmp.exists() {
                match Qmp::connect(&self.paths.qmp).await {
                    Ok(q) => {
                        if let Some(TemplateMode::Restore { memory, state }) = &self.config.template
                        {
                            let t = self.config.boot_timeout;
                            if let Err(e) = template::restore(&q, state, memory.is_some(), t).await
                            {
                                self.kill_child().await;
                                return Err(self.fail(format!("restoring the template: {e}")));
                            }
                        }
                        if let Err(e) = self.configure_balloon(&q).await {
                            self.kill_child().await;
                            return Err(self.fail(format!("configuring the balloon: {e}")));
                        }
                        self.qmp = Some(Arc::new(q));
                        break;
                    }
                    Err(e) if Instant::now() > deadline => {
                        self.kill_child().await;
                        return Err(self.fail(e.to_string()));
                    }
                    Err(_) => {}
                }
            }
            if Instant::now() > deadline {
                self.kill_child().await;
                return Err(self.fail("QEMU did not open its QMP socket".into()));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(())
    }

    async fn pause(&self) -> Result<(), Error> {
        let q = self.qmp.as_ref().ok_or(Error::NotRunning)?;
        q.execute("stop", None).await.map(|_| ())
    }

    async fn resume(&self) -> Result<(), Error> {
        let q = self.qmp.as_ref().ok_or(Error::NotRunning)?;
        q.execute("cont", None).await.map(|_| ())
    }

    async fn stop(&mut self, grace: Duration) -> Result<VmExit, Error> {
        let Some(child) = self.child.as_mut() else {
            return self.exit.ok_or(Error::NotRunning);
        };
        // A guest asked to shut down (through its agent) gets `grace` to power off.
        if let Ok(Ok(st)) = tokio::time::timeout(grace, child.wait()).await {
            self.exit = Some(vm_exit(st));
            self.child = None;
            self.exited().await;
            return Ok(self.exit.unwrap());
        }
        if let Some(q) = &self.qmp {
            let _ = tokio::time::timeout(Duration::from_millis(500), q.execute("quit", None)).await;
        }
        if let Some(c) = self.child.as_mut() {
            if let Ok(Ok(st)) = tokio::time::timeout(Duration::from_millis(500), c.wait()).await {
                self.exit = Some(vm_exit(st));
                self.child = None;
                self.exited().await;
                return Ok(self.exit.unwrap());
            }
        }
        self.kill_child().await;
        self.exit.ok_or(Error::NotRunning)
    }

    async fn wait(&mut self) -> Result<VmExit, Error> {
        let Some(child) = self.child.as_mut() else {
            return self.exit.ok_or(Error::NotRunning);
        };
        let st = child.wait().await?;
        self.exit = Some(vm_exit(st));
        self.child = None;
        self.exited().await;
        Ok(self.exit.unwrap())
    }

    async fn connect_agent(&self, _port: u32) -> Result<BoxedAgentStream, Error> {
        if self.child.is_none() {
            return Err(Error::NotRunning);
        }
        let mut s = UnixStream::connect(&self.paths.agent).await?;
        tokio::io::AsyncWriteExt::write_all(&mut s, SERIAL_SYNC).await?;
        Ok(Box::pin(s))
    }

    async fn attach_drive(&mut self, _drive: Drive) -> Result<(), Error> {
        // microvm's virtio-mmio transports are fixed at machine creation.
        Err(Error::Unsupported(
            "hot-plugging drives into a QEMU microvm",
        ))
    }

    async fn save_template(&mut self, state: &Path) -> Result<(), Error> {
        let Some(TemplateMode::Build { memory }) = &self.config.template else {
            return Err(Error::InvalidConfig(
                "only a VM booted to be a template can be saved as one".into(),
            ));
        };
        let ram_in_file = memory.is_some();
        let qmp = self.qmp.clone().ok_or(Error::NotRunning)?;
        template::save(&qmp, state, ram_in_file).await?;
        if let Some(m) = memory {
            // Guest RAM reached the file through a shared mapping: on disk before
            // the template counts as made.
            crate::template_files::sync(m)?;
        }
        Ok(())
    }

    async fn balloon_config(&self) -> Result<BalloonConfig, Error> {
        (*self.balloon.lock().unwrap()).ok_or(Error::NoBalloon)
    }

    async fn balloon_update(&self, amount_mib: u32) -> Result<(), Error> {
        let (_, qmp) = self.balloon_parts()?;
        balloon::set_target(&qmp, self.config.memory_mib, amount_mib).await?;
        if let Some(b) = self.balloon.lock().unwrap().as_mut() {
            b.amount_mib = amount_mib;
        }
        Ok(())
    }

    async fn balloon_stats(&self) -> Result<BalloonStats, Error> {
        let (cfg, qmp) = self.balloon_parts()?;
        balloon::stats(&qmp, self.config.memory_mib, cfg.amount_mib).await
    }

    async fn balloon_update_stats(&self, interval_s: u32) -> Result<(), Error> {
        let (_, qmp) = self.balloon_parts()?;
        balloon::set_stats_interval(&qmp, interval_s).await?;
        if let Some(b) = self.balloon.lock().unwrap().as_mut() {
            b.stats_interval_s = interval_s;
        }
        Ok(())
    }

    fn stats(&self) -> Result<VmStats, Error> {
        let pid = self
            .pid
            .filter(|_| self.child.is_some())
            .ok_or(Error::NotRunning)?;
        proc_stats(pid)
    }

    fn pid(&self) -> Option<u32> {
        self.pid
    }

    fn console_tail(&self, max_bytes: usize) -> String {
        file_tail(&self.paths.console, max_bytes)
    }

    fn log_tail(&self, max_bytes: usize) -> String {
        file_tail(&self.paths.log, max_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &Path) -> VmConfig {
        VmConfig {
            id: "t".into(),
            state_dir: dir.to_path_buf(),
            vmm_binary: "qemu-system-x86_64".into(),
            kernel: dir.join("vmlinux"),
            initrd: None,
            kernel_args: String::new(),
            vcpus: 1,
            memory_mib: 128,
            accel: Accel::Tcg,
            drives: vec![],
            boot_timeout: Duration::from_secs(5),
            shared_dir: None,
            balloon: None,
            ..Default::default()
        }
    }

    #[test]
    fn missing_kernel_names_the_fix() {
        let d = tempfile::tempdir().unwrap();
        let mut c = config(d.path());
        c.vmm_binary = "/bin/true".into();
        let e = QemuVm::new(c).err().unwrap().to_string();
        assert!(
            e.contains("guest kernel") && e.contains("guest/build.sh"),
            "{e}"
        );
    }

    #[test]
    fn missing_qemu_names_the_fix() {
        let d = tempfile::tempdir().unwrap();
        let mut c = config(d.path());
        c.vmm_binary = "no-such-qemu-binary".into();
        let e = QemuVm::new(c).err().unwrap().to_string();
        assert!(e.contains("apt-get install qemu-system-x86"), "{e}");
    }

    #[test]
    fn drive_ids_are_checked() {
        let d = tempfile::tempdir().unwrap();
        let img = d.path().join("img");
        std::fs::write(&img, b"").unwrap();
        for bad in ["", "has space", "this-id-is-longer-than-twenty"] {
            let e = validate_drive(&Drive {
                id: bad.into(),
                path: img.clone(),
                read_only: false,
            });
            assert!(matches!(e, Err(Error::InvalidConfig(_))), "{bad:?}");
        }
        assert!(validate_drive(&Drive {
            id: "rootfs-1".into(),
            path: img,
            read_only: false
        })
        .is_ok());
    }
}
