//! `containerd.services.snapshots.v1.Snapshots`: the snapshotters, by name per
//! request, through the namespaced metadata layer.

use std::pin::Pin;
use std::sync::Arc;

use containerd_client::events::{SnapshotCommit, SnapshotPrepare, SnapshotRemove};
use containerd_client::services::v1::snapshots as wire;
use ember_metadata::Snapshot;
use ember_snapshot::convert::{kind_to_wire, mount_to_wire, usage_to_wire};
use futures::Stream;
use tonic::{Request, Response, Status};

use crate::daemon::Metadata;
use crate::events::Exchange;
use crate::grpc::snapshots::snapshots_server::{Snapshots, SnapshotsServer};
use crate::plugin::{InitError, Registration, EVENT, GRPC, METADATA};
use crate::services::{
    field_paths, filter, labels_in, labels_out, lease, namespace, status, timestamp, GrpcService,
};

/// Infos per `List` response message.
const LIST_BATCH: usize = 100;

pub fn registration() -> Registration {
    Registration::new(GRPC, "snapshots", &[METADATA, EVENT], |ctx| {
        let service = Service {
            md: ctx.registry.first(METADATA).map_err(InitError::Failed)?,
            events: ctx.registry.first(EVENT).map_err(InitError::Failed)?,
        };
        Ok(GrpcService::instance(move |r| {
            r.add_service(limited!(SnapshotsServer::new(service.clone())));
        }))
    })
}

#[derive(Clone)]
pub struct Service {
    md: Arc<Metadata>,
    events: Arc<Exchange>,
}

fn info_to_wire(s: &Snapshot) -> wire::Info {
    wire::Info {
        name: s.name.clone(),
        parent: s.parent.clone(),
        kind: kind_to_wire(s.kind) as i32,
        created_at: timestamp(s.created_at),
        updated_at: timestamp(s.updated_at),
        labels: labels_out(&s.labels),
    }
}

fn mounts_out(m: &[ember_snapshot::Mount]) -> Vec<containerd_client::types::Mount> {
    m.iter().map(mount_to_wire).collect()
}

#[tonic::async_trait]
impl Snapshots for Service {
    async fn prepare(
        &self,
        r: Request<wire::PrepareSnapshotRequest>,
    ) -> Result<Response<wire::PrepareSnapshotResponse>, Status> {
        let ns = namespace(&r)?;
        let lease = lease(&r);
        let r = r.into_inner();
        let sn = self.md.snapshotter(&r.snapshotter)?;
        let mounts = sn
            .prepare(
                &ns,
                &r.key,
                &r.parent,
                labels_in(r.labels),
                lease.as_deref(),
            )
            .await
            .map_err(status)?;
        self.events.publish(
            &ns,
            "/snapshot/prepare",
            &SnapshotPrepare {
                key: r.key,
                parent: r.parent,
                snapshotter: sn.name().to_string(),
            },
        );
        Ok(Response::new(wire::PrepareSnapshotResponse {
            mounts: mounts_out(&mounts),
        }))
    }

    async fn view(
        &self,
        r: Request<wire::ViewSnapshotRequest>,
    ) -> Result<Response<wire::ViewSnapshotResponse>, Status> {
        let ns = namespace(&r)?;
        let lease = lease(&r);
        let r = r.into_inner();
        let sn = self.md.snapshotter(&r.snapshotter)?;
        let mounts = sn
            .view(
                &ns,
                &r.key,
                &r.parent,
                labels_in(r.labels),
                lease.as_deref(),
            )
            .await
            .map_err(status)?;
        Ok(Response::new(wire::ViewSnapshotResponse {
            mounts: mounts_out(&mounts),
        }))
    }

