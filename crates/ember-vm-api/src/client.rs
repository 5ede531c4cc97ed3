//! A typed ttrpc client of a shim's VM services (`Firecracker` and `ember.vm.v1.VMs`).

use std::time::Duration;

use ember_ttrpc::{Client, Result};

use crate::ember::{DescribeVmRequest, VmDescription};
use crate::fc::*;
use crate::{FC_SERVICE, VMS_SERVICE};

/// Calls that answer at once get this timeout; boots and stops get their own.
const SHORT: Option<Duration> = Some(Duration::from_secs(30));

/// A connection to the shim that owns one VM.
#[derive(Clone)]
pub struct VmClient {
    inner: Client,
}

macro_rules! calls {
    ($($(#[$doc:meta])* $fn:ident($req:ty) -> $resp:ty = $method:literal;)*) => {
        $(
            $(#[$doc])*
            pub async fn $fn(&self, req: &$req) -> Result<$resp> {
                self.inner.call(FC_SERVICE, $method, req, SHORT).await
            }
        )*
    };
}

impl VmClient {
    /// Connects to a shim's socket (`unix:///path` or a bare path).
    pub async fn connect(address: &str) -> std::io::Result<VmClient> {
        let path = address.strip_prefix("unix://").unwrap_or(address);
        let stream = tokio::net::UnixStream::connect(path).await?;
        Ok(VmClient {
            inner: Client::new(stream),
        })
    }

    /// Whether the connection is gone.
    pub fn is_closed(&self) -> bool {
        self.inner.is_closed()
    }

    /// Returns when the connection is gone (the shim exited or died).
    pub async fn closed(&self) {
        self.inner.closed().await
    }

    /// Boots the VM; waits at most `timeout` (the request's TimeoutSeconds decides
    /// in the shim).
    pub async fn create_vm(
        &self,
        req: &CreateVmRequest,
        timeout: Duration,
    ) -> Result<CreateVmResponse> {
        self.inner
            .call(FC_SERVICE, "CreateVM", req, Some(timeout))
            .await
    }

    /// Stops the VM: its containers exit and the VMM is gone when this answers.
    pub async fn stop_vm(&self, req: &StopVmRequest, timeout: Duration) -> Result<()> {
        self.inner
            .call(FC_SERVICE, "StopVM", req, Some(timeout))
            .await
    }

    calls! {
        pause_vm(PauseVmRequest) -> () = "PauseVM";
        resume_vm(ResumeVmRequest) -> () = "ResumeVM";
        get_vm_info(GetVmInfoRequest) -> GetVmInfoResponse = "GetVMInfo";
        set_vm_metadata(SetVmMetadataRequest) -> () = "SetVMMetadata";
        update_vm_metadata(UpdateVmMetadataRequest) -> () = "UpdateVMMetadata";
        get_vm_metadata(GetVmMetadataRequest) -> GetVmMetadataResponse = "GetVMMetadata";
        get_balloon_config(GetBalloonConfigRequest) -> GetBalloonConfigResponse = "GetBalloonConfig";
        update_balloon(UpdateBalloonRequest) -> () = "UpdateBalloon";
        get_balloon_stats(GetBalloonStatsRequest) -> GetBalloonStatsResponse = "GetBalloonStats";
        update_balloon_stats(UpdateBalloonStatsRequest) -> () = "UpdateBalloonStats";
    }

    /// What `ember vm ls` shows of this VM.
    pub async fn describe(&self, vm_id: &str) -> Result<VmDescription> {
        let req = DescribeVmRequest {
            vm_id: vm_id.into(),
        };
        self.inner.call(VMS_SERVICE, "Describe", &req, SHORT).await
    }
}
