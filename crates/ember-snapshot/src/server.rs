//! Serves a [`Snapshotter`] as `containerd.services.snapshots.v1.Snapshots`, so that it
//! can be plugged into containerd or emberd as a proxy snapshotter. The snapshotter
//! name in requests and the namespace header are ignored: the keys are global.

use std::pin::Pin;
use std::sync::Arc;

use containerd_client::services::v1::snapshots as wire;
use futures::Stream;
use tonic::{Request, Response, Status};

use crate::convert::{info_from_wire, info_to_wire, mount_to_wire, status, usage_to_wire};
use crate::grpc::snapshots_server::{Snapshots, SnapshotsServer};
use crate::Snapshotter;

/// How many infos go into one `List` response message.
const LIST_BATCH: usize = 100;

pub struct SnapshotsService {
    inner: Arc<dyn Snapshotter>,
}

impl SnapshotsService {
    pub fn new(inner: Arc<dyn Snapshotter>) -> Self {
        SnapshotsService { inner }
    }

    pub fn into_server(self) -> SnapshotsServer<Self> {
        SnapshotsServer::new(self)
    }
}

type ListStream = Pin<Box<dyn Stream<Item = Result<wire::ListSnapshotsResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Snapshots for SnapshotsService {
    async fn prepare(
        &self,
        r: Request<wire::PrepareSnapshotRequest>,
    ) -> Result<Response<wire::PrepareSnapshotResponse>, Status> {
        let r = r.into_inner();
        let mounts = self
            .inner
            .prepare(&r.key, &r.parent, r.labels.into_iter().collect())
            .await
            .map_err(status)?;
        Ok(Response::new(wire::PrepareSnapshotResponse {
            mounts: mounts.iter().map(mount_to_wire).collect(),
        }))
    }

    async fn view(
        &self,
        r: Request<wire::ViewSnapshotRequest>,
    ) -> Result<Response<wire::ViewSnapshotResponse>, Status> {
        let r = r.into_inner();
        let mounts = self
            .inner
            .view(&r.key, &r.parent, r.labels.into_iter().collect())
            .await
            .map_err(status)?;
        Ok(Response::new(wire::ViewSnapshotResponse {
            mounts: mounts.iter().map(mount_to_wire).collect(),
        }))
    }

    async fn mounts(
        &self,
        r: Request<wire::MountsRequest>,
    ) -> Result<Response<wire::MountsResponse>, Status> {
        let mounts = self
            .inner
            .mounts(&r.into_inner().key)
            .await
            .map_err(status)?;
        Ok(Response::new(wire::MountsResponse {
            mounts: mounts.iter().map(mount_to_wire).collect(),
        }))
    }

    async fn commit(
        &self,
        r: Request<wire::CommitSnapshotRequest>,
    ) -> Result<Response<()>, Status> {
        let r = r.into_inner();
        self.inner
            .commit(&r.name, &r.key, r.labels.into_iter().collect())
            .await
            .map_err(status)?;
        Ok(Response::new(()))
    }

    async fn remove(
        &self,
        r: Request<wire::RemoveSnapshotRequest>,
    ) -> Result<Response<()>, Status> {
        self.inner
            .remove(&r.into_inner().key)
            .await
            .map_err(status)?;
        Ok(Response::new(()))
    }

    async fn stat(
        &self,
        r: Request<wire::StatSnapshotRequest>,
    ) -> Result<Response<wire::StatSnapshotResponse>, Status> {
        let info = self.inner.stat(&r.into_inner().key).await.map_err(status)?;
        Ok(Response::new(wire::StatSnapshotResponse {
            info: Some(info_to_wire(&info)),
        }))
    }

    async fn update(
        &self,
        r: Request<wire::UpdateSnapshotRequest>,
    ) -> Result<Response<wire::UpdateSnapshotResponse>, Status> {
        let r = r.into_inner();
        let info = r
            .info
            .ok_or_else(|| Status::invalid_argument("snapshot info is required"))?;
        let paths = r.update_mask.map(|m| m.paths).unwrap_or_default();
        let info = self
            .inner
            .update(info_from_wire(info), &paths)
            .await
            .map_err(status)?;
        Ok(Response::new(wire::UpdateSnapshotResponse {
            info: Some(info_to_wire(&info)),
        }))
    }

    type ListStream = ListStream;

    async fn list(
        &self,
        _r: Request<wire::ListSnapshotsRequest>,
    ) -> Result<Response<Self::ListStream>, Status> {
        let infos = self.inner.walk().await.map_err(status)?;
        let batches: Vec<Result<wire::ListSnapshotsResponse, Status>> = infos
            .chunks(LIST_BATCH)
            .map(|c| {
                Ok(wire::ListSnapshotsResponse {
                    info: c.iter().map(info_to_wire).collect(),
                })
            })
            .collect();
        Ok(Response::new(Box::pin(futures::stream::iter(batches))))
    }

    async fn usage(
        &self,
        r: Request<wire::UsageRequest>,
    ) -> Result<Response<wire::UsageResponse>, Status> {
        let u = self
            .inner
            .usage(&r.into_inner().key)
            .await
            .map_err(status)?;
        Ok(Response::new(usage_to_wire(u)))
    }

    async fn cleanup(&self, _r: Request<wire::CleanupRequest>) -> Result<Response<()>, Status> {
        self.inner.cleanup().await.map_err(status)?;
        Ok(Response::new(()))
    }
}
