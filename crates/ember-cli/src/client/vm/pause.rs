//! `ember vm pause`: freezes VMs' vCPUs (PauseVM).

use anyhow::Result;
use ember_vm_api::fc::PauseVmRequest;

use super::{each, vm_error, VmConn};
use crate::client::ClientOpts;

#[derive(clap::Args, Debug)]
#[command(about = "Pause microVMs (every container in them)")]
pub struct PauseArgs {
    #[arg(required = true)]
    ids: Vec<String>,
}

pub async fn run(opts: &ClientOpts, a: PauseArgs) -> Result<i32> {
    let conn = VmConn::new(opts).await?;
    each(a.ids, |id| {
        let conn = &conn;
        async move {
            conn.fc()
                .pause_vm(conn.req(PauseVmRequest { vmid: id.clone() }))
                .await
                .map_err(|s| vm_error(s, &id))?;
            Ok(())
        }
    })
    .await
}
