//! `ember version`.

use anyhow::Result;
use containerd_client::services::v1::version_client::VersionClient;
use serde::Serialize;

use super::{rpc, ClientOpts};

#[derive(clap::Args, Debug)]
#[command(about = "Show the client's and the daemon's versions")]
pub struct VersionArgs {}

#[derive(Serialize)]
struct Versions {
    client: String,
    server_version: String,
    server_revision: String,
}

pub async fn run(opts: &ClientOpts, _a: VersionArgs) -> Result<i32> {
    let v = VersionClient::new(opts.channel().await?)
        .version(())
        .await
        .map_err(rpc)?
        .into_inner();
    let out = Versions {
        client: env!("CARGO_PKG_VERSION").to_string(),
        server_version: v.version,
        server_revision: v.revision,
    };
    if opts.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!("Client:\n  Version:  v{}", out.client);
        println!(
            "Server:\n  Version:  {}\n  Revision: {}",
            out.server_version, out.server_revision
        );
    }
    Ok(0)
}
