//! The `erofs` snapshotter: committed layers are EROFS images, active snapshots
//! sparse ext4 images holding an overlayfs `upper/` and `work/`, so that a VM gets
//! an image's layers as block devices without a copy per container.
//!
//! [`describe`] names the images behind a snapshot's mounts and [`claim_upper`]
//! hands an active snapshot's writable image to a VM runtime.

mod claim;
mod layout;

pub use claim::{claim_dir, claim_upper, UpperClaim, UpperLock};
pub use layout::{
    describe, ErofsRootfs, LAYER_IMAGE, LAYER_MOUNT, UPPER_IMAGE, UPPER_LOCK, UPPER_MOUNT,
};
