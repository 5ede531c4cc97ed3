//! A container on an EROFS snapshot: its layer images and writable image reach
//! the VM as they are (no copy) and the agent assembles the overlay in the guest.
//! The VM's first container brings them as boot drives (a layer used twice is one
//! drive; layers beyond the VMM's free drive slots go through the shared
//! directory); a container joining a running VM (no hot-plug on a QEMU microvm)
//! gets them through the shared directory as image files the agent loop-maps,
//! except layers that already are drives of the VM.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ember_agent_api::BlockRootfs;
use ember_sandbox::share::SharedDir;
use ember_ttrpc::{Code, Status};
use ember_vmm::{Drive, VmmKind};

use super::create::{GuestRootfs, Placed};
use super::{err, Storage, Task};
use crate::config::RuntimeConfig;
use crate::rootfs::erofs::{self, Layered, UpperClaim, UPPER_DRIVE};
use crate::vm::BootSpec;

/// virtio-mmio transports of a QEMU microvm (with its second IO-APIC), the most
/// devices a VM can have; Firecracker's MMIO IRQ range allows no more either.
const MMIO_TRANSPORTS: usize = 24;
/// Devices every VM may have besides its boot drives: the agent's port, the RNG,
/// the pool drive, the shared directory and the balloon.
const FIXED_DEVICES: usize = 5;
/// Transports left free for NICs and whatever else a VM is given.
const SPARE_TRANSPORTS: usize = 4;
/// How long a claim waits for another holder of the writable image's lock.
const CLAIM_WAIT: Duration = Duration::from_secs(2);

/// What a layered rootfs holds until its container is deleted.
#[derive(Debug)]
pub struct LayeredStorage {
    /// The claim on the writable image (dropped: released).
    pub claim: Option<UpperClaim>,
    /// The shared-directory entry of images that went through it.
    pub share_key: Option<String>,
}

/// The shared-directory entry of container `id`'s rootfs images (`@` is not
/// allowed in container ids, so it never meets a container's volumes).
fn share_key(id: &str) -> String {
    format!("{id}@rootfs")
}

/// Layer drives a VM booted with `upper` drives more can take.
pub(super) fn layer_slots(with_upper: bool) -> usize {
    MMIO_TRANSPORTS - FIXED_DEVICES - SPARE_TRANSPORTS - usize::from(with_upper)
}

fn claim(layered: &Layered) -> Result<Option<UpperClaim>, Status> {
    layered
        .upper
        .as_ref()
        .map(|u| erofs::claim_upper(u, CLAIM_WAIT))
        .transpose()
        .map_err(|e| err(Code::FailedPrecondition, e.to_string()))
}

fn layer_device(serial: String) -> BlockRootfs {
    BlockRootfs {
        serial,
        fstype: "erofs".into(),
        read_only: true,
        ..Default::default()
    }
}

fn file_device(file: String, fstype: &str, read_only: bool) -> BlockRootfs {
    BlockRootfs {
        file,
        fstype: fstype.into(),
        read_only,
        ..Default::default()
    }
}

impl Task {
    /// Boots the VM for its first container on an EROFS snapshot. None: the
    /// layers do not fit this VMM (Firecracker without a shared directory), the
    /// copy path takes the container.
    pub(super) async fn boot_layered(
        self: &Arc<Self>,
        req: &ember_shim_api::CreateTaskRequest,
        cfg: RuntimeConfig,
        layered: Layered,
    ) -> Result<Option<Placed>, Status> {
        let started = Instant::now();
        let (drive_layers, rest) =
            erofs::plan_drives(&layered.layers, layer_slots(layered.upper.is_some()));
        if !rest.is_empty() && matches!(cfg.vmm, VmmKind::Firecracker) {
            tracing::info!(
                container = %req.id,
                "{} layers do not fit Firecracker's drives: the rootfs is copied",
                layered.layers.len()
            );
            return Ok(None);
        }
        let l = layered.clone();
        let claim = tokio::task::spawn_blocking(move || claim(&l))
            .await
            .map_err(|e| err(Code::Internal, e.to_string()))??;
        let mut drives: Vec<Drive> = drive_layers
            .iter()
            .map(|p| Drive {
                id: erofs::layer_drive_id(p),
                path: p.clone(),
                read_only: true,
            })
            .collect();
        if let Some(c) = &claim {
            drives.push(Drive {
                id: UPPER_DRIVE.into(),
                path: c.image.clone(),
                read_only: false,
            });
        }
        let build = started.elapsed();
        tracing::info!(
            container = %req.id,
            layers = layered.layers.len(),
            drives = drives.len(),
            "EROFS rootfs handed over as drives"
        );
        self.vm.boot(BootSpec::implicit(cfg, drives)).await?;
        let mut storage = LayeredStorage {
            claim,
            share_key: None,
        };
        let device = match self
            .layered_devices(&req.id, &layered, &mut storage, true)
            .await
        {
            Ok(d) => d,
            Err(e) => {
                self.release_layered(&storage);
                return Err(e);
            }
        };
        let timings = self.booted_for_container();
        let ms = build.as_secs_f64() * 1e3;
        Ok(Some((Storage::Layered(storage), device, ms, timings)))
    }

