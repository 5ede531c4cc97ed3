//! Pulling an image into a content store: resolve the reference, walk the index
//! (platforms chosen) and manifests, download config and layers a few at a time
//! (blobs already held are skipped; interrupted downloads resume with ranged
//! requests), verify sizes and digests while streaming, and store each document
//! after its children, labelled so garbage collection keeps them together.

use std::collections::BTreeMap;
use std::sync::Arc;

use ember_images::{Descriptor, Platform};
use sha2::Digest as _;

use crate::client::{next_chunk, read_body, Repository};
use crate::progress::{node_name, Progress, ProgressSink};
use crate::store::{child_labels, ContentStore, LABEL_DISTRIBUTION_SOURCE};
use crate::{is_index, is_manifest, Error, Result};

/// What a pull reports as it goes, for work that can start early (unpacking).
#[derive(Debug, Clone)]
pub enum Arrived {
    /// An image manifest whose blobs are being pulled (the descriptor as the index
    /// lists it, platform included).
    Manifest(Box<(Descriptor, ember_images::Manifest)>),
    /// A blob now in the store.
    Blob(String),
}

/// What to pull.
#[derive(Debug, Clone)]
pub struct PullOptions {
    /// Platforms whose manifests are pulled; empty: all.
    pub platforms: Vec<Platform>,
    /// Also store the manifests (not the layers) of the other platforms.
    pub all_metadata: bool,
    /// Blobs downloaded at once.
    pub max_concurrent: usize,
    /// Where arrivals are reported, if anywhere.
    pub arrivals: Option<tokio::sync::mpsc::UnboundedSender<Arrived>>,
}

impl Default for PullOptions {
    fn default() -> Self {
        PullOptions {
            platforms: vec![Platform::host()],
            all_metadata: false,
            max_concurrent: 3,
            arrivals: None,
        }
    }
}

/// What a pull stored.
#[derive(Debug, Clone)]
pub struct Pulled {
    /// The normalised reference.
    pub name: String,
    /// The manifest or index the reference resolved to.
    pub target: Descriptor,
    /// The image manifests pulled with their layers.
    pub manifests: Vec<Descriptor>,
}

/// Manifests and indexes are read whole; none is larger than this.
const MAX_DOCUMENT: usize = 8 << 20;
/// Attempts at one blob (the later ones resume).
const ATTEMPTS: usize = 3;
/// Bytes gathered before a write to the store.
const WRITE_BATCH: usize = 1 << 20;

struct Ctx<'a> {
    repo: &'a Repository,
    store: Arc<dyn ContentStore>,
    progress: &'a dyn ProgressSink,
    source_labels: BTreeMap<String, String>,
    sem: Arc<tokio::sync::Semaphore>,
    arrivals: Option<tokio::sync::mpsc::UnboundedSender<Arrived>>,
}

fn verify(desc: &Descriptor, data: &[u8]) -> Result<()> {
    if data.len() as i64 != desc.size {
        return Err(Error::Invalid(format!(
            "{} is {} bytes, expected {}",
            desc.digest,
            data.len(),
            desc.size
        )));
    }
    if desc.digest.starts_with("sha256:") && ember_images::sha256_digest(data) != desc.digest {
        return Err(Error::Invalid(format!(
            "{} does not match its digest",
            desc.digest
        )));
    }
    Ok(())
}

fn platform_wanted(opts: &PullOptions, p: &Option<Platform>) -> bool {
    match p {
        None => true,
        Some(p) => opts.platforms.is_empty() || opts.platforms.iter().any(|w| p.matches(w)),
    }
}

