//! The backend-independent description of a microVM and the trait every VMM backend
//! implements.

use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

use async_trait::async_trait;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::Error;

/// Which VMM runs the guest.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VmmKind {
    #[default]
    Qemu,
    Firecracker,
}

/// CPU virtualisation wanted for the guest.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    /// Hardware KVM when a probe boot shows it really runs the guest, else TCG.
    #[default]
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
#[derive(Debug, Clone, Default)]
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
    /// A host directory shared with the guest under the 9p tag
    /// `ember_agent_api::SHARED_TAG` (QEMU: virtio-9p). Backends without a shared
    /// filesystem refuse it with `Error::Unsupported`.
    pub shared_dir: Option<PathBuf>,
    /// A memory balloon device, configured at boot.
    pub balloon: Option<BalloonConfig>,
    /// Network interfaces, attached at boot (virtio-net on a host tap device).
    pub nics: Vec<Nic>,
    /// The network namespace the VMM process runs in (a path such as
    /// `/var/run/netns/NAME` or `/proc/PID/ns/net`); its taps live there. None: the
    /// caller's namespace.
    pub netns: Option<PathBuf>,
    /// Confinement of the VMM process on the host (see [`crate::jail`]); None runs it
    /// unconfined, as the caller.
    pub jail: Option<crate::jail::JailConfig>,
    /// Size at which `console.log`, `vmm.log` and `metrics.json` are rotated (one
    /// older file `<name>.1` is kept); 0: [`DEFAULT_LOG_MAX_BYTES`].
    pub log_max_bytes: u64,
    /// Boot a VM to be saved as a template, or restore one from a template instead
    /// of booting (see [`TemplateMode`]). None: an ordinary boot.
    pub template: Option<TemplateMode>,
}

/// How a VM takes part in templating.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplateMode {
    /// Boot normally, to be saved by [`Vm::save_template`] once its agent is ready.
    /// `memory`: the file that holds guest RAM, mapped shared (QEMU), so that
    /// clones can map it privately; None: RAM goes into the saved state.
    Build { memory: Option<PathBuf> },
    /// Start from a saved template instead of booting: device state from `state`,
    /// guest RAM mapped privately from `memory` (None: RAM is in `state`). The
    /// drives, shared directory and NICs of the config must be laid out as the
    /// template's were; their host files may differ.
    Restore {
        memory: Option<PathBuf>,
        state: PathBuf,
    },
}

/// Default size cap of each host-side log of a VM.
pub const DEFAULT_LOG_MAX_BYTES: u64 = 1 << 20;

/// A virtio-net interface of the guest, backed by a tap device on the host (in the
/// VMM's network namespace).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Nic {
    /// Unique among the VM's NICs; used in VMM device names.
    pub id: String,
    /// Name of the host tap device (it must exist in the VMM's network namespace).
    pub tap: String,
    /// The guest interface's MAC address, `aa:bb:cc:dd:ee:ff`.
    pub mac: String,
    /// MTU of the link (0: the VMM's default).
    pub mtu: u32,
}

/// A memory balloon: how much guest memory it holds and how it reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BalloonConfig {
    /// Target size of the balloon (memory taken from the guest), MiB.
    pub amount_mib: u32,
    /// Let the guest deflate the balloon under memory pressure.
    pub deflate_on_oom: bool,
    /// Seconds between statistics updates (0: statistics off).
    pub stats_interval_s: u32,
}

/// What the guest's balloon driver reports. Fields the VMM does not know are 0.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct BalloonStats {
    pub target_mib: u64,
    pub actual_mib: u64,
    pub target_pages: u64,
    pub actual_pages: u64,
    pub swap_in: u64,
    pub swap_out: u64,
    pub major_faults: u64,
    pub minor_faults: u64,
    pub free_memory: u64,
    pub total_memory: u64,
    pub available_memory: u64,
    pub disk_caches: u64,
    pub hugetlb_allocations: u64,
    pub hugetlb_failures: u64,
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

    /// The balloon's current configuration (target, deflate-on-OOM, stats interval).
    async fn balloon_config(&self) -> Result<BalloonConfig, Error> {
        Err(Error::Unsupported("a memory balloon"))
    }

    /// Sets the balloon's target size.
    async fn balloon_update(&self, _amount_mib: u32) -> Result<(), Error> {
        Err(Error::Unsupported("a memory balloon"))
    }

    /// The balloon driver's latest statistics.
    async fn balloon_stats(&self) -> Result<BalloonStats, Error> {
        Err(Error::Unsupported("a memory balloon"))
    }

    /// Changes how often the guest reports balloon statistics.
    async fn balloon_update_stats(&self, _interval_s: u32) -> Result<(), Error> {
        Err(Error::Unsupported("a memory balloon"))
    }

    /// The serial the guest reads for `drive` (`/sys/block/*/serial`), by which the
    /// agent finds it. Backends that pass the drive id through return it unchanged.
    fn guest_serial(&self, drive: &Drive) -> String {
        drive.id.clone()
    }

    /// Saves the running VM of a [`TemplateMode::Build`] config as a template: its
    /// device state (and RAM where it has no memory file) into `state`, written
    /// whole or not at all. The VM is left paused; kill it afterwards.
    async fn save_template(&mut self, _state: &std::path::Path) -> Result<(), Error> {
        Err(Error::Unsupported("saving a template"))
    }

    /// Pid of the VMM process, once started.
    fn pid(&self) -> Option<u32>;

    /// The last `max_bytes` of the guest console.
    fn console_tail(&self, max_bytes: usize) -> String;

    /// The last `max_bytes` of the VMM's own log (its errors).
    fn log_tail(&self, max_bytes: usize) -> String;
}
