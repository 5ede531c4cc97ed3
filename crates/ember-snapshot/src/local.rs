//! Snapshotters that keep their snapshots in local directories.
//!
//! Layout under the snapshotter root:
//!
//! ```text
//! metadata.redb            key -> record (id, kind, parent key, labels, times, usage)
//! snapshots/<id>/fs        the snapshot's own files (overlay upper dir / full copy)
//! snapshots/<id>/work      overlay work dir (active overlay snapshots only)
//! snapshots/rm-<id>        a removed snapshot on its way out
//! ```
//!
//! Every change of the record table happens in one redb write transaction, which also
//! serialises the directory work that goes with it. A crash between the two leaves at
//! worst a directory without a record, which [`Snapshotter::cleanup`] removes.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use redb::{Database, ReadableDatabase, ReadableTable};

use crate::record::{decode, encode, Record, META, SNAPSHOTS};
use crate::usage::disk_usage;
use crate::{apply_label_update, Error, Info, Kind, Labels, Mount, Result, Snapshotter, Usage};

/// How snapshots are materialised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Driver {
    /// Layers stacked with overlayfs; a snapshot holds only its own changes.
    Overlay,
    /// Every snapshot starts as a full copy of its parent; mounts are bind mounts.
    Native,
}

/// A directory-backed snapshotter (`overlayfs` or `native`).
#[derive(Clone)]
pub struct LocalSnapshotter {
    inner: Arc<Inner>,
}

struct Inner {
    root: PathBuf,
    driver: Driver,
    db: Database,
    overlay_index_off: bool,
}

fn db_err(e: impl Into<redb::Error>) -> Error {
    Error::Internal(format!("snapshot metadata: {}", e.into()))
}

impl LocalSnapshotter {
    /// Opens (creating if needed) a snapshotter rooted at `root`. For the overlay
    /// driver the host must support overlayfs with several lower directories, which
    /// is checked with a trial mount.
    pub fn open(root: impl Into<PathBuf>, driver: Driver) -> Result<Self> {
        let root = root.into();
        std::fs::create_dir_all(root.join("snapshots"))
            .map_err(|e| Error::internal(&format!("creating {}", root.display()), e))?;
        if driver == Driver::Overlay {
            check_overlay(&root)?;
        }
        let db = Database::create(root.join("metadata.redb")).map_err(db_err)?;
        let txn = db.begin_write().map_err(db_err)?;
        txn.open_table(SNAPSHOTS).map_err(db_err)?;
        txn.open_table(META).map_err(db_err)?;
        txn.commit().map_err(db_err)?;
        let overlay_index_off = Path::new("/sys/module/overlay/parameters/index").exists();
        Ok(LocalSnapshotter {
            inner: Arc::new(Inner {
                root,
                driver,
                db,
                overlay_index_off,
            }),
        })
    }

    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    async fn blocking<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Inner) -> Result<T> + Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(|e| Error::internal("snapshotter task", e))?
    }
}

/// Mounts a throw-away overlay with two lower directories to see that it works.
fn check_overlay(root: &Path) -> Result<()> {
    let dir = root.join("overlay-check");
    let _ = std::fs::remove_dir_all(&dir);
    for d in ["l1", "l2", "upper", "work", "merged"] {
        std::fs::create_dir_all(dir.join(d))?;
    }
    let opts = format!(
        "lowerdir={}:{},upperdir={},workdir={}",
        dir.join("l2").display(),
        dir.join("l1").display(),
        dir.join("upper").display(),
        dir.join("work").display()
    );
    let res = nix::mount::mount(
        Some("overlay"),
        &dir.join("merged"),
        Some("overlay"),
        nix::mount::MsFlags::empty(),
        Some(opts.as_str()),
    );
    if res.is_ok() {
        let _ = nix::mount::umount2(&dir.join("merged"), nix::mount::MntFlags::MNT_DETACH);
    }
    let _ = std::fs::remove_dir_all(&dir);
    res.map_err(|e| {
        Error::FailedPrecondition(format!(
            "overlayfs is not usable on {}: {e}",
            root.display()
        ))
    })
}

impl Inner {
    fn dir(&self, id: u64) -> PathBuf {
        self.root.join("snapshots").join(id.to_string())
    }

