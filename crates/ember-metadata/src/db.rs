//! The metadata store.
//!
//! One redb file, `<root>/io.containerd.metadata.v1.redb/meta.redb`. Keys are
//! strings whose parts are joined with NUL (`\0`), so a namespace's records of one
//! kind are a contiguous key range. Values are JSON documents of the types in this
//! crate.
//!
//! ```text
//! schema          "version"                          -> u64 (SCHEMA_VERSION)
//! counters        "snapshot"                         -> u64, last snapshot sequence number
//!                 "wal_lsn"                          -> u64, last log record applied
//! namespaces      <ns>                               -> Namespace { name, labels }
//! containers      <ns> \0 <id>                       -> Container
//! content         <ns> \0 <digest>                   -> ContentInfo { digest, size, labels, times }
//! blob_refs       <digest> \0 <ns>                   -> "" (which namespaces hold a blob)
//! snapshots       <ns> \0 <snapshotter> \0 <key>     -> Snapshot { backing key, parent key, kind, labels, times }
//! leases          <ns> \0 <id>                       -> Lease { id, labels, created_at }
//! lease_resources <ns> \0 <lease> \0 <type> \0 <id>  -> LeaseResource { id, type }
//! images          <ns> \0 <name>                     -> Image { name, labels, target descriptor, times }
//! ```
//!
//! A namespace exists when it has a record in `namespaces`; creating any object in
//! a namespace creates the namespace. Blobs themselves live in the content store and
//! snapshots in their snapshotter: `content` records which namespaces may see a
//! blob, `snapshots` maps a namespace's snapshot key to the global key the
//! snapshotter uses (`<ns>/<seq>/<key>`).
//!
//! Every operation runs in a redb transaction: a crash leaves the previous or the
//! next state, never a mix. Transactions commit to redb without syncing and are
//! made durable by a redo log beside the file (`meta.redb.wal`, see
//! [`crate::wal`]), replayed on open; `counters["wal_lsn"]` is the last record
//! the database holds.

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition, TableHandle};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::filters::Filter;
use crate::identifiers::{validate, validate_labels};
use crate::wal::{self, Op, Wal};
use crate::{
    Container, ContentInfo, Error, Image, Labels, Lease, LeaseResource, Namespace, Result, Snapshot,
};

pub const SCHEMA_VERSION: u64 = 1;

type Def = TableDefinition<'static, &'static str, &'static [u8]>;

const SCHEMA: TableDefinition<&str, u64> = TableDefinition::new("schema");
const COUNTERS: TableDefinition<&str, u64> = TableDefinition::new("counters");
pub const NAMESPACES: Def = TableDefinition::new("namespaces");
pub const CONTAINERS: Def = TableDefinition::new("containers");
pub const CONTENT: Def = TableDefinition::new("content");
pub const BLOB_REFS: Def = TableDefinition::new("blob_refs");
pub const SNAPSHOTS: Def = TableDefinition::new("snapshots");
pub const LEASES: Def = TableDefinition::new("leases");
pub const LEASE_RESOURCES: Def = TableDefinition::new("lease_resources");
pub const IMAGES: Def = TableDefinition::new("images");

/// Tables whose records keep a namespace from being deleted, with the word used in
/// the error.
const NAMESPACE_BLOCKERS: &[(Def, &str)] = &[
    (IMAGES, "images"),
    (CONTENT, "blobs"),
    (CONTAINERS, "containers"),
    (SNAPSHOTS, "snapshots"),
];

pub(crate) fn db_err(e: impl Into<redb::Error>) -> Error {
    Error::Internal(format!("metadata database: {}", e.into()))
}

/// Joins key parts.
pub fn key(parts: &[&str]) -> String {
    parts.join("\0")
}

/// The prefix of all keys below `parts`.
pub fn prefix(parts: &[&str]) -> String {
    let mut k = parts.join("\0");
    k.push('\0');
    k
}

fn decode<T: DeserializeOwned>(b: &[u8]) -> Result<T> {
    serde_json::from_slice(b).map_err(|e| Error::Internal(format!("decoding a record: {e}")))
}

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("records serialise")
}

fn check_no_nul(what: &str, s: &str) -> Result<()> {
    if s.contains('\0') {
        return Err(Error::InvalidArgument(format!(
            "{what} must not contain NUL"
        )));
    }
    Ok(())
}

/// The metadata database. Cheap to clone.
#[derive(Clone)]
pub struct Db {
    db: Arc<Database>,
    wal: Arc<Wal>,
    /// Held from a write transaction's start until its record is in the log, so
    /// log order is commit order.
    order: Arc<Mutex<()>>,
}

pub struct ReadTx(redb::ReadTransaction);
/// A write transaction and the write set it has built so far.
pub struct WriteTx(redb::WriteTransaction, RefCell<Vec<Op>>);

