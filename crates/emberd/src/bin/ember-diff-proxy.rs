//! `ember-diff-proxy`: serves Ember's differ (`ember-diff`) as
//! `containerd.services.diff.v1.Diff` on a unix socket, for use as a
//! `[proxy_plugins]` differ (`type = "diff"`) of emberd or containerd. Layers are
//! read from and written to the daemon's own content service (`--content`), in
//! the namespace and under the lease of each request.

use std::path::PathBuf;
use std::sync::Arc;

use clap::Parser;
use ember_content::remote::RemoteStore;
use emberd::grpc::diff::diff_server::DiffServer;
use emberd::proxy::ServeArgs;
use emberd::services::content_api::DaemonContent;
use emberd::services::diff::Service;
use tonic::service::Routes;

#[derive(Parser)]
#[command(
    name = "ember-diff-proxy",
    version,
    about = "Serves Ember's differ as containerd's Diff service on a unix socket"
)]
struct Args {
    #[command(flatten)]
    serve: ServeArgs,
    /// The daemon's socket, whose content service holds the layers.
    #[arg(long)]
    content: PathBuf,
    /// Directory for temporary mounts.
    #[arg(long, default_value = "/run/ember-diff-proxy")]
    state: PathBuf,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    args.serve.init_logging();
    std::fs::create_dir_all(&args.state)?;
    let content = RemoteStore::new("daemon", &args.content)?;
    let service = Service::new(Arc::new(DaemonContent(content)), args.state.join("mounts"));
    args.serve
        .serve(Routes::new(DiffServer::new(service)))
        .await
}
