//! `ember snapshots`.

use std::collections::BTreeMap;

use anyhow::Result;
use clap::Subcommand;
use containerd_client::services::v1::snapshots as api;
use containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient;
use containerd_client::tonic::transport::Channel;
use serde::Serialize;

use super::{human_size, output, parse_labels, rfc3339, rpc, time_of, ClientOpts};

#[derive(clap::Args, Debug)]
#[command(about = "Manage snapshots")]
pub struct SnapshotsArgs {
    /// Snapshotter to use.
    #[arg(
        long,
        short = 's',
        global = true,
        env = "EMBER_SNAPSHOTTER",
        default_value = "overlayfs"
    )]
    snapshotter: String,
    /// Without one: `ls`.
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// List snapshots with their real disk use and the containers on them,
    /// optionally filtered (`kind==Committed`, `parent==x`).
    #[command(alias = "list")]
    Ls { filters: Vec<String> },
    /// Make an active snapshot on top of an optional parent; prints its mounts.
    Prepare {
        key: String,
        parent: Option<String>,
        /// KEY=VALUE labels.
        #[arg(long = "label")]
        labels: Vec<String>,
        /// Print the mounts for this target.
        #[arg(long)]
        target: Option<String>,
    },
    /// Make a read-only view of a committed snapshot; prints its mounts.
    View {
        key: String,
        parent: String,
        #[arg(long = "label")]
        labels: Vec<String>,
        #[arg(long)]
        target: Option<String>,
    },
    /// Print the mount commands of a snapshot for TARGET.
    Mounts { target: String, key: String },
    /// Commit an active snapshot under a new name.
    Commit {
        name: String,
        key: String,
        #[arg(long = "label")]
        labels: Vec<String>,
    },
    /// Remove snapshots (children first).
    #[command(alias = "remove")]
    Rm {
        #[arg(required = true)]
        keys: Vec<String>,
    },
    /// Disk usage of one or all snapshots.
    Usage { key: Option<String> },
    /// Show snapshots as a tree of parents and children.
    Tree,
}

#[derive(Serialize)]
struct Snapshot {
    name: String,
    parent: String,
    kind: String,
    created_at: String,
    labels: BTreeMap<String, String>,
}

#[derive(Serialize)]
struct Usage {
    key: String,
    size: i64,
    inodes: i64,
}

#[derive(Serialize)]
struct Mount {
    r#type: String,
    source: String,
    options: Vec<String>,
}

fn kind(k: i32) -> String {
    match api::Kind::try_from(k) {
        Ok(api::Kind::View) => "View",
        Ok(api::Kind::Active) => "Active",
        Ok(api::Kind::Committed) => "Committed",
        _ => "Unknown",
    }
    .into()
}