/// The tables a log record may name.
const TABLES: &[Def] = &[
    NAMESPACES,
    CONTAINERS,
    CONTENT,
    BLOB_REFS,
    SNAPSHOTS,
    LEASES,
    LEASE_RESOURCES,
    IMAGES,
    crate::sandboxes::SANDBOXES,
];

/// The counter holding the sequence number of the last logged transaction.
const WAL_LSN: &str = "wal_lsn";

fn wal_path(db: &Path) -> PathBuf {
    let mut p = db.as_os_str().to_owned();
    p.push(".wal");
    PathBuf::from(p)
}

impl Db {
    /// Opens or creates the database file.
    pub fn open(path: impl AsRef<std::path::Path>) -> Result<Db> {
        if let Some(dir) = path.as_ref().parent() {
            std::fs::create_dir_all(dir)?;
        }
        let db = Database::create(path.as_ref()).map_err(db_err)?;
        let txn = db.begin_write().map_err(db_err)?;
        {
            let mut schema = txn.open_table(SCHEMA).map_err(db_err)?;
            let version = schema.get("version").map_err(db_err)?.map(|v| v.value());
            match version {
                None => {
                    schema.insert("version", SCHEMA_VERSION).map_err(db_err)?;
                }
                Some(v) if v > SCHEMA_VERSION => {
                    return Err(Error::FailedPrecondition(format!(
                        "metadata schema version {v} is newer than this daemon's ({SCHEMA_VERSION})"
                    )))
                }
                Some(_) => {}
            }
            txn.open_table(COUNTERS).map_err(db_err)?;
            for t in TABLES {
                txn.open_table(*t).map_err(db_err)?;
            }
        }
        txn.commit().map_err(db_err)?;
        let log = wal_path(path.as_ref());
        let last = recover(&db, &log)?;
        Ok(Db {
            db: Arc::new(db),
            wal: Arc::new(Wal::open(&log, last)?),
            order: Arc::default(),
        })
    }

    /// Runs `f` in a read transaction.
    pub fn view<T>(&self, f: impl FnOnce(&ReadTx) -> Result<T>) -> Result<T> {
        let tx = ReadTx(self.db.begin_read().map_err(db_err)?);
        f(&tx)
    }

    /// Runs `f` in a write transaction, committed when `f` succeeds; returns once
    /// the commit is durable (through the log, see [`crate::wal`]).
    pub fn update<T>(&self, f: impl FnOnce(&WriteTx) -> Result<T>) -> Result<T> {
        let order = self.order.lock().unwrap_or_else(|p| p.into_inner());
        let tx = WriteTx(self.db.begin_write().map_err(db_err)?, RefCell::default());
        let v = match f(&tx) {
            Ok(v) => v,
            Err(e) => {
                let _ = tx.0.abort();
                return Err(e);
            }
        };
        let WriteTx(mut tx, ops) = tx;
        let ops = ops.into_inner();
        if ops.is_empty() {
            let _ = tx.abort();
            return Ok(v);
        }
        let lsn = self.wal.next_lsn();
        set_counter(&tx, WAL_LSN, lsn)?;
        let record = wal::encode(lsn, &ops);
        if self.wal.wants_checkpoint(record.len()) {
            tx.commit().map_err(db_err)?;
            self.wal.checkpointed(lsn);
            return Ok(v);
        }
        tx.set_durability(Durability::None).map_err(db_err)?;
        tx.commit().map_err(db_err)?;
        if let Err(e) = self.wal.append(lsn, &record) {
            // The log cannot take it: make the database itself durable.
            tracing::warn!("{e}; checkpointing instead");
            self.checkpoint(lsn)?;
            return Ok(v);
        }
        drop(order);
        self.wal.wait_synced(lsn)?;
        Ok(v)
    }

    /// A durable redb commit of everything committed so far (up to `lsn`).
    fn checkpoint(&self, lsn: u64) -> Result<()> {
        self.db
            .begin_write()
            .map_err(db_err)?
            .commit()
            .map_err(db_err)?;
        self.wal.checkpointed(lsn);
        Ok(())
    }
}

fn get_counter(tx: &redb::WriteTransaction, name: &str) -> Result<u64> {
    let table = tx.open_table(COUNTERS).map_err(db_err)?;
    let v = table.get(name).map_err(db_err)?.map(|v| v.value());
    Ok(v.unwrap_or(0))
}

fn set_counter(tx: &redb::WriteTransaction, name: &str, value: u64) -> Result<()> {
    let mut table = tx.open_table(COUNTERS).map_err(db_err)?;
    table.insert(name, value).map_err(db_err)?;
    Ok(())
}

