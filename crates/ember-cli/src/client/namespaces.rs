//! `ember namespaces`.

use anyhow::Result;
use clap::Subcommand;
use containerd_client::services::v1 as api;
use containerd_client::services::v1::namespaces_client::NamespacesClient;
use serde::Serialize;

use super::{labels_cell, output, parse_labels, rpc, ClientOpts};

#[derive(clap::Args, Debug)]
#[command(about = "Manage namespaces")]
pub struct NamespacesArgs {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// List namespaces.
    #[command(alias = "list")]
    Ls,
    /// Create a namespace with optional KEY=VALUE labels.
    Create { name: String, labels: Vec<String> },
    /// Remove namespaces (they must be empty).
    #[command(alias = "remove")]
    Rm {
        #[arg(required = true)]
        names: Vec<String>,
    },
}

#[derive(Serialize)]
struct Namespace {
    name: String,
    labels: std::collections::BTreeMap<String, String>,
}

pub async fn run(opts: &ClientOpts, a: NamespacesArgs) -> Result<i32> {
    let mut c = NamespacesClient::new(opts.channel().await?);
    match a.cmd {
        Cmd::Ls => {
            let r = c
                .list(api::ListNamespacesRequest::default())
                .await
                .map_err(rpc)?
                .into_inner();
            let mut list: Vec<Namespace> = r
                .namespaces
                .into_iter()
                .map(|n| Namespace {
                    name: n.name,
                    labels: n.labels.into_iter().collect(),
                })
                .collect();
            list.sort_by(|a, b| a.name.cmp(&b.name));
            output(opts, &list, &["NAME", "LABELS"], |n| {
                vec![n.name.clone(), labels_cell(&n.labels)]
            })?;
        }
        Cmd::Create { name, labels } => {
            c.create(api::CreateNamespaceRequest {
                namespace: Some(api::Namespace {
                    name,
                    labels: parse_labels(&labels)?,
                }),
            })
            .await
            .map_err(rpc)?;
        }
        Cmd::Rm { names } => {
            let mut failed = 0;
            for name in names {
                match c
                    .delete(api::DeleteNamespaceRequest { name: name.clone() })
                    .await
                {
                    Ok(_) => println!("{name}"),
                    Err(e) => {
                        eprintln!("ember: {name}: {}", e.message());
                        failed += 1;
                    }
                }
            }
            return Ok(i32::from(failed > 0));
        }
    }
    Ok(0)
}