    fn fs_dir(&self, id: u64) -> PathBuf {
        self.dir(id).join("fs")
    }

    fn get(&self, key: &str) -> Result<Record> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let t = txn.open_table(SNAPSHOTS).map_err(db_err)?;
        match t.get(key).map_err(db_err)? {
            Some(v) => decode(v.value()),
            None => Err(Error::NotFound(format!("snapshot {key:?} does not exist"))),
        }
    }

    /// The chain of committed ancestors of a record, nearest first.
    fn parent_ids(
        &self,
        t: &impl ReadableTable<&'static str, &'static [u8]>,
        r: &Record,
    ) -> Result<Vec<u64>> {
        let mut ids = Vec::new();
        let mut parent = r.parent.clone();
        while !parent.is_empty() {
            let p = match t.get(parent.as_str()).map_err(db_err)? {
                Some(v) => decode(v.value())?,
                None => {
                    return Err(Error::Internal(format!(
                        "parent snapshot {parent:?} is missing"
                    )))
                }
            };
            ids.push(p.id);
            parent = p.parent;
            if ids.len() > 4096 {
                return Err(Error::Internal("snapshot parent chain too long".into()));
            }
        }
        Ok(ids)
    }

    fn mounts_for(&self, r: &Record, parents: &[u64]) -> Vec<Mount> {
        let bind = |path: PathBuf, ro: bool| Mount {
            kind: "bind".into(),
            source: path.display().to_string(),
            target: String::new(),
            options: vec![if ro { "ro" } else { "rw" }.into(), "rbind".into()],
        };
        let ro = r.kind == Kind::View;
        if self.driver == Driver::Native || parents.is_empty() {
            return vec![bind(self.fs_dir(r.id), ro)];
        }
        if ro && parents.len() == 1 {
            return vec![bind(self.fs_dir(parents[0]), true)];
        }
        let lower = parents
            .iter()
            .map(|id| self.fs_dir(*id).display().to_string())
            .collect::<Vec<_>>()
            .join(":");
        let mut options = Vec::new();
        if self.overlay_index_off {
            options.push("index=off".to_string());
        }
        if !ro {
            options.push(format!("workdir={}", self.dir(r.id).join("work").display()));
            options.push(format!("upperdir={}", self.fs_dir(r.id).display()));
        }
        options.push(format!("lowerdir={lower}"));
        vec![Mount {
            kind: "overlay".into(),
            source: "overlay".into(),
            target: String::new(),
            options,
        }]
    }

    fn create(&self, key: &str, parent: &str, labels: Labels, kind: Kind) -> Result<Vec<Mount>> {
        if key.is_empty() {
            return Err(Error::InvalidArgument(
                "snapshot key must not be empty".into(),
            ));
        }
        let txn = self.db.begin_write().map_err(db_err)?;
        let (record, parents) = {
            let mut t = txn.open_table(SNAPSHOTS).map_err(db_err)?;
            if t.get(key).map_err(db_err)?.is_some() {
                return Err(Error::AlreadyExists(format!("snapshot {key:?}")));
            }
            let mut parent_record = None;
            if !parent.is_empty() {
                let p = match t.get(parent).map_err(db_err)? {
                    Some(v) => decode(v.value())?,
                    None => {
                        return Err(Error::NotFound(format!(
                            "parent snapshot {parent:?} does not exist"
                        )))
                    }
                };
                if p.kind != Kind::Committed {
                    return Err(Error::InvalidArgument(format!(
                        "parent {parent:?} is not a committed snapshot"
                    )));
                }
                parent_record = Some(p);
            }
            let mut meta = txn.open_table(META).map_err(db_err)?;
            let id = meta
                .get("next_id")
                .map_err(db_err)?
                .map(|v| v.value())
                .unwrap_or(1);
            meta.insert("next_id", id + 1).map_err(db_err)?;
            let now = SystemTime::now();
            let record = Record {
                id,
                kind,
                parent: parent.to_string(),
                labels,
                created_at: now,
                updated_at: now,
                usage: None,
            };
            let parents = self.parent_ids(&t, &record)?;
            let dir = self.dir(id);
            let made = (|| -> Result<()> {
                let _ = std::fs::remove_dir_all(&dir);
                std::fs::create_dir_all(dir.join("fs"))?;
                if self.driver == Driver::Overlay && kind == Kind::Active && !parents.is_empty() {
                    std::fs::create_dir_all(dir.join("work"))?;
                }
                if let (Driver::Native, Some(p)) = (self.driver, &parent_record) {
                    copy_tree(&self.fs_dir(p.id), &dir.join("fs"))?;
                }
                Ok(())
            })();
            if let Err(e) = made {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e);
            }
            t.insert(key, encode(&record).as_slice()).map_err(db_err)?;
            (record, parents)
        };
        if let Err(e) = txn.commit() {
            let _ = std::fs::remove_dir_all(self.dir(record.id));
            return Err(db_err(e));
        }
        Ok(self.mounts_for(&record, &parents))
    }

    fn mounts(&self, key: &str) -> Result<Vec<Mount>> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let t = txn.open_table(SNAPSHOTS).map_err(db_err)?;
        let r = match t.get(key).map_err(db_err)? {
            Some(v) => decode(v.value())?,
            None => return Err(Error::NotFound(format!("snapshot {key:?} does not exist"))),
        };
        if r.kind == Kind::Committed {
            return Err(Error::FailedPrecondition(format!(
                "snapshot {key:?} is committed and cannot be mounted"
            )));
        }
        let parents = self.parent_ids(&t, &r)?;
        Ok(self.mounts_for(&r, &parents))
    }

    fn commit(&self, name: &str, key: &str, labels: Labels) -> Result<()> {
        if name.is_empty() {
            return Err(Error::InvalidArgument(
                "snapshot name must not be empty".into(),
            ));
        }
        let txn = self.db.begin_write().map_err(db_err)?;
        {
            let mut t = txn.open_table(SNAPSHOTS).map_err(db_err)?;
            let mut r = match t.get(key).map_err(db_err)? {
                Some(v) => decode(v.value())?,
                None => return Err(Error::NotFound(format!("snapshot {key:?} does not exist"))),
            };
            if r.kind != Kind::Active {
                return Err(Error::FailedPrecondition(format!(
                    "snapshot {key:?} is not active"
                )));
            }
            if t.get(name).map_err(db_err)?.is_some() {
                return Err(Error::AlreadyExists(format!("snapshot {name:?}")));
            }
            let usage = disk_usage(&self.fs_dir(r.id))?;
            let now = SystemTime::now();
            r.kind = Kind::Committed;
            r.usage = Some(usage);
            r.labels = labels;
            r.created_at = now;
            r.updated_at = now;
            t.remove(key).map_err(db_err)?;
            t.insert(name, encode(&r).as_slice()).map_err(db_err)?;
        }
        txn.commit().map_err(db_err)?;
        Ok(())
    }

    fn remove(&self, key: &str) -> Result<()> {
        let txn = self.db.begin_write().map_err(db_err)?;
        let id = {
            let mut t = txn.open_table(SNAPSHOTS).map_err(db_err)?;
            let r = match t.get(key).map_err(db_err)? {
                Some(v) => decode(v.value())?,
                None => return Err(Error::NotFound(format!("snapshot {key:?} does not exist"))),
            };
            for entry in t.iter().map_err(db_err)? {
                let (_, v) = entry.map_err(db_err)?;
                if decode(v.value())?.parent == key {
                    return Err(Error::FailedPrecondition(format!(
                        "cannot remove snapshot {key:?} with a child"
                    )));
                }
            }
            t.remove(key).map_err(db_err)?;
            r.id
        };
        let from = self.dir(id);
        let to = self.root.join("snapshots").join(format!("rm-{id}"));
        if from.exists() {
            std::fs::rename(&from, &to)?;
        }
        if let Err(e) = txn.commit() {
            let _ = std::fs::rename(&to, &from);
            return Err(db_err(e));
        }
        if let Err(e) = std::fs::remove_dir_all(&to) {
            tracing::warn!(path = %to.display(), error = %e, "removing snapshot directory");
        }
        Ok(())
    }

    fn update(&self, info: Info, fieldpaths: &[String]) -> Result<Info> {
        let txn = self.db.begin_write().map_err(db_err)?;
        let out = {
            let mut t = txn.open_table(SNAPSHOTS).map_err(db_err)?;
            let mut r = match t.get(info.name.as_str()).map_err(db_err)? {
                Some(v) => decode(v.value())?,
                None => {
                    return Err(Error::NotFound(format!(
                        "snapshot {:?} does not exist",
                        info.name
                    )))
                }
            };
            apply_label_update(
                &mut r.labels,
                &info.labels,
                fieldpaths,
                &format!("snapshot {:?}", info.name),
            )?;
            r.updated_at = SystemTime::now();
            t.insert(info.name.as_str(), encode(&r).as_slice())
                .map_err(db_err)?;
            r.info(&info.name)
        };
        txn.commit().map_err(db_err)?;
        Ok(out)
    }

    fn usage(&self, key: &str) -> Result<Usage> {
        let r = self.get(key)?;
        // Only active snapshots change; committed ones were measured at commit and
        // views own nothing.
        match r.kind {
            Kind::Active => Ok(disk_usage(&self.fs_dir(r.id))?),
            _ => Ok(r.usage.unwrap_or_default()),
        }
    }

    fn walk(&self) -> Result<Vec<Info>> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let t = txn.open_table(SNAPSHOTS).map_err(db_err)?;
        let mut out = Vec::new();
        for entry in t.iter().map_err(db_err)? {
            let (k, v) = entry.map_err(db_err)?;
            out.push(decode(v.value())?.info(k.value()));
        }
        Ok(out)
    }

    fn cleanup(&self) -> Result<()> {
        let ids: std::collections::HashSet<String> = {
            let txn = self.db.begin_read().map_err(db_err)?;
            let t = txn.open_table(SNAPSHOTS).map_err(db_err)?;
            let mut ids = std::collections::HashSet::new();
            for entry in t.iter().map_err(db_err)? {
                let (_, v) = entry.map_err(db_err)?;
                ids.insert(decode(v.value())?.id.to_string());
            }
            ids
        };
        // Only directories older than this call's snapshot of the records can be
        // orphans; a prepare running concurrently holds the write lock while it
        // creates its directory, so take it to be sure.
        let txn = self.db.begin_write().map_err(db_err)?;
        for entry in std::fs::read_dir(self.root.join("snapshots"))? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().to_string();
            if !ids.contains(&name) {
                tracing::info!(dir = %entry.path().display(), "removing unreferenced snapshot directory");
                std::fs::remove_dir_all(entry.path())?;
            }
        }
        txn.abort().map_err(db_err)?;
        Ok(())
    }
}

