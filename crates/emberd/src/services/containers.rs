//! `containerd.services.containers.v1.Containers`: container records (no tasks).

use std::pin::Pin;
use std::sync::Arc;

use containerd_client::events::{
    container_create, ContainerCreate, ContainerDelete, ContainerUpdate,
};
use containerd_client::services::v1 as wire;
use ember_metadata::db::Reader;
use ember_metadata::{AnyValue, Container, Runtime};
use futures::Stream;
use tonic::{Request, Response, Status};

use crate::daemon::Metadata;
use crate::events::Exchange;
use crate::grpc::containers::containers_server::{Containers, ContainersServer};
use crate::plugin::{InitError, Registration, EVENT, GRPC, METADATA};
use crate::services::{
    blocking, field_paths, filter, labels_in, labels_out, namespace, timestamp, GrpcService,
};

pub fn registration() -> Registration {
    Registration::new(GRPC, "containers", &[METADATA, EVENT], |ctx| {
        let service = Service {
            md: ctx.registry.first(METADATA).map_err(InitError::Failed)?,
            events: ctx.registry.first(EVENT).map_err(InitError::Failed)?,
        };
        Ok(GrpcService::instance(move |r| {
            r.add_service(limited!(ContainersServer::new(service.clone())));
        }))
    })
}

#[derive(Clone)]
pub struct Service {
    md: Arc<Metadata>,
    events: Arc<Exchange>,
}

pub(crate) fn any_in(a: prost_types::Any) -> AnyValue {
    AnyValue {
        type_url: a.type_url,
        value: a.value,
    }
}

pub(crate) fn any_out(a: &AnyValue) -> prost_types::Any {
    prost_types::Any {
        type_url: a.type_url.clone(),
        value: a.value.clone(),
    }
}

fn from_wire(c: wire::Container) -> Container {
    let runtime = c.runtime.unwrap_or_default();
    Container {
        id: c.id,
        labels: labels_in(c.labels),
        image: c.image,
        runtime: Runtime {
            name: runtime.name,
            options: runtime.options.map(any_in),
        },
        spec: c.spec.map(any_in),
        snapshotter: c.snapshotter,
        snapshot_key: c.snapshot_key,
        created_at: std::time::UNIX_EPOCH,
        updated_at: std::time::UNIX_EPOCH,
        extensions: c
            .extensions
            .into_iter()
            .map(|(k, v)| (k, any_in(v)))
            .collect(),
        sandbox: c.sandbox,
    }
}