    async fn mounts(
        &self,
        r: Request<wire::MountsRequest>,
    ) -> Result<Response<wire::MountsResponse>, Status> {
        let ns = namespace(&r)?;
        let r = r.into_inner();
        let sn = self.md.snapshotter(&r.snapshotter)?;
        let mounts = sn.mounts(&ns, &r.key).await.map_err(status)?;
        Ok(Response::new(wire::MountsResponse {
            mounts: mounts_out(&mounts),
        }))
    }

    async fn commit(
        &self,
        r: Request<wire::CommitSnapshotRequest>,
    ) -> Result<Response<()>, Status> {
        let ns = namespace(&r)?;
        let lease = lease(&r);
        let r = r.into_inner();
        let sn = self.md.snapshotter(&r.snapshotter)?;
        sn.commit(&ns, &r.name, &r.key, labels_in(r.labels), lease.as_deref())
            .await
            .map_err(status)?;
        self.events.publish(
            &ns,
            "/snapshot/commit",
            &SnapshotCommit {
                key: r.key,
                name: r.name,
                snapshotter: sn.name().to_string(),
            },
        );
        Ok(Response::new(()))
    }

    async fn remove(
        &self,
        r: Request<wire::RemoveSnapshotRequest>,
    ) -> Result<Response<()>, Status> {
        let ns = namespace(&r)?;
        let r = r.into_inner();
        let sn = self.md.snapshotter(&r.snapshotter)?;
        sn.remove(&ns, &r.key).await.map_err(status)?;
        self.events.publish(
            &ns,
            "/snapshot/remove",
            &SnapshotRemove {
                key: r.key,
                snapshotter: sn.name().to_string(),
            },
        );
        Ok(Response::new(()))
    }

    async fn stat(
        &self,
        r: Request<wire::StatSnapshotRequest>,
    ) -> Result<Response<wire::StatSnapshotResponse>, Status> {
        let ns = namespace(&r)?;
        let r = r.into_inner();
        let sn = self.md.snapshotter(&r.snapshotter)?;
        let s = sn.stat(&ns, &r.key).await.map_err(status)?;
        Ok(Response::new(wire::StatSnapshotResponse {
            info: Some(info_to_wire(&s)),
        }))
    }

    async fn update(
        &self,
        r: Request<wire::UpdateSnapshotRequest>,
    ) -> Result<Response<wire::UpdateSnapshotResponse>, Status> {
        let ns = namespace(&r)?;
        let r = r.into_inner();
        let sn = self.md.snapshotter(&r.snapshotter)?;
        let info = r
            .info
            .ok_or_else(|| Status::invalid_argument("snapshot info is required"))?;
        let paths = field_paths(r.update_mask);
        let s = sn
            .update(&ns, &info.name, &labels_in(info.labels), &paths)
            .await
            .map_err(status)?;
        Ok(Response::new(wire::UpdateSnapshotResponse {
            info: Some(info_to_wire(&s)),
        }))
    }

    type ListStream =
        Pin<Box<dyn Stream<Item = Result<wire::ListSnapshotsResponse, Status>> + Send>>;

    async fn list(
        &self,
        r: Request<wire::ListSnapshotsRequest>,
    ) -> Result<Response<Self::ListStream>, Status> {
        let ns = namespace(&r)?;
        let r = r.into_inner();
        let sn = self.md.snapshotter(&r.snapshotter)?;
        let f = filter(&r.filters)?;
        let all = sn.list(&ns, &f).await.map_err(status)?;
        let batches: Vec<_> = all
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
        let ns = namespace(&r)?;
        let r = r.into_inner();
        let sn = self.md.snapshotter(&r.snapshotter)?;
        let u = sn.usage(&ns, &r.key).await.map_err(status)?;
        Ok(Response::new(usage_to_wire(u)))
    }

    async fn cleanup(&self, r: Request<wire::CleanupRequest>) -> Result<Response<()>, Status> {
        let sn = self.md.snapshotter(&r.into_inner().snapshotter)?;
        sn.cleanup().await.map_err(status)?;
        Ok(Response::new(()))
    }
}