    /// The layered rootfs of a container joining the running VM. None: the VM has
    /// no shared directory (Firecracker), the copy path takes the container.
    pub(super) async fn join_layered(
        &self,
        req: &ember_shim_api::CreateTaskRequest,
        layered: Layered,
    ) -> Result<Option<Placed>, Status> {
        if self.vm.shared_dir().is_none() {
            return Ok(None);
        }
        self.vm.require_up()?;
        let started = Instant::now();
        let l = layered.clone();
        let claim = tokio::task::spawn_blocking(move || claim(&l))
            .await
            .map_err(|e| err(Code::Internal, e.to_string()))??;
        let mut storage = LayeredStorage {
            claim,
            share_key: None,
        };
        match self
            .layered_devices(&req.id, &layered, &mut storage, false)
            .await
        {
            Ok(device) => {
                let ms = started.elapsed().as_secs_f64() * 1e3;
                Ok(Some((Storage::Layered(storage), device, ms, None)))
            }
            Err(e) => {
                self.release_layered(&storage);
                Err(e)
            }
        }
    }

    /// The devices the agent mounts: layers that are drives of the VM by serial,
    /// the others (and, for a joining container, the writable image) as files in
    /// the shared directory.
    async fn layered_devices(
        &self,
        id: &str,
        layered: &Layered,
        storage: &mut LayeredStorage,
        boot: bool,
    ) -> Result<GuestRootfs, Status> {
        let mut sharer = Sharer {
            shared: self.vm.shared_dir(),
            key: share_key(id),
            next: 0,
            used: false,
        };
        let res = self.devices_with(layered, storage, boot, &mut sharer).await;
        if sharer.used {
            storage.share_key = Some(sharer.key);
        }
        res
    }

    async fn devices_with(
        &self,
        layered: &Layered,
        storage: &LayeredStorage,
        boot: bool,
        sharer: &mut Sharer,
    ) -> Result<GuestRootfs, Status> {
        let mut layers = Vec::with_capacity(layered.layers.len());
        let mut shared_layers: Vec<(PathBuf, String)> = Vec::new();
        for p in &layered.layers {
            let device = match self.vm.guest_serial(&erofs::layer_drive_id(p)).await {
                Some(s) => layer_device(s),
                None => {
                    let guest = match shared_layers.iter().find(|(q, _)| q == p) {
                        Some((_, g)) => g.clone(),
                        None => {
                            let g = sharer.share(p, true)?;
                            shared_layers.push((p.clone(), g.clone()));
                            g
                        }
                    };
                    file_device(guest, "erofs", true)
                }
            };
            layers.push(device);
        }
        let upper = match &storage.claim {
            None => None,
            Some(c) => Some(match self.vm.guest_serial(UPPER_DRIVE).await {
                Some(serial) if boot => BlockRootfs {
                    serial,
                    fstype: "ext4".into(),
                    ..Default::default()
                },
                _ => file_device(sharer.share(&c.image, false)?, "ext4", false),
            }),
        };
        Ok(GuestRootfs {
            rootfs: None,
            layers,
            upper,
        })
    }

    /// Gives back the shared-directory entries of a layered rootfs (the claim goes
    /// when the storage is dropped).
    pub(super) fn release_layered(&self, s: &LayeredStorage) {
        if let (Some(key), Some(shared)) = (&s.share_key, self.vm.shared_dir()) {
            if let Err(e) = shared.release(key) {
                tracing::warn!("releasing the rootfs images of {key}: {e}");
            }
        }
    }
}

/// Binds image files into the VM's shared directory under one entry.
struct Sharer {
    shared: Option<SharedDir>,
    key: String,
    next: usize,
    /// Whether anything was shared (the entry then needs releasing).
    used: bool,
}

impl Sharer {
    /// Binds the image `path` into the shared directory; its guest path.
    fn share(&mut self, path: &Path, read_only: bool) -> Result<String, Status> {
        let s = self.shared.as_ref().ok_or_else(|| {
            err(
                Code::FailedPrecondition,
                "the VM has no shared directory for the rootfs images",
            )
        })?;
        self.used = true;
        let g = s
            .share(&self.key, self.next, path, read_only, false)
            .map_err(|e| err(Code::Internal, format!("sharing {}: {e}", path.display())))?;
        self.next += 1;
        Ok(g)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drive_slots_leave_room_for_spare_devices() {
        assert_eq!(layer_slots(true), 14);
        assert_eq!(layer_slots(false), 15);
        assert!(layer_slots(true) + FIXED_DEVICES + 1 + SPARE_TRANSPORTS <= MMIO_TRANSPORTS);
        assert!(!share_key("c1").contains('/'));
    }
}
