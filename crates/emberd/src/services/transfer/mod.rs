//! `containerd.services.transfer.v1.Transfer`: moving images between a source
//! and a destination given as `Any`s of containerd's `containerd.types.transfer`
//! messages, as `ctr` (1.7 with `--local=false`, 2.x by default) asks for them:
//!
//! | source | destination | operation |
//! | --- | --- | --- |
//! | `OCIRegistry` | `ImageStore` | pull (and unpack) |
//! | `ImageStore` | `OCIRegistry` | push |
//! | `ImageImportStream` | `ImageStore` | import of an archive streamed by the client |
//! | `ImageStore` | `ImageExportStream` | export of an archive streamed to the client |
//! | `ImageStore` | `ImageStore` | tag |
//!
//! Registry work goes through `ember-registry` (the same pull and push code the
//! command line uses), archives through `ember-images`. Each transfer holds a
//! lease while it writes, so nothing it stored halfway survives a failure for
//! longer than the next garbage collection.

mod archive;
mod callbacks;
mod data;
mod images;
mod registry;
mod store;
mod unpack;

use std::path::PathBuf;
use std::sync::Arc;

use ember_metadata::Lease;
use prost_types::Any;
use serde::Deserialize;
use tonic::{Code, Request, Response, Status};

use crate::config::plugin_section;
use crate::daemon::Metadata;
use crate::events::Exchange;
use crate::grpc::transfer::transfer_server::{Transfer, TransferServer};
use crate::plugin::{InitError, Registration, EVENT, GRPC, METADATA};
use crate::services::streaming::{type_name, unpack, StreamManager, STREAMING};
use crate::services::{blocking, namespace, GrpcService};

use callbacks::{forward_progress, StreamProgress};
use ember_registry::{Progress, ProgressSink};

/// The transfer plugin's configuration section.
#[derive(Deserialize)]
#[serde(default)]
struct TransferConfig {
    /// A hosts directory in containerd's format (`<host>/hosts.toml`), used when
    /// a request names none.
    config_path: String,
    max_concurrent_downloads: usize,
    max_concurrent_uploaded_layers: usize,
}

impl Default for TransferConfig {
    fn default() -> Self {
        TransferConfig {
            config_path: String::new(),
            max_concurrent_downloads: 3,
            max_concurrent_uploaded_layers: 3,
        }
    }
}

pub fn registration() -> Registration {
    Registration::new(GRPC, "transfer", &[METADATA, EVENT, STREAMING], |ctx| {
        let cfg: TransferConfig = plugin_section(ctx.section)?;
        let service = Service(Arc::new(Inner {
            md: ctx.registry.first(METADATA).map_err(InitError::Failed)?,
            events: ctx.registry.first(EVENT).map_err(InitError::Failed)?,
            streams: ctx.registry.first(STREAMING).map_err(InitError::Failed)?,
            mounts: ctx.state.join("mounts"),
            work: ctx.root.join("ingest"),
            hosts_dir: (!cfg.config_path.is_empty()).then(|| PathBuf::from(&cfg.config_path)),
            downloads: cfg.max_concurrent_downloads.max(1),
            uploads: cfg.max_concurrent_uploaded_layers.max(1),
        }));
        Ok(GrpcService::instance(move |r| {
            r.add_service(TransferServer::new(service.clone()));
        }))
    })
}

pub struct Inner {
    md: Arc<Metadata>,
    events: Arc<Exchange>,
    streams: Arc<StreamManager>,
    /// Where layers are mounted to be unpacked.
    mounts: PathBuf,
    /// Where streamed archives are kept while they are imported.
    work: PathBuf,
    hosts_dir: Option<PathBuf>,
    downloads: usize,
    uploads: usize,
}

#[derive(Clone)]
pub struct Service(Arc<Inner>);

/// One transfer: its namespace, lease and progress.
pub struct Job<'a> {
    inner: &'a Inner,
    ns: String,
    lease: String,
    progress: &'a dyn ProgressSink,
}

impl Job<'_> {
    fn status(&self, event: String) {
        self.progress.progress(Progress::status(event));
    }

    fn store(&self) -> store::Store {
        store::Store {
            content: self.inner.md.content.clone(),
            ns: self.ns.clone(),
            lease: Some(self.lease.clone()),
        }
    }

    fn unpacker(&self) -> unpack::Unpacker {
        unpack::Unpacker {
            md: self.inner.md.clone(),
            ns: self.ns.clone(),
            lease: Some(self.lease.clone()),
            tmp: self.inner.mounts.clone(),
        }
    }
}

