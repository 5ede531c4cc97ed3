//! The `erofs` snapshotter's records: key → (id, kind, parent key, labels, times,
//! usage) in one redb table, ids from a counter.

use redb::{Database, ReadableTable};

use crate::{Error, Result};

pub(crate) use crate::record::{decode, encode, Record, META, SNAPSHOTS};

pub fn db_err(e: impl Into<redb::Error>) -> Error {
    Error::Internal(format!("erofs snapshot metadata: {}", e.into()))
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
