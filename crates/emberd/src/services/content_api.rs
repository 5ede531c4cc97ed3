//! What the content and diff services work on: [`ContentApi`], namespaced calls
//! on blobs and ingests. Three stores answer them: the daemon's metadata (content
//! recorded per namespace, labels, leases), a bare blob store served as it is (a
//! content proxy plugin's server, where namespaces belong to the daemon in front),
//! and a daemon's content service reached over its socket (a remote differ).

use std::sync::Arc;

use ember_content::remote::RemoteStore;
use ember_content::{Backend, Blob, Ingest};
use ember_metadata::content::{check_digest, check_ref, ContentStore, NsWriter};
use ember_metadata::{ContentInfo, Error, Filter, IngestStatus, Labels, Result};

/// Calls on content in a namespace.
pub trait ContentApi: Send + Sync + 'static {
    /// Whether requests must name a namespace.
    fn namespaced(&self) -> bool;
    fn info(&self, ns: &str, digest: &str) -> Result<ContentInfo>;
    fn list(&self, ns: &str, filter: &Filter) -> Result<Vec<ContentInfo>>;
    fn update(&self, ns: &str, info: &ContentInfo, fieldpaths: &[String]) -> Result<ContentInfo>;
    fn delete(&self, ns: &str, digest: &str) -> Result<()>;
    fn open_blob(&self, ns: &str, digest: &str) -> Result<(Box<dyn Blob>, i64)>;
    fn status(&self, ns: &str, reference: &str) -> Result<IngestStatus>;
    fn list_statuses(&self, ns: &str, filter: &Filter) -> Result<Vec<IngestStatus>>;
    fn abort(&self, ns: &str, reference: &str) -> Result<()>;
    fn writer(
        &self,
        ns: &str,
        reference: &str,
        total: i64,
        expected: &str,
        lease: Option<&str>,
    ) -> Result<Box<dyn ContentWriter>>;
}

/// A writer of one ingest.
pub trait ContentWriter: Send {
    fn status(&self) -> IngestStatus;
    fn set_total(&mut self, total: i64) -> Result<()>;
    fn set_expected(&mut self, expected: &str) -> Result<()>;
    fn write(&mut self, data: &[u8]) -> Result<()>;
    fn truncate(&mut self, size: i64) -> Result<()>;
    /// Stores the blob; returns its digest.
    fn commit(self: Box<Self>, size: i64, expected: &str, labels: Labels) -> Result<String>;
}

/// Implements [`ContentApi`] by handing each call on to `$target`, an expression
/// of the patterns `$this` (the receiver), `$ns` (the namespace) and `$lease` (the
/// writer's lease, `None` elsewhere) whose calls of the same names answer it; the
/// writer it opens is boxed by `$boxed`.
macro_rules! delegate_content_api {
    ($ty:ty, namespaced: $namespaced:expr,
     |$this:pat_param, $ns:pat_param, $lease:pat_param| $target:expr,
     boxed: |$w:ident| $boxed:expr) => {
        impl ContentApi for $ty {
            fn namespaced(&self) -> bool {
                $namespaced
            }
            fn info(&self, ns: &str, digest: &str) -> Result<ContentInfo> {
                let ($this, $ns, $lease) = (self, ns, None::<&str>);
                $target.info(ns, digest)
            }
            fn list(&self, ns: &str, filter: &Filter) -> Result<Vec<ContentInfo>> {
                let ($this, $ns, $lease) = (self, ns, None::<&str>);
                $target.list(ns, filter)
            }
            fn update(
                &self,
                ns: &str,
                info: &ContentInfo,
                fieldpaths: &[String],
            ) -> Result<ContentInfo> {
                let ($this, $ns, $lease) = (self, ns, None::<&str>);
                $target.update(ns, info, fieldpaths)
            }
            fn delete(&self, ns: &str, digest: &str) -> Result<()> {
                let ($this, $ns, $lease) = (self, ns, None::<&str>);
                $target.delete(ns, digest)
            }
            fn open_blob(&self, ns: &str, digest: &str) -> Result<(Box<dyn Blob>, i64)> {
                let ($this, $ns, $lease) = (self, ns, None::<&str>);
                $target.open_blob(ns, digest)
            }
            fn status(&self, ns: &str, reference: &str) -> Result<IngestStatus> {
                let ($this, $ns, $lease) = (self, ns, None::<&str>);
                $target.status(ns, reference)
            }
            fn list_statuses(&self, ns: &str, filter: &Filter) -> Result<Vec<IngestStatus>> {
                let ($this, $ns, $lease) = (self, ns, None::<&str>);
                $target.list_statuses(ns, filter)
            }
            fn abort(&self, ns: &str, reference: &str) -> Result<()> {
                let ($this, $ns, $lease) = (self, ns, None::<&str>);
                $target.abort(ns, reference)
            }
            fn writer(
                &self,
                ns: &str,
                reference: &str,
                total: i64,
                expected: &str,
                lease: Option<&str>,
            ) -> Result<Box<dyn ContentWriter>> {
                let ($this, $ns, $lease) = (self, ns, lease);
                let $w = $target.writer(ns, reference, total, expected, lease)?;
                Ok($boxed)
            }
        }
    };
}

