//! The daemon: built-in plugins, plugin initialisation, and the gRPC server on a
//! unix socket.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use ember_content::{Backend, Store};
use ember_metadata::content::ContentStore;
use ember_metadata::snapshots::SnapshotStore;
use ember_metadata::Db;
use ember_snapshot::local::{Driver, LocalSnapshotter};
use ember_snapshot::Snapshotter;
use serde::Deserialize;
use tonic::service::RoutesBuilder;

use crate::config::{parse_duration, plugin_section, Config};
use crate::events::Exchange;
use crate::metrics::Metrics;
use crate::plugin::{
    self, init_all, InitError, Instance, Registration, Registry, CONTENT, EVENT, GRPC, METADATA,
    RUNTIME, SNAPSHOTTER,
};
use crate::runtime::TaskManager;
use crate::services::{self, GrpcService};

/// What the introspection service reports about the daemon's plugins.
#[derive(Debug, Clone)]
pub struct PluginSummary {
    pub plugin_type: String,
    pub id: String,
    pub requires: Vec<String>,
    pub exports: BTreeMap<String, String>,
    pub capabilities: Vec<String>,
    pub error: Option<String>,
    pub skipped: bool,
}

/// Facts about the running daemon, filled in once the plugins are up.
#[derive(Default)]
pub struct DaemonInfo {
    plugins: OnceLock<Vec<PluginSummary>>,
}

impl DaemonInfo {
    pub fn plugins(&self) -> &[PluginSummary] {
        self.plugins.get().map(Vec::as_slice).unwrap_or(&[])
    }
}

/// A snapshotter plugin's instance.
pub struct SnapshotterPlugin(pub Arc<dyn Snapshotter>);

/// A content plugin's instance: a blob store, local or behind a proxy socket.
pub struct ContentPlugin(pub Arc<dyn Backend>);

/// The metadata plugin's instance: the database and the namespaced stores.
pub struct Metadata {
    pub db: Db,
    pub content: ContentStore,
    pub snapshotters: BTreeMap<String, SnapshotStore>,
    pub gc: crate::gc::Gc,
}

impl Metadata {
    pub fn snapshotter(&self, name: &str) -> Result<&SnapshotStore, tonic::Status> {
        let name = if name.is_empty() { "overlayfs" } else { name };
        self.snapshotters.get(name).ok_or_else(|| {
            tonic::Status::invalid_argument(format!(
                "snapshotter not loaded: {name}: invalid argument"
            ))
        })
    }
}

#[derive(Deserialize)]
#[serde(default)]
struct ContentConfig {
    /// Ingests not written to for this long are removed.
    stale_ingest_expiry: String,
}

