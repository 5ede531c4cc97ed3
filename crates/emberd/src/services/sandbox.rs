//! containerd 1.7's sandbox API. `containerd.services.sandbox.v1.Store` keeps
//! sandbox records in the metadata store (namespaced, labelled, filtered, with
//! containerd's error codes). `containerd.services.sandbox.v1.Controller` would run
//! sandboxes through a sandboxer; emberd has none yet, so every controller call
//! answers `UNIMPLEMENTED` with that reason rather than pretending.

use std::sync::Arc;

use containerd_client::services::v1::sandbox as wire;
use containerd_client::types::{sandbox::Runtime as WireRuntime, Sandbox as WireSandbox};
use ember_metadata::sandboxes::{self, Sandbox};
use ember_metadata::Runtime;
use tonic::{Request, Response, Status};

use crate::daemon::Metadata;
use crate::grpc::sandbox::controller_server::{Controller, ControllerServer};
use crate::grpc::sandbox::store_server::{Store, StoreServer};
use crate::plugin::{InitError, Registration, GRPC, METADATA};
use crate::services::containers::{any_in, any_out};
use crate::services::{blocking, filter, labels_in, labels_out, namespace, timestamp, GrpcService};

pub fn registrations() -> Vec<Registration> {
    vec![
        Registration::new(GRPC, "sandboxes", &[METADATA], |ctx| {
            let service = StoreService {
                md: ctx.registry.first(METADATA).map_err(InitError::Failed)?,
            };
            Ok(GrpcService::instance(move |r| {
                r.add_service(limited!(StoreServer::new(service.clone())));
            }))
        }),
        Registration::new(GRPC, "sandbox-controllers", &[], |_ctx| {
            Ok(GrpcService::instance(move |r| {
                r.add_service(limited!(ControllerServer::new(NoSandboxer)));
            }))
        }),
    ]
}

#[derive(Clone)]
pub struct StoreService {
    md: Arc<Metadata>,
}

fn from_wire(s: WireSandbox) -> Sandbox {
    let runtime = s.runtime.unwrap_or_default();
    Sandbox {
        id: s.sandbox_id,
        runtime: Runtime {
            name: runtime.name,
            options: runtime.options.map(any_in),
        },
        spec: s.spec.map(any_in),
        labels: labels_in(s.labels),
        created_at: std::time::UNIX_EPOCH,
        updated_at: std::time::UNIX_EPOCH,
        extensions: s
            .extensions
            .into_iter()
            .map(|(k, v)| (k, any_in(v)))
            .collect(),
        sandboxer: s.sandboxer,
    }
}

fn to_wire(s: &Sandbox) -> WireSandbox {
    WireSandbox {
        sandbox_id: s.id.clone(),
        runtime: Some(WireRuntime {
            name: s.runtime.name.clone(),
            options: s.runtime.options.as_ref().map(any_out),
        }),
        spec: s.spec.as_ref().map(any_out),
        labels: labels_out(&s.labels),
        created_at: timestamp(s.created_at),
        updated_at: timestamp(s.updated_at),
        extensions: s
            .extensions
            .iter()
            .map(|(k, v)| (k.clone(), any_out(v)))
            .collect(),
        sandboxer: s.sandboxer.clone(),
    }
}

fn required(s: Option<WireSandbox>) -> Result<Sandbox, Status> {
    s.map(from_wire)
        .ok_or_else(|| Status::invalid_argument("sandbox is required: invalid argument"))
}

#[tonic::async_trait]
impl Store for StoreService {
    async fn create(
        &self,
        r: Request<wire::StoreCreateRequest>,
    ) -> Result<Response<wire::StoreCreateResponse>, Status> {
        let ns = namespace(&r)?;
        let s = required(r.into_inner().sandbox)?;
        let db = self.md.db.clone();
        let made = blocking(move || db.update(|tx| sandboxes::create_sandbox(tx, &ns, &s))).await?;
        Ok(Response::new(wire::StoreCreateResponse {
            sandbox: Some(to_wire(&made)),
        }))
    }

