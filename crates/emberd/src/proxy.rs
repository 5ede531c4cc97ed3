//! Proxy plugins: snapshotters, content stores and differs served by other
//! processes on unix sockets (`[proxy_plugins.NAME]` with `type = "snapshot"`,
//! `"content"` or `"diff"`), and serving Ember's own stores that way.
//!
//! A content proxy becomes the blob store under the metadata plugin, which keeps
//! recording content per namespace on top of it. A differ proxy is used by the
//! diff service when it heads the service's list of differs:
//!
//! ```toml
//! [plugins."io.containerd.service.v1.diff-service"]
//!   default = ["remote"]
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use containerd_client::services::v1 as wire;
use containerd_client::services::v1::diff_client::DiffClient;
use ember_content::remote::RemoteStore;
use ember_snapshot::proxy::ProxySnapshotter;
use serde::Deserialize;
use tokio::sync::OnceCell;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use crate::config::{plugin_section, Config};
use crate::daemon::{ContentPlugin, SnapshotterPlugin};
use crate::grpc::diff::diff_server::Diff;
use crate::plugin::{InitContext, InitError, Instance, Registration, CONTENT, DIFFER, SNAPSHOTTER};
use crate::services::{LEASE_HEADER, NAMESPACE_HEADER};

/// The built-in differ's name in the diff service's list.
pub const BUILTIN_DIFFER: &str = "walking";

/// A registration for each configured proxy plugin.
pub fn registrations(config: &Config) -> Vec<Registration> {
    let mut regs = Vec::new();
    for (name, proxy) in &config.proxy_plugins {
        let address = proxy.address.clone();
        let id = name.clone();
        let exports = move |ctx: &mut InitContext, address: &Path| {
            ctx.exports
                .insert("address".into(), address.display().to_string());
        };
        let reg = match proxy.kind.as_str() {
            "snapshot" => Registration::new(SNAPSHOTTER, name.clone(), &[], move |ctx| {
                exports(ctx, &address);
                Ok(Arc::new(SnapshotterPlugin(Arc::new(ProxySnapshotter::new(
                    id, address,
                )))) as Instance)
            }),
            "content" => Registration::new(CONTENT, name.clone(), &[], move |ctx| {
                exports(ctx, &address);
                let store = RemoteStore::new(id, address)?;
                Ok(Arc::new(ContentPlugin(Arc::new(store))) as Instance)
            }),
            "diff" => Registration::new(DIFFER, name.clone(), &[], move |ctx| {
                exports(ctx, &address);
                Ok(Arc::new(RemoteDiffer::new(id, address)) as Instance)
            }),
            // Refused when the configuration is read.
            _ => continue,
        };
        regs.push(reg);
    }
    regs
}

#[derive(Deserialize)]
#[serde(default)]
struct DiffServiceConfig {
    /// Differs by name, the first usable one applies and computes layers.
    default: Vec<String>,
}

impl Default for DiffServiceConfig {
    fn default() -> Self {
        DiffServiceConfig {
            default: vec![BUILTIN_DIFFER.into()],
        }
    }
}

/// The differ the diff service is to forward to, or `None` for the built-in one.
pub fn selected_differ(ctx: &mut InitContext) -> Result<Option<RemoteDiffer>, InitError> {
    let cfg: DiffServiceConfig = plugin_section(
        ctx.config
            .plugin("io.containerd.service.v1", "diff-service"),
    )?;
    let Some(first) = cfg.default.first() else {
        return Err(InitError::Failed("the diff service lists no differ".into()));
    };
    if first == BUILTIN_DIFFER {
        return Ok(None);
    }
    let d = ctx
        .registry
        .get::<RemoteDiffer>(DIFFER, first)
        .map_err(|e| InitError::Failed(format!("differ {first:?}: {e}")))?;
    ctx.exports.insert("differ".into(), first.clone());
    Ok(Some((*d).clone()))
}

/// A differ behind a socket: `Apply` and `Diff` are forwarded with the caller's
/// namespace and lease.
#[derive(Clone)]
pub struct RemoteDiffer {
    name: String,
    address: PathBuf,
    channel: Arc<OnceCell<Channel>>,
}

impl RemoteDiffer {
    pub fn new(name: impl Into<String>, address: impl Into<PathBuf>) -> Self {
        RemoteDiffer {
            name: name.into(),
            address: address.into(),
            channel: Arc::new(OnceCell::new()),
        }
    }

    fn unavailable(&self, e: impl std::fmt::Display) -> Status {
        Status::unavailable(format!(
            "differ {} at {}: {e}",
            self.name,
            self.address.display()
        ))
    }

    async fn client(&self) -> Result<DiffClient<Channel>, Status> {
        let ch = tokio::time::timeout(
            CONNECT_TIMEOUT,
            self.channel
                .get_or_try_init(|| containerd_client::connect(&self.address)),
        )
        .await
        .map_err(|_| self.unavailable("connecting timed out"))?
        .map_err(|e| self.unavailable(format!("connecting: {e}")))?;
        Ok(DiffClient::new(ch.clone()))
    }

