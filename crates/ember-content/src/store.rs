//! The store: blobs, ingests and their writers.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::digest::{Algorithm, Digest};
use crate::{Error, Result};

/// A committed blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Info {
    pub digest: String,
    pub size: i64,
    pub created_at: SystemTime,
    pub updated_at: SystemTime,
}

/// The state of an ingest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub reference: String,
    pub offset: i64,
    pub total: i64,
    pub expected: String,
    pub started_at: SystemTime,
    pub updated_at: SystemTime,
}

/// The content store. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    root: PathBuf,
    locked: Mutex<HashSet<String>>,
}

fn nanos(t: SystemTime) -> u128 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos()
}

fn write_time(path: &Path, t: SystemTime) -> Result<()> {
    fs::write(path, nanos(t).to_string())?;
    Ok(())
}

fn read_time(path: &Path) -> SystemTime {
    fs::read_to_string(path)
        .ok()
        .and_then(|s| s.trim().parse::<u128>().ok())
        .map(|n| UNIX_EPOCH + Duration::from_nanos(n as u64))
        .unwrap_or(UNIX_EPOCH)
}

fn is_not_found(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::NotFound
}

impl Store {
    pub fn open(root: impl Into<PathBuf>) -> Result<Store> {
        let root = root.into();
        for dir in ["blobs", "ingest"] {
            fs::create_dir_all(root.join(dir)).map_err(|e| {
                Error::Internal(format!("creating {}: {e}", root.join(dir).display()))
            })?;
        }
        Ok(Store {
            inner: Arc::new(Inner {
                root,
                locked: Mutex::new(HashSet::new()),
            }),
        })
    }

    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// Where a blob lives (whether or not it exists).
    pub fn blob_path(&self, digest: &str) -> Result<PathBuf> {
        let d: Digest = digest.parse()?;
        Ok(self
            .inner
            .root
            .join("blobs")
            .join(d.algorithm().name())
            .join(d.hex()))
    }

    fn ingest_dir(&self, reference: &str) -> PathBuf {
        let h = Digest::of(Algorithm::Sha256, reference.as_bytes());
        self.inner.root.join("ingest").join(h.hex())
    }

    pub fn info(&self, digest: &str) -> Result<Info> {
        let path = self.blob_path(digest)?;
        let md = match fs::metadata(&path) {
            Ok(md) => md,
            Err(e) if is_not_found(&e) => {
                return Err(Error::NotFound(format!("content digest {digest}")))
            }
            Err(e) => return Err(e.into()),
        };
        let modified = md.modified().unwrap_or(UNIX_EPOCH);
        Ok(Info {
            digest: digest.to_string(),
            size: md.len() as i64,
            created_at: modified,
            updated_at: modified,
        })
    }

    pub fn exists(&self, digest: &str) -> bool {
        self.blob_path(digest).map(|p| p.exists()).unwrap_or(false)
    }

    /// Opens a blob for reading.
    pub fn open_blob(&self, digest: &str) -> Result<File> {
        let path = self.blob_path(digest)?;
        File::open(&path).map_err(|e| {
            if is_not_found(&e) {
                Error::NotFound(format!("content digest {digest}"))
            } else {
                e.into()
            }
        })
    }

