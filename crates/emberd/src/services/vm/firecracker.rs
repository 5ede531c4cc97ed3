//! firecracker-containerd's `Firecracker` service: CreateVM and StopVM go to the
//! registry, every other call to the shim that owns the VM.

use std::sync::Arc;

use ember_vm_api::fc::firecracker_server::{Firecracker, FirecrackerServer};
use ember_vm_api::fc::*;
use ember_vm_api::VmClient;
use tonic::{Request, Response, Status};

use super::status;
use crate::plugin::{InitError, Registration, GRPC, SERVICE};
use crate::services::{namespace, GrpcService};
use crate::vms::Vms;

pub fn registration() -> Registration {
    Registration::new(GRPC, "fc-control", &[SERVICE], |ctx| {
        let service = Service {
            vms: ctx
                .registry
                .get(SERVICE, crate::vms::PLUGIN_ID)
                .map_err(InitError::Failed)?,
        };
        Ok(GrpcService::instance(move |r| {
            r.add_service(limited!(FirecrackerServer::new(service.clone())));
        }))
    })
}

#[derive(Clone)]
pub struct Service {
    vms: Arc<Vms>,
}

/// Requests that name their VM.
trait Named {
    fn vm_id(&self) -> &str;
}

macro_rules! named {
    ($($t:ty),*) => {
        $(impl Named for $t {
            fn vm_id(&self) -> &str {
                &self.vmid
            }
        })*
    };
}

named!(
    PauseVmRequest,
    ResumeVmRequest,
    GetVmInfoRequest,
    SetVmMetadataRequest,
    UpdateVmMetadataRequest,
    GetVmMetadataRequest,
    GetBalloonConfigRequest,
    UpdateBalloonRequest,
    GetBalloonStatsRequest,
    UpdateBalloonStatsRequest
);

impl Service {
    /// Sends a call to the shim of the VM it names.
    async fn forward<Req, Resp, F, Fut>(
        &self,
        r: Request<Req>,
        call: F,
    ) -> Result<Response<Resp>, Status>
    where
        Req: Named,
        F: FnOnce(VmClient, Req) -> Fut,
        Fut: std::future::Future<Output = ember_ttrpc::Result<Resp>>,
    {
        let ns = namespace(&r)?;
        let r = r.into_inner();
        let vm = self.vms.find(&ns, r.vm_id()).await.map_err(status)?;
        let resp = call(vm.client().clone(), r)
            .await
            .map_err(|e| status(e.into()))?;
        Ok(Response::new(resp))
    }
}

#[tonic::async_trait]
impl Firecracker for Service {
    async fn create_vm(
        &self,
        r: Request<CreateVmRequest>,
    ) -> Result<Response<CreateVmResponse>, Status> {
        let ns = namespace(&r)?;
        let resp = self.vms.create(&ns, r.into_inner()).await.map_err(status)?;
        Ok(Response::new(resp))
    }

    async fn stop_vm(&self, r: Request<StopVmRequest>) -> Result<Response<()>, Status> {
        let ns = namespace(&r)?;
        self.vms.stop(&ns, r.into_inner()).await.map_err(status)?;
        Ok(Response::new(()))
    }

    async fn pause_vm(&self, r: Request<PauseVmRequest>) -> Result<Response<()>, Status> {
        self.forward(r, |c, r| async move { c.pause_vm(&r).await })
            .await
    }

    async fn resume_vm(&self, r: Request<ResumeVmRequest>) -> Result<Response<()>, Status> {
        self.forward(r, |c, r| async move { c.resume_vm(&r).await })
            .await
    }

    async fn get_vm_info(
        &self,
        r: Request<GetVmInfoRequest>,
    ) -> Result<Response<GetVmInfoResponse>, Status> {
        self.forward(r, |c, r| async move { c.get_vm_info(&r).await })
            .await
    }

    async fn set_vm_metadata(
        &self,
        r: Request<SetVmMetadataRequest>,
    ) -> Result<Response<()>, Status> {
        self.forward(r, |c, r| async move { c.set_vm_metadata(&r).await })
            .await
    }

    async fn update_vm_metadata(
        &self,
        r: Request<UpdateVmMetadataRequest>,
    ) -> Result<Response<()>, Status> {
        self.forward(r, |c, r| async move { c.update_vm_metadata(&r).await })
            .await
    }

    async fn get_vm_metadata(
        &self,
        r: Request<GetVmMetadataRequest>,
    ) -> Result<Response<GetVmMetadataResponse>, Status> {
        self.forward(r, |c, r| async move { c.get_vm_metadata(&r).await })
            .await
    }

    async fn get_balloon_config(
        &self,
        r: Request<GetBalloonConfigRequest>,
    ) -> Result<Response<GetBalloonConfigResponse>, Status> {
        self.forward(r, |c, r| async move { c.get_balloon_config(&r).await })
            .await
    }

    async fn update_balloon(
        &self,
        r: Request<UpdateBalloonRequest>,
    ) -> Result<Response<()>, Status> {
        self.forward(r, |c, r| async move { c.update_balloon(&r).await })
            .await
    }

    async fn get_balloon_stats(
        &self,
        r: Request<GetBalloonStatsRequest>,
    ) -> Result<Response<GetBalloonStatsResponse>, Status> {
        self.forward(r, |c, r| async move { c.get_balloon_stats(&r).await })
            .await
    }

    async fn update_balloon_stats(
        &self,
        r: Request<UpdateBalloonStatsRequest>,
    ) -> Result<Response<()>, Status> {
        self.forward(r, |c, r| async move { c.update_balloon_stats(&r).await })
            .await
    }
}
