//! Sandbox configuration.

use std::path::PathBuf;
use std::time::Duration;

use ember_guest::GuestImage;
use ember_vmm::jail::JailConfig;
use ember_vmm::{Accel, BalloonConfig, Drive, Nic, VmConfig, VmmKind};

/// What a sandbox boots.
#[derive(Debug, Clone, Default)]
pub struct SandboxConfig {
    pub id: String,
    pub vmm: VmmKind,
    /// VMM executable; defaults to `qemu-system-x86_64` or `$FIRECRACKER_BIN`/`firecracker`.
    pub vmm_binary: Option<PathBuf>,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub kernel_args: String,
    pub vcpus: u8,
    pub memory_mib: u32,
    pub accel: Accel,
    pub drives: Vec<Drive>,
    /// Directory for sockets and logs; must exist.
    pub state_dir: PathBuf,
    pub boot_timeout: Duration,
    /// Host directory shared with the guest (see `VmConfig::shared_dir`).
    pub shared_dir: Option<PathBuf>,
    pub balloon: Option<BalloonConfig>,
    /// See `VmConfig::nics`.
    pub nics: Vec<Nic>,
    /// See `VmConfig::netns`.
    pub netns: Option<PathBuf>,
    /// See `VmConfig::jail`.
    pub jail: Option<JailConfig>,
    /// See `VmConfig::log_max_bytes`.
    pub log_max_bytes: u64,
}

impl SandboxConfig {
    /// A QEMU sandbox with the installed guest image and default sizes.
    pub fn new(id: &str, guest: &GuestImage, state_dir: PathBuf) -> Self {
        SandboxConfig {
            id: id.to_string(),
            vmm: VmmKind::Qemu,
            vmm_binary: None,
            kernel: guest.kernel.clone(),
            initrd: guest.initrd.clone(),
            kernel_args: String::new(),
            vcpus: 1,
            memory_mib: 256,
            accel: Accel::Auto,
            drives: Vec::new(),
            state_dir,
            boot_timeout: Duration::from_secs(60),
            shared_dir: None,
            balloon: None,
            ..Default::default()
        }
    }

    /// The VM configuration this sandbox configuration asks the backend for.
    // `..Default::default()` keeps fields VmConfig gains later at their defaults.
    #[allow(clippy::needless_update)]
    pub fn vm_config(&self) -> VmConfig {
        let vmm_binary = self.vmm_binary.clone().unwrap_or_else(|| match self.vmm {
            VmmKind::Qemu => PathBuf::from("qemu-system-x86_64"),
            VmmKind::Firecracker => std::env::var_os("FIRECRACKER_BIN")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("firecracker")),
        });
        VmConfig {
            id: self.id.clone(),
            state_dir: self.state_dir.clone(),
            vmm_binary,
            kernel: self.kernel.clone(),
            initrd: Some(self.initrd.clone()),
            kernel_args: self.kernel_args.clone(),
            vcpus: self.vcpus,
            memory_mib: self.memory_mib,
            accel: self.accel,
            drives: self.drives.clone(),
            boot_timeout: self.boot_timeout,
            shared_dir: self.shared_dir.clone(),
            balloon: self.balloon,
            nics: self.nics.clone(),
            netns: self.netns.clone(),
            jail: self.jail.clone(),
            log_max_bytes: self.log_max_bytes,
            ..Default::default()
        }
    }
}
