//! `ember content`.

use std::io::Write;

use anyhow::Result;
use clap::Subcommand;
use containerd_client::services::v1 as api;
use containerd_client::services::v1::content_client::ContentClient;
use serde::Serialize;

use super::{age, human_size, labels_cell, output, rfc3339, rpc, time_of, ClientOpts};

#[derive(clap::Args, Debug)]
#[command(about = "Manage content (blobs)")]
pub struct ContentArgs {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// List blobs, optionally filtered (`labels.KEY==VALUE`, `digest~=^sha256:ab`).
    #[command(alias = "list")]
    Ls {
        /// Print digests only.
        #[arg(short, long)]
        quiet: bool,
        filters: Vec<String>,
    },
    /// Write a blob to standard output.
    Get { digest: String },
    /// Remove blobs from the namespace.
    #[command(alias = "remove")]
    Rm {
        #[arg(required = true)]
        digests: Vec<String>,
    },
}

#[derive(Serialize)]
struct Blob {
    digest: String,
    size: i64,
    created_at: String,
    #[serde(skip)]
    age: String,
    labels: std::collections::BTreeMap<String, String>,
}

pub async fn run(opts: &ClientOpts, a: ContentArgs) -> Result<i32> {
    let mut c = ContentClient::new(opts.channel().await?);
    match a.cmd {
        Cmd::Ls { quiet, filters } => {
            let mut stream = c
                .list(opts.req(api::ListContentRequest { filters }))
                .await
                .map_err(rpc)?
                .into_inner();
            let mut blobs = Vec::new();
            while let Some(batch) = stream.message().await.map_err(rpc)? {
                blobs.extend(batch.info.into_iter().map(|i| Blob {
                    digest: i.digest,
                    size: i.size,
                    created_at: rfc3339(time_of(&i.created_at)),
                    age: age(time_of(&i.created_at)),
                    labels: i.labels.into_iter().collect(),
                }));
            }
            if quiet && !opts.json {
                for b in &blobs {
                    println!("{}", b.digest);
                }
                return Ok(0);
            }
            output(opts, &blobs, &["DIGEST", "SIZE", "AGE", "LABELS"], |b| {
                vec![
                    b.digest.clone(),
                    human_size(b.size),
                    b.age.clone(),
                    labels_cell(&b.labels),
                ]
            })?;
        }
        Cmd::Get { digest } => {
            let mut stream = c
                .read(opts.req(api::ReadContentRequest {
                    digest,
                    offset: 0,
                    size: 0,
                }))
                .await
                .map_err(rpc)?
                .into_inner();
            let stdout = std::io::stdout();
            let mut out = stdout.lock();
            while let Some(chunk) = stream.message().await.map_err(rpc)? {
                out.write_all(&chunk.data)?;
            }
            out.flush()?;
        }
        Cmd::Rm { digests } => {
            let mut failed = 0;
            for digest in digests {
                match c
                    .delete(opts.req(api::DeleteContentRequest {
                        digest: digest.clone(),
                    }))
                    .await
                {
                    Ok(_) => println!("{digest}"),
                    Err(e) => {
                        eprintln!("ember: {digest}: {}", e.message());
                        failed += 1;
                    }
                }
            }
            return Ok(i32::from(failed > 0));
        }
    }
    Ok(0)
}