/// Applies the log records the database lacks (after a crash) in one durable
/// commit; returns the last sequence number the database now holds.
fn recover(db: &Database, log: &Path) -> Result<u64> {
    let tx = db.begin_write().map_err(db_err)?;
    let last = get_counter(&tx, WAL_LSN)?;
    let records = wal::replay(log, last)?;
    let Some(&(newest, _)) = records.last() else {
        let _ = tx.abort();
        return Ok(last);
    };
    for (_, ops) in &records {
        for op in ops {
            match op {
                Op::Put { table, key, value } => {
                    let mut t = tx.open_table(table_def(table)?).map_err(db_err)?;
                    t.insert(key.as_str(), value.as_slice()).map_err(db_err)?;
                }
                Op::Delete { table, key } => {
                    let mut t = tx.open_table(table_def(table)?).map_err(db_err)?;
                    t.remove(key.as_str()).map_err(db_err)?;
                }
                Op::Counter { name, value } => set_counter(&tx, name, *value)?,
            }
        }
    }
    set_counter(&tx, WAL_LSN, newest)?;
    tx.commit().map_err(db_err)?;
    tracing::info!(
        records = records.len(),
        "metadata: applied the log's records to the database"
    );
    Ok(newest)
}

fn table_def(name: &str) -> Result<Def> {
    TABLES
        .iter()
        .find(|t| t.name() == name)
        .copied()
        .ok_or_else(|| Error::Internal(format!("metadata log names an unknown table {name:?}")))
}

/// Reading, for both kinds of transaction.
pub trait Reader {
    fn get_raw(&self, t: Def, k: &str) -> Result<Option<Vec<u8>>>;
    /// All records whose key starts with `prefix`, in key order.
    fn scan_raw(&self, t: Def, prefix: &str) -> Result<Vec<(String, Vec<u8>)>>;

    fn get<T: DeserializeOwned>(&self, t: Def, k: &str) -> Result<Option<T>> {
        self.get_raw(t, k)?.map(|b| decode(&b)).transpose()
    }

    fn scan<T: DeserializeOwned>(&self, t: Def, prefix: &str) -> Result<Vec<T>> {
        self.scan_raw(t, prefix)?
            .into_iter()
            .map(|(_, v)| decode(&v))
            .collect()
    }

    fn has_prefix(&self, t: Def, prefix: &str) -> Result<bool>;

    // Namespaces.

    fn namespace_exists(&self, name: &str) -> Result<bool> {
        Ok(self.get_raw(NAMESPACES, name)?.is_some())
    }

    fn get_namespace(&self, name: &str) -> Result<Namespace> {
        self.get(NAMESPACES, name)?
            .ok_or_else(|| Error::NotFound(format!("namespace {name}")))
    }

    fn list_namespaces(&self) -> Result<Vec<Namespace>> {
        self.scan(NAMESPACES, "")
    }

    // Containers.

    fn get_container(&self, ns: &str, id: &str) -> Result<Container> {
        self.get(CONTAINERS, &key(&[ns, id]))?
            .ok_or_else(|| Error::NotFound(format!("container {id:?} in namespace {ns:?}")))
    }

    fn list_containers(&self, ns: &str, filter: &Filter) -> Result<Vec<Container>> {
        Ok(self
            .scan::<Container>(CONTAINERS, &prefix(&[ns]))?
            .into_iter()
            .filter(|c| filter.matches(c))
            .collect())
    }

    // Images.

    fn get_image(&self, ns: &str, name: &str) -> Result<Image> {
        self.get(IMAGES, &key(&[ns, name]))?
            .ok_or_else(|| Error::NotFound(format!("image {name:?}")))
    }

    fn list_images(&self, ns: &str, filter: &Filter) -> Result<Vec<Image>> {
        Ok(self
            .scan::<Image>(IMAGES, &prefix(&[ns]))?
            .into_iter()
            .filter(|i| filter.matches(i))
            .collect())
    }

    // Content.

    fn get_content(&self, ns: &str, digest: &str) -> Result<ContentInfo> {
        self.get(CONTENT, &key(&[ns, digest]))?
            .ok_or_else(|| Error::NotFound(format!("content digest {digest}")))
    }

    fn list_content(&self, ns: &str, filter: &Filter) -> Result<Vec<ContentInfo>> {
        Ok(self
            .scan::<ContentInfo>(CONTENT, &prefix(&[ns]))?
            .into_iter()
            .filter(|c| filter.matches(c))
            .collect())
    }

    /// Whether any namespace holds the blob.
    fn blob_referenced(&self, digest: &str) -> Result<bool> {
        self.has_prefix(BLOB_REFS, &prefix(&[digest]))
    }

    // Snapshots.

    fn get_snapshot(&self, ns: &str, snapshotter: &str, name: &str) -> Result<Snapshot> {
        self.get(SNAPSHOTS, &key(&[ns, snapshotter, name]))?
            .ok_or_else(|| Error::NotFound(format!("snapshot {name} does not exist")))
    }