/// Copies a directory tree preserving ownership, modes, times, links and special
/// files (`cp -a`).
fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg("--")
        .arg(format!("{}/.", from.display()))
        .arg(to)
        .status()?;
    if !status.success() {
        return Err(Error::Internal(format!(
            "copying {} to {} failed: {status}",
            from.display(),
            to.display()
        )));
    }
    Ok(())
}

#[async_trait::async_trait]
impl Snapshotter for LocalSnapshotter {
    async fn stat(&self, key: &str) -> Result<Info> {
        let key = key.to_string();
        self.blocking(move |i| i.get(&key).map(|r| r.info(&key)))
            .await
    }

    async fn update(&self, info: Info, fieldpaths: &[String]) -> Result<Info> {
        let fieldpaths = fieldpaths.to_vec();
        self.blocking(move |i| i.update(info, &fieldpaths)).await
    }

    async fn usage(&self, key: &str) -> Result<Usage> {
        let key = key.to_string();
        self.blocking(move |i| i.usage(&key)).await
    }

    async fn mounts(&self, key: &str) -> Result<Vec<Mount>> {
        let key = key.to_string();
        self.blocking(move |i| i.mounts(&key)).await
    }

    async fn prepare(&self, key: &str, parent: &str, labels: Labels) -> Result<Vec<Mount>> {
        let (key, parent) = (key.to_string(), parent.to_string());
        self.blocking(move |i| i.create(&key, &parent, labels, Kind::Active))
            .await
    }

