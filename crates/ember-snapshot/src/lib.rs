//! Snapshotters for Ember.
//!
//! A snapshotter manages filesystem snapshots by key: `prepare` makes a writable
//! (active) snapshot on top of an optional committed parent, `view` a read-only one,
//! `commit` turns an active snapshot into a committed one under a new name, and
//! `mounts` tells the caller how to mount a snapshot. Keys given to a snapshotter are
//! global; namespacing is done by the metadata layer above it.
//!
//! Implementations:
//! * [`local::LocalSnapshotter`] with the `overlayfs` driver (layers as overlay lower
//!   directories) and the `native` driver (every snapshot a full copy of its parent);
//! * [`proxy::ProxySnapshotter`], a client of a remote
//!   `containerd.services.snapshots.v1.Snapshots` gRPC server;
//! * [`server::SnapshotsService`], which serves any [`Snapshotter`] over gRPC (used by
//!   the `ember-snapshotter-proxy` binary).

pub mod convert;
pub mod erofs;
pub mod local;
pub mod proxy;
mod record;
pub mod server;
mod usage;

use std::collections::BTreeMap;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

/// Generated server stubs of `containerd.services.snapshots.v1.Snapshots`.
pub mod grpc {
    #![allow(clippy::all)]
    tonic::include_proto!("containerd.services.snapshots.v1");
}

pub type Labels = BTreeMap<String, String>;

/// Label prefix of labels that travel down to the snapshotter itself.
pub const INHERITED_LABEL_PREFIX: &str = "containerd.io/snapshot/";

/// What a snapshot is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    View,
    Active,
    Committed,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::View => "View",
            Kind::Active => "Active",
            Kind::Committed => "Committed",
        }
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Information about one snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Info {
    pub name: String,
    pub parent: String,
    pub kind: Kind,
    pub labels: Labels,
    pub created_at: SystemTime,
    pub updated_at: SystemTime,
}

/// Disk usage of a snapshot (its own layer only).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub size: i64,
    pub inodes: i64,
}

/// A mount as the client performs it: `mount -t kind source target -o options`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mount {
    pub kind: String,
    pub source: String,
    pub target: String,
    pub options: Vec<String>,
}

/// Errors of snapshotters, classified like containerd's error definitions.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}: not found")]
    NotFound(String),
    #[error("{0}: already exists")]
    AlreadyExists(String),
    #[error("{0}: invalid argument")]
    InvalidArgument(String),
    #[error("{0}: failed precondition")]
    FailedPrecondition(String),
    #[error("{0}: unavailable")]
    Unavailable(String),
    #[error("{0}: not implemented")]
    Unimplemented(String),
    #[error("{0}")]
    Internal(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn internal(context: &str, e: impl std::fmt::Display) -> Error {
        Error::Internal(format!("{context}: {e}"))
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Internal(e.to_string())
    }
}

/// A snapshotter. Keys are global strings; the caller namespaces them.
#[async_trait::async_trait]
pub trait Snapshotter: Send + Sync + 'static {
    async fn stat(&self, key: &str) -> Result<Info>;
    /// Updates the labels of a snapshot; `fieldpaths` are `labels` or `labels.KEY`
    /// (empty: replace all labels).
    async fn update(&self, info: Info, fieldpaths: &[String]) -> Result<Info>;
    async fn usage(&self, key: &str) -> Result<Usage>;
    async fn mounts(&self, key: &str) -> Result<Vec<Mount>>;
    async fn prepare(&self, key: &str, parent: &str, labels: Labels) -> Result<Vec<Mount>>;
    async fn view(&self, key: &str, parent: &str, labels: Labels) -> Result<Vec<Mount>>;
    async fn commit(&self, name: &str, key: &str, labels: Labels) -> Result<()>;
    async fn remove(&self, key: &str) -> Result<()>;
    /// Every snapshot this snapshotter holds.
    async fn walk(&self) -> Result<Vec<Info>>;
    /// Removes what no snapshot refers to any more (leftover directories).
    async fn cleanup(&self) -> Result<()>;
}

/// Applies a label update as containerd does: with no field paths all labels are
/// replaced; `labels` replaces all of them; `labels.KEY` sets (or, with an empty
/// value, deletes) one label. Other paths are refused.
pub fn apply_label_update(
    current: &mut Labels,
    update: &Labels,
    fieldpaths: &[String],
    what: &str,
) -> Result<()> {
    if fieldpaths.is_empty() {
        *current = update.clone();
        return Ok(());
    }
    for path in fieldpaths {
        if let Some(key) = path.strip_prefix("labels.") {
            match update.get(key) {
                Some(v) if !v.is_empty() => {
                    current.insert(key.to_string(), v.clone());
                }
                _ => {
                    current.remove(key);
                }
            }
        } else if path == "labels" {
            *current = update.clone();
        } else {
            return Err(Error::InvalidArgument(format!(
                "cannot update {path:?} field on {what}"
            )));
        }
    }
    Ok(())
}