    fn list_snapshots(
        &self,
        ns: &str,
        snapshotter: &str,
        filter: &Filter,
    ) -> Result<Vec<Snapshot>> {
        Ok(self
            .scan::<Snapshot>(SNAPSHOTS, &prefix(&[ns, snapshotter]))?
            .into_iter()
            .filter(|s| filter.matches(s))
            .collect())
    }

    /// Every snapshot of one snapshotter, in all namespaces.
    fn all_snapshots(&self, snapshotter: &str) -> Result<Vec<Snapshot>> {
        Ok(self
            .scan::<Snapshot>(SNAPSHOTS, "")?
            .into_iter()
            .filter(|s| s.snapshotter == snapshotter)
            .collect())
    }

    fn snapshot_has_children(&self, ns: &str, snapshotter: &str, name: &str) -> Result<bool> {
        Ok(self
            .scan::<Snapshot>(SNAPSHOTS, &prefix(&[ns, snapshotter]))?
            .iter()
            .any(|s| s.parent == name))
    }

    // Leases.

    fn get_lease(&self, ns: &str, id: &str) -> Result<Lease> {
        self.get(LEASES, &key(&[ns, id]))?
            .ok_or_else(|| Error::NotFound(format!("lease {id:?}")))
    }

    fn list_leases(&self, ns: &str, filter: &Filter) -> Result<Vec<Lease>> {
        Ok(self
            .scan::<Lease>(LEASES, &prefix(&[ns]))?
            .into_iter()
            .filter(|l| filter.matches(l))
            .collect())
    }

    /// Every lease in every namespace, with its namespace.
    fn all_leases(&self) -> Result<Vec<(String, Lease)>> {
        self.scan_raw(LEASES, "")?
            .into_iter()
            .map(|(k, v)| {
                let ns = k.split('\0').next().unwrap_or_default().to_string();
                Ok((ns, decode(&v)?))
            })
            .collect()
    }

    fn list_lease_resources(&self, ns: &str, id: &str) -> Result<Vec<LeaseResource>> {
        self.get_lease(ns, id)?;
        self.scan(LEASE_RESOURCES, &prefix(&[ns, id]))
    }
}

macro_rules! impl_reader {
    ($ty:ty) => {
        impl Reader for $ty {
            fn get_raw(&self, t: Def, k: &str) -> Result<Option<Vec<u8>>> {
                let table = self.0.open_table(t).map_err(db_err)?;
                let v = table.get(k).map_err(db_err)?;
                Ok(v.map(|v| v.value().to_vec()))
            }

            fn scan_raw(&self, t: Def, prefix: &str) -> Result<Vec<(String, Vec<u8>)>> {
                let table = self.0.open_table(t).map_err(db_err)?;
                let mut out = Vec::new();
                for entry in table.range::<&str>(prefix..).map_err(db_err)? {
                    let (k, v) = entry.map_err(db_err)?;
                    if !k.value().starts_with(prefix) {
                        break;
                    }
                    out.push((k.value().to_string(), v.value().to_vec()));
                }
                Ok(out)
            }

            fn has_prefix(&self, t: Def, prefix: &str) -> Result<bool> {
                let table = self.0.open_table(t).map_err(db_err)?;
                let mut range = table.range::<&str>(prefix..).map_err(db_err)?;
                let found = match range.next() {
                    Some(entry) => {
                        let (k, _) = entry.map_err(db_err)?;
                        k.value().starts_with(prefix)
                    }
                    None => false,
                };
                Ok(found)
            }
        }
    };
}

impl_reader!(ReadTx);
impl_reader!(WriteTx);

/// Applies a label update (see [`ember_snapshot::apply_label_update`]) and validates
/// the result.
pub fn update_labels(
    current: &mut Labels,
    update: &Labels,
    fieldpaths: &[String],
    what: &str,
) -> Result<()> {
    ember_snapshot::apply_label_update(current, update, fieldpaths, what)?;
    validate_labels(current)
}

impl WriteTx {
    pub fn put<T: Serialize>(&self, t: Def, k: &str, v: &T) -> Result<()> {
        let value = encode(v);
        let mut table = self.0.open_table(t).map_err(db_err)?;
        table.insert(k, value.as_slice()).map_err(db_err)?;
        self.1.borrow_mut().push(Op::Put {
            table: t.name().to_string(),
            key: k.to_string(),
            value,
        });
        Ok(())
    }

    /// Removes a record; whether it was there.
    pub fn delete(&self, t: Def, k: &str) -> Result<bool> {
        let mut table = self.0.open_table(t).map_err(db_err)?;
        let existed = table.remove(k).map_err(db_err)?.is_some();
        if existed {
            self.1.borrow_mut().push(Op::Delete {
                table: t.name().to_string(),
                key: k.to_string(),
            });
        }
        Ok(existed)
    }

    fn delete_prefix(&self, t: Def, p: &str) -> Result<()> {
        for (k, _) in self.scan_raw(t, p)? {
            self.delete(t, &k)?;
        }
        Ok(())
    }

