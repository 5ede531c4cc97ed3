//! A snapshot's record as the directory snapshotters (`overlayfs`, `native`) and the
//! `erofs` one keep it in their redb table: key -> (id, kind, parent key, labels,
//! times, usage), ids from a counter in `meta`.

use std::time::SystemTime;

use redb::TableDefinition;
use serde::{Deserialize, Serialize};

use crate::{Error, Info, Kind, Labels, Result, Usage};

pub(crate) const SNAPSHOTS: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshots");
pub(crate) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// One snapshot's record, stored as JSON under its key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Record {
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
    pub(crate) fn info(&self, key: &str) -> Info {
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

pub(crate) fn decode(bytes: &[u8]) -> Result<Record> {
    serde_json::from_slice(bytes).map_err(|e| Error::internal("decoding snapshot record", e))
}

pub(crate) fn encode(r: &Record) -> Vec<u8> {
    serde_json::to_vec(r).expect("snapshot records serialise")
}
