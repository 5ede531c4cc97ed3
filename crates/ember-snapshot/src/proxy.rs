//! A snapshotter that forwards every call to a remote
//! `containerd.services.snapshots.v1.Snapshots` server on a unix socket (containerd's
//! "proxy plugins").

use std::path::PathBuf;

use containerd_client::services::v1::snapshots as wire;
use containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient;
use tokio::sync::OnceCell;
use tonic::transport::Channel;

use crate::convert::{from_status, info_from_wire, info_to_wire, mount_from_wire};
use crate::{Error, Info, Labels, Mount, Result, Snapshotter, Usage};

/// Client of a remote snapshotter. The connection is made on first use, so a proxy
/// whose server starts later still works.
pub struct ProxySnapshotter {
    name: String,
    address: PathBuf,
    channel: OnceCell<Channel>,
}

impl ProxySnapshotter {
    /// `name` is sent as the `snapshotter` field of every request.
    pub fn new(name: impl Into<String>, address: impl Into<PathBuf>) -> Self {
        ProxySnapshotter {
            name: name.into(),
            address: address.into(),
            channel: OnceCell::new(),
        }
    }

    async fn client(&self) -> Result<SnapshotsClient<Channel>> {
        let ch = self
            .channel
            .get_or_try_init(|| async {
                containerd_client::connect(&self.address)
                    .await
                    .map_err(|e| {
                        Error::Unavailable(format!(
                            "connecting to snapshotter {} at {}: {e}",
                            self.name,
                            self.address.display()
                        ))
                    })
            })
            .await?;
        Ok(SnapshotsClient::new(ch.clone()))
    }
}

fn labels(l: Labels) -> std::collections::HashMap<String, String> {
    l.into_iter().collect()
}

#[async_trait::async_trait]
impl Snapshotter for ProxySnapshotter {
    async fn stat(&self, key: &str) -> Result<Info> {
        let r = self
            .client()
            .await?
            .stat(wire::StatSnapshotRequest {
                snapshotter: self.name.clone(),
                key: key.into(),
            })
            .await
            .map_err(from_status)?;
        r.into_inner()
            .info
            .map(info_from_wire)
            .ok_or_else(|| Error::Internal("remote snapshotter sent no info".into()))
    }

    async fn update(&self, info: Info, fieldpaths: &[String]) -> Result<Info> {
        let r = self
            .client()
            .await?
            .update(wire::UpdateSnapshotRequest {
                snapshotter: self.name.clone(),
                info: Some(info_to_wire(&info)),
                update_mask: Some(prost_types::FieldMask {
                    paths: fieldpaths.to_vec(),
                }),
            })
            .await
            .map_err(from_status)?;
        r.into_inner()
            .info
            .map(info_from_wire)
            .ok_or_else(|| Error::Internal("remote snapshotter sent no info".into()))
    }

    async fn usage(&self, key: &str) -> Result<Usage> {
        let r = self
            .client()
            .await?
            .usage(wire::UsageRequest {
                snapshotter: self.name.clone(),
                key: key.into(),
            })
            .await
            .map_err(from_status)?
            .into_inner();
        Ok(Usage {
            size: r.size,
            inodes: r.inodes,
        })
    }

    async fn mounts(&self, key: &str) -> Result<Vec<Mount>> {
        let r = self
            .client()
            .await?
            .mounts(wire::MountsRequest {
                snapshotter: self.name.clone(),
                key: key.into(),
            })
            .await
            .map_err(from_status)?;
        Ok(r.into_inner()
            .mounts
            .into_iter()
            .map(mount_from_wire)
            .collect())
    }

    async fn prepare(&self, key: &str, parent: &str, l: Labels) -> Result<Vec<Mount>> {
        let r = self
            .client()
            .await?
            .prepare(wire::PrepareSnapshotRequest {
                snapshotter: self.name.clone(),
                key: key.into(),
                parent: parent.into(),
                labels: labels(l),
            })
            .await
            .map_err(from_status)?;
        Ok(r.into_inner()
            .mounts
            .into_iter()
            .map(mount_from_wire)
            .collect())
    }

    async fn view(&self, key: &str, parent: &str, l: Labels) -> Result<Vec<Mount>> {
        let r = self
            .client()
            .await?
            .view(wire::ViewSnapshotRequest {
                snapshotter: self.name.clone(),
                key: key.into(),
                parent: parent.into(),
                labels: labels(l),
            })
            .await
            .map_err(from_status)?;
        Ok(r.into_inner()
            .mounts
            .into_iter()
            .map(mount_from_wire)
            .collect())
    }

    async fn commit(&self, name: &str, key: &str, l: Labels) -> Result<()> {
        self.client()
            .await?
            .commit(wire::CommitSnapshotRequest {
                snapshotter: self.name.clone(),
                name: name.into(),
                key: key.into(),
                labels: labels(l),
            })
            .await
            .map_err(from_status)?;
        Ok(())
    }

    async fn remove(&self, key: &str) -> Result<()> {
        self.client()
            .await?
            .remove(wire::RemoveSnapshotRequest {
                snapshotter: self.name.clone(),
                key: key.into(),
            })
            .await
            .map_err(from_status)?;
        Ok(())
    }

    async fn walk(&self) -> Result<Vec<Info>> {
        let mut stream = self
            .client()
            .await?
            .list(wire::ListSnapshotsRequest {
                snapshotter: self.name.clone(),
                filters: vec![],
            })
            .await
            .map_err(from_status)?
            .into_inner();
        let mut out = Vec::new();
        while let Some(batch) = stream.message().await.map_err(from_status)? {
            out.extend(batch.info.into_iter().map(info_from_wire));
        }
        Ok(out)
    }

    async fn cleanup(&self) -> Result<()> {
        self.client()
            .await?
            .cleanup(wire::CleanupRequest {
                snapshotter: self.name.clone(),
            })
            .await
            .map_err(from_status)?;
        Ok(())
    }
}