impl Ctx<'_> {
    fn arrived(&self, a: Arrived) {
        if let Some(tx) = &self.arrivals {
            let _ = tx.send(a);
        }
    }

    /// A manifest or index: from the store when held, else fetched and verified.
    async fn document(&self, desc: &Descriptor) -> Result<(Vec<u8>, bool)> {
        if self.store.exists(&desc.digest).await? {
            let data = self.store.read(&desc.digest).await?;
            verify(desc, &data)?;
            return Ok((data, true));
        }
        if desc.size as usize > MAX_DOCUMENT {
            return Err(Error::Invalid(format!(
                "{} is too large for a manifest",
                desc.digest
            )));
        }
        let (body, _) = self.repo.fetch(&desc.digest, true, 0).await?;
        let data = read_body(body, MAX_DOCUMENT).await?;
        verify(desc, &data)?;
        Ok((data, false))
    }

    /// The source labels for a blob the store holds: this repository added to the
    /// ones recorded (`repo1,repo2`, as containerd keeps them).
    async fn merged_sources(&self, digest: &str) -> BTreeMap<String, String> {
        let held = self.store.labels(digest).await.unwrap_or_default();
        self.source_labels
            .iter()
            .map(|(k, repo)| {
                let v = match held.get(k) {
                    Some(old) if old.split(',').any(|r| r == repo) => old.clone(),
                    Some(old) if !old.is_empty() => format!("{old},{repo}"),
                    _ => repo.clone(),
                };
                (k.clone(), v)
            })
            .collect()
    }

    async fn store_document(
        &self,
        desc: &Descriptor,
        data: Vec<u8>,
        children: &[Descriptor],
    ) -> Result<()> {
        let mut labels = child_labels(&desc.media_type, children);
        match self.store.writer(desc).await? {
            None => {
                labels.extend(self.merged_sources(&desc.digest).await);
                self.store.add_labels(&desc.digest, labels).await
            }
            Some(mut w) => {
                labels.extend(self.source_labels.clone());
                w.reset().await?;
                w.write(data.into()).await?;
                match w.commit(labels).await {
                    Err(Error::AlreadyExists(_)) => Ok(()),
                    r => r,
                }
            }
        }
    }

    fn report(&self, desc: &Descriptor, parent: &str, event: &str, progress: i64) {
        self.progress
            .progress(Progress::of(desc, parent, event, progress));
    }

    /// Downloads one blob into the store.
    async fn blob(&self, desc: Descriptor, parent: String) -> Result<()> {
        self.report(&desc, &parent, "waiting", 0);
        let _permit = self.sem.acquire().await;
        let Some(mut w) = self.store.writer(&desc).await? else {
            // Held already (perhaps pulled from elsewhere): this source is added,
            // so a later push can mount the blob from here too.
            let labels = self.merged_sources(&desc.digest).await;
            if let Err(e) = self.store.add_labels(&desc.digest, labels).await {
                tracing::warn!(digest = %desc.digest, error = %e, "labelling a blob's source");
            }
            self.report(&desc, &parent, "already exists", desc.size);
            self.arrived(Arrived::Blob(desc.digest.clone()));
            return Ok(());
        };
        let mut attempt = 0;
        loop {
            attempt += 1;
            let offset = w.offset();
            let result = self.download(&desc, &parent, w.as_mut(), offset).await;
            match result {
                Ok(()) => break,
                Err(Error::Unavailable(m) | Error::Interrupted(m)) if attempt < ATTEMPTS => {
                    tracing::warn!(digest = %desc.digest, error = %m, "download interrupted; resuming");
                }
                Err(e) => return Err(e),
            }
        }
        match w.commit(self.source_labels.clone()).await {
            Ok(()) | Err(Error::AlreadyExists(_)) => {}
            Err(e) => return Err(e),
        }
        self.report(&desc, &parent, "complete", desc.size);
        self.arrived(Arrived::Blob(desc.digest.clone()));
        Ok(())
    }

    async fn download(
        &self,
        desc: &Descriptor,
        parent: &str,
        w: &mut dyn crate::store::BlobWriter,
        offset: u64,
    ) -> Result<()> {
        let offset = if offset >= desc.size as u64 {
            0
        } else {
            offset
        };
        let (mut body, start) = self.repo.fetch(&desc.digest, false, offset).await?;
        if start == 0 && w.offset() > 0 {
            w.reset().await?;
        }
        // Bytes resumed from are checked by the store's own verification.
        let mut hasher = (start == 0 && desc.digest.starts_with("sha256:")).then(sha2::Sha256::new);
        let mut got = start;
        let mut reported = 0u64;
        // Chunks are gathered so the store sees few, large writes.
        let mut pending = bytes::BytesMut::new();
        loop {
            let chunk = match next_chunk(&mut body).await {
                Ok(c) => c,
                Err(e) => {
                    // What arrived is kept, to resume from.
                    if !pending.is_empty() {
                        w.write(pending.split().freeze()).await?;
                    }
                    let why = match e {
                        Error::Unavailable(m) => m,
                        e => e.to_string(),
                    };
                    return Err(Error::Interrupted(format!(
                        "{} after {got} of {} bytes: {why}",
                        desc.digest, desc.size
                    )));
                }
            };
            let Some(chunk) = chunk else { break };
            got += chunk.len() as u64;
            if got > desc.size as u64 {
                w.reset().await?;
                return Err(Error::Invalid(format!(
                    "{} is larger than its {} bytes",
                    desc.digest, desc.size
                )));
            }
            if let Some(h) = hasher.as_mut() {
                h.update(&chunk);
            }
            pending.extend_from_slice(&chunk);
            if pending.len() >= WRITE_BATCH {
                w.write(pending.split().freeze()).await?;
            }
            if got - reported >= 1 << 20 {
                reported = got;
                self.report(desc, parent, "downloading", got as i64);
            }
        }
        if !pending.is_empty() {
            w.write(pending.freeze()).await?;
        }
        if got != desc.size as u64 {
            return Err(Error::Interrupted(format!(
                "{} ended after {got} of {} bytes",
                desc.digest, desc.size
            )));
        }
        if let Some(h) = hasher {
            let d = format!("sha256:{}", hex::encode(h.finalize()));
            if d != desc.digest {
                w.reset().await?;
                return Err(Error::Invalid(format!(
                    "{} arrived with digest {d}",
                    desc.digest
                )));
            }
        }
        Ok(())
    }

    /// Pulls one image manifest with its config and layers.
    async fn manifest(&self, desc: &Descriptor, parent: &str, layers: bool) -> Result<()> {
        let (data, _) = self.document(desc).await?;
        let m = ember_images::parse_manifest(&data)?;
        if layers {
            self.arrived(Arrived::Manifest(Box::new((desc.clone(), m.clone()))));
        }
        let name = node_name(&desc.media_type, &desc.digest);
        self.progress.progress(Progress {
            event: "complete".into(),
            name: name.clone(),
            parents: vec![parent.to_string()],
            progress: desc.size,
            total: desc.size,
        });
        let mut children = vec![m.config.clone()];
        children.extend(m.layers.iter().cloned());
        let wanted: Vec<Descriptor> = if layers {
            children.clone()
        } else {
            vec![m.config.clone()]
        };
        let jobs = wanted.into_iter().map(|c| self.blob(c, name.clone()));
        for r in futures::future::join_all(jobs).await {
            r?;
        }
        let kept = if layers { children } else { vec![m.config] };
        self.store_document(desc, data, &kept).await
    }
}