async fn list(
    c: &mut SnapshotsClient<Channel>,
    opts: &ClientOpts,
    snapshotter: &str,
    filters: Vec<String>,
) -> Result<Vec<Snapshot>> {
    let mut stream = c
        .list(opts.req(api::ListSnapshotsRequest {
            snapshotter: snapshotter.into(),
            filters,
        }))
        .await
        .map_err(rpc)?
        .into_inner();
    let mut out = Vec::new();
    while let Some(batch) = stream.message().await.map_err(rpc)? {
        out.extend(batch.info.into_iter().map(|i| Snapshot {
            name: i.name,
            parent: i.parent,
            kind: kind(i.kind),
            created_at: rfc3339(time_of(&i.created_at)),
            labels: i.labels.into_iter().collect(),
        }));
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

fn print_mounts(
    opts: &ClientOpts,
    mounts: Vec<containerd_client::types::Mount>,
    target: &str,
) -> Result<()> {
    if opts.json {
        let m: Vec<Mount> = mounts
            .into_iter()
            .map(|m| Mount {
                r#type: m.r#type,
                source: m.source,
                options: m.options,
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&m)?);
        return Ok(());
    }
    for m in mounts {
        let mut line = format!("mount -t {} {} {}", m.r#type, m.source, target);
        if !m.options.is_empty() {
            line.push_str(&format!(" -o {}", m.options.join(",")));
        }
        println!("{line}");
    }
    Ok(())
}

fn print_tree(all: &[Snapshot], parent: &str, depth: usize) {
    for s in all.iter().filter(|s| s.parent == parent) {
        if depth == 0 {
            println!(" {}", s.name);
        } else {
            println!("{}\\_ {}", "  ".repeat(depth), s.name);
        }
        print_tree(all, &s.name, depth + 1);
    }
}

pub async fn run(opts: &ClientOpts, a: SnapshotsArgs) -> Result<i32> {
    let mut c = SnapshotsClient::new(opts.channel().await?);
    let sn = a.snapshotter;
    match a.cmd.unwrap_or(Cmd::Ls { filters: vec![] }) {
        Cmd::Ls { filters } => super::snapshot_list::ls(opts, &sn, filters).await?,
        Cmd::Prepare {
            key,
            parent,
            labels,
            target,
        } => {
            let r = c
                .prepare(opts.req(api::PrepareSnapshotRequest {
                    snapshotter: sn,
                    key,
                    parent: parent.unwrap_or_default(),
                    labels: parse_labels(&labels)?,
                }))
                .await
                .map_err(rpc)?
                .into_inner();
            if let Some(t) = target {
                print_mounts(opts, r.mounts, &t)?;
            }
        }
        Cmd::View {
            key,
            parent,
            labels,
            target,
        } => {
            let r = c
                .view(opts.req(api::ViewSnapshotRequest {
                    snapshotter: sn,
                    key,
                    parent,
                    labels: parse_labels(&labels)?,
                }))
                .await
                .map_err(rpc)?
                .into_inner();
            if let Some(t) = target {
                print_mounts(opts, r.mounts, &t)?;
            }
        }
        Cmd::Mounts { target, key } => {
            let r = c
                .mounts(opts.req(api::MountsRequest {
                    snapshotter: sn,
                    key,
                }))
                .await
                .map_err(rpc)?
                .into_inner();
            print_mounts(opts, r.mounts, &target)?;
        }
        Cmd::Commit { name, key, labels } => {
            c.commit(opts.req(api::CommitSnapshotRequest {
                snapshotter: sn,
                name,
                key,
                labels: parse_labels(&labels)?,
            }))
            .await
            .map_err(rpc)?;
        }
        Cmd::Rm { keys } => {
            let mut failed = 0;
            for key in keys {
                match c
                    .remove(opts.req(api::RemoveSnapshotRequest {
                        snapshotter: sn.clone(),
                        key: key.clone(),
                    }))
                    .await
                {
                    Ok(_) => println!("{key}"),
                    Err(e) => {
                        eprintln!("ember: {key}: {}", e.message());
                        failed += 1;
                    }
                }
            }
            return Ok(i32::from(failed > 0));
        }
        Cmd::Usage { key } => {
            let keys = match key {
                Some(k) => vec![k],
                None => list(&mut c, opts, &sn, vec![])
                    .await?
                    .into_iter()
                    .map(|s| s.name)
                    .collect(),
            };
            let mut usages = Vec::new();
            for key in keys {
                let u = c
                    .usage(opts.req(api::UsageRequest {
                        snapshotter: sn.clone(),
                        key: key.clone(),
                    }))
                    .await
                    .map_err(rpc)?
                    .into_inner();
                usages.push(Usage {
                    key,
                    size: u.size,
                    inodes: u.inodes,
                });
            }
            output(opts, &usages, &["KEY", "SIZE", "INODES"], |u| {
                vec![u.key.clone(), human_size(u.size), u.inodes.to_string()]
            })?;
        }
        Cmd::Tree => {
            let all = list(&mut c, opts, &sn, vec![]).await?;
            if opts.json {
                println!("{}", serde_json::to_string_pretty(&all)?);
            } else {
                print_tree(&all, "", 0);
            }
        }
    }
    Ok(0)
}
