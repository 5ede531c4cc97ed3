//! `ember-snapshotter-proxy`: serves a local snapshotter (overlayfs, native or erofs) as
//! `containerd.services.snapshots.v1.Snapshots` on a unix socket, for use as a
//! `[proxy_plugins]` snapshotter of emberd or containerd.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, ValueEnum};
use ember_snapshot::erofs::{ErofsConfig, ErofsSnapshotter};
use ember_snapshot::local::{Driver, LocalSnapshotter};
use ember_snapshot::server::SnapshotsService;
use ember_snapshot::Snapshotter;

fn parse_size(s: &str) -> Result<u64, String> {
    ember_snapshot::erofs::parse_size(s)
        .filter(|s| *s >= 1 << 20)
        .ok_or_else(|| format!("{s:?} is not a size of at least 1M (e.g. 64G)"))
}

#[derive(Clone, Copy, ValueEnum)]
enum Kind {
    Overlayfs,
    Native,
    Erofs,
}

#[derive(Parser)]
#[command(name = "ember-snapshotter-proxy", version, about)]
struct Args {
    /// Directory holding the snapshots and their metadata.
    #[arg(long)]
    root: PathBuf,
    /// Unix socket to serve on.
    #[arg(long)]
    address: PathBuf,
    /// Which snapshotter to serve.
    #[arg(long = "type", value_enum, default_value = "native")]
    kind: Kind,
    /// erofs: the size of an active snapshot's sparse writable image.
    #[arg(long, default_value = "64G", value_parser = parse_size)]
    default_size: u64,
    #[arg(long, default_value = "info")]
    log_level: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(&args.log_level))
        .with_writer(std::io::stderr)
        .init();
    let open = |driver| {
        LocalSnapshotter::open(&args.root, driver)
            .map(|s| Arc::new(s) as Arc<dyn Snapshotter>)
            .with_context(|| format!("opening snapshotter at {}", args.root.display()))
    };
    let snapshotter = match args.kind {
        Kind::Overlayfs => open(Driver::Overlay)?,
        Kind::Native => open(Driver::Native)?,
        Kind::Erofs => {
            let config = ErofsConfig {
                default_size: args.default_size,
            };
            Arc::new(
                ErofsSnapshotter::open(&args.root, config)
                    .with_context(|| format!("opening snapshotter at {}", args.root.display()))?,
            )
        }
    };
    if let Some(dir) = args.address.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let _ = std::fs::remove_file(&args.address);
    let listener = tokio::net::UnixListener::bind(&args.address)
        .with_context(|| format!("binding {}", args.address.display()))?;
    tracing::info!(address = %args.address.display(), "serving snapshots");
    let service = SnapshotsService::new(snapshotter).into_server();
    let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing the SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    };
    tonic::transport::Server::builder()
        .add_service(service)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await?;
    let _ = std::fs::remove_file(&args.address);
    Ok(())
}