/// Pulls `repo`'s reference into `store`.
pub async fn pull(
    repo: &Repository,
    store: Arc<dyn ContentStore>,
    opts: &PullOptions,
    progress: &dyn ProgressSink,
) -> Result<Pulled> {
    let name = repo.reference.to_string();
    progress.progress(Progress {
        event: "resolving".into(),
        name: name.clone(),
        ..Default::default()
    });
    let r = repo.resolve().await?;
    let target = Descriptor {
        media_type: r.media_type,
        digest: r.digest,
        size: r.size,
        ..Default::default()
    };
    progress.progress(Progress {
        event: "resolved".into(),
        name: name.clone(),
        ..Default::default()
    });
    let source_labels: BTreeMap<String, String> = [(
        format!("{LABEL_DISTRIBUTION_SOURCE}{}", repo.reference.domain),
        repo.reference.repository.clone(),
    )]
    .into();
    let ctx = Ctx {
        repo,
        store,
        progress,
        source_labels,
        sem: Arc::new(tokio::sync::Semaphore::new(opts.max_concurrent.max(1))),
        arrivals: opts.arrivals.clone(),
    };
    let mut manifests = Vec::new();
    if is_index(&target.media_type) {
        let (data, _) = ctx.document(&target).await?;
        let index = ember_images::parse_index(&data)?;
        let index_name = node_name(&target.media_type, &target.digest);
        let mut kept = Vec::new();
        for m in &index.manifests {
            let wanted = platform_wanted(opts, &m.platform);
            if !wanted && !opts.all_metadata {
                continue;
            }
            if is_index(&m.media_type) {
                return Err(Error::Unsupported(format!(
                    "{name}: nested index {}",
                    m.digest
                )));
            }
            if !is_manifest(&m.media_type) {
                continue;
            }
            ctx.manifest(m, &index_name, wanted).await?;
            if wanted {
                manifests.push(m.clone());
            }
            kept.push(m.clone());
        }
        if manifests.is_empty() {
            return Err(Error::NotFound(format!(
                "{name}: no manifest for platforms {:?}",
                opts.platforms
            )));
        }
        ctx.store_document(&target, data, &kept).await?;
    } else if is_manifest(&target.media_type) {
        ctx.manifest(&target, &name, true).await?;
        manifests.push(target.clone());
    } else {
        return Err(Error::Unsupported(format!(
            "{name}: media type {:?} is neither an image manifest nor an index",
            target.media_type
        )));
    }
    Ok(Pulled {
        name,
        target,
        manifests,
    })
}
