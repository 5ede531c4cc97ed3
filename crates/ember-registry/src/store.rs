//! What pulling and pushing need from a content store. The daemon implements it
//! over its own store; a client can implement it over containerd's content API.

use std::collections::BTreeMap;

use bytes::Bytes;
use ember_images::Descriptor;

use crate::Result;

/// The label recording where a blob came from: `<prefix><registry host>` =
/// repository.
pub const LABEL_DISTRIBUTION_SOURCE: &str = "containerd.io/distribution.source.";

/// A content-addressed blob store.
#[async_trait::async_trait]
pub trait ContentStore: Send + Sync {
    /// Whether the store holds `digest`.
    async fn exists(&self, digest: &str) -> Result<bool>;
    /// A whole (small) blob.
    async fn read(&self, digest: &str) -> Result<Vec<u8>>;
    /// A blob for streaming, with its size.
    async fn reader(
        &self,
        digest: &str,
    ) -> Result<(Box<dyn tokio::io::AsyncRead + Send + Unpin>, i64)>;
    /// Starts (or resumes) writing `desc`; `None` when the store has it already.
    async fn writer(&self, desc: &Descriptor) -> Result<Option<Box<dyn BlobWriter>>>;
    /// The labels of a blob the store holds.
    async fn labels(&self, digest: &str) -> Result<BTreeMap<String, String>>;
    /// Adds labels to a blob the store holds.
    async fn add_labels(&self, digest: &str, labels: BTreeMap<String, String>) -> Result<()>;
}

/// One blob being written. The store verifies size and digest on commit.
#[async_trait::async_trait]
pub trait BlobWriter: Send {
    /// Bytes already written (from an earlier, interrupted write).
    fn offset(&self) -> u64;
    async fn write(&mut self, data: Bytes) -> Result<()>;
    /// Starts over from nothing.
    async fn reset(&mut self) -> Result<()>;
    /// Stores the blob with `labels`.
    async fn commit(self: Box<Self>, labels: BTreeMap<String, String>) -> Result<()>;
}

/// The labels linking a manifest or index to the children it keeps, as
/// containerd's garbage collection reads them.
pub fn child_labels(media_type: &str, children: &[Descriptor]) -> BTreeMap<String, String> {
    let mut l = BTreeMap::new();
    if crate::is_index(media_type) {
        for (n, m) in children.iter().enumerate() {
            l.insert(
                format!("containerd.io/gc.ref.content.m.{n}"),
                m.digest.clone(),
            );
        }
    } else {
        for (n, c) in children.iter().enumerate() {
            let key = if n == 0 {
                "containerd.io/gc.ref.content.config".to_string()
            } else {
                format!("containerd.io/gc.ref.content.l.{}", n - 1)
            };
            l.insert(key, c.digest.clone());
        }
    }
    l
}
