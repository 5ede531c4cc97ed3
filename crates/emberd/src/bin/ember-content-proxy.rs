//! `ember-content-proxy`: serves Ember's content store (a directory laid out like
//! containerd's) as `containerd.services.content.v1.Content` on a unix socket, for
//! use as a `[proxy_plugins]` content store (`type = "content"`) of emberd or
//! containerd. It keeps blobs and ingests only: namespaces, labels and leases are
//! the daemon's.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use ember_content::Store;
use emberd::services::content::Service;
use emberd::services::content_api::Blobs;

#[derive(Parser)]
#[command(name = "ember-content-proxy", version, about)]
struct Args {
    /// Directory holding the blobs and ingests.
    #[arg(long)]
    root: PathBuf,
    /// Unix socket to serve on.
    #[arg(long)]
    address: PathBuf,
    #[arg(long, default_value = "info")]
    log_level: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    emberd::proxy::init_logging(&args.log_level);
    let store = Store::open(&args.root)
        .with_context(|| format!("opening the content store at {}", args.root.display()))?;
    let service = Service::new(Arc::new(Blobs(Arc::new(store))));
    let mut routes = tonic::service::RoutesBuilder::default();
    routes.add_service(service.into_server());
    emberd::proxy::serve(&args.address, routes.routes()).await
}
