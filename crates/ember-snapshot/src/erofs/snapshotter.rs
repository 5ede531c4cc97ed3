//! [`ErofsSnapshotter`]: containerd's snapshot semantics over EROFS layers and
//! ext4 writable images (layout in [`super::layout`]).
//!
//! Record changes happen in redb write transactions; the slow file work (making a
//! writable image, building a layer) happens outside them. A new snapshot's
//! directory is made as `snapshots/tmp-<id>` and renamed to `snapshots/<id>` in the
//! transaction that inserts its record, so a crash leaves at worst a directory
//! without a record, which opening the snapshotter (and `Cleanup`) removes.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use redb::{Database, ReadableDatabase, ReadableTable};

use super::claim::UpperLock;
use super::host::{self, allocated, is_mounted, mount_layer, mount_upper, unmount};
use super::layout::{LAYER_IMAGE, LAYER_MOUNT, UPPER_IMAGE, UPPER_LOCK, UPPER_MOUNT};
use super::store::{self, db_err, encode, Record, META, SNAPSHOTS};
use crate::usage::disk_usage;
use crate::{apply_label_update, Error, Info, Kind, Labels, Mount, Result, Snapshotter, Usage};

/// The label (on `Prepare`) that sizes an active snapshot's writable image, in
/// bytes or with a `K`/`M`/`G`/`T` suffix. Under containerd's inherited prefix, as
/// only those labels reach a snapshotter.
pub const SIZE_LABEL: &str = "containerd.io/snapshot/ember.erofs.size";

/// The default size of a writable image (sparse: only what is written is stored).
pub const DEFAULT_SIZE: u64 = 64 << 30;

/// Settings of an [`ErofsSnapshotter`].
#[derive(Debug, Clone)]
pub struct ErofsConfig {
    /// The size of a writable image unless [`SIZE_LABEL`] says otherwise.
    pub default_size: u64,
}

impl Default for ErofsConfig {
    fn default() -> Self {
        ErofsConfig {
            default_size: DEFAULT_SIZE,
        }
    }
}

/// The `erofs` snapshotter.
#[derive(Clone)]
pub struct ErofsSnapshotter {
    inner: Arc<Inner>,
}

struct Inner {
    root: PathBuf,
    db: Database,
    config: ErofsConfig,
    /// Serialises checking and making host mounts.
    mounting: Mutex<()>,
    /// Set once opening is done: from then on `tmp-` directories may belong to a
    /// prepare under way.
    opened: AtomicBool,
}

fn in_use(key: &str) -> Error {
    Error::FailedPrecondition(format!("snapshot {key:?} is in use by a VM"))
}