// The store's own (inherent) methods answer: they take precedence over the trait's.
delegate_content_api!(ContentStore, namespaced: true, |this, _, _| this, boxed: |w| Box::new(w));

impl ContentWriter for NsWriter {
    fn status(&self) -> IngestStatus {
        NsWriter::status(self)
    }
    fn set_total(&mut self, total: i64) -> Result<()> {
        NsWriter::set_total(self, total)
    }
    fn set_expected(&mut self, expected: &str) -> Result<()> {
        NsWriter::set_expected(self, expected)
    }
    fn write(&mut self, data: &[u8]) -> Result<()> {
        NsWriter::write(self, data)
    }
    fn truncate(&mut self, size: i64) -> Result<()> {
        NsWriter::truncate(self, size)
    }
    fn commit(self: Box<Self>, size: i64, expected: &str, labels: Labels) -> Result<String> {
        NsWriter::commit(*self, size, expected, labels)
    }
}

/// A blob store served as it is: no namespaces, no labels, no leases (the daemon
/// in front keeps those).
pub struct Blobs(pub Arc<dyn Backend>);

fn content_info(i: ember_content::Info) -> ContentInfo {
    ContentInfo {
        digest: i.digest,
        size: i.size,
        labels: Labels::new(),
        created_at: i.created_at,
        updated_at: i.updated_at,
    }
}

impl ContentApi for Blobs {
    fn namespaced(&self) -> bool {
        false
    }
    fn info(&self, _: &str, digest: &str) -> Result<ContentInfo> {
        check_digest(digest)?;
        Ok(content_info(self.0.info(digest)?))
    }
    fn list(&self, _: &str, filter: &Filter) -> Result<Vec<ContentInfo>> {
        Ok(self
            .0
            .walk()?
            .into_iter()
            .map(content_info)
            .filter(|i| filter.matches(i))
            .collect())
    }
    fn update(&self, ns: &str, info: &ContentInfo, fieldpaths: &[String]) -> Result<ContentInfo> {
        let current = self.info(ns, &info.digest)?;
        if fieldpaths
            .iter()
            .any(|p| p == "labels" || p.starts_with("labels."))
            || (fieldpaths.is_empty() && !info.labels.is_empty())
        {
            return Err(Error::FailedPrecondition(
                "this blob store keeps no labels".into(),
            ));
        }
        Ok(current)
    }
    fn delete(&self, _: &str, digest: &str) -> Result<()> {
        check_digest(digest)?;
        Ok(self.0.delete(digest)?)
    }
    fn open_blob(&self, _: &str, digest: &str) -> Result<(Box<dyn Blob>, i64)> {
        check_digest(digest)?;
        let size = self.0.info(digest)?.size;
        Ok((self.0.open_blob(digest)?, size))
    }
    fn status(&self, _: &str, reference: &str) -> Result<IngestStatus> {
        Ok(self.0.status(reference)?.into())
    }
    fn list_statuses(&self, _: &str, filter: &Filter) -> Result<Vec<IngestStatus>> {
        Ok(self
            .0
            .list_statuses()?
            .into_iter()
            .map(IngestStatus::from)
            .filter(|s| filter.matches(s))
            .collect())
    }
    fn abort(&self, _: &str, reference: &str) -> Result<()> {
        Ok(self.0.abort(reference)?)
    }
    fn writer(
        &self,
        _: &str,
        reference: &str,
        total: i64,
        expected: &str,
        _lease: Option<&str>,
    ) -> Result<Box<dyn ContentWriter>> {
        check_ref(reference)?;
        Ok(Box::new(BlobWriter(
            self.0.writer(reference, total, expected)?,
        )))
    }
}

struct BlobWriter(Box<dyn Ingest>);

impl ContentWriter for BlobWriter {
    fn status(&self) -> IngestStatus {
        self.0.status().into()
    }
    fn set_total(&mut self, total: i64) -> Result<()> {
        Ok(self.0.set_total(total)?)
    }
    fn set_expected(&mut self, expected: &str) -> Result<()> {
        Ok(self.0.set_expected(expected)?)
    }
    fn write(&mut self, data: &[u8]) -> Result<()> {
        Ok(self.0.write(data)?)
    }
    fn truncate(&mut self, size: i64) -> Result<()> {
        Ok(self.0.truncate(size)?)
    }
    fn commit(self: Box<Self>, size: i64, expected: &str, labels: Labels) -> Result<String> {
        let labels = labels.into_iter().collect();
        Ok(self.0.commit(size, expected, &labels)?.digest)
    }
}

/// A daemon's content service over its socket: each call is made in the caller's
/// namespace (and lease), so what is written is the daemon's, recorded for that
/// namespace.
pub struct DaemonContent(pub RemoteStore);

impl DaemonContent {
    fn scoped(&self, ns: &str, lease: Option<&str>) -> Blobs {
        Blobs(Arc::new(self.0.scoped(ns, lease)))
    }
}

delegate_content_api!(
    DaemonContent,
    namespaced: true,
    |this, ns, lease| this.scoped(ns, lease),
    boxed: |w| w
);
