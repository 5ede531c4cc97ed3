//! Starting Firecracker: its capped console, log and metrics (FIFOs drained by the
//! host), its jail when the configuration has one, and the API conversation that
//! boots the guest (or restores it from a template, see `snapshot`).

use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;

use super::config::{json, ActionType, BootSource, DriveBody, Logger, MachineConfig, Metrics};
use super::{balloon, config, describe_exit, FirecrackerVm};
use crate::jail::Jail;
use crate::logs::{drain, fifo_reader, make_fifo, CappedLog};
use crate::process::{spawn_confined, vm_exit};
use crate::{Error, TemplateMode};

impl FirecrackerVm {
    /// Waits until the API socket accepts connections, failing early if the process
    /// exits first.
    async fn wait_for_api(&mut self) -> Result<(), Error> {
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    let exit = self.record_exit(vm_exit(status)).await;
                    return Err(Error::Control(format!(
                        "firecracker exited before its API socket appeared ({})",
                        describe_exit(&exit)
                    )));
                }
            }
            if tokio::net::UnixStream::connect(&self.paths.api_socket)
                .await
                .is_ok()
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// The whole API conversation from process start to a running guest: logger and
    /// metrics, then either the devices and `InstanceStart`, or (restoring a
    /// template) the snapshot load and resume.
    pub(super) async fn configure_and_boot(&mut self) -> Result<(), Error> {
        self.wait_for_api().await?;
        let api = self.api.clone();
        let (log_fifo, metrics_fifo, _) = self.seen_log.clone().ok_or(Error::NotRunning)?;
        api.put("/logger", &json(&Logger::new(&log_fifo))).await?;
        api.put(
            "/metrics",
            &json(&Metrics {
                metrics_path: metrics_fifo,
            }),
        )
        .await?;
        if let Some(TemplateMode::Restore { memory, state }) = self.config.template.clone() {
            self.restore_snapshot(&state, memory.as_deref()).await?;
        } else {
            self.configure_devices().await?;
            self.action(ActionType::InstanceStart).await?;
        }
        self.booted = true;
        // A first flush, so metrics.json holds data even if the VM is later killed.
        if let Err(e) = self.action(ActionType::FlushMetrics).await {
            tracing::debug!(id = %self.config.id, "flushing metrics after boot: {e}");
        }
        Ok(())
    }

    /// Boot source, machine, drives, NICs, balloon and vsock of a booting VM.
    async fn configure_devices(&self) -> Result<(), Error> {
        let api = &self.api;
        api.put("/boot-source", &json(&BootSource::from_config(&self.seen)))
            .await?;
        api.put(
            "/machine-config",
            &json(&MachineConfig::from_config(&self.config)),
        )
        .await?;
        for drive in &self.seen.drives {
            api.put(
                &format!("/drives/{}", drive.id),
                &json(&DriveBody::from_drive(drive)),
            )
            .await?;
        }
        for (path, body) in config::nics(&self.config) {
            api.put(&path, &json(&body)).await?;
        }
        if let Some(b) = self.config.balloon {
            balloon::configure(api, b).await?;
        }
        api.put(
            "/vsock",
            &json(&config::Vsock {
                guest_cid: config::GUEST_CID,
                uds_path: self.seen.state_dir.join("vsock.sock"),
            }),
        )
        .await?;
        Ok(())
    }

    /// Creates (truncating) the capped console, log and metrics files, and the FIFOs
    /// Firecracker writes its log and metrics into (drained into those files). With
    /// a jail, the configuration Firecracker sees is the jail's.
    pub(super) fn prepare_files(&mut self) -> Result<(), Error> {
        let cap = self.config.log_max_bytes;
        let console = CappedLog::shared(&self.paths.console, cap)?;
        let log = CappedLog::shared(&self.paths.vmm_log, cap)?;
        let metrics = CappedLog::shared(&self.paths.metrics, cap)?;
        let (fifo_dir, owner) = match &self.jail {
            Some(j) => (j.run_dir(), Some((j.uid(), j.record().gid))),
            None => (self.config.state_dir.clone(), None),
        };
        let log_fifo = fifo_dir.join("vmm.fifo");
        let metrics_fifo = fifo_dir.join("metrics.fifo");
        for (fifo, log) in [(&log_fifo, log), (&metrics_fifo, metrics)] {
            make_fifo(fifo, owner)?;
            self.drains.push(drain(fifo_reader(fifo)?, log));
        }
        self.seen_log = Some((
            self.seen.state_dir.join("vmm.fifo"),
            self.seen.state_dir.join("metrics.fifo"),
            console,
        ));
        Ok(())
    }

    pub(super) fn spawn(&mut self) -> Result<(), Error> {
        let (_, _, console) = self.seen_log.clone().ok_or(Error::NotRunning)?;
        let seen_api = self.seen.state_dir.join("firecracker.sock");
        let mut cmd = Command::new(&self.seen.vmm_binary);
        if self.jail.is_some() {
            cmd.arg0(crate::jail::jailed_arg0(&self.config));
        }
        cmd.arg("--api-sock")
            .arg(&seen_api)
            .arg("--id")
            .arg(config::instance_id(&self.config.id))
            .current_dir(&self.config.state_dir)
            .kill_on_drop(true);
        // A jailed VMM joins its namespace in the jail's own steps.
        if let (None, Some(netns)) = (&self.jail, &self.config.netns) {
            crate::nic::join_in_child(&mut cmd, netns)?;
        }
        let plan = self.plan.take();
        let pid_rx = self.pid_rx.take();
        let mut child =
            spawn_confined(cmd, Stdio::piped(), Stdio::piped(), plan).map_err(|source| {
                Error::Spawn {
                    binary: self.config.vmm_binary.clone(),
                    source,
                }
            })?;
        if let Some(out) = child.stdout.take() {
            self.console_drains.push(drain(out, console.clone()));
        }
        if let Some(err) = child.stderr.take() {
            self.console_drains.push(drain(err, console));
        }
        self.pid = match pid_rx {
            Some(rx) => Some(rx.receive(Duration::from_secs(5))?),
            None => child.id(),
        };
        self.child = Some(child);
        tracing::debug!(id = %self.config.id, pid = ?self.pid, "firecracker spawned");
        Ok(())
    }

    /// Builds the jail (when configured): Firecracker then sees the jail's paths, and
    /// the host reaches its sockets through links in the state directory.
    pub(super) fn prepare_jail(&mut self) -> Result<(), Error> {
        if self.config.jail.is_none() {
            return Ok(());
        }
        let (jail, plan, pid_rx) = Jail::prepare(&self.config)?;
        self.seen = jail.vmm_config().clone();
        for (host, name) in [
            (&self.paths.api_socket, "firecracker.sock"),
            (&self.paths.vsock, "vsock.sock"),
        ] {
            let _ = std::fs::remove_file(host);
            std::os::unix::fs::symlink(jail.run_dir().join(name), host)?;
        }
        self.jail = Some(jail);
        self.plan = Some(plan);
        self.pid_rx = Some(pid_rx);
        Ok(())
    }

    /// The VMM's jail (uid, directory, cgroup), while it runs.
    pub fn jail(&self) -> Option<&Jail> {
        self.jail.as_ref()
    }
}
