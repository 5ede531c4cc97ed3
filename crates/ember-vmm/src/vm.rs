//! The backend-independent description of a microVM and the trait every VMM backend
//! implements.

use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

use async_trait::async_trait;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::Error;

/// Which VMM runs the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VmmKind {
    Qemu,
    Firecracker,
}

/// CPU virtualisation wanted for the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    /// Hardware KVM when a probe boot shows it really runs the guest, else TCG.
    Auto,
    Kvm,
    Tcg,
}

/// A block device handed to the guest. The guest sees `id` as the device's serial
/// (`/sys/block/vdX/serial`), which is how the agent finds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drive {
    pub id: String,
    pub path: PathBuf,
    pub read_only: bool,
}

/// Everything a backend needs to start one microVM.
#[derive(Debug, Clone)]
pub struct VmConfig {
    /// Unique id, used in names and logs.
    pub id: String,
    /// Directory owned by this VM: sockets, console log, VMM log and metrics go here.
    /// It must exist; the backend never deletes it.
    pub state_dir: PathBuf,
    /// The VMM executable.
    pub vmm_binary: PathBuf,
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    /// Extra kernel command line, appended after the backend's own arguments.
    pub kernel_args: String,
    pub vcpus: u8,
    pub memory_mib: u32,
    pub accel: Accel,
    pub drives: Vec<Drive>,
    /// How long `start` may take before it gives up.
    pub boot_timeout: Duration,
}

/// How a VM ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmExit {
    /// The VMM process's exit code, or None when it was killed by a signal.
    pub code: Option<i32>,
    pub signal: Option<i32>,
}

impl VmExit {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

/// Resource usage of the VMM process, as the host sees it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VmStats {
    pub pid: u32,
    /// Resident set size of the VMM process.
    pub rss_bytes: u64,
    /// User + system CPU time consumed by the VMM process.
    pub cpu_time_ms: u64,
}

/// A byte stream to the agent inside the guest.
pub trait AgentStream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> AgentStream for T {}

pub type BoxedAgentStream = Pin<Box<dyn AgentStream>>;

/// One microVM driven by a VMM backend.
///
/// The VMM process dies with its owner (parent-death signal), so a crashed caller
/// leaves no VM running. Console output and VMM logs are drained into files in
/// `state_dir` (`console.log`, `vmm.log`, plus `metrics.json` where the VMM has them).
#[async_trait]
pub trait Vm: Send + Sync {
    fn kind(&self) -> VmmKind;

    /// The accelerator the VM actually runs on (after `Auto` was resolved).
    fn accel(&self) -> Accel;

    /// Starts the VMM and boots the guest. On failure nothing is left running and the
    /// error carries the console tail.
    async fn start(&mut self) -> Result<(), Error>;

    /// Freezes the vCPUs.
    async fn pause(&self) -> Result<(), Error>;

    async fn resume(&self) -> Result<(), Error>;

    /// Stops the VM: graceful shutdown request first, then kill after `grace`.
    async fn stop(&mut self, grace: Duration) -> Result<VmExit, Error>;

    /// Waits until the VMM process exits by itself.
    async fn wait(&mut self) -> Result<VmExit, Error>;

    /// Opens a new byte stream to the agent's channel. Backends with vsock open a new
    /// connection to `port`; a virtio-serial backend has one channel and ignores it.
    async fn connect_agent(&self, port: u32) -> Result<BoxedAgentStream, Error>;

    /// Attaches a block device to the running VM (hot-plug, or swapping the backing
    /// file of a placeholder drive where the VMM cannot hot-plug).
    async fn attach_drive(&mut self, drive: Drive) -> Result<(), Error>;

    fn stats(&self) -> Result<VmStats, Error>;

    /// The serial the guest reads for `drive` (`/sys/block/*/serial`), by which the
    /// agent finds it. Backends that pass the drive id through return it unchanged.
    fn guest_serial(&self, drive: &Drive) -> String {
        drive.id.clone()
    }

    /// Pid of the VMM process, once started.
    fn pid(&self) -> Option<u32>;

    /// The last `max_bytes` of the guest console.
    fn console_tail(&self, max_bytes: usize) -> String;

    /// The last `max_bytes` of the VMM's own log (its errors).
    fn log_tail(&self, max_bytes: usize) -> String;
}