    /// The request to send: the message with the caller's namespace and lease.
    fn forward<T, U>(&self, from: &Request<T>, msg: U) -> Request<U> {
        let mut r = Request::new(msg);
        for h in [NAMESPACE_HEADER, LEASE_HEADER] {
            if let Some(v) = from.metadata().get(h) {
                r.metadata_mut().insert(h, v.clone());
            }
        }
        r
    }

    /// A server that went away is `Unavailable`, whatever the transport says.
    fn remote_status(&self, s: Status) -> Status {
        match s.code() {
            tonic::Code::Unavailable => self.unavailable(s.message()),
            tonic::Code::Unknown | tonic::Code::Cancelled if s.metadata().is_empty() => {
                self.unavailable(s.message())
            }
            _ => s,
        }
    }
}

const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

#[tonic::async_trait]
impl Diff for RemoteDiffer {
    async fn apply(
        &self,
        r: Request<wire::ApplyRequest>,
    ) -> Result<Response<wire::ApplyResponse>, Status> {
        let req = self.forward(&r, r.get_ref().clone());
        let resp = self.client().await?.apply(req).await;
        resp.map_err(|s| self.remote_status(s))
    }

    async fn diff(
        &self,
        r: Request<wire::DiffRequest>,
    ) -> Result<Response<wire::DiffResponse>, Status> {
        let req = self.forward(&r, r.get_ref().clone());
        let resp = self.client().await?.diff(req).await;
        resp.map_err(|s| self.remote_status(s))
    }
}

/// The command line every proxy plugin server shares: where to serve, how much to log.
#[derive(clap::Args)]
pub struct ServeArgs {
    /// Unix socket to serve on.
    #[arg(long)]
    pub address: PathBuf,
    #[arg(long, default_value = "info")]
    pub log_level: String,
}

impl ServeArgs {
    /// Logs to stderr at the `--log-level` (an env-filter directive).
    pub fn init_logging(&self) {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(&self.log_level))
            .with_writer(std::io::stderr)
            .init();
    }

    /// Serves `routes` on the `--address` (see [`serve`]).
    pub async fn serve(&self, routes: tonic::service::Routes) -> anyhow::Result<()> {
        serve(&self.address, routes).await
    }
}

/// Serves `routes` on the unix socket `address` until SIGTERM or SIGINT: what the
/// proxy servers (`ember-content-proxy`, `ember-diff-proxy`) run.
async fn serve(address: &Path, routes: tonic::service::Routes) -> anyhow::Result<()> {
    if let Some(dir) = address.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let _ = std::fs::remove_file(address);
    let listener = tokio::net::UnixListener::bind(address)
        .with_context(|| format!("binding {}", address.display()))?;
    tracing::info!(address = %address.display(), "serving");
    let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
    let served = tonic::transport::Server::builder()
        .add_routes(routes)
        .serve_with_incoming_shutdown(incoming, crate::daemon::shutdown_signal())
        .await;
    let _ = std::fs::remove_file(address);
    served.context("serving gRPC")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugin::{init_all, GRPC};

    /// What the diff service would forward to, for a configuration.
    fn differ_of(text: &str) -> Result<Option<String>, String> {
        let config = Config::parse(text).unwrap();
        let mut regs = registrations(&config);
        regs.push(Registration::new(GRPC, "diff", &[DIFFER], |ctx| {
            let d = selected_differ(ctx)?;
            Ok(Arc::new(d.map(|d| d.name)) as Instance)
        }));
        let r = init_all(&config, regs);
        r.get::<Option<String>>(GRPC, "diff").map(|d| (*d).clone())
    }

    #[test]
    fn the_diff_service_list_selects_the_differ() {
        let proxies = "[proxy_plugins.layers]\ntype = \"diff\"\naddress = \"/x.sock\"\n";
        assert_eq!(differ_of(proxies).unwrap(), None);
        let chosen = format!(
            "{proxies}[plugins.\"io.containerd.service.v1.diff-service\"]\ndefault = [\"layers\", \"walking\"]\n"
        );
        assert_eq!(differ_of(&chosen).unwrap().as_deref(), Some("layers"));
        let missing = format!(
            "{proxies}[plugins.\"io.containerd.service.v1.diff-service\"]\ndefault = [\"other\"]\n"
        );
        let e = differ_of(&missing).unwrap_err();
        assert!(
            e.contains("differ \"other\"") && e.contains("not loaded"),
            "{e}"
        );
        let empty = "[plugins.\"io.containerd.service.v1.diff-service\"]\ndefault = []\n";
        assert!(differ_of(empty).unwrap_err().contains("no differ"));
    }
}
