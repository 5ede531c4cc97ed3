//! Pushing an image from a content store: blobs first (skipped when the
//! repository has them, mounted from another repository of the same registry
//! when the store knows one that holds them, else uploaded), then the manifests
//! by digest, then the root under the reference's tag.

use std::sync::Arc;

use bytes::Bytes;
use ember_images::Descriptor;
use futures::StreamExt as _;
use http_body_util::{BodyExt as _, StreamBody};
use hyper::body::Frame;
use tokio::io::AsyncReadExt as _;

use crate::client::{Body, Repository};
use crate::hosts::RegistryHost;
use crate::progress::{node_name, Progress, ProgressSink};
use crate::store::{ContentStore, LABEL_DISTRIBUTION_SOURCE};
use crate::{is_index, is_manifest, Error, Result};

struct Ctx<'a> {
    repo: &'a Repository,
    host: &'a RegistryHost,
    store: Arc<dyn ContentStore>,
    progress: &'a dyn ProgressSink,
    sem: Arc<tokio::sync::Semaphore>,
}

fn body_of(reader: Box<dyn tokio::io::AsyncRead + Send + Unpin>) -> Body {
    let s = futures::stream::unfold(reader, |mut r| async move {
        let mut buf = vec![0u8; 256 << 10];
        match r.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(Frame::data(Bytes::from(buf))), r))
            }
            Err(e) => Some((Err(e), r)),
        }
    });
    StreamBody::new(s.boxed()).boxed_unsync()
}

impl Ctx<'_> {
    fn report(&self, d: &Descriptor, parent: &str, event: &str, progress: i64) {
        self.progress
            .progress(Progress::of(d, parent, event, progress));
    }

    async fn blob(&self, d: Descriptor, parent: String) -> Result<()> {
        let _permit = self.sem.acquire().await;
        if self.repo.blob_exists(self.host, &d.digest).await? {
            self.report(&d, &parent, "already exists", d.size);
            return Ok(());
        }
        // A repository of the same registry the blob came from.
        let key = format!("{LABEL_DISTRIBUTION_SOURCE}{}", self.repo.reference.domain);
        let from = self
            .store
            .labels(&d.digest)
            .await
            .ok()
            .and_then(|l| l.get(&key).cloned())
            .and_then(|v| {
                v.split(',')
                    .find(|r| *r != self.repo.reference.repository)
                    .map(str::to_string)
            });
        let mount = from.as_deref().map(|f| (d.digest.as_str(), f));
        let Some(location) = self.repo.start_upload(self.host, mount).await? else {
            self.report(&d, &parent, "mounted", d.size);
            return Ok(());
        };
        self.report(&d, &parent, "uploading", 0);
        let (reader, size) = self.store.reader(&d.digest).await?;
        if size != d.size {
            return Err(Error::Invalid(format!(
                "{} is {size} bytes in the store, the manifest says {}",
                d.digest, d.size
            )));
        }
        self.repo
            .finish_upload(self.host, &location, &d.digest, size, body_of(reader))
            .await?;
        self.report(&d, &parent, "complete", d.size);
        Ok(())
    }

    /// Pushes a manifest's blobs, then the manifest under `object`.
    async fn manifest(&self, d: &Descriptor, parent: &str, object: &str) -> Result<()> {
        let data = self.store.read(&d.digest).await?;
        let m = ember_images::parse_manifest(&data)?;
        let name = node_name(&d.media_type, &d.digest);
        let mut blobs = vec![m.config.clone()];
        blobs.extend(m.layers.iter().cloned());
        let jobs = blobs.into_iter().map(|b| self.blob(b, name.clone()));
        for r in futures::future::join_all(jobs).await {
            r?;
        }
        self.repo
            .put_manifest(self.host, object, &d.media_type, data.into())
            .await?;
        self.report(d, parent, "complete", d.size);
        Ok(())
    }
}

/// Pushes the image `root` (a manifest or index in `store`) to `repo`, which was
/// opened for push; the root is stored under the reference's tag, or its digest.
pub async fn push(
    repo: &Repository,
    store: Arc<dyn ContentStore>,
    root: &Descriptor,
    progress: &dyn ProgressSink,
    max_concurrent: usize,
) -> Result<()> {
    let host = repo
        .hosts()
        .first()
        .ok_or_else(|| Error::Config("no host to push to".into()))?;
    let object = repo
        .reference
        .tag
        .clone()
        .unwrap_or_else(|| root.digest.clone());
    let ctx = Ctx {
        repo,
        host,
        store,
        progress,
        sem: Arc::new(tokio::sync::Semaphore::new(max_concurrent.max(1))),
    };
    let name = repo.reference.to_string();
    if is_index(&root.media_type) {
        let data = ctx.store.read(&root.digest).await?;
        let index = ember_images::parse_index(&data)?;
        for m in &index.manifests {
            if !ctx.store.exists(&m.digest).await? {
                return Err(Error::NotFound(format!(
                    "manifest {} of {name} in the content store (pull it with all platforms first)",
                    m.digest
                )));
            }
            ctx.manifest(m, &node_name(&root.media_type, &root.digest), &m.digest)
                .await?;
        }
        repo.put_manifest(host, &object, &root.media_type, data.into())
            .await?;
    } else if is_manifest(&root.media_type) {
        ctx.manifest(root, &name, &object).await?;
    } else {
        return Err(Error::Unsupported(format!(
            "pushing media type {:?}",
            root.media_type
        )));
    }
    Ok(())
}
