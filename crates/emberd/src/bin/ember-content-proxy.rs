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
use emberd::proxy::ServeArgs;
use emberd::services::content::Service;
use emberd::services::content_api::Blobs;
use tonic::service::Routes;

#[derive(Parser)]
#[command(
    name = "ember-content-proxy",
    version,
    about = "Serves Ember's content store as containerd's Content service on a unix socket"
)]
struct Args {
    /// Directory holding the blobs and ingests.
    #[arg(long)]
    root: PathBuf,
    #[command(flatten)]
    serve: ServeArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    args.serve.init_logging();
    let store = Store::open(&args.root)
        .with_context(|| format!("opening the content store at {}", args.root.display()))?;
    let service = Service::new(Arc::new(Blobs(Arc::new(store))));
    args.serve.serve(Routes::new(service.into_server())).await
}
