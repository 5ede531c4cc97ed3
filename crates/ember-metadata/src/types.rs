//! The records kept in the metadata store.

use std::collections::BTreeMap;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::filters::{label_field, present, Fields};

pub type Labels = BTreeMap<String, String>;

/// A protobuf `Any`, kept opaque.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnyValue {
    pub type_url: String,
    #[serde(with = "hex_bytes")]
    pub value: Vec<u8>,
}

mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        hex::decode(s).map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Namespace {
    pub name: String,
    pub labels: Labels,
}

impl Fields for Namespace {
    fn field(&self, path: &[String]) -> Option<String> {
        match path[0].as_str() {
            "name" => present(&self.name),
            "labels" => label_field(&self.labels, &path[1..]),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Runtime {
    pub name: String,
    pub options: Option<AnyValue>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Container {
    pub id: String,
    pub labels: Labels,
    pub image: String,
    pub runtime: Runtime,
    pub spec: Option<AnyValue>,
    pub snapshotter: String,
    pub snapshot_key: String,
    pub created_at: SystemTime,
    pub updated_at: SystemTime,
    pub extensions: BTreeMap<String, AnyValue>,
    #[serde(default)]
    pub sandbox: String,
}

impl Container {
    /// A container with only what containerd requires: an id, a runtime and a spec.
    pub fn new(id: &str, runtime: &str, spec: AnyValue) -> Container {
        Container {
            id: id.to_string(),
            labels: Labels::new(),
            image: String::new(),
            runtime: Runtime {
                name: runtime.to_string(),
                options: None,
            },
            spec: Some(spec),
            snapshotter: String::new(),
            snapshot_key: String::new(),
            created_at: SystemTime::now(),
            updated_at: SystemTime::now(),
            extensions: BTreeMap::new(),
            sandbox: String::new(),
        }
    }
}

impl Fields for Container {
    fn field(&self, path: &[String]) -> Option<String> {
        match path[0].as_str() {
            "id" => present(&self.id),
            "image" => present(&self.image),
            "runtime" if path.len() == 2 && path[1] == "name" => present(&self.runtime.name),
            "snapshotter" => present(&self.snapshotter),
            "snapshotkey" | "snapshot_key" => present(&self.snapshot_key),
            "sandbox" => present(&self.sandbox),
            "labels" => label_field(&self.labels, &path[1..]),
            _ => None,
        }
    }
}

/// A blob as seen from one namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContentInfo {
    pub digest: String,
    pub size: i64,
    pub labels: Labels,
    pub created_at: SystemTime,
    pub updated_at: SystemTime,
}

impl Fields for ContentInfo {
    fn field(&self, path: &[String]) -> Option<String> {
        match path[0].as_str() {
            "digest" => present(&self.digest),
            "size" => Some(self.size.to_string()),
            "labels" => label_field(&self.labels, &path[1..]),
            _ => None,
        }
    }
}

/// An ingest as seen from one namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IngestStatus {
    pub reference: String,
    pub offset: i64,
    pub total: i64,
    pub expected: String,
    pub started_at: SystemTime,
    pub updated_at: SystemTime,
}

impl From<ember_content::Status> for IngestStatus {
    /// The status as the blob store has it (reference unchanged).
    fn from(s: ember_content::Status) -> Self {
        IngestStatus {
            reference: s.reference,
            offset: s.offset,
            total: s.total,
            expected: s.expected,
            started_at: s.started_at,
            updated_at: s.updated_at,
        }
    }
}

impl Fields for IngestStatus {
    fn field(&self, path: &[String]) -> Option<String> {
        match path[0].as_str() {
            "ref" => present(&self.reference),
            _ => None,
        }
    }
}

pub use ember_snapshot::Kind as SnapshotKind;

/// A snapshot as seen from one namespace: its key there, and the global key the
/// snapshotter knows it by.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub snapshotter: String,
    pub name: String,
    pub backing: String,
    pub parent: String,
    pub kind: SnapshotKind,
    pub labels: Labels,
    pub created_at: SystemTime,
    pub updated_at: SystemTime,
}

impl Fields for Snapshot {
    fn field(&self, path: &[String]) -> Option<String> {
        match path[0].as_str() {
            "kind" => Some(self.kind.as_str().to_string()),
            "name" => present(&self.name),
            "parent" => present(&self.parent),
            "labels" => label_field(&self.labels, &path[1..]),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub id: String,
    pub labels: Labels,
    pub created_at: SystemTime,
}

impl Fields for Lease {
    fn field(&self, path: &[String]) -> Option<String> {
        match path[0].as_str() {
            "id" => present(&self.id),
            "labels" => label_field(&self.labels, &path[1..]),
            _ => None,
        }
    }
}

/// A resource held by a lease: `content` (a digest), `ingests` (an ingest ref) or
/// `snapshots/<snapshotter>` (a snapshot key).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct LeaseResource {
    pub id: String,
    pub kind: String,
}

/// The label holding a lease's expiry time (RFC 3339).
pub const LABEL_GC_EXPIRE: &str = "containerd.io/gc.expire";

/// What an image points at: an OCI descriptor.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Descriptor {
    pub media_type: String,
    pub digest: String,
    pub size: i64,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

/// A named image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Image {
    pub name: String,
    pub labels: Labels,
    pub target: Descriptor,
    pub created_at: SystemTime,
    pub updated_at: SystemTime,
}

impl Fields for Image {
    fn field(&self, path: &[String]) -> Option<String> {
        match path[0].as_str() {
            "name" => present(&self.name),
            "labels" => label_field(&self.labels, &path[1..]),
            "target" if path.len() >= 2 => match path[1].as_str() {
                "digest" => present(&self.target.digest),
                "mediatype" | "media_type" => present(&self.target.media_type),
                "annotations" => label_field(&self.target.annotations, &path[2..]),
                _ => None,
            },
            _ => None,
        }
    }
}

/// Labels that make an object a garbage collection root.
pub const LABEL_GC_ROOT: &str = "containerd.io/gc.root";
/// Prefix of labels that reference content from an object.
pub const LABEL_GC_REF_CONTENT: &str = "containerd.io/gc.ref.content";
/// Prefix of labels that reference snapshots (`...snapshot.<snapshotter>`).
pub const LABEL_GC_REF_SNAPSHOT: &str = "containerd.io/gc.ref.snapshot.";
/// A lease whose resources are kept without what they reference.
pub const LABEL_GC_FLAT: &str = "containerd.io/gc.flat";
