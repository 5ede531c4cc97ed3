//! `ember containers`: container records (no tasks yet).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Subcommand;
use containerd_client::services::v1 as api;
use containerd_client::services::v1::containers_client::ContainersClient;
use serde::Serialize;

use super::{labels_cell, output, parse_labels, rfc3339, rpc, time_of, ClientOpts};

/// The type URL containerd gives OCI runtime specs.
const SPEC_TYPE: &str = "types.containerd.io/opencontainers/runtime-spec/1/Spec";

#[derive(clap::Args, Debug)]
#[command(about = "Manage containers (metadata only)")]
pub struct ContainersArgs {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Create a container record.
    Create {
        id: String,
        /// Image reference recorded with the container.
        #[arg(long, default_value = "")]
        image: String,
        /// Runtime name.
        #[arg(long, default_value = "io.containerd.ember.v2")]
        runtime: String,
        /// OCI runtime spec (JSON file); a minimal one when absent.
        #[arg(long)]
        spec: Option<PathBuf>,
        #[arg(long, default_value = "")]
        snapshotter: String,
        #[arg(long, default_value = "")]
        snapshot_key: String,
        /// KEY=VALUE labels.
        #[arg(long = "label")]
        labels: Vec<String>,
    },
    /// List containers, optionally filtered (`image==...`, `labels.KEY==VALUE`).
    #[command(alias = "list")]
    Ls {
        #[arg(short, long)]
        quiet: bool,
        filters: Vec<String>,
    },
    /// Show one container as JSON.
    Info { id: String },
    /// Delete containers.
    #[command(alias = "remove")]
    Rm {
        #[arg(required = true)]
        ids: Vec<String>,
    },
}

#[derive(Serialize)]
struct Container {
    id: String,
    image: String,
    runtime: String,
    snapshotter: String,
    snapshot_key: String,
    labels: std::collections::BTreeMap<String, String>,
    created_at: String,
    updated_at: String,
    spec: Option<serde_json::Value>,
    extensions: Vec<String>,
}

fn convert(c: api::Container) -> Container {
    let spec = c.spec.as_ref().map(|s| {
        serde_json::from_slice(&s.value).unwrap_or_else(
            |_| serde_json::json!({ "type_url": s.type_url, "bytes": s.value.len() }),
        )
    });
    Container {
        id: c.id,
        image: c.image,
        runtime: c.runtime.map(|r| r.name).unwrap_or_default(),
        snapshotter: c.snapshotter,
        snapshot_key: c.snapshot_key,
        labels: c.labels.into_iter().collect(),
        created_at: rfc3339(time_of(&c.created_at)),
        updated_at: rfc3339(time_of(&c.updated_at)),
        spec,
        extensions: c.extensions.into_keys().collect(),
    }
}

fn default_spec() -> serde_json::Value {
    serde_json::json!({
        "ociVersion": "1.0.2",
        "process": { "args": ["sh"], "cwd": "/", "env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"] },
        "root": { "path": "rootfs" },
        "linux": { "namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}] }
    })
}

pub async fn run(opts: &ClientOpts, a: ContainersArgs) -> Result<i32> {
    let mut c = ContainersClient::new(opts.channel().await?);
    match a.cmd {
        Cmd::Create {
            id,
            image,
            runtime,
            spec,
            snapshotter,
            snapshot_key,
            labels,
        } => {
            let spec = match spec {
                Some(p) => {
                    let text =
                        std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?;
                    serde_json::from_slice::<serde_json::Value>(&text)
                        .with_context(|| format!("{} is not JSON", p.display()))?;
                    text
                }
                None => serde_json::to_vec(&default_spec())?,
            };
            let created = c
                .create(opts.req(api::CreateContainerRequest {
                    container: Some(api::Container {
                        id,
                        labels: parse_labels(&labels)?,
                        image,
                        runtime: Some(api::container::Runtime {
                            name: runtime,
                            options: None,
                        }),
                        spec: Some(prost_types::Any {
                            type_url: SPEC_TYPE.into(),
                            value: spec,
                        }),
                        snapshotter,
                        snapshot_key,
                        ..Default::default()
                    }),
                }))
                .await
                .map_err(rpc)?
                .into_inner();
            if let Some(c) = created.container {
                println!("{}", c.id);
            }
        }
        Cmd::Ls { quiet, filters } => {
            let r = c
                .list(opts.req(api::ListContainersRequest { filters }))
                .await
                .map_err(rpc)?
                .into_inner();
            let list: Vec<Container> = r.containers.into_iter().map(convert).collect();
            if quiet && !opts.json {
                for c in &list {
                    println!("{}", c.id);
                }
                return Ok(0);
            }
            output(
                opts,
                &list,
                &["CONTAINER", "IMAGE", "RUNTIME", "LABELS"],
                |c| {
                    let image = if c.image.is_empty() { "-" } else { &c.image };
                    vec![
                        c.id.clone(),
                        image.to_string(),
                        c.runtime.clone(),
                        labels_cell(&c.labels),
                    ]
                },
            )?;
        }
        Cmd::Info { id } => {
            let r = c
                .get(opts.req(api::GetContainerRequest { id }))
                .await
                .map_err(rpc)?
                .into_inner();
            let c = convert(r.container.unwrap_or_default());
            println!("{}", serde_json::to_string_pretty(&c)?);
        }
        Cmd::Rm { ids } => {
            let mut failed = 0;
            for id in ids {
                match c
                    .delete(opts.req(api::DeleteContainerRequest { id: id.clone() }))
                    .await
                {
                    Ok(_) => println!("{id}"),
                    Err(e) => {
                        eprintln!("ember: {id}: {}", e.message());
                        failed += 1;
                    }
                }
            }
            return Ok(i32::from(failed > 0));
        }
    }
    Ok(0)
}
