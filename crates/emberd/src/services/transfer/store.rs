//! The daemon's namespaced content store as the registry code sees it: blobs
//! written under the transfer's lease, labels through the metadata store.

use std::collections::BTreeMap;

use bytes::Bytes;
use ember_images::Descriptor;
use ember_metadata::content::{ContentStore, NsWriter};
use ember_metadata::{ContentInfo, Labels};
use ember_registry::{BlobWriter, Error, Result};

/// One namespace of the content store, writing under a lease.
#[derive(Clone)]
pub struct Store {
    pub content: ContentStore,
    pub ns: String,
    pub lease: Option<String>,
}

pub fn store_err(e: ember_metadata::Error) -> Error {
    match e {
        ember_metadata::Error::NotFound(m) => Error::NotFound(m),
        ember_metadata::Error::AlreadyExists(m) => Error::AlreadyExists(m),
        ember_metadata::Error::InvalidArgument(m) => Error::Invalid(m),
        e => Error::Store(e.to_string()),
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> ember_metadata::Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Store(format!("store task: {e}")))?
        .map_err(store_err)
}

struct Writer {
    inner: Option<NsWriter>,
    desc: Descriptor,
    offset: u64,
}

impl Writer {
    async fn with<T: Send + 'static>(
        &mut self,
        f: impl FnOnce(&mut NsWriter) -> ember_metadata::Result<T> + Send + 'static,
    ) -> Result<T> {
        let mut w = self
            .inner
            .take()
            .ok_or_else(|| Error::Store("writer already failed".into()))?;
        let (w, r) = tokio::task::spawn_blocking(move || {
            let r = f(&mut w);
            (w, r)
        })
        .await
        .map_err(|e| Error::Store(format!("store task: {e}")))?;
        self.inner = Some(w);
        r.map_err(store_err)
    }
}

#[async_trait::async_trait]
impl BlobWriter for Writer {
    fn offset(&self) -> u64 {
        self.offset
    }

    async fn write(&mut self, data: Bytes) -> Result<()> {
        let n = data.len() as u64;
        self.with(move |w| w.write(&data)).await?;
        self.offset += n;
        Ok(())
    }

    async fn reset(&mut self) -> Result<()> {
        self.with(|w| w.truncate(0)).await?;
        self.offset = 0;
        Ok(())
    }

    async fn commit(mut self: Box<Self>, labels: BTreeMap<String, String>) -> Result<()> {
        let w = self
            .inner
            .take()
            .ok_or_else(|| Error::Store("writer already failed".into()))?;
        let (size, digest) = (self.desc.size, self.desc.digest.clone());
        let labels: Labels = labels.into_iter().collect();
        blocking(move || w.commit(size, &digest, labels)).await?;
        Ok(())
    }
}

#[async_trait::async_trait]
impl ember_registry::ContentStore for Store {
    async fn exists(&self, digest: &str) -> Result<bool> {
        let (c, ns, d) = (self.content.clone(), self.ns.clone(), digest.to_string());
        match blocking(move || c.info(&ns, &d)).await {
            Ok(_) => Ok(true),
            Err(Error::NotFound(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    async fn read(&self, digest: &str) -> Result<Vec<u8>> {
        let (c, ns, d) = (self.content.clone(), self.ns.clone(), digest.to_string());
        blocking(move || {
            let (mut f, size) = c.open_blob(&ns, &d)?;
            if size > 64 << 20 {
                return Err(ember_metadata::Error::InvalidArgument(format!(
                    "{d} is too large to read whole"
                )));
            }
            let mut v = Vec::with_capacity(size as usize);
            std::io::Read::read_to_end(&mut f, &mut v)
                .map_err(|e| ember_metadata::Error::Internal(format!("reading {d}: {e}")))?;
            Ok(v)
        })
        .await
    }

    async fn reader(
        &self,
        digest: &str,
    ) -> Result<(Box<dyn tokio::io::AsyncRead + Send + Unpin>, i64)> {
        let (c, ns, d) = (self.content.clone(), self.ns.clone(), digest.to_string());
        let (f, size) = blocking(move || c.open_blob(&ns, &d)).await?;
        Ok((Box::new(async_blob(f)), size))
    }

    async fn writer(&self, desc: &Descriptor) -> Result<Option<Box<dyn BlobWriter>>> {
        let (c, ns, lease) = (self.content.clone(), self.ns.clone(), self.lease.clone());
        let (digest, size) = (desc.digest.clone(), desc.size);
        let reference = format!("transfer-{digest}");
        match blocking(move || c.writer(&ns, &reference, size, &digest, lease.as_deref())).await {
            Ok(w) => {
                let offset = w.status().offset.max(0) as u64;
                Ok(Some(Box::new(Writer {
                    inner: Some(w),
                    desc: desc.clone(),
                    offset,
                })))
            }
            Err(Error::AlreadyExists(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn labels(&self, digest: &str) -> Result<BTreeMap<String, String>> {
        let (c, ns, d) = (self.content.clone(), self.ns.clone(), digest.to_string());
        let info = blocking(move || c.info(&ns, &d)).await?;
        Ok(info.labels.into_iter().collect())
    }

    async fn add_labels(&self, digest: &str, labels: BTreeMap<String, String>) -> Result<()> {
        if labels.is_empty() {
            return Ok(());
        }
        let (c, ns) = (self.content.clone(), self.ns.clone());
        let paths: Vec<String> = labels.keys().map(|k| format!("labels.{k}")).collect();
        let info = ContentInfo {
            digest: digest.to_string(),
            size: 0,
            labels: labels.into_iter().collect(),
            created_at: std::time::UNIX_EPOCH,
            updated_at: std::time::UNIX_EPOCH,
        };
        blocking(move || c.update(&ns, &info, &paths)).await?;
        Ok(())
    }
}

/// Reads a blob (a local file or a remote store's stream) on a blocking thread and
/// hands its bytes over in chunks; a read error reaches the async reader as an error.
fn async_blob(mut blob: Box<dyn ember_content::Blob>) -> impl tokio::io::AsyncRead + Send + Unpin {
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<bytes::Bytes>>(4);
    tokio::task::spawn_blocking(move || {
        let mut buf = vec![0u8; 1 << 20];
        loop {
            match std::io::Read::read(&mut blob, &mut buf) {
                Ok(0) => return,
                Ok(n) => {
                    if tx
                        .blocking_send(Ok(bytes::Bytes::copy_from_slice(&buf[..n])))
                        .is_err()
                    {
                        return;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                    return;
                }
            }
        }
    });
    tokio_util::io::StreamReader::new(tokio_stream::wrappers::ReceiverStream::new(rx))
}