    pub fn delete(&self, digest: &str) -> Result<()> {
        let path = self.blob_path(digest)?;
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Err(Error::NotFound(format!("content digest {digest}"))),
            Err(e) => Err(e.into()),
        }
    }

    /// Every committed blob.
    pub fn walk(&self) -> Result<Vec<Info>> {
        let mut out = Vec::new();
        for alg in [Algorithm::Sha256, Algorithm::Sha384, Algorithm::Sha512] {
            let dir = self.inner.root.join("blobs").join(alg.name());
            let entries = match fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if is_not_found(&e) => continue,
                Err(e) => return Err(e.into()),
            };
            for entry in entries {
                let entry = entry?;
                let digest = format!("{}:{}", alg.name(), entry.file_name().to_string_lossy());
                if digest.parse::<Digest>().is_err() {
                    continue;
                }
                match self.info(&digest) {
                    Ok(i) => out.push(i),
                    Err(Error::NotFound(_)) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(out)
    }

    fn read_status(&self, dir: &Path) -> Result<Status> {
        let reference = match fs::read_to_string(dir.join("ref")) {
            Ok(r) => r,
            Err(e) if is_not_found(&e) => {
                return Err(Error::NotFound(format!("ingest {}", dir.display())))
            }
            Err(e) => return Err(e.into()),
        };
        let offset = fs::metadata(dir.join("data"))
            .map(|m| m.len() as i64)
            .unwrap_or(0);
        let total = fs::read_to_string(dir.join("total"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        let expected = fs::read_to_string(dir.join("expected")).unwrap_or_default();
        Ok(Status {
            reference,
            offset,
            total,
            expected,
            started_at: read_time(&dir.join("startedat")),
            updated_at: read_time(&dir.join("updatedat")),
        })
    }

    pub fn status(&self, reference: &str) -> Result<Status> {
        match self.read_status(&self.ingest_dir(reference)) {
            Err(Error::NotFound(_)) => Err(Error::NotFound(format!("ref {reference}"))),
            r => r,
        }
    }

    /// Every ingest in progress.
    pub fn list_statuses(&self) -> Result<Vec<Status>> {
        let mut out = Vec::new();
        for entry in fs::read_dir(self.inner.root.join("ingest"))? {
            let entry = entry?;
            if entry.file_name().to_string_lossy().starts_with(".tmp-") {
                continue;
            }
            match self.read_status(&entry.path()) {
                Ok(s) => out.push(s),
                Err(Error::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// Removes an ingest. Fails with `Unavailable` while a writer holds it.
    pub fn abort(&self, reference: &str) -> Result<()> {
        let _lock = self.lock(reference)?;
        let dir = self.ingest_dir(reference);
        if !dir.join("ref").exists() {
            return Err(Error::NotFound(format!("ref {reference}")));
        }
        fs::remove_dir_all(&dir)?;
        Ok(())
    }

    /// Removes ingests not written to for `max_age` (and not being written now).
    /// Returns how many were removed.
    pub fn cleanup_stale(&self, max_age: Duration) -> Result<usize> {
        let now = SystemTime::now();
        let mut removed = 0;
        for entry in fs::read_dir(self.inner.root.join("ingest"))? {
            let dir = entry?.path();
            let scratch = dir
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(".tmp-"));
            let status = match self.read_status(&dir) {
                _ if scratch => {
                    let _ = fs::remove_dir_all(&dir);
                    continue;
                }
                Ok(s) => s,
                Err(Error::NotFound(_)) => {
                    // An ingest directory without a ref file is a leftover of a crash
                    // during its creation.
                    let _ = fs::remove_dir_all(&dir);
                    continue;
                }
                Err(e) => return Err(e),
            };
            let last = status.updated_at.max(status.started_at);
            if now.duration_since(last).unwrap_or_default() < max_age {
                continue;
            }
            if let Ok(_lock) = self.lock(&status.reference) {
                tracing::info!(reference = %status.reference, "removing stale ingest");
                fs::remove_dir_all(&dir)?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    fn lock(&self, reference: &str) -> Result<RefLock> {
        let mut locked = self.inner.locked.lock().unwrap();
        if !locked.insert(reference.to_string()) {
            return Err(Error::Unavailable(format!("ref {reference} locked")));
        }
        Ok(RefLock {
            store: self.clone(),
            reference: reference.to_string(),
        })
    }

    /// Opens (or resumes) the ingest `reference`. `total` and `expected` (either may
    /// be empty/zero) are recorded for later checks. Fails with `AlreadyExists`
    /// when `expected` is already committed, and `Unavailable` when another writer
    /// holds the ref.
    pub fn writer(&self, reference: &str, total: i64, expected: &str) -> Result<Writer> {
        if reference.is_empty() {
            return Err(Error::InvalidArgument("ref must not be empty".into()));
        }
        if !expected.is_empty() {
            expected.parse::<Digest>()?;
            if self.exists(expected) {
                return Err(Error::AlreadyExists(format!("content {expected}")));
            }
        }
        let lock = self.lock(reference)?;
        let dir = self.ingest_dir(reference);
        let data_path = dir.join("data");
        let status = if dir.join("ref").exists() {
            let mut s = self.read_status(&dir)?;
            if s.reference != reference {
                return Err(Error::Internal(format!(
                    "ingest {} holds ref {:?}, not {reference:?}",
                    dir.display(),
                    s.reference
                )));
            }
            if total > 0 && total != s.total {
                fs::write(dir.join("total"), total.to_string())?;
                s.total = total;
            }
            if !expected.is_empty() && expected != s.expected {
                fs::write(dir.join("expected"), expected)?;
                s.expected = expected.to_string();
            }
            s
        } else {
            // Build the ingest in a scratch directory and rename it into place so
            // that a crash leaves either nothing or a complete ingest.
            let tmp = self.inner.root.join("ingest").join(format!(
                ".tmp-{}",
                Digest::of(Algorithm::Sha256, reference.as_bytes()).hex()
            ));
            let _ = fs::remove_dir_all(&tmp);
            fs::create_dir_all(&tmp)?;
            let now = SystemTime::now();
            File::create(tmp.join("data"))?;
            write_time(&tmp.join("startedat"), now)?;
            write_time(&tmp.join("updatedat"), now)?;
            if total > 0 {
                fs::write(tmp.join("total"), total.to_string())?;
            }
            if !expected.is_empty() {
                fs::write(tmp.join("expected"), expected)?;
            }
            fs::write(tmp.join("ref"), reference)?;
            let _ = fs::remove_dir_all(&dir);
            fs::rename(&tmp, &dir)?;
            Status {
                reference: reference.to_string(),
                offset: 0,
                total: total.max(0),
                expected: expected.to_string(),
                started_at: now,
                updated_at: now,
            }
        };
        let mut file = OpenOptions::new().read(true).write(true).open(&data_path)?;
        let offset = file.seek(SeekFrom::End(0))? as i64;
        Ok(Writer {
            store: self.clone(),
            dir,
            file,
            status: Status { offset, ..status },
            _lock: lock,
        })
    }
}

struct RefLock {
    store: Store,
    reference: String,
}

impl Drop for RefLock {
    fn drop(&mut self) {
        self.store
            .inner
            .locked
            .lock()
            .unwrap()
            .remove(&self.reference);
    }
}

/// The outcome of a commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commit {
    pub digest: String,
    pub size: i64,
    /// The blob was already in the store (the ingest was dropped).
    pub existed: bool,
}

/// A writer holding the lock of one ingest.
pub struct Writer {
    store: Store,
    dir: PathBuf,
    file: File,
    status: Status,
    _lock: RefLock,
}

impl Writer {
    pub fn status(&self) -> Status {
        self.status.clone()
    }

    pub fn set_total(&mut self, total: i64) -> Result<()> {
        if total > 0 && total != self.status.total {
            fs::write(self.dir.join("total"), total.to_string())?;
            self.status.total = total;
        }
        Ok(())
    }

    pub fn set_expected(&mut self, expected: &str) -> Result<()> {
        if !expected.is_empty() && expected != self.status.expected {
            expected.parse::<Digest>()?;
            fs::write(self.dir.join("expected"), expected)?;
            self.status.expected = expected.to_string();
        }
        Ok(())
    }

    /// Appends data at the current offset.
    pub fn write(&mut self, data: &[u8]) -> Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        self.file.write_all(data)?;
        self.status.offset += data.len() as i64;
        self.status.updated_at = SystemTime::now();
        write_time(&self.dir.join("updatedat"), self.status.updated_at)?;
        Ok(())
    }

    /// Cuts the data back to `size` bytes (restarting an ingest from 0).
    pub fn truncate(&mut self, size: i64) -> Result<()> {
        self.file.set_len(size as u64)?;
        self.file.seek(SeekFrom::Start(size as u64))?;
        self.status.offset = size;
        self.status.updated_at = SystemTime::now();
        write_time(&self.dir.join("updatedat"), self.status.updated_at)?;
        Ok(())
    }

    /// Verifies the data and moves it into the blob store. `size` (when > 0) and
    /// `expected` (when not empty, else the one given when the writer was opened)
    /// must match. On success the ingest is gone; when the blob was already there,
    /// the result says so.
    pub fn commit(mut self, size: i64, expected: &str) -> Result<Commit> {
        self.file.flush()?;
        self.file.sync_all()?;
        let actual_size = self.file.metadata()?.len() as i64;
        if size > 0 && size != actual_size {
            return Err(Error::FailedPrecondition(format!(
                "unexpected commit size {actual_size}, expected {size}"
            )));
        }
        let expected = if expected.is_empty() {
            self.status.expected.clone()
        } else {
            expected.to_string()
        };
        let algorithm = if expected.is_empty() {
            Algorithm::Sha256
        } else {
            expected.parse::<Digest>()?.algorithm()
        };
        let mut hasher = algorithm.hasher();
        self.file.seek(SeekFrom::Start(0))?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = self.file.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        let actual = hasher.finish().to_string();
        if !expected.is_empty() && actual != expected {
            return Err(Error::FailedPrecondition(format!(
                "unexpected commit digest {actual}, expected {expected}"
            )));
        }
        let target = self.store.blob_path(&actual)?;
        if target.exists() {
            fs::remove_dir_all(&self.dir)?;
            return Ok(Commit {
                digest: actual,
                size: actual_size,
                existed: true,
            });
        }
        if let Some(parent) = target.parent() {
            fs::create_dir_all(parent)?;
        }
        let data = self.dir.join("data");
        fs::set_permissions(&data, fs::Permissions::from_mode(0o444))?;
        fs::rename(&data, &target)?;
        if let Some(parent) = target.parent() {
            File::open(parent)?.sync_all()?;
        }
        fs::remove_dir_all(&self.dir)?;
        Ok(Commit {
            digest: actual,
            size: actual_size,
            existed: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha256(data: &[u8]) -> String {
        Digest::of(Algorithm::Sha256, data).to_string()
    }

    #[test]
    fn write_resume_commit() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let data = b"hello, content store";
        let d = sha256(data);
        let mut w = store.writer("ref-1", data.len() as i64, &d).unwrap();
        assert!(matches!(
            store.writer("ref-1", 0, ""),
            Err(Error::Unavailable(_))
        ));
        w.write(&data[..5]).unwrap();
        drop(w);
        let st = store.status("ref-1").unwrap();
        assert_eq!(st.offset, 5);
        assert_eq!(st.total, data.len() as i64);
        assert_eq!(st.expected, d);
        let mut w = store.writer("ref-1", 0, "").unwrap();
        assert_eq!(w.status().offset, 5);
        w.write(&data[5..]).unwrap();
        assert_eq!(w.commit(data.len() as i64, "").unwrap().digest, d);
        assert!(matches!(store.status("ref-1"), Err(Error::NotFound(_))));
        let info = store.info(&d).unwrap();
        assert_eq!(info.size, data.len() as i64);
        let mut s = String::new();
        store.open_blob(&d).unwrap().read_to_string(&mut s).unwrap();
        assert_eq!(s.as_bytes(), data);
        assert!(matches!(
            store.writer("ref-2", 0, &d),
            Err(Error::AlreadyExists(_))
        ));
        let mut w = store.writer("ref-2", 0, "").unwrap();
        w.write(data).unwrap();
        assert!(w.commit(0, "").unwrap().existed);
        assert_eq!(store.walk().unwrap().len(), 1);
        store.delete(&d).unwrap();
        assert!(matches!(store.info(&d), Err(Error::NotFound(_))));
    }

    #[test]
    fn bad_commits_keep_the_ingest() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut w = store.writer("r", 0, "").unwrap();
        w.write(b"abc").unwrap();
        drop(w);
        let w = store.writer("r", 0, "").unwrap();
        assert!(matches!(w.commit(4, ""), Err(Error::FailedPrecondition(_))));
        let w = store.writer("r", 0, "").unwrap();
        assert!(matches!(
            w.commit(3, &sha256(b"xyz")),
            Err(Error::FailedPrecondition(_))
        ));
        let w = store.writer("r", 0, "").unwrap();
        let d512 = Digest::of(Algorithm::Sha512, b"abc").to_string();
        assert_eq!(w.commit(3, &d512).unwrap().digest, d512);
        assert!(store.info(&d512).is_ok());
    }

    #[test]
    fn truncate_abort_and_stale_cleanup() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut w = store.writer("r", 0, "").unwrap();
        w.write(b"abcdef").unwrap();
        w.truncate(0).unwrap();
        w.write(b"xy").unwrap();
        assert_eq!(w.status().offset, 2);
        assert!(matches!(store.abort("r"), Err(Error::Unavailable(_))));
        drop(w);
        assert_eq!(store.list_statuses().unwrap().len(), 1);
        store.abort("r").unwrap();
        assert!(matches!(store.abort("r"), Err(Error::NotFound(_))));
        drop(store.writer("old", 0, "").unwrap());
        assert_eq!(store.cleanup_stale(Duration::from_secs(3600)).unwrap(), 0);
        assert_eq!(store.cleanup_stale(Duration::ZERO).unwrap(), 1);
        assert!(store.list_statuses().unwrap().is_empty());
    }
}
