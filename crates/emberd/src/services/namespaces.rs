//! `containerd.services.namespaces.v1.Namespaces`.

use std::sync::Arc;

use containerd_client::events::{NamespaceCreate, NamespaceDelete, NamespaceUpdate};
use containerd_client::services::v1 as wire;
use ember_metadata::db::Reader;
use ember_metadata::Namespace;
use tonic::{Request, Response, Status};

use crate::daemon::Metadata;
use crate::events::Exchange;
use crate::grpc::namespaces::namespaces_server::{Namespaces, NamespacesServer};
use crate::plugin::{InitError, Registration, EVENT, GRPC, METADATA};
use crate::services::{blocking, field_paths, filter, labels_in, labels_out, GrpcService};

pub fn registration() -> Registration {
    Registration::new(GRPC, "namespaces", &[METADATA, EVENT], |ctx| {
        let service = Service {
            md: ctx.registry.first(METADATA).map_err(InitError::Failed)?,
            events: ctx.registry.first(EVENT).map_err(InitError::Failed)?,
        };
        Ok(GrpcService::instance(move |r| {
            r.add_service(limited!(NamespacesServer::new(service.clone())));
        }))
    })
}

#[derive(Clone)]
pub struct Service {
    md: Arc<Metadata>,
    events: Arc<Exchange>,
}

fn to_wire(n: &Namespace) -> wire::Namespace {
    wire::Namespace {
        name: n.name.clone(),
        labels: labels_out(&n.labels),
    }
}

#[tonic::async_trait]
impl Namespaces for Service {
    async fn get(
        &self,
        r: Request<wire::GetNamespaceRequest>,
    ) -> Result<Response<wire::GetNamespaceResponse>, Status> {
        // Like containerd, any name answers: a namespace without a record has no
        // labels yet (it comes into being with its first object). containerd's
        // clients rely on this, dockerd for its `moby` namespace.
        let name = r.into_inner().name;
        let db = self.md.db.clone();
        let ns = blocking(move || {
            db.view(|tx| match tx.get_namespace(&name) {
                Err(ember_metadata::Error::NotFound(_)) => Ok(Namespace {
                    name: name.clone(),
                    labels: Default::default(),
                }),
                other => other,
            })
        })
        .await?;
        Ok(Response::new(wire::GetNamespaceResponse {
            namespace: Some(to_wire(&ns)),
        }))
    }

    async fn list(
        &self,
        r: Request<wire::ListNamespacesRequest>,
    ) -> Result<Response<wire::ListNamespacesResponse>, Status> {
        let f = filter(&[r.into_inner().filter])?;
        let db = self.md.db.clone();
        let all = blocking(move || db.view(|tx| tx.list_namespaces())).await?;
        Ok(Response::new(wire::ListNamespacesResponse {
            namespaces: all.iter().filter(|n| f.matches(*n)).map(to_wire).collect(),
        }))
    }

    async fn create(
        &self,
        r: Request<wire::CreateNamespaceRequest>,
    ) -> Result<Response<wire::CreateNamespaceResponse>, Status> {
        let n = r
            .into_inner()
            .namespace
            .ok_or_else(|| Status::invalid_argument("namespace is required"))?;
        let ns = Namespace {
            name: n.name,
            labels: labels_in(n.labels),
        };
        let db = self.md.db.clone();
        let created = ns.clone();
        blocking(move || db.update(|tx| tx.create_namespace(&created))).await?;
        self.events.publish(
            &ns.name,
            "/namespaces/create",
            &NamespaceCreate {
                name: ns.name.clone(),
                labels: labels_out(&ns.labels),
            },
        );
        Ok(Response::new(wire::CreateNamespaceResponse {
            namespace: Some(to_wire(&ns)),
        }))
    }

    async fn update(
        &self,
        r: Request<wire::UpdateNamespaceRequest>,
    ) -> Result<Response<wire::UpdateNamespaceResponse>, Status> {
        let r = r.into_inner();
        let n = r
            .namespace
            .ok_or_else(|| Status::invalid_argument("namespace is required"))?;
        let update = Namespace {
            name: n.name,
            labels: labels_in(n.labels),
        };
        let paths = field_paths(r.update_mask);
        let db = self.md.db.clone();
        let ns = blocking(move || db.update(|tx| tx.update_namespace(&update, &paths))).await?;
        self.events.publish(
            &ns.name,
            "/namespaces/update",
            &NamespaceUpdate {
                name: ns.name.clone(),
                labels: labels_out(&ns.labels),
            },
        );
        Ok(Response::new(wire::UpdateNamespaceResponse {
            namespace: Some(to_wire(&ns)),
        }))
    }

    async fn delete(
        &self,
        r: Request<wire::DeleteNamespaceRequest>,
    ) -> Result<Response<()>, Status> {
        let name = r.into_inner().name;
        let db = self.md.db.clone();
        let n = name.clone();
        blocking(move || db.update(|tx| tx.delete_namespace(&n))).await?;
        self.events.publish(
            &name,
            "/namespaces/delete",
            &NamespaceDelete { name: name.clone() },
        );
        Ok(Response::new(()))
    }
}