impl ErofsSnapshotter {
    /// Opens (creating if needed) the snapshotter rooted at `root`: leftovers of
    /// interrupted work are removed and every layer (and every writable image no
    /// VM holds) is mounted on the host again.
    pub fn open(root: impl Into<PathBuf>, config: ErofsConfig) -> Result<Self> {
        let root = root.into();
        std::fs::create_dir_all(root.join("snapshots"))
            .map_err(|e| Error::internal(&format!("creating {}", root.display()), e))?;
        if super::tool_available().is_none() {
            return Err(Error::FailedPrecondition(
                "mkfs.erofs is not installed (erofs-utils)".into(),
            ));
        }
        let db = store::open(&root.join("metadata.redb"))?;
        let s = ErofsSnapshotter {
            inner: Arc::new(Inner {
                root,
                db,
                config,
                mounting: Mutex::new(()),
                opened: AtomicBool::new(false),
            }),
        };
        s.inner.cleanup()?;
        s.inner.remount_all();
        Ok(s)
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

impl Inner {
    fn snapshots(&self) -> PathBuf {
        self.root.join("snapshots")
    }

    fn dir(&self, id: u64) -> PathBuf {
        self.snapshots().join(id.to_string())
    }

    fn read<T>(&self, f: impl FnOnce(&redb::ReadOnlyTable<&str, &[u8]>) -> Result<T>) -> Result<T> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let t = txn.open_table(SNAPSHOTS).map_err(db_err)?;
        f(&t)
    }

    /// Mounts the layers `ids` on the host (those not mounted yet).
    fn ensure_layers(&self, ids: &[u64]) -> Result<()> {
        let _g = self.mounting.lock().unwrap_or_else(|e| e.into_inner());
        for id in ids {
            let dir = self.dir(*id);
            mount_layer(&dir.join(LAYER_IMAGE), &dir.join(LAYER_MOUNT))?;
        }
        Ok(())
    }

    /// Mounts an active snapshot's writable image on the host unless a VM holds it;
    /// `false` when one does.
    fn ensure_upper(&self, id: u64) -> Result<bool> {
        let dir = self.dir(id);
        let _g = self.mounting.lock().unwrap_or_else(|e| e.into_inner());
        let Some(_lock) = UpperLock::try_lock(&dir)? else {
            return Ok(false);
        };
        mount_upper(&dir.join(UPPER_IMAGE), &dir.join(UPPER_MOUNT))?;
        Ok(true)
    }

    fn mounts_for(&self, r: &Record, parents: &[u64]) -> Vec<Mount> {
        let path = |p: PathBuf| p.display().to_string();
        let dir = self.dir(r.id);
        let bind = |source: String, ro: bool| Mount {
            kind: "bind".into(),
            source,
            target: String::new(),
            options: vec![if ro { "ro" } else { "rw" }.into(), "rbind".into()],
        };
        let lower = || {
            parents
                .iter()
                .map(|id| path(self.dir(*id).join(LAYER_MOUNT)))
                .collect::<Vec<_>>()
                .join(":")
        };
        match (r.kind, parents.len()) {
            (Kind::View, 0) => vec![bind(path(dir.join(LAYER_MOUNT)), true)],
            (Kind::View, 1) => vec![bind(path(self.dir(parents[0]).join(LAYER_MOUNT)), true)],
            (Kind::View, _) => vec![Mount {
                kind: "overlay".into(),
                source: "overlay".into(),
                target: String::new(),
                options: vec![format!("lowerdir={}", lower())],
            }],
            (_, 0) => vec![bind(path(dir.join(UPPER_MOUNT).join("upper")), false)],
            (_, _) => vec![Mount {
                kind: "overlay".into(),
                source: "overlay".into(),
                target: String::new(),
                options: vec![
                    format!("workdir={}", path(dir.join(UPPER_MOUNT).join("work"))),
                    format!("upperdir={}", path(dir.join(UPPER_MOUNT).join("upper"))),
                    format!("lowerdir={}", lower()),
                ],
            }],
        }
    }

    /// Makes the host mounts a snapshot's mounts need, then returns them.
    fn ready_mounts(&self, r: &Record, parents: &[u64]) -> Result<Vec<Mount>> {
        self.ensure_layers(parents)?;
        if r.kind == Kind::Active {
            self.ensure_upper(r.id)?;
        }
        Ok(self.mounts_for(r, parents))
    }

    fn create(&self, key: &str, parent: &str, labels: Labels, kind: Kind) -> Result<Vec<Mount>> {
        if key.is_empty() {
            return Err(Error::InvalidArgument(
                "snapshot key must not be empty".into(),
            ));
        }
        let size = match labels.get(SIZE_LABEL) {
            Some(v) => host::parse_size(v)
                .filter(|s| *s >= 1 << 20)
                .ok_or_else(|| {
                    Error::InvalidArgument(format!(
                        "label {SIZE_LABEL}={v:?} is not a size of at least 1M"
                    ))
                })?,
            None => self.config.default_size,
        };
        let check = |t: &dyn Fn(&str) -> Result<Option<Record>>| -> Result<()> {
            if t(key)?.is_some() {
                return Err(Error::AlreadyExists(format!("snapshot {key:?}")));
            }
            if !parent.is_empty() {
                let p = t(parent)?.ok_or_else(|| {
                    Error::NotFound(format!("parent snapshot {parent:?} does not exist"))
                })?;
                if p.kind != Kind::Committed {
                    return Err(Error::InvalidArgument(format!(
                        "parent {parent:?} is not a committed snapshot"
                    )));
                }
            }
            Ok(())
        };
        self.read(|t| check(&|k| store::get(t, k)))?;
        // An id of its own, then the files, then the record.
        let id = {
            let txn = self.db.begin_write().map_err(db_err)?;
            let id = {
                let mut meta = txn.open_table(META).map_err(db_err)?;
                let id = meta
                    .get("next_id")
                    .map_err(db_err)?
                    .map(|v| v.value())
                    .unwrap_or(1);
                meta.insert("next_id", id + 1).map_err(db_err)?;
                id
            };
            txn.commit().map_err(db_err)?;
            id
        };
        let tmp = self.snapshots().join(format!("tmp-{id}"));
        let _ = std::fs::remove_dir_all(&tmp);
        let made = (|| -> Result<()> {
            std::fs::create_dir_all(&tmp)?;
            match kind {
                Kind::Active => {
                    host::make_upper_image(&tmp.join(UPPER_IMAGE), size, &tmp.join("stage"))?;
                    std::fs::write(tmp.join(UPPER_LOCK), b"")?;
                }
                _ => std::fs::create_dir_all(tmp.join(LAYER_MOUNT))?,
            }
            Ok(())
        })();
        if let Err(e) = made {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
        let dir = self.dir(id);
        let txn = self.db.begin_write().map_err(db_err)?;
        let (record, parents) = {
            let mut t = txn.open_table(SNAPSHOTS).map_err(db_err)?;
            if let Err(e) = check(&|k| store::get(&t, k)) {
                let _ = std::fs::remove_dir_all(&tmp);
                return Err(e);
            }
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
            let parents = store::parent_ids(&t, &record)?;
            std::fs::rename(&tmp, &dir)?;
            t.insert(key, encode(&record).as_slice()).map_err(db_err)?;
            (record, parents)
        };
        if let Err(e) = txn.commit() {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(db_err(e));
        }
        // A snapshot whose mounts cannot be made (a corrupt lower layer) is not kept.
        self.ready_mounts(&record, &parents).inspect_err(|_| {
            if let Err(e) = self.remove(key) {
                tracing::warn!(snapshot = %key, error = %e, "removing unmountable snapshot");
            }
        })
    }

    fn mounts(&self, key: &str) -> Result<Vec<Mount>> {
        let (r, parents) = self.read(|t| {
            let r = store::must_get(t, key)?;
            let p = store::parent_ids(t, &r)?;
            Ok((r, p))
        })?;
        if r.kind == Kind::Committed {
            return Err(Error::FailedPrecondition(format!(
                "snapshot {key:?} is committed and cannot be mounted"
            )));
        }
        self.ready_mounts(&r, &parents)
    }

    fn commit(&self, name: &str, key: &str, labels: Labels) -> Result<()> {
        if name.is_empty() {
            return Err(Error::InvalidArgument(
                "snapshot name must not be empty".into(),
            ));
        }
        let r = self.read(|t| {
            let r = store::must_get(t, key)?;
            if r.kind != Kind::Active {
                return Err(Error::FailedPrecondition(format!(
                    "snapshot {key:?} is not active"
                )));
            }
            if store::get(t, name)?.is_some() {
                return Err(Error::AlreadyExists(format!("snapshot {name:?}")));
            }
            Ok(r)
        })?;
        let dir = self.dir(r.id);
        let _lock = UpperLock::try_lock(&dir)?.ok_or_else(|| in_use(key))?;
        let layer = dir.join(LAYER_IMAGE);
        let rw = dir.join(UPPER_MOUNT);
        let built_here = !layer.exists();
        if built_here {
            {
                let _g = self.mounting.lock().unwrap_or_else(|e| e.into_inner());
                mount_upper(&dir.join(UPPER_IMAGE), &rw)?;
            }
            ember_diff::erofs::build_from_dir(&layer, &rw.join("upper"))
                .map_err(|e| Error::Internal(format!("building the layer of {key:?}: {e}")))?;
        }
        let undo = |e: Error| {
            if built_here {
                let _ = std::fs::remove_file(&layer);
            }
            e
        };
        unmount(&rw, &format!("snapshot {key:?}")).map_err(undo)?;
        self.ensure_layers(&[r.id]).map_err(undo)?;
        let fs = dir.join(LAYER_MOUNT);
        let usage = Usage {
            size: allocated(&layer),
            inodes: disk_usage(&fs).map(|u| u.inodes).unwrap_or(0),
        };
        let txn = self.db.begin_write().map_err(db_err)?;
        {
            let mut t = txn.open_table(SNAPSHOTS).map_err(db_err)?;
            let mut cur = store::must_get(&t, key)?;
            if store::get(&t, name)?.is_some() {
                return Err(Error::AlreadyExists(format!("snapshot {name:?}")));
            }
            let now = SystemTime::now();
            cur.kind = Kind::Committed;
            cur.usage = Some(usage);
            cur.labels = labels;
            cur.created_at = now;
            cur.updated_at = now;
            t.remove(key).map_err(db_err)?;
            t.insert(name, encode(&cur).as_slice()).map_err(db_err)?;
        }
        txn.commit().map_err(db_err)?;
        drop_upper(&dir);
        Ok(())
    }

    fn remove(&self, key: &str) -> Result<()> {
        let r = self.read(|t| {
            let r = store::must_get(t, key)?;
            for (_, c) in store::all(t)? {
                if c.parent == key {
                    return Err(Error::FailedPrecondition(format!(
                        "cannot remove snapshot {key:?} with a child"
                    )));
                }
            }
            Ok(r)
        })?;
        let dir = self.dir(r.id);
        let what = format!("snapshot {key:?}");
        let _lock = if r.kind == Kind::Active {
            let l = UpperLock::try_lock(&dir)?.ok_or_else(|| in_use(key))?;
            unmount(&dir.join(UPPER_MOUNT), &what)?;
            Some(l)
        } else {
            None
        };
        unmount(&dir.join(LAYER_MOUNT), &what)?;
        let txn = self.db.begin_write().map_err(db_err)?;
        {
            let mut t = txn.open_table(SNAPSHOTS).map_err(db_err)?;
            for (_, c) in store::all(&t)? {
                if c.parent == key {
                    return Err(Error::FailedPrecondition(format!(
                        "cannot remove snapshot {key:?} with a child"
                    )));
                }
            }
            t.remove(key).map_err(db_err)?;
        }
        let to = self.snapshots().join(format!("rm-{}", r.id));
        if dir.exists() {
            std::fs::rename(&dir, &to)?;
        }
        if let Err(e) = txn.commit() {
            let _ = std::fs::rename(&to, &dir);
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
            let mut r = store::must_get(&t, &info.name)?;
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
        let r = self.read(|t| store::must_get(t, key))?;
        match r.kind {
            Kind::Committed => Ok(r.usage.unwrap_or_default()),
            Kind::View => Ok(Usage::default()),
            Kind::Active => {
                let dir = self.dir(r.id);
                let rw = dir.join(UPPER_MOUNT);
                let inodes = if is_mounted(&rw) {
                    disk_usage(&rw.join("upper"))?.inodes
                } else {
                    0
                };
                Ok(Usage {
                    size: allocated(&dir.join(UPPER_IMAGE)) + allocated(&dir.join(LAYER_IMAGE)),
                    inodes,
                })
            }
        }
    }

    fn walk(&self) -> Result<Vec<Info>> {
        self.read(|t| Ok(store::all(t)?.iter().map(|(k, r)| r.info(k)).collect()))
    }

    /// Removes directories without a record (unmounting what is mounted in them
    /// first) and what a commit interrupted after its record left behind.
    fn cleanup(&self) -> Result<()> {
        // The records as of the write lock: a prepare renames its directory into
        // place and inserts its record in one write transaction, so none is half-way
        // while this looks (its tmp- directory is left alone, see below).
        let txn = self.db.begin_write().map_err(db_err)?;
        let records = {
            let t = txn.open_table(SNAPSHOTS).map_err(db_err)?;
            store::all(&t)?
        };
        let ids: std::collections::HashMap<String, Kind> = records
            .iter()
            .map(|(_, r)| (r.id.to_string(), r.kind))
            .collect();
        for entry in std::fs::read_dir(self.snapshots())? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().to_string();
            let path = entry.path();
            match ids.get(&name) {
                Some(Kind::Committed) => drop_upper(&path),
                // A layer image a killed process was writing.
                Some(_) if self.opening() => {
                    let _ =
                        std::fs::remove_file(ember_diff::erofs::temp_path(&path.join(LAYER_IMAGE)));
                }
                Some(_) => {}
                None if name.starts_with("tmp-") => {
                    // Made by a prepare of this process still running, or of one
                    // that died: only the latter have no live lock holder; a
                    // running prepare is short, so leave tmp- dirs to open().
                    if !self.opening() {
                        continue;
                    }
                    remove_tree(&path);
                }
                None => remove_tree(&path),
            }
        }
        txn.abort().map_err(db_err)?;
        Ok(())
    }

    fn opening(&self) -> bool {
        !self.opened.load(Ordering::SeqCst)
    }

    fn remount_all(&self) {
        let records = match self.read(|t| store::all(t)) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "listing erofs snapshots");
                return;
            }
        };
        for (key, r) in records {
            let res = match r.kind {
                Kind::Committed => self.ensure_layers(&[r.id]),
                Kind::Active => self.ensure_upper(r.id).map(|_| ()),
                Kind::View => Ok(()),
            };
            if let Err(e) = res {
                tracing::warn!(snapshot = %key, error = %e, "mounting erofs snapshot");
            }
        }
        self.opened.store(true, Ordering::SeqCst);
    }
}

