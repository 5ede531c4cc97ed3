//! The content store as namespaces see it.
//!
//! Blobs are shared by all namespaces on disk, but a namespace sees only the blobs
//! recorded for it in the `content` table, with its own labels. Ingest refs are
//! namespaced by prefixing the backing ref with `<ns>/`. When a client announces a
//! blob that another namespace already holds, it is recorded for the client's
//! namespace at once and the write is answered with `AlreadyExists` (containerd's
//! "shared" policy).

use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use ember_content::{Backend, Blob, Digest, Ingest};

use crate::db::{Db, Reader};
use crate::filters::Filter;
use crate::identifiers::validate_labels;
use crate::{ContentInfo, Error, IngestStatus, Labels, LeaseResource, Result};

#[derive(Clone)]
pub struct ContentStore {
    db: Db,
    store: Arc<dyn Backend>,
    /// Held shared from a blob's arrival on disk until its record is written;
    /// exclusively by garbage collection while it deletes blobs.
    gate: Arc<RwLock<()>>,
}

fn backing_ref(ns: &str, reference: &str) -> String {
    format!("{ns}/{reference}")
}

fn status(ns: &str, s: ember_content::Status) -> Option<IngestStatus> {
    let reference = s.reference.strip_prefix(ns)?.strip_prefix('/')?.to_string();
    Some(IngestStatus {
        reference,
        ..IngestStatus::from(s)
    })
}

/// Whether `digest` is a well-formed digest (an `InvalidArgument` error if not).
pub fn check_digest(digest: &str) -> Result<()> {
    digest.parse::<Digest>()?;
    Ok(())
}

/// Whether `reference` names an ingest (an `InvalidArgument` error if empty).
pub fn check_ref(reference: &str) -> Result<()> {
    if reference.is_empty() {
        return Err(Error::InvalidArgument("ref must not be empty".into()));
    }
    Ok(())
}

impl ContentStore {
    pub fn new(db: Db, store: impl Backend + 'static) -> Self {
        ContentStore::with_backend(db, Arc::new(store))
    }

    /// Records content for namespaces on top of any blob store, local or remote.
    pub fn with_backend(db: Db, store: Arc<dyn Backend>) -> Self {
        ContentStore {
            db,
            store,
            gate: Arc::new(RwLock::new(())),
        }
    }

    /// See the `gate` field: garbage collection holds it exclusively.
    pub fn gate(&self) -> Arc<RwLock<()>> {
        self.gate.clone()
    }

    pub fn backing(&self) -> &Arc<dyn Backend> {
        &self.store
    }

    pub fn info(&self, ns: &str, digest: &str) -> Result<ContentInfo> {
        check_digest(digest)?;
        self.db.view(|tx| tx.get_content(ns, digest))
    }

    pub fn list(&self, ns: &str, filter: &Filter) -> Result<Vec<ContentInfo>> {
        self.db.view(|tx| tx.list_content(ns, filter))
    }

    pub fn update(
        &self,
        ns: &str,
        info: &ContentInfo,
        fieldpaths: &[String],
    ) -> Result<ContentInfo> {
        check_digest(&info.digest)?;
        self.db.update(|tx| tx.update_content(ns, info, fieldpaths))
    }

    /// Removes a blob from a namespace; the blob itself goes at the next garbage
    /// collection when no namespace holds it any more (see [`crate::gc`]).
    pub fn delete(&self, ns: &str, digest: &str) -> Result<()> {
        check_digest(digest)?;
        self.db.update(|tx| tx.delete_content(ns, digest))
    }

    /// Opens a blob the namespace holds; returns the reader and its size.
    pub fn open_blob(&self, ns: &str, digest: &str) -> Result<(Box<dyn Blob>, i64)> {
        let info = self.info(ns, digest)?;
        Ok((self.store.open_blob(digest)?, info.size))
    }

    pub fn status(&self, ns: &str, reference: &str) -> Result<IngestStatus> {
        check_ref(reference)?;
        let s = self.store.status(&backing_ref(ns, reference))?;
        status(ns, s).ok_or_else(|| Error::NotFound(format!("ref {reference}")))
    }

