//! VM templates: a guest booted once to its agent, saved, and restored by every
//! later sandbox of the same shape in a fraction of a boot.
//!
//! A template is built from placeholders of the sandbox's devices (sparse drives
//! of the same sizes, an empty shared directory, NICs with no tap), with
//! `ember.template=1` on the kernel command line, so nothing of any one sandbox is
//! in it. A clone gets its own devices at restore, then its own identity (entropy,
//! hostname, clock) from the agent before anything runs in it.

mod build;
mod shape;
mod store;

use std::path::Path;

pub use build::obtain;
pub use shape::{DriveShape, FileId, Shape, ShapeError, FORMAT};
pub use store::{
    KeyLock, Manifest, StoreError, Template, TemplateInfo, TemplateStore, DEFAULT_DIR,
    DEFAULT_MAX_BYTES,
};

use crate::SandboxConfig;

/// The MAC of a template's NIC `index`, which every clone's guest sees for it
/// (a locally administered unicast address).
pub fn guest_mac(index: usize) -> String {
    format!("02:e1:00:00:00:{:02x}", index & 0xff)
}

/// The kernel arguments of a template guest.
pub fn with_template_arg(kernel_args: &str) -> String {
    let arg = format!("{}=1", ember_agent_api::CMDLINE_TEMPLATE);
    if kernel_args.is_empty() {
        arg
    } else {
        format!("{kernel_args} {arg}")
    }
}

/// The shape of `config` on this host: the VMM binary found and the accelerator
/// resolved (a KVM probe's verdict is cached).
pub async fn shape_of(config: &SandboxConfig) -> Result<Shape, ShapeError> {
    let vc = config.vm_config();
    let binary = ember_vmm::qemu::find_binary(&vc.vmm_binary).ok_or_else(|| {
        ShapeError::Unsupported(format!("no VMM binary {}", vc.vmm_binary.display()))
    })?;
    if config.nics.len() > 0xff {
        return Err(ShapeError::Unsupported("too many NICs".into()));
    }
    let accel = ember_vmm::qemu::resolve_accel(&vc).await.accel;
    Shape::of(config, &binary, accel)
}

/// The guest hostname a boot of `kernel_args` would have.
pub(crate) fn hostname_of(kernel_args: &str) -> String {
    kernel_args
        .split_whitespace()
        .find_map(|w| w.strip_prefix("ember.hostname="))
        .filter(|h| !h.is_empty())
        .unwrap_or("ember")
        .to_string()
}

/// A placeholder file of `len` bytes (sparse).
fn placeholder(path: &Path, len: u64) -> std::io::Result<()> {
    let f = std::fs::File::create(path)?;
    f.set_len(len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_args_and_macs() {
        assert_eq!(with_template_arg(""), "ember.template=1");
        assert_eq!(with_template_arg("quiet"), "quiet ember.template=1");
        assert_eq!(guest_mac(0), "02:e1:00:00:00:00");
        assert_eq!(guest_mac(17), "02:e1:00:00:00:11");
        assert!(ember_vmm::valid_mac(&guest_mac(3)));
        assert_eq!(hostname_of("a ember.hostname=web b"), "web");
        assert_eq!(hostname_of("ember.hostname="), "ember");
        assert_eq!(hostname_of(""), "ember");
    }
}
