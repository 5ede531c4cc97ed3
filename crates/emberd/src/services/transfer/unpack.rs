//! Unpacking a pulled or imported image into a snapshotter, in the daemon: each
//! layer applied onto a snapshot prepared on its parent and committed under its
//! chain id (layers already unpacked are skipped), the layer blobs labelled with
//! their uncompressed digests and the config with the top snapshot, so garbage
//! collection keeps the snapshots as long as the image.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;

use ember_images::{Descriptor, Manifest, Platform};
use ember_metadata::{ContentInfo, Labels};
use ember_registry::Arrived;
use tokio::sync::mpsc::UnboundedReceiver;
use tonic::Status;

use super::invalid;
use crate::daemon::Metadata;
use crate::services::diff::{apply_blob, LABEL_UNCOMPRESSED};
use crate::services::{blocking, status};

/// Where unpacking happens.
pub struct Unpacker {
    pub md: Arc<Metadata>,
    pub ns: String,
    pub lease: Option<String>,
    /// Where layers are mounted when they cannot be written in place.
    pub tmp: PathBuf,
}

fn read_doc(md: &Metadata, ns: &str, digest: &str) -> ember_metadata::Result<Vec<u8>> {
    let (mut f, _) = md.content.open_blob(ns, digest)?;
    let mut v = Vec::new();
    std::io::Read::read_to_end(&mut f, &mut v)
        .map_err(|e| ember_metadata::Error::Internal(format!("reading {digest}: {e}")))?;
    Ok(v)
}

/// Blobs as a pull stores them; without a pull, everything is there already.
pub struct Arrivals {
    rx: Option<UnboundedReceiver<Arrived>>,
    have: HashSet<String>,
}

impl Arrivals {
    pub fn stored() -> Arrivals {
        Arrivals {
            rx: None,
            have: HashSet::new(),
        }
    }

    pub fn of(rx: UnboundedReceiver<Arrived>) -> Arrivals {
        Arrivals {
            rx: Some(rx),
            have: HashSet::new(),
        }
    }

    /// The next manifest the pull fetches for `platform`; `None` once it ended.
    async fn manifest(&mut self, platform: &Platform) -> Option<(Descriptor, Manifest)> {
        let rx = self.rx.as_mut()?;
        while let Some(a) = rx.recv().await {
            match a {
                Arrived::Blob(d) => {
                    self.have.insert(d);
                }
                Arrived::Manifest(dm)
                    if dm.0.platform.as_ref().is_none_or(|p| p.matches(platform)) =>
                {
                    return Some(*dm)
                }
                Arrived::Manifest(..) => {}
            }
        }
        None
    }

    /// Waits until `digest` is stored (or the pull ended).
    async fn ready(&mut self, digest: &str) {
        let Some(rx) = self.rx.as_mut() else { return };
        while !self.have.contains(digest) {
            match rx.recv().await {
                Some(Arrived::Blob(d)) => {
                    self.have.insert(d);
                }
                Some(Arrived::Manifest(..)) => {}
                None => return,
            }
        }
    }
}

impl Unpacker {
    async fn read(&self, digest: &str) -> Result<Vec<u8>, Status> {
        let (md, ns, d) = (self.md.clone(), self.ns.clone(), digest.to_string());
        blocking(move || read_doc(&md, &ns, &d)).await
    }

    async fn label(&self, digest: &str, key: String, value: String) -> Result<(), Status> {
        let (md, ns) = (self.md.clone(), self.ns.clone());
        let info = ContentInfo {
            digest: digest.to_string(),
            size: 0,
            labels: [(key.clone(), value)].into(),
            created_at: std::time::UNIX_EPOCH,
            updated_at: std::time::UNIX_EPOCH,
        };
        blocking(move || md.content.update(&ns, &info, &[format!("labels.{key}")]))
            .await
            .map(|_| ())
    }

    /// The manifest of `target` for `platform` (an index is looked into).
    pub async fn manifest_for(
        &self,
        target: &Descriptor,
        platform: &Platform,
    ) -> Result<Option<Descriptor>, Status> {
        if !ember_registry::is_index(&target.media_type) {
            return Ok(Some(target.clone()));
        }
        let idx = ember_images::parse_index(&self.read(&target.digest).await?).map_err(invalid)?;
        let found = idx
            .manifests
            .into_iter()
            .filter(|m| ember_registry::is_manifest(&m.media_type))
            .find(|m| m.platform.as_ref().is_none_or(|p| p.matches(platform)));
        Ok(found)
    }