    pub fn list_statuses(&self, ns: &str, filter: &Filter) -> Result<Vec<IngestStatus>> {
        Ok(self
            .store
            .list_statuses()?
            .into_iter()
            .filter_map(|s| status(ns, s))
            .filter(|s| filter.matches(s))
            .collect())
    }

    pub fn abort(&self, ns: &str, reference: &str) -> Result<()> {
        check_ref(reference)?;
        self.store.abort(&backing_ref(ns, reference))?;
        Ok(())
    }

    /// Opens (or resumes) an ingest. With `lease`, the ingest and the blob it
    /// becomes are added to that lease.
    pub fn writer(
        &self,
        ns: &str,
        reference: &str,
        total: i64,
        expected: &str,
        lease: Option<&str>,
    ) -> Result<NsWriter> {
        check_ref(reference)?;
        if !expected.is_empty() {
            check_digest(expected)?;
            let exists = self.db.update(|tx| {
                // Looked at inside the transaction: garbage collection deletes
                // blobs inside its own.
                let shared = self.store.info(expected).ok();
                if let Some(lease) = lease {
                    tx.add_lease_resource(
                        ns,
                        lease,
                        &LeaseResource {
                            id: expected.to_string(),
                            kind: "content".into(),
                        },
                    )?;
                }
                if tx.get_content(ns, expected).is_ok() {
                    return Ok(true);
                }
                if let Some(info) = &shared {
                    let now = SystemTime::now();
                    tx.put_content(
                        ns,
                        &ContentInfo {
                            digest: expected.to_string(),
                            size: info.size,
                            labels: Labels::new(),
                            created_at: now,
                            updated_at: now,
                        },
                    )?;
                    return Ok(true);
                }
                Ok(false)
            })?;
            if exists {
                return Err(Error::AlreadyExists(format!("content {expected}")));
            }
        }
        if let Some(lease) = lease {
            self.db.update(|tx| {
                tx.add_lease_resource(
                    ns,
                    lease,
                    &LeaseResource {
                        id: reference.to_string(),
                        kind: "ingests".into(),
                    },
                )
            })?;
        }
        let inner = match self
            .store
            .writer(&backing_ref(ns, reference), total, expected)
        {
            // Raced with a commit of the same blob elsewhere.
            Err(ember_content::Error::AlreadyExists(m)) => return Err(Error::AlreadyExists(m)),
            r => r?,
        };
        Ok(NsWriter {
            ns: ns.to_string(),
            reference: reference.to_string(),
            lease: lease.map(str::to_string),
            db: self.db.clone(),
            store: self.store.clone(),
            gate: self.gate.clone(),
            inner,
        })
    }
}

/// A writer of one namespaced ingest.
pub struct NsWriter {
    ns: String,
    reference: String,
    lease: Option<String>,
    db: Db,
    store: Arc<dyn Backend>,
    gate: Arc<RwLock<()>>,
    inner: Box<dyn Ingest>,
}

impl NsWriter {
    pub fn status(&self) -> IngestStatus {
        IngestStatus {
            reference: self.reference.clone(),
            ..IngestStatus::from(self.inner.status())
        }
    }

    pub fn set_total(&mut self, total: i64) -> Result<()> {
        Ok(self.inner.set_total(total)?)
    }

    pub fn set_expected(&mut self, expected: &str) -> Result<()> {
        Ok(self.inner.set_expected(expected)?)
    }

    pub fn write(&mut self, data: &[u8]) -> Result<()> {
        Ok(self.inner.write(data)?)
    }

    pub fn truncate(&mut self, size: i64) -> Result<()> {
        Ok(self.inner.truncate(size)?)
    }

