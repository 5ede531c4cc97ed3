//! Runtime configuration: a TOML file (`$EMBER_RUNTIME_CONFIG`, default
//! `/etc/ember/runtime.toml`; a missing file means the defaults), overridden per
//! container by the OCI spec's resources and by annotations (see [`crate::sizing`]).
//!
//! The file is read strictly: an unknown key (with the closest known one
//! suggested), a value of the wrong type, text that is not TOML, or a VM size the
//! host cannot give is an error naming the file, the line and the key.

mod diagnose;
mod jailer;

pub use diagnose::closest;
pub use jailer::JailerSettings;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use ember_vmm::{Accel, VmmKind};
use serde::Deserialize;

use crate::sizing::{self, Host};

pub const DEFAULT_PATH: &str = "/etc/ember/runtime.toml";

/// Annotation keys that override the configuration for one container. They size
/// the VM booted for a container; a container joining a VM that already runs takes
/// it as it is (different sizing annotations are ignored, with a log line).
pub mod annotation {
    pub const VMM: &str = "io.ember.vm.vmm";
    pub const VCPUS: &str = "io.ember.vm.vcpus";
    pub const MEMORY_MIB: &str = "io.ember.vm.memory_mib";
    pub const KERNEL_ARGS: &str = "io.ember.vm.kernel_args";
    pub const ACCEL: &str = "io.ember.vm.accel";
    /// Every `io.ember.*` annotation Ember reads; others are warned about.
    pub const KNOWN: &[&str] = &[
        ember_vm_api::annotations::EMBER_VM_ID,
        VMM,
        VCPUS,
        MEMORY_MIB,
        KERNEL_ARGS,
        ACCEL,
    ];
}

/// The keys of the file, as [`RuntimeConfig`]'s fields are named.
pub const KEYS: &[&str] = &[
    "vmm",
    "vmm_binary",
    "kernel",
    "initrd",
    "vcpus",
    "memory_mib",
    "guest_overhead_mib",
    "kernel_args",
    "accel",
    "log_level",
    "boot_timeout_secs",
    "state_dir",
    "log_max_bytes",
    "templates",
    "template_dir",
    "template_max_mib",
    "jailer",
];

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RuntimeConfig {
    /// `qemu` or `firecracker`.
    pub vmm: VmmKind,
    /// VMM executable (default: `qemu-system-x86_64`, or `$FIRECRACKER_BIN`).
    pub vmm_binary: Option<PathBuf>,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// vCPUs of a VM whose container has no CPU limit or annotation.
    pub vcpus: u8,
    /// Memory of a VM whose container has no memory limit or annotation.
    pub memory_mib: u32,
    /// Added to a container's memory limit when it sizes its VM: the guest
    /// kernel, the agent and the page cache of the container's rootfs.
    pub guest_overhead_mib: u32,
    /// Appended to the guest kernel command line.
    pub kernel_args: String,
    /// `auto` (probe KVM, else TCG), `kvm` or `tcg`.
    pub accel: Accel,
    /// Shim log level (error, warn, info, debug, trace).
    pub log_level: String,
    pub boot_timeout_secs: u64,
    /// Where VM sockets, logs and rootfs images live.
    pub state_dir: PathBuf,
    /// Size at which a VM's console.log, vmm.log and metrics.json rotate (one older
    /// part `<name>.1` is kept).
    pub log_max_bytes: u64,
    /// Start VMs from templates (a guest saved once per shape, restored instead of
    /// booted); false boots every VM.
    pub templates: bool,
    /// Where templates live.
    pub template_dir: PathBuf,
    /// Size cap of `template_dir`, MiB; the least recently used templates go first.
    pub template_max_mib: u64,
    /// The `[jailer]` table: how VMMs are confined on the host.
    pub jailer: JailerSettings,
    /// The file this was read from (none: the defaults).
    #[serde(skip)]
    pub path: Option<PathBuf>,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        let guest = ember_guest::default_dir();
        RuntimeConfig {
            vmm: VmmKind::Qemu,
            vmm_binary: None,
            kernel: guest.join("vmlinux"),
            initrd: guest.join("initramfs.cpio"),
            vcpus: 1,
            memory_mib: 256,
            guest_overhead_mib: sizing::DEFAULT_GUEST_OVERHEAD_MIB,
            kernel_args: String::new(),
            accel: Accel::Auto,
            log_level: "info".into(),
            boot_timeout_secs: 60,
            state_dir: PathBuf::from("/run/ember/shim"),
            log_max_bytes: ember_vmm::DEFAULT_LOG_MAX_BYTES,
            templates: true,
            template_dir: PathBuf::from(ember_sandbox::template::DEFAULT_DIR),
            template_max_mib: ember_sandbox::template::DEFAULT_MAX_BYTES >> 20,
            jailer: JailerSettings::default(),
            path: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {0}: {1}")]
    Read(PathBuf, std::io::Error),
    /// Something wrong in the file: where, and what.
    #[error("{}{}: {why}", path.display(), line.map(|l| format!(":{l}")).unwrap_or_default())]
    File {
        path: PathBuf,
        line: Option<usize>,
        key: Option<String>,
        why: String,
    },
    #[error("annotation {key}={value:?}: {why}")]
    Annotation {
        key: String,
        value: String,
        why: String,
    },
    /// A VM size derived from the container's spec that the host cannot give.
    #[error("{what}: {why}")]
    Spec { what: String, why: String },
}

impl RuntimeConfig {
    /// The template store VMs start from, when templates are on.
    pub fn template_store(&self) -> Option<ember_sandbox::template::TemplateStore> {
        self.templates.then(|| {
            ember_sandbox::template::TemplateStore::new(
                &self.template_dir,
                self.template_max_mib << 20,
            )
        })
    }
}

/// Where the configuration file is: `$EMBER_RUNTIME_CONFIG`, else the default.
pub fn path() -> PathBuf {
    std::env::var_os("EMBER_RUNTIME_CONFIG")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_PATH))
}