    async fn view(&self, key: &str, parent: &str, labels: Labels) -> Result<Vec<Mount>> {
        let (key, parent) = (key.to_string(), parent.to_string());
        self.blocking(move |i| i.create(&key, &parent, labels, Kind::View))
            .await
    }

    async fn commit(&self, name: &str, key: &str, labels: Labels) -> Result<()> {
        let (name, key) = (name.to_string(), key.to_string());
        self.blocking(move |i| i.commit(&name, &key, labels)).await
    }

    async fn remove(&self, key: &str) -> Result<()> {
        let key = key.to_string();
        self.blocking(move |i| i.remove(&key)).await
    }

    async fn walk(&self) -> Result<Vec<Info>> {
        self.blocking(|i| i.walk()).await
    }

    async fn cleanup(&self) -> Result<()> {
        self.blocking(|i| i.cleanup()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn native_lifecycle() {
        let dir = tempfile::tempdir().unwrap();
        let s = LocalSnapshotter::open(dir.path(), Driver::Native).unwrap();
        let m = s.prepare("a", "", Labels::new()).await.unwrap();
        assert_eq!(m[0].kind, "bind");
        std::fs::write(Path::new(&m[0].source).join("hello"), b"hi").unwrap();
        s.commit("base", "a", Labels::new()).await.unwrap();
        assert!(matches!(s.stat("a").await, Err(Error::NotFound(_))));
        let info = s.stat("base").await.unwrap();
        assert_eq!(info.kind, Kind::Committed);
        let m = s.prepare("b", "base", Labels::new()).await.unwrap();
        assert_eq!(
            std::fs::read(Path::new(&m[0].source).join("hello")).unwrap(),
            b"hi"
        );
        let v = s.view("v", "base", Labels::new()).await.unwrap();
        assert_eq!(v[0].options, vec!["ro", "rbind"]);
        assert!(matches!(
            s.remove("base").await,
            Err(Error::FailedPrecondition(_))
        ));
        assert!(matches!(
            s.prepare("b", "", Labels::new()).await,
            Err(Error::AlreadyExists(_))
        ));
        assert!(matches!(
            s.prepare("c", "nope", Labels::new()).await,
            Err(Error::NotFound(_))
        ));
        assert!(matches!(
            s.prepare("c", "b", Labels::new()).await,
            Err(Error::InvalidArgument(_))
        ));
        assert!(s.usage("base").await.unwrap().inodes >= 2);
        s.remove("b").await.unwrap();
        s.remove("v").await.unwrap();
        s.remove("base").await.unwrap();
        assert!(s.walk().await.unwrap().is_empty());
        std::fs::create_dir_all(dir.path().join("snapshots/999")).unwrap();
        s.cleanup().await.unwrap();
        assert!(!dir.path().join("snapshots/999").exists());
    }

    #[tokio::test]
    async fn overlay_mounts() {
        let dir = tempfile::tempdir().unwrap();
        let s = match LocalSnapshotter::open(dir.path(), Driver::Overlay) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("overlay not available here: {e}");
                return;
            }
        };
        let m = s.prepare("a", "", Labels::new()).await.unwrap();
        assert_eq!(m[0].kind, "bind");
        s.commit("l1", "a", Labels::new()).await.unwrap();
        s.prepare("b", "l1", Labels::new()).await.unwrap();
        s.commit("l2", "b", Labels::new()).await.unwrap();
        let m = s.prepare("c", "l2", Labels::new()).await.unwrap();
        assert_eq!(m[0].kind, "overlay");
        let lower = m[0]
            .options
            .iter()
            .find(|o| o.starts_with("lowerdir="))
            .unwrap();
        assert_eq!(lower.matches(':').count(), 1);
        assert!(m[0].options.iter().any(|o| o.starts_with("upperdir=")));
        let v = s.view("v", "l1", Labels::new()).await.unwrap();
        assert_eq!(v[0].kind, "bind");
        let v = s.view("v2", "l2", Labels::new()).await.unwrap();
        assert_eq!(v[0].kind, "overlay");
        assert!(!v[0].options.iter().any(|o| o.starts_with("upperdir=")));
        // Reopening keeps everything.
        drop(s);
        let s = LocalSnapshotter::open(dir.path(), Driver::Overlay).unwrap();
        assert_eq!(s.walk().await.unwrap().len(), 5);
    }
}
