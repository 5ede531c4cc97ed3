//! What a template is a template of: every input that the saved guest depends on.
//! Two sandbox configurations with the same shape can restore the same template;
//! anything that changes the guest (the VMM binary, the kernel, the initramfs, the
//! kernel arguments, the vCPUs, memory, accelerator, the devices and how they are
//! laid out) changes the shape and so the key.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use ember_vmm::{Accel, VmmKind};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::SandboxConfig;

/// Bumped whenever the template layout or what a shape covers changes.
pub const FORMAT: u32 = 1;

/// A file an input is read from, known by its identity on disk: a rebuilt or
/// replaced file (another inode, size or modification time) is another input.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileId {
    pub path: PathBuf,
    pub len: u64,
    pub mtime_ns: i64,
    pub inode: u64,
}

impl FileId {
    pub fn of(path: &Path) -> std::io::Result<FileId> {
        let m = std::fs::metadata(path)?;
        Ok(FileId {
            path: path.to_path_buf(),
            len: m.len(),
            mtime_ns: m.mtime() * 1_000_000_000 + m.mtime_nsec(),
            inode: m.ino(),
        })
    }
}

/// One drive as the guest sees it: its serial, size and whether it is read-only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DriveShape {
    pub id: String,
    pub len: u64,
    pub read_only: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shape {
    pub format: u32,
    pub vmm: VmmKind,
    pub vmm_binary: FileId,
    pub kernel: FileId,
    pub initrd: FileId,
    pub kernel_args: String,
    pub vcpus: u8,
    pub memory_mib: u32,
    /// The accelerator the VMM resolved (never `Auto`).
    pub accel: Accel,
    pub drives: Vec<DriveShape>,
    pub shared_dir: bool,
    /// A balloon device, and whether it deflates on OOM (its target and statistics
    /// interval are set after a restore).
    pub balloon: Option<bool>,
    /// The MTU of each NIC (their taps and MACs are each clone's own).
    pub nic_mtus: Vec<u32>,
    /// A jailed VMM restores RAM from the state, not from a shared file.
    pub jailed: bool,
}

/// Why a configuration cannot use a template.
#[derive(Debug, thiserror::Error)]
pub enum ShapeError {
    #[error("{0}")]
    Unsupported(String),
    #[error("{what} {path}: {source}")]
    Input {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

impl Shape {
    /// The shape of `config` with the VMM binary `vmm_binary` (found on PATH) under
    /// the resolved accelerator `accel`.
    pub fn of(
        config: &SandboxConfig,
        vmm_binary: &Path,
        accel: Accel,
    ) -> Result<Shape, ShapeError> {
        if config.vmm != VmmKind::Qemu {
            return Err(ShapeError::Unsupported(
                "templates are made with QEMU only".into(),
            ));
        }
        let id = |what: &'static str, p: &Path| {
            FileId::of(p).map_err(|source| ShapeError::Input {
                what,
                path: p.to_path_buf(),
                source,
            })
        };
        let drives = config
            .drives
            .iter()
            .map(|d| {
                Ok(DriveShape {
                    id: d.id.clone(),
                    len: id("drive", &d.path)?.len,
                    read_only: d.read_only,
                })
            })
            .collect::<Result<_, ShapeError>>()?;
        Ok(Shape {
            format: FORMAT,
            vmm: config.vmm,
            vmm_binary: id("VMM binary", vmm_binary)?,
            kernel: id("guest kernel", &config.kernel)?,
            initrd: id("guest initramfs", &config.initrd)?,
            kernel_args: config.kernel_args.clone(),
            vcpus: config.vcpus,
            memory_mib: config.memory_mib,
            accel,
            drives,
            shared_dir: config.shared_dir.is_some(),
            balloon: config.balloon.map(|b| b.deflate_on_oom),
            nic_mtus: config.nics.iter().map(|n| n.mtu).collect(),
            jailed: config.jail.is_some(),
        })
    }

    /// The template's key: 16 hex digits of the SHA-256 of the shape.
    pub fn key(&self) -> String {
        let bytes = serde_json::to_vec(self).unwrap_or_default();
        let digest = Sha256::digest(&bytes);
        hex::encode(&digest[..8])
    }

    /// Whether RAM lives in a file of its own (else in the state).
    pub fn ram_in_file(&self) -> bool {
        !self.jailed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ember_vmm::Drive;

    fn fixture(d: &Path) -> (SandboxConfig, PathBuf) {
        for f in ["vmlinux", "initrd", "qemu", "pool"] {
            std::fs::write(d.join(f), f).unwrap();
        }
        let mut c = SandboxConfig {
            kernel: d.join("vmlinux"),
            initrd: d.join("initrd"),
            vcpus: 1,
            memory_mib: 256,
            ..Default::default()
        };
        c.drives.push(Drive {
            id: "pool".into(),
            path: d.join("pool"),
            read_only: false,
        });
        (c, d.join("qemu"))
    }

    #[test]
    fn every_input_changes_the_key() {
        let d = tempfile::tempdir().unwrap();
        let (c, qemu) = fixture(d.path());
        let base = Shape::of(&c, &qemu, Accel::Tcg).unwrap();
        assert_eq!(base.key().len(), 16);
        assert_eq!(base.key(), Shape::of(&c, &qemu, Accel::Tcg).unwrap().key());
        let mut variants = Vec::new();
        let mut m = c.clone();
        m.memory_mib = 512;
        variants.push(m);
        let mut m = c.clone();
        m.vcpus = 2;
        variants.push(m);
        let mut m = c.clone();
        m.kernel_args = "x=1".into();
        variants.push(m);
        let mut m = c.clone();
        m.shared_dir = Some(d.path().to_path_buf());
        variants.push(m);
        let mut m = c.clone();
        m.drives[0].read_only = true;
        variants.push(m);
        for v in variants {
            assert_ne!(Shape::of(&v, &qemu, Accel::Tcg).unwrap().key(), base.key());
        }
        assert_ne!(Shape::of(&c, &qemu, Accel::Kvm).unwrap().key(), base.key());
        // A rebuilt kernel (new inode and size) is another input.
        std::fs::remove_file(&c.kernel).unwrap();
        std::fs::write(&c.kernel, "a new kernel").unwrap();
        assert_ne!(Shape::of(&c, &qemu, Accel::Tcg).unwrap().key(), base.key());
    }

    #[test]
    fn missing_inputs_and_other_vmms_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let (mut c, qemu) = fixture(d.path());
        c.vmm = VmmKind::Firecracker;
        assert!(matches!(
            Shape::of(&c, &qemu, Accel::Tcg),
            Err(ShapeError::Unsupported(_))
        ));
        c.vmm = VmmKind::Qemu;
        c.initrd = d.path().join("nope");
        let e = Shape::of(&c, &qemu, Accel::Tcg).unwrap_err().to_string();
        assert!(e.contains("guest initramfs") && e.contains("nope"), "{e}");
    }
}