    /// The next value of a named counter.
    pub fn next_seq(&self, name: &str) -> Result<u64> {
        let next = get_counter(&self.0, name)? + 1;
        set_counter(&self.0, name, next)?;
        self.1.borrow_mut().push(Op::Counter {
            name: name.to_string(),
            value: next,
        });
        Ok(next)
    }

    // Namespaces.

    /// Makes sure a namespace exists (objects created in a namespace create it).
    pub fn ensure_namespace(&self, name: &str) -> Result<()> {
        if !self.namespace_exists(name)? {
            validate(name)?;
            self.put(
                NAMESPACES,
                name,
                &Namespace {
                    name: name.to_string(),
                    labels: Labels::new(),
                },
            )?;
        }
        Ok(())
    }

    pub fn create_namespace(&self, ns: &Namespace) -> Result<()> {
        validate(&ns.name)?;
        validate_labels(&ns.labels)?;
        if self.namespace_exists(&ns.name)? {
            return Err(Error::AlreadyExists(format!("namespace {:?}", ns.name)));
        }
        self.put(NAMESPACES, &ns.name, ns)
    }

    /// Updates a namespace's labels; like containerd, labelling a namespace that
    /// does not exist creates it.
    pub fn update_namespace(&self, update: &Namespace, fieldpaths: &[String]) -> Result<Namespace> {
        self.ensure_namespace(&update.name)?;
        let mut ns = self.get_namespace(&update.name)?;
        update_labels(
            &mut ns.labels,
            &update.labels,
            fieldpaths,
            &format!("namespace {:?}", update.name),
        )?;
        self.put(NAMESPACES, &ns.name, &ns)?;
        Ok(ns)
    }

    /// Deletes an empty namespace (leases and lease records in it go with it).
    pub fn delete_namespace(&self, name: &str) -> Result<()> {
        if !self.namespace_exists(name)? {
            return Err(Error::NotFound(format!("namespace {name}")));
        }
        let p = prefix(&[name]);
        let mut left = Vec::new();
        for (table, what) in NAMESPACE_BLOCKERS {
            if *what == "snapshots" {
                let mut snapshotters: Vec<String> = self
                    .scan::<Snapshot>(SNAPSHOTS, &p)?
                    .into_iter()
                    .map(|s| s.snapshotter)
                    .collect();
                snapshotters.dedup();
                for s in snapshotters {
                    left.push(format!("snapshots on {s:?} snapshotter"));
                }
            } else if self.has_prefix(*table, &p)? {
                left.push(what.to_string());
            }
        }
        if !left.is_empty() {
            return Err(Error::FailedPrecondition(format!(
                "namespace {name:?} must be empty, but it still has {}",
                left.join(", ")
            )));
        }
        self.delete_prefix(LEASE_RESOURCES, &p)?;
        self.delete_prefix(LEASES, &p)?;
        self.delete(NAMESPACES, name)?;
        Ok(())
    }

    // Containers.

    pub fn create_container(&self, ns: &str, c: &Container) -> Result<Container> {
        validate_container(c)?;
        self.ensure_namespace(ns)?;
        let k = key(&[ns, &c.id]);
        if self.get_raw(CONTAINERS, &k)?.is_some() {
            return Err(Error::AlreadyExists(format!("container {:?}", c.id)));
        }
        let now = SystemTime::now();
        let mut c = c.clone();
        c.created_at = now;
        c.updated_at = now;
        self.put(CONTAINERS, &k, &c)?;
        Ok(c)
    }

    /// Updates a container as containerd does: with no field paths, labels, spec,
    /// extensions, image and snapshot key are replaced, and a different snapshotter
    /// or runtime name is an error; otherwise only the named fields change.
    pub fn update_container(
        &self,
        ns: &str,
        u: &Container,
        fieldpaths: &[String],
    ) -> Result<Container> {
        if u.id.is_empty() {
            return Err(Error::InvalidArgument("must specify a container id".into()));
        }
        let mut c = self.get_container(ns, &u.id)?;
        let mut paths = fieldpaths.to_vec();
        if paths.is_empty() {
            paths = ["labels", "spec", "extensions", "image", "snapshotkey"]
                .iter()
                .map(|s| s.to_string())
                .collect();
            if u.snapshotter != c.snapshotter {
                return Err(Error::InvalidArgument(
                    "container.Snapshotter field is immutable".into(),
                ));
            }
            if u.runtime.name != c.runtime.name {
                return Err(Error::InvalidArgument(
                    "container.Runtime.Name field is immutable".into(),
                ));
            }
        }
        for path in &paths {
            if let Some(k) = path.strip_prefix("labels.") {
                match u.labels.get(k) {
                    Some(v) if !v.is_empty() => {
                        c.labels.insert(k.to_string(), v.clone());
                    }
                    _ => {
                        c.labels.remove(k);
                    }
                }
                continue;
            }
            if let Some(k) = path.strip_prefix("extensions.") {
                match u.extensions.get(k) {
                    Some(v) => {
                        c.extensions.insert(k.to_string(), v.clone());
                    }
                    None => {
                        c.extensions.remove(k);
                    }
                }
                continue;
            }
            match path.as_str() {
                "labels" => c.labels = u.labels.clone(),
                "spec" => c.spec = u.spec.clone(),
                "extensions" => c.extensions = u.extensions.clone(),
                "image" => c.image = u.image.clone(),
                "snapshotkey" => c.snapshot_key = u.snapshot_key.clone(),
                _ => {
                    return Err(Error::InvalidArgument(format!(
                        "cannot update {path:?} field on {:?}",
                        u.id
                    )))
                }
            }
        }
        validate_container(&c)?;
        c.updated_at = SystemTime::now();
        self.put(CONTAINERS, &key(&[ns, &c.id]), &c)?;
        Ok(c)
    }

