//! Starting Firecracker: its capped console, log and metrics (FIFOs drained by the
//! host), and its jail when the configuration has one.

use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;

use super::{config, FirecrackerVm};
use crate::jail::Jail;
use crate::logs::{drain, fifo_reader, make_fifo, CappedLog};
use crate::process::spawn_confined;
use crate::Error;

impl FirecrackerVm {
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
            self.drains.push(drain(out, console.clone()));
        }
        if let Some(err) = child.stderr.take() {
            self.drains.push(drain(err, console));
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
