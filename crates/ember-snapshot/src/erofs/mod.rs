//! The `erofs` snapshotter: committed layers are EROFS images, active snapshots
//! sparse ext4 images holding an overlayfs `upper/` and `work/`, so that a VM gets
//! an image's layers as block devices without a copy per container
//! (`docs/erofs.md`).
//!
//! [`describe`] names the images behind a snapshot's mounts and [`claim_upper`]
//! hands an active snapshot's writable image to a VM runtime.

mod claim;
mod host;
mod layout;
mod snapshotter;
mod store;

pub use claim::{claim_dir, claim_upper, UpperClaim, UpperLock};
pub use host::{is_mounted, parse_size};
pub use layout::{
    describe, layer_target, ErofsRootfs, LAYER_IMAGE, LAYER_MOUNT, UPPER_IMAGE, UPPER_LOCK,
    UPPER_MOUNT,
};
pub use snapshotter::{ErofsConfig, ErofsSnapshotter, DEFAULT_SIZE, SIZE_LABEL};

/// The `mkfs.erofs` this host has, if any.
pub fn tool_available() -> Option<&'static ember_diff::erofs::ErofsTool> {
    ember_diff::erofs::erofs_tool()
}