    pub fn delete_container(&self, ns: &str, id: &str) -> Result<()> {
        if !self.delete(CONTAINERS, &key(&[ns, id]))? {
            return Err(Error::NotFound(format!(
                "container {id:?} in namespace {ns:?}"
            )));
        }
        Ok(())
    }

    // Images.

    pub fn create_image(&self, ns: &str, i: &Image) -> Result<Image> {
        validate_image(i)?;
        self.ensure_namespace(ns)?;
        let k = key(&[ns, &i.name]);
        if self.get_raw(IMAGES, &k)?.is_some() {
            return Err(Error::AlreadyExists(format!("image {:?}", i.name)));
        }
        let now = SystemTime::now();
        let mut i = i.clone();
        i.created_at = now;
        i.updated_at = now;
        self.put(IMAGES, &k, &i)?;
        Ok(i)
    }

    /// Updates an image as containerd does: with no field paths, labels and target
    /// are replaced; otherwise `labels`, `labels.KEY`, `target`, `annotations`,
    /// `annotations.KEY` name what changes.
    pub fn update_image(&self, ns: &str, u: &Image, fieldpaths: &[String]) -> Result<Image> {
        if u.name.is_empty() {
            return Err(Error::InvalidArgument("image name is required".into()));
        }
        let mut i = self.get_image(ns, &u.name)?;
        if fieldpaths.is_empty() {
            i.labels = u.labels.clone();
            i.target = u.target.clone();
        }
        for path in fieldpaths {
            if let Some(k) = path.strip_prefix("labels.") {
                match u.labels.get(k) {
                    Some(v) if !v.is_empty() => {
                        i.labels.insert(k.to_string(), v.clone());
                    }
                    _ => {
                        i.labels.remove(k);
                    }
                }
                continue;
            }
            if let Some(k) = path.strip_prefix("annotations.") {
                match u.target.annotations.get(k) {
                    Some(v) => {
                        i.target.annotations.insert(k.to_string(), v.clone());
                    }
                    None => {
                        i.target.annotations.remove(k);
                    }
                }
                continue;
            }
            match path.as_str() {
                "labels" => i.labels = u.labels.clone(),
                "target" => i.target = u.target.clone(),
                "annotations" => i.target.annotations = u.target.annotations.clone(),
                _ => {
                    return Err(Error::InvalidArgument(format!(
                        "cannot update {path:?} field on image {:?}",
                        u.name
                    )))
                }
            }
        }
        validate_image(&i)?;
        i.updated_at = SystemTime::now();
        self.put(IMAGES, &key(&[ns, &i.name]), &i)?;
        Ok(i)
    }

    pub fn delete_image(&self, ns: &str, name: &str) -> Result<()> {
        if !self.delete(IMAGES, &key(&[ns, name]))? {
            return Err(Error::NotFound(format!("image {name:?}")));
        }
        Ok(())
    }

    // Content.

    /// Records that a namespace holds a blob (keeping labels already there unless
    /// new ones are given).
    pub fn put_content(&self, ns: &str, info: &ContentInfo) -> Result<()> {
        validate_labels(&info.labels)?;
        self.ensure_namespace(ns)?;
        self.put(CONTENT, &key(&[ns, &info.digest]), info)?;
        self.put(BLOB_REFS, &key(&[&info.digest, ns]), &"")
    }

    pub fn update_content(
        &self,
        ns: &str,
        u: &ContentInfo,
        fieldpaths: &[String],
    ) -> Result<ContentInfo> {
        let mut info = self.get_content(ns, &u.digest)?;
        update_labels(
            &mut info.labels,
            &u.labels,
            fieldpaths,
            &format!("content info {}", u.digest),
        )?;
        info.updated_at = SystemTime::now();
        self.put(CONTENT, &key(&[ns, &info.digest]), &info)?;
        Ok(info)
    }

