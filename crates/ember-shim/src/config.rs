//! Runtime configuration: a TOML file (`$EMBER_RUNTIME_CONFIG`, default
//! `/etc/ember/runtime.toml`; a missing file means the defaults), overridden per
//! container by annotations in the OCI spec.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use ember_vmm::{Accel, VmmKind};
use serde::Deserialize;

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
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RuntimeConfig {
    /// `qemu` or `firecracker`.
    pub vmm: VmmKind,
    /// VMM executable (default: `qemu-system-x86_64`, or `$FIRECRACKER_BIN`).
    pub vmm_binary: Option<PathBuf>,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub vcpus: u8,
    pub memory_mib: u32,
    /// Appended to the guest kernel command line.
    pub kernel_args: String,
    /// `auto` (probe KVM, else TCG), `kvm` or `tcg`.
    pub accel: Accel,
    /// Shim log level (error, warn, info, debug, trace).
    pub log_level: String,
    pub boot_timeout_secs: u64,
    /// Where VM sockets, logs and rootfs images live.
    pub state_dir: PathBuf,
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
            kernel_args: String::new(),
            accel: Accel::Auto,
            log_level: "info".into(),
            boot_timeout_secs: 60,
            state_dir: PathBuf::from("/run/ember/shim"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {0}: {1}")]
    Read(PathBuf, std::io::Error),
    #[error("parsing {0}: {1}")]
    Parse(PathBuf, toml::de::Error),
    #[error("annotation {key}={value:?}: {why}")]
    Annotation {
        key: String,
        value: String,
        why: String,
    },
}

impl RuntimeConfig {
    /// Loads the configuration file, or the defaults when there is none.
    pub fn load() -> Result<Self, ConfigError> {
        let path = std::env::var_os("EMBER_RUNTIME_CONFIG")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_PATH));
        Self::load_from(&path)
    }

    pub fn load_from(path: &Path) -> Result<Self, ConfigError> {
        match std::fs::read_to_string(path) {
            Ok(text) => toml::from_str(&text).map_err(|e| ConfigError::Parse(path.into(), e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(ConfigError::Read(path.into(), e)),
        }
    }

    /// Applies the `io.ember.vm.*` annotations of a container.
    pub fn with_annotations(mut self, ann: &HashMap<String, String>) -> Result<Self, ConfigError> {
        let bad = |key: &str, value: &str, why: &str| ConfigError::Annotation {
            key: key.into(),
            value: value.into(),
            why: why.into(),
        };
        if let Some(v) = ann.get(annotation::VMM) {
            self.vmm = match v.as_str() {
                "qemu" => VmmKind::Qemu,
                "firecracker" => VmmKind::Firecracker,
                _ => return Err(bad(annotation::VMM, v, "qemu or firecracker")),
            };
        }
        if let Some(v) = ann.get(annotation::VCPUS) {
            self.vcpus = v
                .parse()
                .ok()
                .filter(|n| *n >= 1)
                .ok_or_else(|| bad(annotation::VCPUS, v, "a number from 1 to 255"))?;
        }
        if let Some(v) = ann.get(annotation::MEMORY_MIB) {
            self.memory_mib =
                v.parse().ok().filter(|n| *n >= 64).ok_or_else(|| {
                    bad(annotation::MEMORY_MIB, v, "a number of MiB, at least 64")
                })?;
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
                _ => return Err(bad(annotation::ACCEL, v, "auto, kvm or tcg")),
            };
        }
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_and_annotations() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("runtime.toml");
        std::fs::write(
            &p,
            "vcpus = 2\nmemory_mib = 512\naccel = \"tcg\"\nkernel_args = \"quiet\"\n",
        )
        .unwrap();
        let c = RuntimeConfig::load_from(&p).unwrap();
        assert_eq!((c.vcpus, c.memory_mib, c.accel), (2, 512, Accel::Tcg));
        let mut ann = HashMap::new();
        ann.insert(annotation::MEMORY_MIB.to_string(), "1024".to_string());
        ann.insert(annotation::KERNEL_ARGS.to_string(), "x=1".to_string());
        let c = c.with_annotations(&ann).unwrap();
        assert_eq!(c.memory_mib, 1024);
        assert_eq!(c.kernel_args, "quiet x=1");
        ann.insert(annotation::VCPUS.to_string(), "zero".to_string());
        assert!(c.with_annotations(&ann).is_err());
    }

    #[test]
    fn missing_file_is_defaults_and_typos_are_errors() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(
            RuntimeConfig::load_from(&d.path().join("none")).unwrap(),
            RuntimeConfig::default()
        );
        let p = d.path().join("bad.toml");
        std::fs::write(&p, "memroy_mib = 5\n").unwrap();
        assert!(matches!(
            RuntimeConfig::load_from(&p),
            Err(ConfigError::Parse(..))
        ));
    }
}