    async fn update(
        &self,
        r: Request<wire::StoreUpdateRequest>,
    ) -> Result<Response<wire::StoreUpdateResponse>, Status> {
        let ns = namespace(&r)?;
        let r = r.into_inner();
        let s = required(r.sandbox)?;
        let db = self.md.db.clone();
        let fields = r.fields;
        let done =
            blocking(move || db.update(|tx| sandboxes::update_sandbox(tx, &ns, &s, &fields)))
                .await?;
        Ok(Response::new(wire::StoreUpdateResponse {
            sandbox: Some(to_wire(&done)),
        }))
    }

    async fn delete(
        &self,
        r: Request<wire::StoreDeleteRequest>,
    ) -> Result<Response<wire::StoreDeleteResponse>, Status> {
        let ns = namespace(&r)?;
        let id = r.into_inner().sandbox_id;
        let db = self.md.db.clone();
        blocking(move || db.update(|tx| sandboxes::delete_sandbox(tx, &ns, &id))).await?;
        Ok(Response::new(wire::StoreDeleteResponse {}))
    }

    async fn list(
        &self,
        r: Request<wire::StoreListRequest>,
    ) -> Result<Response<wire::StoreListResponse>, Status> {
        let ns = namespace(&r)?;
        let f = filter(&r.into_inner().filters)?;
        let db = self.md.db.clone();
        let all = blocking(move || db.view(|tx| sandboxes::list_sandboxes(tx, &ns, &f))).await?;
        Ok(Response::new(wire::StoreListResponse {
            list: all.iter().map(to_wire).collect(),
        }))
    }

    async fn get(
        &self,
        r: Request<wire::StoreGetRequest>,
    ) -> Result<Response<wire::StoreGetResponse>, Status> {
        let ns = namespace(&r)?;
        let id = r.into_inner().sandbox_id;
        let db = self.md.db.clone();
        let s = blocking(move || db.view(|tx| sandboxes::get_sandbox(tx, &ns, &id))).await?;
        Ok(Response::new(wire::StoreGetResponse {
            sandbox: Some(to_wire(&s)),
        }))
    }
}

/// The controller while emberd has no sandboxer to run sandboxes with.
#[derive(Clone)]
pub struct NoSandboxer;

fn no_sandboxer<T>(what: &str) -> Result<Response<T>, Status> {
    Err(Status::unimplemented(format!(
        "sandbox controller {what}: emberd has no sandboxer yet (sandbox records are kept by \
         the sandbox store; tasks run through shims): not implemented"
    )))
}

#[tonic::async_trait]
impl Controller for NoSandboxer {
    async fn create(
        &self,
        _r: Request<wire::ControllerCreateRequest>,
    ) -> Result<Response<wire::ControllerCreateResponse>, Status> {
        no_sandboxer("create")
    }

    async fn start(
        &self,
        _r: Request<wire::ControllerStartRequest>,
    ) -> Result<Response<wire::ControllerStartResponse>, Status> {
        no_sandboxer("start")
    }

    async fn platform(
        &self,
        _r: Request<wire::ControllerPlatformRequest>,
    ) -> Result<Response<wire::ControllerPlatformResponse>, Status> {
        no_sandboxer("platform")
    }

    async fn stop(
        &self,
        _r: Request<wire::ControllerStopRequest>,
    ) -> Result<Response<wire::ControllerStopResponse>, Status> {
        no_sandboxer("stop")
    }

    async fn wait(
        &self,
        _r: Request<wire::ControllerWaitRequest>,
    ) -> Result<Response<wire::ControllerWaitResponse>, Status> {
        no_sandboxer("wait")
    }

    async fn status(
        &self,
        _r: Request<wire::ControllerStatusRequest>,
    ) -> Result<Response<wire::ControllerStatusResponse>, Status> {
        no_sandboxer("status")
    }

    async fn shutdown(
        &self,
        _r: Request<wire::ControllerShutdownRequest>,
    ) -> Result<Response<wire::ControllerShutdownResponse>, Status> {
        no_sandboxer("shutdown")
    }

    async fn metrics(
        &self,
        _r: Request<wire::ControllerMetricsRequest>,
    ) -> Result<Response<wire::ControllerMetricsResponse>, Status> {
        no_sandboxer("metrics")
    }

    async fn update(
        &self,
        _r: Request<wire::ControllerUpdateRequest>,
    ) -> Result<Response<wire::ControllerUpdateResponse>, Status> {
        no_sandboxer("update")
    }
}