impl Default for ContentConfig {
    fn default() -> Self {
        ContentConfig {
            stale_ingest_expiry: "24h".into(),
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct SnapshotterConfig {
    root_path: String,
}

fn snapshotter_root(ctx: &crate::plugin::InitContext) -> Result<PathBuf, InitError> {
    let cfg: SnapshotterConfig = plugin_section(ctx.section)?;
    Ok(if cfg.root_path.is_empty() {
        ctx.root.clone()
    } else {
        PathBuf::from(cfg.root_path)
    })
}

/// The plugins emberd is built from (besides the gRPC services).
pub fn builtins(config: &Config, metrics: Arc<Metrics>) -> Vec<Registration> {
    let mut regs = vec![
        Registration::new(EVENT, "exchange", &[], |_| {
            Ok(Arc::new(Exchange::default()) as Instance)
        }),
        Registration::new(CONTENT, "content", &[], |ctx| {
            let cfg: ContentConfig = plugin_section(ctx.section)?;
            let expiry = parse_duration(&cfg.stale_ingest_expiry)?;
            let store = Store::open(&ctx.root)?;
            ctx.exports
                .insert("root".into(), ctx.root.display().to_string());
            let sweeper = store.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(3600));
                loop {
                    tick.tick().await;
                    let s = sweeper.clone();
                    let r = tokio::task::spawn_blocking(move || s.cleanup_stale(expiry)).await;
                    if let Ok(Err(e)) = r {
                        tracing::warn!(error = %e, "cleaning up stale ingests");
                    }
                }
            });
            Ok(Arc::new(ContentPlugin(Arc::new(store))) as Instance)
        }),
        Registration::new(SNAPSHOTTER, "native", &[], |ctx| {
            let root = snapshotter_root(ctx)?;
            let s = LocalSnapshotter::open(&root, Driver::Native)?;
            ctx.exports
                .insert("root".into(), root.display().to_string());
            Ok(Arc::new(SnapshotterPlugin(Arc::new(s))) as Instance)
        }),
        Registration::new(SNAPSHOTTER, "overlayfs", &[], |ctx| {
            let root = snapshotter_root(ctx)?;
            let s = LocalSnapshotter::open(&root, Driver::Overlay).map_err(|e| match e {
                ember_snapshot::Error::FailedPrecondition(m) => InitError::Skip(m),
                e => InitError::Failed(e.to_string()),
            })?;
            ctx.exports
                .insert("root".into(), root.display().to_string());
            Ok(Arc::new(SnapshotterPlugin(Arc::new(s))) as Instance)
        }),
        crate::erofs::registration(),
        Registration::new(METADATA, "redb", &[CONTENT, SNAPSHOTTER], |ctx| {
            let db = Db::open(ctx.root.join("meta.redb"))?;
            // A content proxy, when one is configured, replaces the local store.
            let (id, store) = ctx
                .registry
                .all::<ContentPlugin>(CONTENT)
                .into_iter()
                .max_by_key(|(id, _)| id != "content")
                .ok_or_else(|| InitError::Failed("no content plugin loaded".into()))?;
            ctx.exports.insert("content".into(), id);
            let content = ContentStore::with_backend(db.clone(), store.0.clone());
            let snapshotters: BTreeMap<String, SnapshotStore> = ctx
                .registry
                .all::<SnapshotterPlugin>(SNAPSHOTTER)
                .into_iter()
                .map(|(id, s)| (id.clone(), SnapshotStore::new(id, db.clone(), s.0.clone())))
                .collect();
            let gc = crate::gc::Gc::start(db.clone(), content.clone(), snapshotters.clone());
            ctx.exports.insert(
                "path".into(),
                ctx.root.join("meta.redb").display().to_string(),
            );
            Ok(Arc::new(Metadata {
                db,
                content,
                snapshotters,
                gc,
            }) as Instance)
        }),
    ];
    let address = config.grpc.address.clone();
    regs.push(Registration::new(RUNTIME, "task", &[EVENT], move |ctx| {
        std::fs::create_dir_all(&ctx.state)?;
        ctx.exports
            .insert("state".into(), ctx.state.display().to_string());
        let events = ctx
            .registry
            .first::<Exchange>(EVENT)
            .map_err(InitError::Failed)?;
        Ok(TaskManager::new(ctx.state.clone(), &address, events, metrics.clone()) as Instance)
    }));
    regs.push(crate::vms::registration());
    regs.extend(crate::proxy::registrations(config));
    regs
}

fn summarize(registry: &Registry) -> Vec<PluginSummary> {
    registry
        .plugins()
        .iter()
        .map(|p| PluginSummary {
            plugin_type: p.plugin_type.clone(),
            id: p.id.clone(),
            requires: p.requires.clone(),
            exports: p.exports.clone(),
            capabilities: p.capabilities.clone(),
            error: p.result.as_ref().err().cloned(),
            skipped: p.skipped,
        })
        .collect()
}

/// Creates a directory with `mode`; an existing one is left as it is.
fn prepare_dir(path: &Path, mode: u32) -> Result<()> {
    if path.is_dir() {
        return Ok(());
    }
    std::fs::create_dir_all(path).with_context(|| format!("creating {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {}", path.display()))?;
    Ok(())
}

/// Binds the socket, refusing to take over one a live server answers on.
fn bind(config: &Config) -> Result<tokio::net::UnixListener> {
    let address = &config.grpc.address;
    if let Some(dir) = address.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    if address.exists() {
        if std::os::unix::net::UnixStream::connect(address).is_ok() {
            bail!("{} is in use by another server", address.display());
        }
        std::fs::remove_file(address)
            .with_context(|| format!("removing the stale socket {}", address.display()))?;
    }
    let listener = tokio::net::UnixListener::bind(address)
        .with_context(|| format!("binding {}", address.display()))?;
    std::fs::set_permissions(address, std::fs::Permissions::from_mode(0o660))?;
    nix::unistd::chown(
        address,
        Some(nix::unistd::Uid::from_raw(config.grpc.uid)),
        Some(nix::unistd::Gid::from_raw(config.grpc.gid)),
    )
    .with_context(|| format!("changing the owner of {}", address.display()))?;
    Ok(listener)
}