    /// Verifies and stores the blob and records it for the namespace; returns its
    /// digest. `AlreadyExists` when the namespace held it already.
    pub fn commit(self, size: i64, expected: &str, labels: Labels) -> Result<String> {
        validate_labels(&labels)?;
        let gate = self.gate.clone();
        let _gate = gate.read().unwrap_or_else(|e| e.into_inner());
        let c = self.inner.commit(size, expected, &Default::default())?;
        let ns = self.ns;
        let lease = self.lease;
        let store = self.store;
        // A blob the namespace holds already is still added to the lease (and the
        // ingest leaves it) before the commit answers `AlreadyExists`: the client's
        // lease is what keeps the blob from the next collection.
        let held = self.db.update(|tx| {
            // The lease may have gone while the data was written; the blob is
            // recorded all the same.
            if let Some(lease) = lease.as_ref().filter(|l| tx.get_lease(&ns, l).is_ok()) {
                let r = |id: &str, kind: &str| LeaseResource {
                    id: id.to_string(),
                    kind: kind.to_string(),
                };
                tx.add_lease_resource(&ns, lease, &r(&c.digest, "content"))?;
                tx.delete_lease_resource(&ns, lease, &r(&self.reference, "ingests"))?;
            }
            if tx.get_content(&ns, &c.digest).is_ok() {
                return Ok(true);
            }
            if !store.exists(&c.digest) {
                return Err(Error::Unavailable(format!(
                    "content {} was collected while it was committed; write it again",
                    c.digest
                )));
            }
            let now = SystemTime::now();
            tx.put_content(
                &ns,
                &ContentInfo {
                    digest: c.digest.clone(),
                    size: c.size,
                    labels,
                    created_at: now,
                    updated_at: now,
                },
            )?;
            Ok(false)
        })?;
        if held {
            return Err(Error::AlreadyExists(format!("content {}", c.digest)));
        }
        Ok(c.digest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ember_content::Store;

    fn sha256(data: &[u8]) -> String {
        Digest::of(ember_content::Algorithm::Sha256, data).to_string()
    }

    #[test]
    fn namespaced_content() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path().join("meta.redb")).unwrap();
        let cs = ContentStore::new(db, Store::open(dir.path().join("content")).unwrap());
        let d = sha256(b"blob");
        let mut w = cs.writer("a", "r1", 4, &d, None).unwrap();
        w.write(b"blob").unwrap();
        let mut labels = Labels::new();
        labels.insert("x".into(), "1".into());
        assert_eq!(w.commit(4, "", labels).unwrap(), d);
        assert_eq!(cs.info("a", &d).unwrap().labels.get("x").unwrap(), "1");
        assert!(matches!(cs.info("b", &d), Err(Error::NotFound(_))));
        // Shared: namespace b announcing the blob gets it without writing.
        assert!(matches!(
            cs.writer("b", "r1", 4, &d, None),
            Err(Error::AlreadyExists(_))
        ));
        assert!(cs.info("b", &d).unwrap().labels.is_empty());
        // Writing it again without announcing commits to AlreadyExists.
        let mut w = cs.writer("b", "r2", 0, "", None).unwrap();
        w.write(b"blob").unwrap();
        assert!(matches!(
            w.commit(0, "", Labels::new()),
            Err(Error::AlreadyExists(_))
        ));
        // Ingests are per namespace.
        let mut w = cs.writer("a", "r3", 0, "", None).unwrap();
        w.write(b"part").unwrap();
        drop(w);
        assert_eq!(cs.list_statuses("a", &Filter::default()).unwrap().len(), 1);
        assert!(cs
            .list_statuses("b", &Filter::default())
            .unwrap()
            .is_empty());
        assert_eq!(cs.status("a", "r3").unwrap().offset, 4);
        assert!(matches!(cs.status("b", "r3"), Err(Error::NotFound(_))));
        cs.abort("a", "r3").unwrap();
        cs.delete("a", &d).unwrap();
        assert!(cs.backing().exists(&d));
        cs.delete("b", &d).unwrap();
        assert!(matches!(cs.delete("b", &d), Err(Error::NotFound(_))));
        assert!(matches!(
            cs.info("a", "sha256:zz"),
            Err(Error::InvalidArgument(_))
        ));
    }
}
