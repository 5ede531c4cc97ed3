//! `ember vm stop`: stops VMs and every container in them (StopVM).

use anyhow::Result;
use ember_vm_api::fc::StopVmRequest;

use super::{each, vm_error, VmConn};
use crate::client::ClientOpts;

#[derive(clap::Args, Debug)]
#[command(about = "Stop microVMs; their containers' processes exit with 137")]
pub struct StopArgs {
    /// Seconds to wait for the guest to shut down (default: the daemon's).
    #[arg(long, value_name = "SECS")]
    timeout: Option<u32>,
    #[arg(required = true)]
    ids: Vec<String>,
}

pub async fn run(opts: &ClientOpts, a: StopArgs) -> Result<i32> {
    let conn = VmConn::new(opts).await?;
    let timeout_seconds = a.timeout.unwrap_or(0);
    each(a.ids, |id| {
        let conn = &conn;
        async move {
            conn.fc()
                .stop_vm(conn.req(StopVmRequest {
                    vmid: id.clone(),
                    timeout_seconds,
                }))
                .await
                .map_err(|s| vm_error(s, &id))?;
            Ok(())
        }
    })
    .await
}
