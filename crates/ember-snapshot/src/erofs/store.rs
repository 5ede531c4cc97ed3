//! The `erofs` snapshotter's records: key → (id, kind, parent key, labels, times,
//! usage) in one redb table, ids from a counter.

use std::time::SystemTime;

use redb::{Database, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::{Error, Info, Kind, Labels, Result, Usage};

pub const SNAPSHOTS: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshots");
pub const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    pub id: u64,
    pub kind: Kind,
    pub parent: String,
    pub labels: Labels,
    pub created_at: SystemTime,
    pub updated_at: SystemTime,
    #[serde(default)]
    pub usage: Option<Usage>,
}

impl Record {
    pub fn info(&self, key: &str) -> Info {
        Info {
            name: key.to_string(),
            parent: self.parent.clone(),
            kind: self.kind,
            labels: self.labels.clone(),
            created_at: self.created_at,
            updated_at: self.updated_at,
        }
    }
}

pub fn db_err(e: impl Into<redb::Error>) -> Error {
    Error::Internal(format!("erofs snapshot metadata: {}", e.into()))
}

pub fn decode(bytes: &[u8]) -> Result<Record> {
    serde_json::from_slice(bytes).map_err(|e| Error::internal("decoding snapshot record", e))
}

pub fn encode(r: &Record) -> Vec<u8> {
    serde_json::to_vec(r).expect("snapshot records serialise")
}

pub fn open(path: &std::path::Path) -> Result<Database> {
    let db = Database::create(path).map_err(db_err)?;
    let txn = db.begin_write().map_err(db_err)?;
    txn.open_table(SNAPSHOTS).map_err(db_err)?;
    txn.open_table(META).map_err(db_err)?;
    txn.commit().map_err(db_err)?;
    Ok(db)
}

pub fn get(
    t: &impl ReadableTable<&'static str, &'static [u8]>,
    key: &str,
) -> Result<Option<Record>> {
    match t.get(key).map_err(db_err)? {
        Some(v) => Ok(Some(decode(v.value())?)),
        None => Ok(None),
    }
}

pub fn must_get(t: &impl ReadableTable<&'static str, &'static [u8]>, key: &str) -> Result<Record> {
    get(t, key)?.ok_or_else(|| Error::NotFound(format!("snapshot {key:?} does not exist")))
}

/// The ids of a record's committed ancestors, nearest first.
pub fn parent_ids(
    t: &impl ReadableTable<&'static str, &'static [u8]>,
    r: &Record,
) -> Result<Vec<u64>> {
    let mut ids = Vec::new();
    let mut parent = r.parent.clone();
    while !parent.is_empty() {
        let p = get(t, &parent)?
            .ok_or_else(|| Error::Internal(format!("parent snapshot {parent:?} is missing")))?;
        ids.push(p.id);
        parent = p.parent;
        if ids.len() > 4096 {
            return Err(Error::Internal("snapshot parent chain too long".into()));
        }
    }
    Ok(ids)
}

/// Every record.
pub fn all(t: &impl ReadableTable<&'static str, &'static [u8]>) -> Result<Vec<(String, Record)>> {
    let mut out = Vec::new();
    for entry in t.iter().map_err(db_err)? {
        let (k, v) = entry.map_err(db_err)?;
        out.push((k.value().to_string(), decode(v.value())?));
    }
    Ok(out)
}