/// How long connections may take to finish after SIGTERM.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Resolves at SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing the SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// Runs the daemon until SIGTERM or SIGINT.
pub async fn run(config: Config) -> Result<()> {
    for key in config.unknown_keys() {
        tracing::warn!(%key, "ignoring unknown configuration key");
    }
    // Before anything else: a metrics address that cannot be served stops the start.
    let metrics = Arc::new(Metrics::new(config.metrics.grpc_histogram));
    let metrics_listener = match config.metrics.address.as_str() {
        "" => None,
        a => Some(crate::metrics::http::bind(a)?),
    };
    prepare_dir(&config.root, 0o711)?;
    prepare_dir(&config.state, 0o711)?;

    let info = Arc::new(DaemonInfo::default());
    let mut regs = builtins(&config, metrics.clone());
    regs.extend(services::registrations(info.clone()));
    let registry = init_all(&config, regs);
    for required in &config.required_plugins {
        match registry.plugins().iter().find(|p| &p.uri() == required) {
            Some(p) if p.result.is_ok() => {}
            Some(p) => bail!(
                "required plugin {required} failed: {}",
                p.result.as_ref().err().cloned().unwrap_or_default()
            ),
            None => bail!("required plugin {required} is not loaded"),
        }
    }
    let _ = info.plugins.set(summarize(&registry));

    let mut routes = RoutesBuilder::default();
    for (id, svc) in registry.all::<GrpcService>(GRPC) {
        tracing::debug!(%id, "registering gRPC service");
        svc.register(&mut routes);
    }

    if let Ok(events) = registry.first::<Exchange>(EVENT) {
        crate::ttrpc::serve(crate::ttrpc::address(&config.grpc.address), events)?;
    }
    if let Ok(tasks) = registry.first::<TaskManager>(RUNTIME) {
        tasks.recover().await;
    }
    // After the tasks: a VM whose shim serves tasks is known by them.
    if let Ok(vms) = registry.get::<crate::vms::Vms>(plugin::SERVICE, crate::vms::PLUGIN_ID) {
        vms.recover().await;
    }
    let listener = bind(&config)?;
    let metrics_server = metrics_listener.map(|l| {
        let sources = crate::metrics::Sources {
            tasks: registry.first::<TaskManager>(RUNTIME).ok(),
            vms: registry
                .get::<crate::vms::Vms>(plugin::SERVICE, crate::vms::PLUGIN_ID)
                .ok(),
        };
        if let Ok(a) = l.local_addr() {
            tracing::info!(address = %a, path = crate::metrics::http::PATH, "metrics serving");
        }
        tokio::spawn(crate::metrics::http::serve(l, metrics.clone(), sources))
    });
    tracing::info!(address = %config.grpc.address.display(), "emberd serving");
    // Clients' `:authority` is not always a valid one on unix sockets (see
    // `authority`); containerd ignores it, so emberd must not refuse it either.
    let incoming = tokio_stream::StreamExt::map(
        tokio_stream::wrappers::UnixListenerStream::new(listener),
        |conn| conn.map(crate::authority::Http2Conn::new),
    );
    let (stopping_tx, stopping) = tokio::sync::oneshot::channel::<()>();
    let shutdown = async {
        shutdown_signal().await;
        tracing::info!("shutting down");
        let _ = stopping_tx.send(());
    };
    let serve = tonic::transport::Server::builder()
        .trace_fn(|req| {
            let ns = req
                .headers()
                .get(services::NAMESPACE_HEADER)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            tracing::debug!(method = %req.uri().path(), namespace = %ns, "request");
            tracing::info_span!("grpc", method = %req.uri().path(), namespace = %ns)
        })
        .layer(crate::metrics::grpc::Layer(metrics.clone()))
        .layer(tower::util::MapResponseLayer::new(
            crate::limits::resource_exhausted,
        ))
        .add_routes(routes.routes())
        .serve_with_incoming_shutdown(incoming, shutdown);
    // Connections get a grace period to finish; a client that never answers the
    // server's goodbye (a stopped process) does not keep the daemon up.
    let served = tokio::select! {
        r = serve => r,
        _ = async {
            if stopping.await.is_ok() {
                tokio::time::sleep(SHUTDOWN_GRACE).await;
            } else {
                std::future::pending::<()>().await;
            }
        } => {
            tracing::warn!("clients still connected {SHUTDOWN_GRACE:?} after the shutdown signal: stopping anyway");
            Ok(())
        }
    };
    if let Some(m) = metrics_server {
        m.abort();
    }
    let _ = std::fs::remove_file(&config.grpc.address);
    let _ = std::fs::remove_file(crate::ttrpc::address(&config.grpc.address));
    served.context("serving gRPC")?;
    drop(registry);
    Ok(())
}