    pub fn delete_content(&self, ns: &str, digest: &str) -> Result<()> {
        if !self.delete(CONTENT, &key(&[ns, digest]))? {
            return Err(Error::NotFound(format!("content digest {digest}")));
        }
        self.delete(BLOB_REFS, &key(&[digest, ns]))?;
        Ok(())
    }

    // Snapshots.

    pub fn put_snapshot(&self, ns: &str, s: &Snapshot) -> Result<()> {
        check_no_nul("snapshot key", &s.name)?;
        validate_labels(&s.labels)?;
        self.ensure_namespace(ns)?;
        self.put(SNAPSHOTS, &key(&[ns, &s.snapshotter, &s.name]), s)
    }

    pub fn delete_snapshot(&self, ns: &str, snapshotter: &str, name: &str) -> Result<()> {
        if !self.delete(SNAPSHOTS, &key(&[ns, snapshotter, name]))? {
            return Err(Error::NotFound(format!("snapshot {name} does not exist")));
        }
        Ok(())
    }

    // Leases.

    /// Creates a lease. Like containerd, any non-empty id is accepted.
    pub fn create_lease(&self, ns: &str, l: &Lease) -> Result<Lease> {
        if l.id.is_empty() {
            return Err(Error::InvalidArgument("lease id must not be empty".into()));
        }
        check_no_nul("lease id", &l.id)?;
        validate_labels(&l.labels)?;
        self.ensure_namespace(ns)?;
        let k = key(&[ns, &l.id]);
        if self.get_raw(LEASES, &k)?.is_some() {
            return Err(Error::AlreadyExists(format!("lease {:?}", l.id)));
        }
        let mut l = l.clone();
        l.created_at = SystemTime::now();
        self.put(LEASES, &k, &l)?;
        Ok(l)
    }

    pub fn delete_lease(&self, ns: &str, id: &str) -> Result<()> {
        if !self.delete(LEASES, &key(&[ns, id]))? {
            return Err(Error::NotFound(format!("lease {id:?}")));
        }
        self.delete_prefix(LEASE_RESOURCES, &prefix(&[ns, id]))
    }

    pub fn add_lease_resource(&self, ns: &str, lease: &str, r: &LeaseResource) -> Result<()> {
        validate_resource(r)?;
        self.get_lease(ns, lease)?;
        self.put(LEASE_RESOURCES, &key(&[ns, lease, &r.kind, &r.id]), r)
    }

    pub fn delete_lease_resource(&self, ns: &str, lease: &str, r: &LeaseResource) -> Result<()> {
        validate_resource(r)?;
        self.get_lease(ns, lease)?;
        self.delete(LEASE_RESOURCES, &key(&[ns, lease, &r.kind, &r.id]))?;
        Ok(())
    }
}

fn validate_resource(r: &LeaseResource) -> Result<()> {
    if r.id.is_empty() {
        return Err(Error::InvalidArgument(
            "resource id must not be empty".into(),
        ));
    }
    check_no_nul("resource id", &r.id)?;
    match r.kind.as_str() {
        "content" => {
            r.id.parse::<ember_content::Digest>()?;
        }
        "ingests" => {}
        k if k.strip_prefix("snapshots/").is_some_and(|s| !s.is_empty()) => {}
        k => {
            return Err(Error::InvalidArgument(format!(
                "unsupported resource type {k:?}"
            )))
        }
    }
    Ok(())
}

fn validate_image(i: &Image) -> Result<()> {
    if i.name.is_empty() {
        return Err(Error::InvalidArgument(
            "image.Name field is required".into(),
        ));
    }
    check_no_nul("image name", &i.name)?;
    validate_labels(&i.labels)?;
    if i.target.media_type.is_empty() {
        return Err(Error::InvalidArgument(
            "image.Target.MediaType field is required".into(),
        ));
    }
    if i.target.digest.is_empty() {
        return Err(Error::InvalidArgument(
            "image.Target.Digest field is required".into(),
        ));
    }
    i.target
        .digest
        .parse::<ember_content::Digest>()
        .map_err(|e| Error::InvalidArgument(format!("image.Target.Digest: {e}")))?;
    Ok(())
}

