//! A sandbox is one microVM plus the agent inside it. This crate boots the VM through
//! a VMM backend, waits for the agent, and offers the operations the runtime needs:
//! create containers from OCI bundles whose rootfs is a block image, run processes and
//! carry their stdio, and tear everything down.

mod config;
pub mod pool;
mod restore;
pub mod share;
mod stdio;
pub mod template;

use std::time::{Duration, Instant};

use ember_agent_api::{AgentClient, BlockRootfs, CreateContainerRequest, StdioConfig, VSOCK_PORT};
use ember_vmm::logs::quote_guest;
use ember_vmm::{
    firecracker::FirecrackerVm, qemu::QemuVm, BoxedAgentStream, Vm, VmConfig, VmExit, VmmKind,
};

pub use config::SandboxConfig;
pub use pool::{Pool, PoolError, Region, POOL_DRIVE};
pub use stdio::{copy_output, copy_stdin, read_all_output};

/// Errors of a sandbox.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Vmm(#[from] ember_vmm::Error),
    #[error("agent: {0}")]
    Agent(#[from] ember_ttrpc::Error),
    #[error("the agent did not answer within {timeout:?}\n--- console tail ---\n{console}\n--- VMM log tail ---\n{log}")]
    AgentTimeout {
        timeout: Duration,
        console: String,
        log: String,
    },
    #[error("the VM exited before its agent answered ({exit:?})\n--- console tail ---\n{console}\n--- VMM log tail ---\n{log}")]
    EarlyExit {
        exit: VmExit,
        console: String,
        log: String,
    },
    #[error("{0}")]
    Invalid(String),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// Where boot time went.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct BootTimings {
    /// From `boot` to the VMM process running with its control channel up.
    pub vmm_ready: Duration,
    /// From `boot` to the agent's first answer.
    pub agent_ready: Duration,
    /// From `boot` to the sandbox ready for containers: the agent's answer, and in
    /// a clone its new identity.
    pub identity_ready: Duration,
    /// The VM was restored from a template, not booted.
    pub from_template: bool,
}

/// A running microVM with a connected agent.
pub struct Sandbox {
    vm: Box<dyn Vm>,
    drives: Vec<ember_vmm::Drive>,
    agent: AgentClient,
    timings: BootTimings,
    kernel_release: String,
    /// The template it was restored from.
    template: Option<String>,
    /// Of a clone: each NIC's asked-for MAC and the template's MAC its guest sees.
    nic_macs: Vec<(String, String)>,
}

impl Sandbox {
    /// Boots the VM and waits until its agent answers. On failure the VM is gone.
    pub async fn boot(config: SandboxConfig) -> Result<Sandbox, Error> {
        Self::boot_vm(
            config.vmm,
            config.vm_config(),
            config.drives.clone(),
            config.boot_timeout,
        )
        .await
    }

    /// Boots the VM of `vm_config` under `vmm` (its drives are `drives`) and waits
    /// for its agent, at most `boot_timeout`.
    pub(crate) async fn boot_vm(
        vmm: VmmKind,
        vm_config: VmConfig,
        drives: Vec<ember_vmm::Drive>,
        boot_timeout: Duration,
    ) -> Result<Sandbox, Error> {
        let started = Instant::now();
        let id = vm_config.id.clone();
        let mut vm: Box<dyn Vm> = match vmm {
            VmmKind::Qemu => Box::new(QemuVm::new(vm_config)?),
            VmmKind::Firecracker => Box::new(FirecrackerVm::new(vm_config)?),
        };
        vm.start().await?;
        let vmm_ready = started.elapsed();
        let outcome = wait_for_agent(vm.as_mut(), started + boot_timeout, boot_timeout).await;
        match outcome {
            Ok((agent, ping)) => {
                let timings = BootTimings {
                    vmm_ready,
                    agent_ready: started.elapsed(),
                    identity_ready: started.elapsed(),
                    from_template: false,
                };
                tracing::info!(
                    accel = ?vm.accel(),
                    agent_ms = timings.agent_ready.as_millis() as u64,
                    "sandbox {id} ready (guest kernel {})",
                    ping.kernel_release
                );
                Ok(Sandbox {
                    vm,
                    drives,
                    agent,
                    timings,
                    kernel_release: ping.kernel_release,
                    template: None,
                    nic_macs: Vec::new(),
                })
            }
            Err(e) => {
                let _ = vm.stop(Duration::ZERO).await;
                Err(e)
            }
        }
    }

    pub fn agent(&self) -> &AgentClient {
        &self.agent
    }

    /// Drops the agent connection (calls in flight fail) and opens a raw stream on
    /// the agent channel instead, e.g. to probe the agent with bad input.
    pub async fn raw_agent_channel(&mut self) -> Result<BoxedAgentStream, Error> {
        self.disconnect_agent();
        Ok(self.vm.connect_agent(VSOCK_PORT).await?)
    }

    /// Replaces the agent connection with a fresh one that answered a ping.
    pub async fn reconnect_agent(&mut self, timeout: Duration) -> Result<(), Error> {
        self.disconnect_agent();
        let (client, _) =
            wait_for_agent(self.vm.as_mut(), Instant::now() + timeout, timeout).await?;
        self.agent = client;
        Ok(())
    }

