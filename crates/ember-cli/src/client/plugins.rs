//! `ember plugins`.

use anyhow::Result;
use containerd_client::services::v1::introspection_client::IntrospectionClient;
use containerd_client::services::v1::PluginsRequest;
use serde::Serialize;

use super::{output, rpc, ClientOpts};

#[derive(clap::Args, Debug)]
#[command(about = "List the daemon's plugins and their state")]
pub struct PluginsArgs {
    /// Filters (`type==io.containerd.snapshotter.v1`, `id==overlayfs`).
    filters: Vec<String>,
}

#[derive(Serialize)]
struct Plugin {
    r#type: String,
    id: String,
    platforms: Vec<String>,
    status: String,
    error: Option<String>,
    exports: std::collections::BTreeMap<String, String>,
}

pub async fn run(opts: &ClientOpts, a: PluginsArgs) -> Result<i32> {
    let resp = IntrospectionClient::new(opts.channel().await?)
        .plugins(PluginsRequest { filters: a.filters })
        .await
        .map_err(rpc)?
        .into_inner();
    let plugins: Vec<Plugin> = resp
        .plugins
        .into_iter()
        .map(|p| {
            let status = match &p.init_err {
                None => "ok",
                // FailedPrecondition: not usable on this host.
                Some(e) if e.code == 9 => "skip",
                Some(_) => "error",
            };
            Plugin {
                r#type: p.r#type,
                id: p.id,
                platforms: p
                    .platforms
                    .iter()
                    .map(|pl| format!("{}/{}", pl.os, pl.architecture))
                    .collect(),
                status: status.into(),
                error: p.init_err.map(|e| e.message),
                exports: p.exports.into_iter().collect(),
            }
        })
        .collect();
    output(
        opts,
        &plugins,
        &["TYPE", "ID", "PLATFORMS", "STATUS"],
        |p| {
            let platforms = if p.platforms.is_empty() {
                "-".to_string()
            } else {
                p.platforms.join(",")
            };
            let status = match &p.error {
                Some(e) => format!("{} ({e})", p.status),
                None => p.status.clone(),
            };
            vec![p.r#type.clone(), p.id.clone(), platforms, status]
        },
    )?;
    Ok(0)
}