fn validate_container(c: &Container) -> Result<()> {
    validate(&c.id).map_err(|e| match e {
        Error::InvalidArgument(m) => Error::InvalidArgument(format!("container.ID: {m}")),
        e => e,
    })?;
    validate_labels(&c.labels)?;
    for (k, v) in &c.extensions {
        if k.is_empty() || v.type_url.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "container.Extension {k:?}: must have a type"
            )));
        }
    }
    if c.runtime.name.is_empty() {
        return Err(Error::InvalidArgument(
            "container.Runtime.Name must be set".into(),
        ));
    }
    if c.spec.is_none() {
        return Err(Error::InvalidArgument("container.Spec must be set".into()));
    }
    if !c.snapshot_key.is_empty() && c.snapshotter.is_empty() {
        return Err(Error::InvalidArgument(
            "container.Snapshotter must be set if container.SnapshotKey is set".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::AnyValue;

    fn container(id: &str) -> Container {
        let spec = AnyValue {
            type_url: "types.containerd.io/opencontainers/runtime-spec/1/Spec".into(),
            value: b"{}".to_vec(),
        };
        Container {
            image: "img".into(),
            snapshotter: "overlayfs".into(),
            snapshot_key: "k".into(),
            ..Container::new(id, "io.containerd.runc.v2", spec)
        }
    }

    #[test]
    fn namespaces_and_containers() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path().join("meta.redb")).unwrap();
        db.update(|tx| {
            tx.create_namespace(&Namespace {
                name: "a".into(),
                labels: Labels::new(),
            })
        })
        .unwrap();
        let e = db.update(|tx| {
            tx.create_namespace(&Namespace {
                name: "a".into(),
                labels: Labels::new(),
            })
        });
        assert!(matches!(e, Err(Error::AlreadyExists(_))));
        db.update(|tx| tx.create_container("b", &container("c1")))
            .unwrap();
        assert!(db.view(|tx| tx.namespace_exists("b")).unwrap());
        assert!(matches!(
            db.update(|tx| tx.create_container("b", &container("c1"))),
            Err(Error::AlreadyExists(_))
        ));
        assert!(matches!(
            db.update(|tx| tx.create_container("b", &container("bad id"))),
            Err(Error::InvalidArgument(_))
        ));
        let e = db.update(|tx| tx.delete_namespace("b")).unwrap_err();
        assert!(
            matches!(e, Error::FailedPrecondition(ref m) if m.contains("containers")),
            "{e}"
        );

        let mut u = container("c1");
        u.labels.insert("x".into(), "y".into());
        u.image = "other".into();
        let c = db
            .update(|tx| tx.update_container("b", &u, &["labels.x".to_string()]))
            .unwrap();
        assert_eq!(c.labels.get("x").unwrap(), "y");
        assert_eq!(c.image, "img");
        u.snapshotter = "native".into();
        assert!(matches!(
            db.update(|tx| tx.update_container("b", &u, &[])),
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(
            db.update(|tx| tx.update_container("b", &u, &["runtime".to_string()])),
            Err(Error::InvalidArgument(_))
        ));
        let f = Filter::parse_all(&["labels.x==y"]).unwrap();
        assert_eq!(db.view(|tx| tx.list_containers("b", &f)).unwrap().len(), 1);
        let f = Filter::parse_all(&["id==c2"]).unwrap();
        assert_eq!(db.view(|tx| tx.list_containers("b", &f)).unwrap().len(), 0);
        db.update(|tx| tx.delete_container("b", "c1")).unwrap();
        assert!(matches!(
            db.update(|tx| tx.delete_container("b", "c1")),
            Err(Error::NotFound(_))
        ));
        db.update(|tx| tx.delete_namespace("b")).unwrap();
        assert_eq!(db.view(|tx| tx.list_namespaces()).unwrap().len(), 1);

        drop(db);
        let db = Db::open(dir.path().join("meta.redb")).unwrap();
        assert_eq!(db.view(|tx| tx.get_namespace("a")).unwrap().name, "a");
    }

    #[test]
    fn leases() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path().join("meta.redb")).unwrap();
        let l = Lease {
            id: "l1".into(),
            labels: Labels::new(),
            created_at: SystemTime::UNIX_EPOCH,
        };
        db.update(|tx| tx.create_lease("ns", &l)).unwrap();
        assert!(matches!(
            db.update(|tx| tx.create_lease("ns", &l)),
            Err(Error::AlreadyExists(_))
        ));
        let r = LeaseResource {
            id: "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855".into(),
            kind: "content".into(),
        };
        db.update(|tx| tx.add_lease_resource("ns", "l1", &r))
            .unwrap();
        let bad = LeaseResource {
            id: "x".into(),
            kind: "content".into(),
        };
        assert!(matches!(
            db.update(|tx| tx.add_lease_resource("ns", "l1", &bad)),
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(
            db.update(|tx| tx.add_lease_resource("ns", "nope", &r)),
            Err(Error::NotFound(_))
        ));
        assert_eq!(
            db.view(|tx| tx.list_lease_resources("ns", "l1")).unwrap(),
            vec![r.clone()]
        );
        db.update(|tx| tx.delete_lease_resource("ns", "l1", &r))
            .unwrap();
        assert!(db
            .view(|tx| tx.list_lease_resources("ns", "l1"))
            .unwrap()
            .is_empty());
        // Leases do not keep a namespace alive.
        db.update(|tx| tx.delete_namespace("ns")).unwrap();
        assert!(db.view(|tx| tx.all_leases()).unwrap().is_empty());
    }
}