impl RuntimeConfig {
    /// Loads the configuration file, or the defaults when there is none.
    pub fn load() -> Result<Self, ConfigError> {
        Self::load_from(&path())
    }

    pub fn load_from(path: &Path) -> Result<Self, ConfigError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse(path, &text, &Host::probe()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(ConfigError::Read(path.into(), e)),
        }
    }

    /// The state directory even of a configuration that does not load (what
    /// `delete` needs to clean up): the file's `state_dir` when it has a readable
    /// one, else the default.
    pub fn state_dir_of_broken(path: &Path) -> PathBuf {
        std::fs::read_to_string(path)
            .ok()
            .and_then(|t| t.parse::<toml::Table>().ok())
            .and_then(|t| t.get("state_dir")?.as_str().map(PathBuf::from))
            .unwrap_or_else(|| Self::default().state_dir)
    }

    /// Parses the text of file `path`, checking its VM size against `host`.
    pub fn parse(path: &Path, text: &str, host: &Host) -> Result<Self, ConfigError> {
        let mut c = diagnose::parse(path, text)?;
        c.path = Some(path.to_path_buf());
        let at = |key: &str, why: String| ConfigError::File {
            path: path.to_path_buf(),
            line: diagnose::key_line(text, key),
            key: Some(key.into()),
            why: format!("{key} = {}: {why}", diagnose::value_text(text, key)),
        };
        sizing::check_vcpus(c.vcpus.into(), host).map_err(|e| at("vcpus", e.to_string()))?;
        sizing::check_memory(c.memory_mib.into(), host)
            .map_err(|e| at("memory_mib", e.to_string()))?;
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&c.log_level) {
            return Err(at("log_level", format!("not a log filter: {e}")));
        }
        if c.boot_timeout_secs == 0 {
            return Err(at("boot_timeout_secs", "at least 1 second".into()));
        }
        if c.log_max_bytes < 4096 {
            return Err(at("log_max_bytes", "at least 4096 bytes".into()));
        }
        if c.template_max_mib < 64 {
            return Err(at("template_max_mib", "at least 64 MiB".into()));
        }
        if let Err((key, why)) = c.jailer.check() {
            return Err(ConfigError::File {
                path: path.to_path_buf(),
                line: diagnose::key_line(text, key),
                key: Some(format!("jailer.{key}")),
                why: format!("[jailer] {key}: {why}"),
            });
        }
        Ok(c)
    }

    /// Applies the `io.ember.vm.*` annotations of a container; the sizes they ask
    /// for are checked against `host`.
    pub fn with_annotations(
        mut self,
        ann: &HashMap<String, String>,
        host: &Host,
    ) -> Result<Self, ConfigError> {
        let bad = |key: &str, value: &str, why: String| ConfigError::Annotation {
            key: key.into(),
            value: value.into(),
            why,
        };
        if let Some(v) = ann.get(annotation::VMM) {
            self.vmm = match v.as_str() {
                "qemu" => VmmKind::Qemu,
                "firecracker" => VmmKind::Firecracker,
                _ => return Err(bad(annotation::VMM, v, "qemu or firecracker".into())),
            };
        }
        if let Some(v) = ann.get(annotation::VCPUS) {
            let n: u64 = v
                .trim()
                .parse()
                .map_err(|_| bad(annotation::VCPUS, v, "not a number of vCPUs".into()))?;
            self.vcpus = sizing::check_vcpus(n, host)
                .map_err(|e| bad(annotation::VCPUS, v, e.to_string()))?;
        }
        if let Some(v) = ann.get(annotation::MEMORY_MIB) {
            let n: u64 = v
                .trim()
                .parse()
                .map_err(|_| bad(annotation::MEMORY_MIB, v, "not a number of MiB".into()))?;
            self.memory_mib = sizing::check_memory(n, host)
                .map_err(|e| bad(annotation::MEMORY_MIB, v, e.to_string()))?;
        }
        if let Some(v) = ann.get(annotation::KERNEL_ARGS) {
            if !self.kernel_args.is_empty() {
                self.kernel_args.push(' ');
            }
            self.kernel_args.push_str(v);
        }
        if let Some(v) = ann.get(annotation::ACCEL) {
            self.accel = match v.as_str() {
                "auto" => Accel::Auto,
                "kvm" => Accel::Kvm,
                "tcg" => Accel::Tcg,
                _ => return Err(bad(annotation::ACCEL, v, "auto, kvm or tcg".into())),
            };
        }
        Ok(self)
    }
}

#[cfg(test)]
mod tests;