/// The status for a registry error.
pub fn registry_status(e: ember_registry::Error) -> Status {
    use ember_registry::Error as E;
    let code = match &e {
        E::InvalidReference(_) => Code::InvalidArgument,
        E::NotFound(_) => Code::NotFound,
        E::Auth(_) => Code::Unauthenticated,
        E::Config(_) => Code::FailedPrecondition,
        E::Unavailable(_) | E::Interrupted(_) => Code::Unavailable,
        E::Unsupported(_) => Code::Unimplemented,
        E::Invalid(_) => Code::DataLoss,
        E::AlreadyExists(_) => Code::AlreadyExists,
        E::Protocol(_) | E::Store(_) => Code::Unknown,
    };
    // Messages end with the error class, as containerd's do.
    let class = match code {
        Code::InvalidArgument => "invalid argument",
        Code::NotFound => "not found",
        Code::Unavailable => "unavailable",
        Code::FailedPrecondition => "failed precondition",
        Code::Unimplemented => "not implemented",
        Code::AlreadyExists => "already exists",
        Code::Unauthenticated => "unauthorized",
        _ => "",
    };
    let msg = e.to_string();
    if class.is_empty() || msg.ends_with(class) {
        Status::new(code, msg)
    } else {
        Status::new(code, format!("{msg}: {class}"))
    }
}

/// `InvalidArgument` for bad input, its message ending in the class as
/// containerd's do.
pub fn invalid(e: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("{e}: invalid argument"))
}

fn decode<M: prost::Message + prost::Name + Default>(a: &Any) -> Result<M, Status> {
    unpack(a)
}

impl Service {
    async fn dispatch(&self, job: &Job<'_>, src: &Any, dst: &Any) -> Result<(), Status> {
        const REGISTRY: &str = "containerd.types.transfer.OCIRegistry";
        const STORE: &str = "containerd.types.transfer.ImageStore";
        const IMPORT: &str = "containerd.types.transfer.ImageImportStream";
        const EXPORT: &str = "containerd.types.transfer.ImageExportStream";
        match (type_name(src), type_name(dst)) {
            (REGISTRY, STORE) => registry::pull(job, decode(src)?, decode(dst)?).await,
            (STORE, REGISTRY) => registry::push(job, decode(src)?, decode(dst)?).await,
            (IMPORT, STORE) => archive::import(job, decode(src)?, decode(dst)?).await,
            (STORE, EXPORT) => archive::export(job, decode(src)?, decode(dst)?).await,
            (STORE, STORE) => images::tag(job, decode(src)?, decode(dst)?).await,
            (s, d) => Err(Status::unimplemented(format!(
                "method Transfer not implemented for {s} to {d}"
            ))),
        }
    }
}

#[tonic::async_trait]
impl Transfer for Service {
    async fn transfer(
        &self,
        r: Request<containerd_client::services::v1::TransferRequest>,
    ) -> Result<Response<()>, Status> {
        let ns = namespace(&r)?;
        let r = r.into_inner();
        let src = r
            .source
            .ok_or_else(|| Status::invalid_argument("source is required"))?;
        let dst = r
            .destination
            .ok_or_else(|| Status::invalid_argument("destination is required"))?;
        let progress_stream = r.options.map(|o| o.progress_stream).unwrap_or_default();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let forwarder = if progress_stream.is_empty() {
            None
        } else {
            let s = self.0.streams.take(&ns, &progress_stream)?;
            Some(tokio::spawn(forward_progress(s, rx)))
        };
        let sink = StreamProgress(tx);
        let lease = format!("transfer-{}", uuid::Uuid::new_v4());
        let (db, n, l) = (self.0.md.db.clone(), ns.clone(), lease.clone());
        blocking(move || {
            db.update(|tx| {
                tx.create_lease(
                    &n,
                    &Lease {
                        id: l,
                        labels: Default::default(),
                        created_at: std::time::UNIX_EPOCH,
                    },
                )
            })
        })
        .await?;
        let job = Job {
            inner: &self.0,
            ns: ns.clone(),
            lease: lease.clone(),
            progress: &sink,
        };
        let result = self.dispatch(&job, &src, &dst).await;
        let db = self.0.md.db.clone();
        if let Err(e) = blocking(move || db.update(|tx| tx.delete_lease(&ns, &lease))).await {
            tracing::warn!(error = %e, "removing the transfer's lease");
        }
        self.0.md.gc.schedule();
        drop(job);
        drop(sink);
        if let Some(f) = forwarder {
            let _ = f.await;
        }
        if let Err(e) = &result {
            tracing::debug!(source = %src.type_url, destination = %dst.type_url, error = %e, "transfer failed");
        }
        result.map(|()| Response::new(()))
    }
}

/// Platforms of the wire as the image code has them.
fn platforms_in(p: &[containerd_client::types::Platform]) -> Vec<ember_images::Platform> {
    p.iter()
        .map(|p| ember_images::Platform {
            architecture: p.architecture.clone(),
            os: p.os.clone(),
            variant: p.variant.clone(),
        })
        .collect()
}
