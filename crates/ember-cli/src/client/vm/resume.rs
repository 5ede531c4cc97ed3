//! `ember vm resume`: lets paused VMs run again (ResumeVM).

use anyhow::Result;
use ember_vm_api::fc::ResumeVmRequest;

use super::{each, vm_error, VmConn};
use crate::client::ClientOpts;

#[derive(clap::Args, Debug)]
#[command(about = "Resume paused microVMs")]
pub struct ResumeArgs {
    #[arg(required = true)]
    ids: Vec<String>,
}

pub async fn run(opts: &ClientOpts, a: ResumeArgs) -> Result<i32> {
    let conn = VmConn::new(opts).await?;
    each(a.ids, |id| {
        let conn = &conn;
        async move {
            conn.fc()
                .resume_vm(conn.req(ResumeVmRequest { vmid: id.clone() }))
                .await
                .map_err(|s| vm_error(s, &id))?;
            Ok(())
        }
    })
    .await
}