fn to_wire(c: &Container) -> wire::Container {
    wire::Container {
        id: c.id.clone(),
        labels: labels_out(&c.labels),
        image: c.image.clone(),
        runtime: Some(wire::container::Runtime {
            name: c.runtime.name.clone(),
            options: c.runtime.options.as_ref().map(any_out),
        }),
        spec: c.spec.as_ref().map(any_out),
        snapshotter: c.snapshotter.clone(),
        snapshot_key: c.snapshot_key.clone(),
        created_at: timestamp(c.created_at),
        updated_at: timestamp(c.updated_at),
        extensions: c
            .extensions
            .iter()
            .map(|(k, v)| (k.clone(), any_out(v)))
            .collect(),
        sandbox: c.sandbox.clone(),
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

impl Service {
    async fn list_all(&self, ns: String, filters: Vec<String>) -> Result<Vec<Container>, Status> {
        let f = filter(&filters)?;
        let db = self.md.db.clone();
        blocking(move || db.view(|tx| tx.list_containers(&ns, &f))).await
    }
}

#[tonic::async_trait]
impl Containers for Service {
    async fn get(
        &self,
        r: Request<wire::GetContainerRequest>,
    ) -> Result<Response<wire::GetContainerResponse>, Status> {
        let ns = namespace(&r)?;
        let id = r.into_inner().id;
        let db = self.md.db.clone();
        let c = blocking(move || db.view(|tx| tx.get_container(&ns, &id))).await?;
        Ok(Response::new(wire::GetContainerResponse {
            container: Some(to_wire(&c)),
        }))
    }

    async fn list(
        &self,
        r: Request<wire::ListContainersRequest>,
    ) -> Result<Response<wire::ListContainersResponse>, Status> {
        let ns = namespace(&r)?;
        let all = self.list_all(ns, r.into_inner().filters).await?;
        Ok(Response::new(wire::ListContainersResponse {
            containers: all.iter().map(to_wire).collect(),
        }))
    }

    type ListStreamStream = BoxStream<wire::ListContainerMessage>;

    async fn list_stream(
        &self,
        r: Request<wire::ListContainersRequest>,
    ) -> Result<Response<Self::ListStreamStream>, Status> {
        let ns = namespace(&r)?;
        let all = self.list_all(ns, r.into_inner().filters).await?;
        let msgs: Vec<_> = all
            .iter()
            .map(|c| {
                Ok(wire::ListContainerMessage {
                    container: Some(to_wire(c)),
                })
            })
            .collect();
        Ok(Response::new(Box::pin(futures::stream::iter(msgs))))
    }

    async fn create(
        &self,
        r: Request<wire::CreateContainerRequest>,
    ) -> Result<Response<wire::CreateContainerResponse>, Status> {
        let ns = namespace(&r)?;
        let c = r
            .into_inner()
            .container
            .ok_or_else(|| Status::invalid_argument("container is required"))?;
        let c = from_wire(c);
        let db = self.md.db.clone();
        let n = ns.clone();
        let created = blocking(move || db.update(|tx| tx.create_container(&n, &c))).await?;
        self.events.publish(
            &ns,
            "/containers/create",
            &ContainerCreate {
                id: created.id.clone(),
                image: created.image.clone(),
                runtime: Some(container_create::Runtime {
                    name: created.runtime.name.clone(),
                    options: created.runtime.options.as_ref().map(any_out),
                }),
            },
        );
        Ok(Response::new(wire::CreateContainerResponse {
            container: Some(to_wire(&created)),
        }))
    }

    async fn update(
        &self,
        r: Request<wire::UpdateContainerRequest>,
    ) -> Result<Response<wire::UpdateContainerResponse>, Status> {
        let ns = namespace(&r)?;
        let r = r.into_inner();
        let c = r
            .container
            .ok_or_else(|| Status::invalid_argument("container is required"))?;
        let c = from_wire(c);
        let paths = field_paths(r.update_mask);
        let db = self.md.db.clone();
        let n = ns.clone();
        let updated = blocking(move || db.update(|tx| tx.update_container(&n, &c, &paths))).await?;
        self.events.publish(
            &ns,
            "/containers/update",
            &ContainerUpdate {
                id: updated.id.clone(),
                image: updated.image.clone(),
                labels: labels_out(&updated.labels),
                snapshot_key: updated.snapshot_key.clone(),
            },
        );
        Ok(Response::new(wire::UpdateContainerResponse {
            container: Some(to_wire(&updated)),
        }))
    }

    async fn delete(
        &self,
        r: Request<wire::DeleteContainerRequest>,
    ) -> Result<Response<()>, Status> {
        let ns = namespace(&r)?;
        let id = r.into_inner().id;
        let db = self.md.db.clone();
        let (n, i) = (ns.clone(), id.clone());
        let held = blocking(move || {
            db.update(|tx| {
                let c = tx.get_container(&n, &i)?;
                tx.delete_container(&n, &i)?;
                Ok(!c.snapshot_key.is_empty()
                    || c.labels.keys().any(|k| k.starts_with("containerd.io/gc.")))
            })
        })
        .await?;
        // A container that referenced nothing frees nothing.
        if held {
            self.md.gc.schedule();
        }
        self.events
            .publish(&ns, "/containers/delete", &ContainerDelete { id });
        Ok(Response::new(()))
    }
}
