//! `containerd.services.diff.v1.Diff`: applying layers onto mounts and computing
//! layers between two mounts, with `ember-diff`.
//!
//! `Apply` works on the directories behind the mounts when it can, as containerd's
//! overlay applier does: a single bind mount is the directory itself; a single
//! overlay mount with an upper directory gets the layer written into that upper
//! directory, whiteouts in overlayfs form, its lower directories consulted for
//! missing parents. Anything else is mounted on a temporary directory first.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use containerd_client::services::v1 as wire;
use containerd_client::types::Descriptor as WireDescriptor;
use ember_diff::{ApplyOptions, Compression};
use ember_snapshot::convert::mount_from_wire;
use ember_snapshot::Mount;
use tonic::{Request, Response, Status};

use crate::daemon::Metadata;
use crate::grpc::diff::diff_server::{Diff, DiffServer};
use crate::mounts::{readonly, TempMount};
use crate::plugin::{InitError, Registration, DIFFER, GRPC, METADATA};
use crate::services::content_api::{ContentApi, ContentWriter};
use crate::services::{labels_in, lease, namespace, status, GrpcService};

/// The media type of an uncompressed layer.
pub const MEDIA_TYPE_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
/// The label recording a compressed blob's uncompressed digest.
pub const LABEL_UNCOMPRESSED: &str = "containerd.io/uncompressed";

pub fn registration() -> Registration {
    Registration::new(GRPC, "diff", &[METADATA, DIFFER], |ctx| {
        if let Some(remote) = crate::proxy::selected_differ(ctx)? {
            return Ok(GrpcService::instance(move |r| {
                r.add_service(DiffServer::new(remote.clone()));
            }));
        }
        let md: Arc<Metadata> = ctx.registry.first(METADATA).map_err(InitError::Failed)?;
        let service = Service::new(Arc::new(md.content.clone()), ctx.state.join("mounts"));
        Ok(GrpcService::instance(move |r| {
            r.add_service(limited!(DiffServer::new(service.clone())));
        }))
    })
}

#[derive(Clone)]
pub struct Service {
    content: Arc<dyn ContentApi>,
    tmp: PathBuf,
}

impl Service {
    /// Layers are read from and written to `content`; mounts that cannot be
    /// written directly are mounted under `tmp`.
    pub fn new(content: Arc<dyn ContentApi>, tmp: PathBuf) -> Service {
        Service { content, tmp }
    }
}

fn diff_err(e: ember_diff::Error) -> Status {
    match e {
        ember_diff::Error::Invalid(_) | ember_diff::Error::Unsafe { .. } => {
            Status::invalid_argument(e.to_string())
        }
        ember_diff::Error::Io { .. } => Status::unknown(e.to_string()),
    }
}

/// Where a layer can be written without mounting, and how.
fn direct_target(mounts: &[Mount]) -> Option<(PathBuf, ApplyOptions)> {
    let [m] = mounts else { return None };
    let ro = m.options.iter().any(|o| o == "ro");
    match m.kind.as_str() {
        "bind" | "rbind" if !ro => Some((PathBuf::from(&m.source), ApplyOptions::default())),
        "overlay" => {
            let upper = m.options.iter().find_map(|o| o.strip_prefix("upperdir="))?;
            let parents = m
                .options
                .iter()
                .find_map(|o| o.strip_prefix("lowerdir="))
                .map(|l| l.split(':').map(PathBuf::from).collect())
                .unwrap_or_default();
            Some((
                PathBuf::from(upper),
                ApplyOptions {
                    overlay: true,
                    parents,
                    ..Default::default()
                },
            ))
        }
        _ => None,
    }
}

/// Applies the layer blob `digest` of namespace `ns` onto `mounts` (blocking).
pub(crate) fn apply_blob(
    cs: &dyn ContentApi,
    ns: &str,
    digest: &str,
    mounts: &[Mount],
    tmp: &std::path::Path,
    sync_fs: bool,
) -> Result<ember_diff::Applied, Status> {
    let (file, _) = cs.open_blob(ns, digest).map_err(status)?;
    let reader = std::io::BufReader::with_capacity(1 << 20, file);
    match ember_snapshot::erofs::layer_target(mounts) {
        Some(Ok(image)) => return ember_diff::erofs::write_layer(&image, reader).map_err(diff_err),
        Some(Err(e)) => return Err(ember_snapshot::convert::status(e)),
        None => {}
    }
    let (applied, dir) = match direct_target(mounts) {
        Some((dir, opts)) => (
            ember_diff::apply(&dir, reader, &opts).map_err(diff_err)?,
            dir,
        ),
        None => {
            let m = TempMount::new(mounts, tmp)
                .map_err(|e| Status::unknown(format!("mounting: {e}")))?;
            let a =
                ember_diff::apply(&m.path(), reader, &ApplyOptions::default()).map_err(diff_err)?;
            if sync_fs {
                sync_dir(&m.path());
            }
            return Ok(a);
        }
    };
    if sync_fs {
        sync_dir(&dir);
    }
    Ok(applied)
}

