//! `ember leases`.

use std::time::{Duration, SystemTime};

use anyhow::{bail, Result};
use clap::Subcommand;
use containerd_client::services::v1 as api;
use containerd_client::services::v1::leases_client::LeasesClient;
use serde::Serialize;

use super::{labels_cell, output, parse_labels, rfc3339, rpc, time_of, ClientOpts};

#[derive(clap::Args, Debug)]
#[command(about = "Manage leases")]
pub struct LeasesArgs {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// List leases, optionally filtered (`id==x`, `labels.KEY==VALUE`).
    #[command(alias = "list")]
    Ls { filters: Vec<String> },
    /// Create a lease; prints its id.
    Create {
        /// Lease id (the daemon picks one when absent).
        #[arg(long)]
        id: Option<String>,
        /// Expiry, like `30s`, `15m`, `24h`; `0` never expires.
        #[arg(long, short = 'x', default_value = "24h")]
        expires: String,
        /// KEY=VALUE labels.
        labels: Vec<String>,
    },
    /// Delete leases.
    #[command(alias = "remove")]
    Rm {
        #[arg(required = true)]
        ids: Vec<String>,
    },
}

#[derive(Serialize)]
struct Lease {
    id: String,
    created_at: String,
    labels: std::collections::BTreeMap<String, String>,
}

fn parse_duration(s: &str) -> Result<Duration> {
    let (num, unit) = s.split_at(s.trim_end_matches(char::is_alphabetic).len());
    let n: u64 = num
        .parse()
        .map_err(|_| anyhow::anyhow!("bad duration {s:?}"))?;
    let secs = match unit {
        "" if n == 0 => 0,
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86400,
        _ => bail!("bad duration {s:?} (use s, m, h or d)"),
    };
    Ok(Duration::from_secs(secs))
}

pub async fn run(opts: &ClientOpts, a: LeasesArgs) -> Result<i32> {
    let mut c = LeasesClient::new(opts.channel().await?);
    match a.cmd {
        Cmd::Ls { filters } => {
            let r = c
                .list(opts.req(api::ListRequest { filters }))
                .await
                .map_err(rpc)?
                .into_inner();
            let leases: Vec<Lease> = r
                .leases
                .into_iter()
                .map(|l| Lease {
                    id: l.id,
                    created_at: rfc3339(time_of(&l.created_at)),
                    labels: l.labels.into_iter().collect(),
                })
                .collect();
            output(opts, &leases, &["ID", "CREATED AT", "LABELS"], |l| {
                vec![l.id.clone(), l.created_at.clone(), labels_cell(&l.labels)]
            })?;
        }
        Cmd::Create {
            id,
            expires,
            labels,
        } => {
            let mut labels = parse_labels(&labels)?;
            let ttl = parse_duration(&expires)?;
            if !ttl.is_zero() {
                labels.insert(
                    "containerd.io/gc.expire".into(),
                    rfc3339(Some(SystemTime::now() + ttl)),
                );
            }
            let l = c
                .create(opts.req(api::CreateRequest {
                    id: id.unwrap_or_default(),
                    labels,
                }))
                .await
                .map_err(rpc)?
                .into_inner()
                .lease
                .unwrap_or_default();
            println!("{}", l.id);
        }
        Cmd::Rm { ids } => {
            let mut failed = 0;
            for id in ids {
                match c
                    .delete(opts.req(api::DeleteRequest {
                        id: id.clone(),
                        sync: false,
                    }))
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
