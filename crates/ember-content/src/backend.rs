//! What a blob store is, whether it lives on this host ([`Store`]) or behind a
//! socket ([`crate::remote::RemoteStore`]): the metadata layer and the services are
//! written against these traits.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek};

use crate::{Commit, Info, Result, Status, Store, Writer};

/// A blob opened for reading.
pub trait Blob: Read + Seek + Send {}

impl<T: Read + Seek + Send> Blob for T {}

/// A blob store without namespaces or labels.
pub trait Backend: Send + Sync {
    fn info(&self, digest: &str) -> Result<Info>;
    fn exists(&self, digest: &str) -> bool {
        self.info(digest).is_ok()
    }
    fn open_blob(&self, digest: &str) -> Result<Box<dyn Blob>>;
    fn delete(&self, digest: &str) -> Result<()>;
    fn walk(&self) -> Result<Vec<Info>>;
    fn status(&self, reference: &str) -> Result<Status>;
    fn list_statuses(&self) -> Result<Vec<Status>>;
    fn abort(&self, reference: &str) -> Result<()>;
    /// Opens (or resumes) the ingest `reference`.
    fn writer(&self, reference: &str, total: i64, expected: &str) -> Result<Box<dyn Ingest>>;
}

/// A writer of one ingest.
pub trait Ingest: Send {
    fn status(&self) -> Status;
    fn set_total(&mut self, total: i64) -> Result<()>;
    fn set_expected(&mut self, expected: &str) -> Result<()>;
    fn write(&mut self, data: &[u8]) -> Result<()>;
    fn truncate(&mut self, size: i64) -> Result<()>;
    /// Verifies and stores the blob. `labels` go along where the store keeps
    /// labels (a remote one may); a local store has none.
    fn commit(
        self: Box<Self>,
        size: i64,
        expected: &str,
        labels: &HashMap<String, String>,
    ) -> Result<Commit>;
}

impl Backend for Store {
    fn info(&self, digest: &str) -> Result<Info> {
        Store::info(self, digest)
    }
    fn exists(&self, digest: &str) -> bool {
        Store::exists(self, digest)
    }
    fn open_blob(&self, digest: &str) -> Result<Box<dyn Blob>> {
        let f: File = Store::open_blob(self, digest)?;
        Ok(Box::new(f))
    }
    fn delete(&self, digest: &str) -> Result<()> {
        Store::delete(self, digest)
    }
    fn walk(&self) -> Result<Vec<Info>> {
        Store::walk(self)
    }
    fn status(&self, reference: &str) -> Result<Status> {
        Store::status(self, reference)
    }
    fn list_statuses(&self) -> Result<Vec<Status>> {
        Store::list_statuses(self)
    }
    fn abort(&self, reference: &str) -> Result<()> {
        Store::abort(self, reference)
    }
    fn writer(&self, reference: &str, total: i64, expected: &str) -> Result<Box<dyn Ingest>> {
        Ok(Box::new(Store::writer(self, reference, total, expected)?))
    }
}

impl Ingest for Writer {
    fn status(&self) -> Status {
        Writer::status(self)
    }
    fn set_total(&mut self, total: i64) -> Result<()> {
        Writer::set_total(self, total)
    }
    fn set_expected(&mut self, expected: &str) -> Result<()> {
        Writer::set_expected(self, expected)
    }
    fn write(&mut self, data: &[u8]) -> Result<()> {
        Writer::write(self, data)
    }
    fn truncate(&mut self, size: i64) -> Result<()> {
        Writer::truncate(self, size)
    }
    fn commit(
        self: Box<Self>,
        size: i64,
        expected: &str,
        _labels: &HashMap<String, String>,
    ) -> Result<Commit> {
        Writer::commit(*self, size, expected)
    }
}