/// Writes into a namespaced ingest.
struct IngestWriter(Box<dyn ContentWriter>);

impl Write for IngestWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .write(buf)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tonic::async_trait]
impl Diff for Service {
    async fn apply(
        &self,
        r: Request<wire::ApplyRequest>,
    ) -> Result<Response<wire::ApplyResponse>, Status> {
        let ns = namespace(&r)?;
        let r = r.into_inner();
        let desc = r
            .diff
            .ok_or_else(|| Status::invalid_argument("diff descriptor is required"))?;
        if desc.media_type.contains("encrypted") {
            return Err(Status::unimplemented(format!(
                "unsupported diff media type: {}: not implemented",
                desc.media_type
            )));
        }
        let mounts: Vec<Mount> = r.mounts.into_iter().map(mount_from_wire).collect();
        let cs = self.content.clone();
        let tmp = self.tmp.clone();
        let sync_fs = r.sync_fs;
        let digest = desc.digest.clone();
        let started = std::time::Instant::now();
        let applied = tokio::task::spawn_blocking(move || {
            apply_blob(cs.as_ref(), &ns, &digest, &mounts, &tmp, sync_fs)
        })
        .await
        .map_err(|e| Status::internal(format!("apply task: {e}")))??;
        tracing::debug!(layer = %desc.digest, diff_id = %applied.diff_id, elapsed = ?started.elapsed(), "applied layer");
        Ok(Response::new(wire::ApplyResponse {
            applied: Some(WireDescriptor {
                media_type: MEDIA_TYPE_LAYER.into(),
                digest: applied.diff_id,
                size: applied.size as i64,
                annotations: Default::default(),
            }),
        }))
    }

    async fn diff(
        &self,
        r: Request<wire::DiffRequest>,
    ) -> Result<Response<wire::DiffResponse>, Status> {
        let ns = namespace(&r)?;
        let lease = lease(&r);
        let r = r.into_inner();
        let media_type = if r.media_type.is_empty() {
            format!("{MEDIA_TYPE_LAYER}+gzip")
        } else {
            r.media_type.clone()
        };
        let compression = match media_type.as_str() {
            MEDIA_TYPE_LAYER | "application/vnd.docker.image.rootfs.diff.tar" => Compression::None,
            "application/vnd.oci.image.layer.v1.tar+gzip"
            | "application/vnd.docker.image.rootfs.diff.tar.gzip" => Compression::Gzip,
            "application/vnd.oci.image.layer.v1.tar+zstd" => Compression::Zstd,
            other => {
                return Err(Status::unimplemented(format!(
                    "unsupported diff media type: {other}: not implemented"
                )))
            }
        };
        let left: Vec<Mount> = r.left.into_iter().map(mount_from_wire).collect();
        let right: Vec<Mount> = r.right.into_iter().map(mount_from_wire).collect();
        let reference = if r.r#ref.is_empty() {
            format!("diff-{}", uuid::Uuid::new_v4())
        } else {
            r.r#ref.clone()
        };
        let mut labels = labels_in(r.labels);
        let cs = self.content.clone();
        let tmp = self.tmp.clone();
        let (digest, size) =
            tokio::task::spawn_blocking(move || -> Result<(String, i64), Status> {
                let lower = TempMount::new(&readonly(&left), &tmp)
                    .map_err(|e| Status::unknown(format!("mounting the lower side: {e}")))?;
                let upper = TempMount::new(&readonly(&right), &tmp)
                    .map_err(|e| Status::unknown(format!("mounting the upper side: {e}")))?;
                let w = cs
                    .writer(&ns, &reference, 0, "", lease.as_deref())
                    .map_err(status)?;
                let mut out = IngestWriter(w);
                let written = ember_diff::diff(&lower.path(), &upper.path(), &mut out, compression)
                    .map_err(diff_err)?;
                drop((lower, upper));
                labels.insert(LABEL_UNCOMPRESSED.into(), written.diff_id.clone());
                match out.0.commit(written.size as i64, &written.digest, labels) {
                    Ok(_) | Err(ember_metadata::Error::AlreadyExists(_)) => {}
                    Err(e) => return Err(status(e)),
                }
                Ok((written.digest, written.size as i64))
            })
            .await
            .map_err(|e| Status::internal(format!("diff task: {e}")))??;
        Ok(Response::new(wire::DiffResponse {
            diff: Some(WireDescriptor {
                media_type,
                digest,
                size,
                annotations: Default::default(),
            }),
        }))
    }
}

fn sync_dir(dir: &std::path::Path) {
    if let Ok(f) = std::fs::File::open(dir) {
        unsafe {
            libc::syncfs(std::os::fd::AsRawFd::as_raw_fd(&f));
        }
    }
}
