//! The guest side artifacts Ember boots, and the root filesystems its tests and demos
//! run. The kernel and initramfs are built by `guest/build.sh` into
//! [`default_dir`]; `EMBER_KERNEL` and `EMBER_INITRD` point elsewhere.

mod image;
mod rootfs;

use std::path::{Path, PathBuf};

pub use image::busybox_docker_archive;
pub use rootfs::{busybox_rootfs, default_spec, make_ext4, BusyboxBundle};

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what} not found at {path}: run `guest/build.sh` to build the guest image")]
    Missing { what: &'static str, path: PathBuf },
    #[error("{0}")]
    Tool(String),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// Where `guest/build.sh` installs the guest image.
pub fn default_dir() -> PathBuf {
    std::env::var_os("EMBER_GUEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/lib/ember/guest"))
}

/// A bootable guest: kernel and initramfs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestImage {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
}

impl GuestImage {
    /// The installed guest image, honouring `EMBER_KERNEL` / `EMBER_INITRD`.
    pub fn locate() -> Result<Self, Error> {
        let dir = default_dir();
        let kernel = std::env::var_os("EMBER_KERNEL")
            .map(PathBuf::from)
            .unwrap_or_else(|| dir.join("vmlinux"));
        let initrd = std::env::var_os("EMBER_INITRD")
            .map(PathBuf::from)
            .unwrap_or_else(|| dir.join("initramfs.cpio"));
        check("guest kernel", &kernel)?;
        check("guest initramfs", &initrd)?;
        Ok(GuestImage { kernel, initrd })
    }

    /// The kernel release the guest reports (`uname -r`), written by the build.
    pub fn kernel_release(&self) -> Option<String> {
        let p = self.kernel.with_file_name("kernel-release");
        std::fs::read_to_string(p)
            .ok()
            .map(|s| s.trim().to_string())
    }
}

fn check(what: &'static str, p: &Path) -> Result<(), Error> {
    if p.is_file() {
        Ok(())
    } else {
        Err(Error::Missing {
            what,
            path: p.to_path_buf(),
        })
    }
}