    /// Unpacks the image manifest `manifest` into `snapshotter`.
    pub async fn unpack(&self, manifest: &Descriptor, snapshotter: &str) -> Result<(), Status> {
        let m =
            ember_images::parse_manifest(&self.read(&manifest.digest).await?).map_err(invalid)?;
        self.unpack_manifest(&m, snapshotter, &mut Arrivals::stored())
            .await
    }

    /// Unpacks while a pull goes on: the first manifest for `platform` it
    /// fetches, each layer as soon as it is stored. `None`: the pull fetched no
    /// manifest for the platform.
    pub async fn unpack_arriving(
        &self,
        mut arrivals: Arrivals,
        platform: &Platform,
        snapshotter: &str,
    ) -> Result<Option<Descriptor>, Status> {
        let Some((d, m)) = arrivals.manifest(platform).await else {
            return Ok(None);
        };
        self.unpack_manifest(&m, snapshotter, &mut arrivals).await?;
        Ok(Some(d))
    }

    async fn unpack_manifest(
        &self,
        m: &Manifest,
        snapshotter: &str,
        arrivals: &mut Arrivals,
    ) -> Result<(), Status> {
        let sn = self.md.snapshotter(snapshotter)?.clone();
        let snapshotter = sn.name().to_string();
        arrivals.ready(&m.config.digest).await;
        let config =
            ember_images::parse_config(&self.read(&m.config.digest).await?).map_err(invalid)?;
        let diff_ids = &config.rootfs.diff_ids;
        if diff_ids.len() != m.layers.len() {
            return Err(Status::invalid_argument(format!(
                "the config lists {} layers, the manifest {}",
                diff_ids.len(),
                m.layers.len()
            )));
        }
        let chain = ember_images::chain_ids(diff_ids);
        let lease = self.lease.as_deref();
        for (i, layer) in m.layers.iter().enumerate() {
            let chain_id = &chain[i];
            if sn.stat(&self.ns, chain_id).await.is_ok() {
                continue;
            }
            arrivals.ready(&layer.digest).await;
            let key = format!("extract-{} {chain_id}", uuid::Uuid::new_v4());
            let parent = if i == 0 { "" } else { chain[i - 1].as_str() };
            let labels: Labels =
                [("containerd.io/snapshot.ref".to_string(), chain_id.clone())].into();
            let mounts = sn
                .prepare(&self.ns, &key, parent, labels.clone(), lease)
                .await
                .map_err(status)?;
            let (md, ns, digest, tmp) = (
                self.md.clone(),
                self.ns.clone(),
                layer.digest.clone(),
                self.tmp.clone(),
            );
            let applied = tokio::task::spawn_blocking(move || {
                apply_blob(&md.content, &ns, &digest, &mounts, &tmp, false)
            })
            .await
            .map_err(|e| Status::internal(format!("apply task: {e}")))?;
            let result = match applied {
                Ok(a) if a.diff_id != diff_ids[i] => Err(Status::invalid_argument(format!(
                    "layer {} has diff id {}, the config says {}",
                    layer.digest, a.diff_id, diff_ids[i]
                ))),
                Ok(_) => match sn.commit(&self.ns, chain_id, &key, labels, lease).await {
                    Ok(()) | Err(ember_metadata::Error::AlreadyExists(_)) => Ok(()),
                    Err(e) => Err(status(e)),
                },
                Err(e) => Err(e),
            };
            if let Err(e) = result {
                let _ = sn.remove(&self.ns, &key).await;
                return Err(e);
            }
            self.label(
                &layer.digest,
                LABEL_UNCOMPRESSED.into(),
                diff_ids[i].clone(),
            )
            .await?;
        }
        if let Some(top) = chain.last() {
            self.label(
                &m.config.digest,
                format!("containerd.io/gc.ref.snapshot.{snapshotter}"),
                top.clone(),
            )
            .await?;
        }
        Ok(())
    }
}