/// Removes a committed snapshot's leftover writable image.
fn drop_upper(dir: &Path) {
    let rw = dir.join(UPPER_MOUNT);
    if super::claim::unmount_if_mounted(&rw).is_ok() {
        let _ = std::fs::remove_dir(&rw);
    }
    let _ = std::fs::remove_file(dir.join(UPPER_IMAGE));
    let _ = std::fs::remove_file(dir.join(UPPER_LOCK));
    let _ = std::fs::remove_file(ember_diff::erofs::temp_path(&dir.join(LAYER_IMAGE)));
}

/// Removes a snapshot directory, after unmounting its mounts; left alone if they
/// cannot be unmounted (never removes files through a mount).
fn remove_tree(path: &Path) {
    for m in [LAYER_MOUNT, UPPER_MOUNT] {
        let target = path.join(m);
        if let Err(e) = super::claim::unmount_if_mounted(&target) {
            tracing::warn!(path = %target.display(), error = %e, "unmounting leftover snapshot");
            return;
        }
    }
    tracing::info!(dir = %path.display(), "removing unreferenced snapshot directory");
    if let Err(e) = std::fs::remove_dir_all(path) {
        tracing::warn!(path = %path.display(), error = %e, "removing snapshot directory");
    }
}

#[async_trait::async_trait]
impl Snapshotter for ErofsSnapshotter {
    async fn stat(&self, key: &str) -> Result<Info> {
        let key = key.to_string();
        self.blocking(move |i| i.read(|t| store::must_get(t, &key)).map(|r| r.info(&key)))
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
