//! `containerd.services.version.v1.Version`.

use containerd_client::services::v1::VersionResponse;
use tonic::{Request, Response, Status};

use crate::grpc::version::version_server::{Version, VersionServer};
use crate::plugin::{Registration, GRPC};
use crate::services::GrpcService;

pub const VERSION: &str = concat!("v", env!("CARGO_PKG_VERSION"));
pub const REVISION: &str = match option_env!("EMBER_REVISION") {
    Some(r) => r,
    None => "",
};

pub fn registration() -> Registration {
    Registration::new(GRPC, "version", &[], |_| {
        Ok(GrpcService::instance(|r| {
            r.add_service(limited!(VersionServer::new(Service)));
        }))
    })
}

#[derive(Clone, Copy)]
pub struct Service;

#[tonic::async_trait]
impl Version for Service {
    async fn version(&self, _r: Request<()>) -> Result<Response<VersionResponse>, Status> {
        Ok(Response::new(VersionResponse {
            version: VERSION.to_string(),
            revision: REVISION.to_string(),
        }))
    }
}
