//! Ember's `ember.vm.v1.VMs`: the namespace's VMs, explicit and implicit, as their
//! shims describe them.

use std::sync::Arc;

use ember_vm_api::ember::v_ms_server::{VMs, VMsServer};
use ember_vm_api::ember::{DescribeVmRequest, ListVMsRequest, ListVMsResponse, VmDescription};
use tonic::{Request, Response, Status};

use super::status;
use crate::plugin::{InitError, Registration, GRPC, SERVICE};
use crate::services::{namespace, GrpcService};
use crate::vms::Vms;

pub fn registration() -> Registration {
    Registration::new(GRPC, "vms", &[SERVICE], |ctx| {
        let service = Service {
            vms: ctx
                .registry
                .get(SERVICE, crate::vms::PLUGIN_ID)
                .map_err(InitError::Failed)?,
        };
        Ok(GrpcService::instance(move |r| {
            r.add_service(limited!(VMsServer::new(service.clone())));
        }))
    })
}

#[derive(Clone)]
pub struct Service {
    vms: Arc<Vms>,
}

#[tonic::async_trait]
impl VMs for Service {
    async fn list(&self, r: Request<ListVMsRequest>) -> Result<Response<ListVMsResponse>, Status> {
        let ns = namespace(&r)?;
        Ok(Response::new(ListVMsResponse {
            vms: self.vms.list(&ns).await,
        }))
    }

    async fn describe(
        &self,
        r: Request<DescribeVmRequest>,
    ) -> Result<Response<VmDescription>, Status> {
        let ns = namespace(&r)?;
        let id = r.into_inner().vm_id;
        let d = self.vms.describe(&ns, &id).await.map_err(status)?;
        Ok(Response::new(d))
    }
}