    /// Puts a closed client in place of the current one, so the connection ends once
    /// no clone of the old client is left.
    fn disconnect_agent(&mut self) {
        let (closed, _) = tokio::io::duplex(1);
        self.agent = AgentClient::new(closed);
    }

    /// The serial under which the guest sees the drive `drive_id`.
    pub fn guest_serial(&self, drive_id: &str) -> Option<String> {
        self.drives
            .iter()
            .find(|d| d.id == drive_id)
            .map(|d| self.vm.guest_serial(d))
    }

    pub fn vm(&self) -> &dyn Vm {
        self.vm.as_ref()
    }

    pub fn vm_mut(&mut self) -> &mut dyn Vm {
        self.vm.as_mut()
    }

    pub fn timings(&self) -> BootTimings {
        self.timings
    }

    /// The guest kernel release, as the agent reported it.
    pub fn kernel_release(&self) -> &str {
        &self.kernel_release
    }

    /// Creates a container from an OCI spec whose rootfs is the drive `drive_id` (a
    /// filesystem of type `fstype`). Returns the init pid; the container is not started.
    pub async fn create_container(
        &self,
        id: &str,
        spec_json: Vec<u8>,
        drive_id: &str,
        fstype: &str,
        stdio: StdioConfig,
    ) -> Result<u32, Error> {
        let drive = self
            .drives
            .iter()
            .find(|d| d.id == drive_id)
            .ok_or_else(|| Error::Invalid(format!("the VM has no drive {drive_id:?}")))?;
        let req = CreateContainerRequest {
            container_id: id.to_string(),
            spec_json,
            rootfs: Some(BlockRootfs {
                serial: self.vm.guest_serial(drive),
                fstype: fstype.to_string(),
                options: String::new(),
                read_only: false,
                subpath: String::new(),
                ..Default::default()
            }),
            stdio: Some(stdio),
            files: Vec::new(),
            ..Default::default()
        };
        Ok(self.agent.create_container(&req).await?.pid)
    }

    /// Asks the agent to power the guest off, then makes sure the VMM is gone.
    pub async fn shutdown(self) -> Result<VmExit, Error> {
        self.shutdown_within(Duration::from_secs(10)).await
    }

    /// Asks the agent to power the guest off and gives it `grace` to do so before
    /// the VMM is killed.
    pub async fn shutdown_within(mut self, grace: Duration) -> Result<VmExit, Error> {
        let ask = grace.clamp(Duration::from_millis(100), Duration::from_secs(5));
        let asked = tokio::time::timeout(ask, self.agent.shutdown()).await;
        let grace = if matches!(asked, Ok(Ok(()))) {
            grace
        } else {
            Duration::ZERO
        };
        Ok(self.vm.stop(grace).await?)
    }

    /// Kills the VMM at once (the guest gets no chance to shut down) and reaps it.
    pub async fn kill(mut self) -> Result<VmExit, Error> {
        Ok(self.vm.stop(Duration::ZERO).await?)
    }
}

/// Connects to the agent, retrying until the guest listens and answers a ping, the VM
/// exits, or the deadline passes.
async fn wait_for_agent(
    vm: &mut dyn Vm,
    deadline: Instant,
    timeout: Duration,
) -> Result<(AgentClient, ember_agent_api::PingResponse), Error> {
    // Short first attempts (a restored guest answers within tens of milliseconds),
    // then up to 50 ms each: a ping that timed out is not answered to, so a long
    // attempt adds up to its length to the wait.
    let mut attempt = Duration::from_millis(10);
    let longest = Duration::from_millis(50);
    // Unanswered pings for this long on one connection: connect afresh (on a serial
    // channel, the new connection's sync marker lets the agent find its start again).
    let reconnect_after = 20;
    let mut unanswered = 0;
    let mut client: Option<AgentClient> = None;
    loop {
        if Instant::now() > deadline {
            return Err(Error::AgentTimeout {
                timeout,
                console: quote_guest(&vm.console_tail(4096), "console| "),
                log: quote_guest(&vm.log_tail(2048), "vmm| "),
            });
        }
        // A zero timeout polls the exit once: a VM that died ends the wait at once.
        if let Ok(exit) = tokio::time::timeout(Duration::ZERO, vm.wait()).await {
            return Err(Error::EarlyExit {
                exit: exit?,
                console: quote_guest(&vm.console_tail(4096), "console| "),
                log: quote_guest(&vm.log_tail(2048), "vmm| "),
            });
        }
        let c = match client.as_ref().filter(|c| !c.is_closed()) {
            Some(c) => c.clone(),
            None => match vm.connect_agent(VSOCK_PORT).await {
                Ok(s) => {
                    let c = AgentClient::new(s);
                    client = Some(c.clone());
                    c
                }
                Err(ember_vmm::Error::NotRunning) => {
                    return Err(ember_vmm::Error::NotRunning.into())
                }
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        // On a virtio-serial channel, bytes wait in the socket until the guest opens
        // its port, so keep pinging on the same connection until it answers.
        match c.ping(attempt).await {
            Ok(p) => return Ok((c, p)),
            Err(ember_ttrpc::Error::Timeout(_)) => {
                attempt = (attempt * 2).min(longest);
                unanswered += 1;
                if unanswered >= reconnect_after {
                    unanswered = 0;
                    client = None;
                }
            }
            Err(_) => {
                client = None;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}
