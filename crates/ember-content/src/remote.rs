//! A blob store behind a unix socket: a client of
//! `containerd.services.content.v1.Content` (what containerd calls a proxy content
//! plugin), with the blocking [`Backend`] interface the local store has.
//!
//! Calls run on a small runtime of the store's own, on a thread of its own; the
//! calling thread waits for them (from a blocking context, as with the local
//! store), and the caller's runtime is never involved. The connection is made on first use and made again after the server
//! went away; a server that is gone fails calls with `Unavailable` instead of
//! leaving them waiting.

use std::collections::HashMap;
use std::future::Future;
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use containerd_client::services::v1 as wire;
use containerd_client::services::v1::content_client::ContentClient;
use containerd_client::services::v1::WriteAction;
use tokio::runtime::Handle;
use tokio::sync::{mpsc, oneshot, OnceCell};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Code, Request, Streaming};

use crate::backend::{Backend, Blob, Ingest};
use crate::{Commit, Error, Info, Result, Status};

/// How long connecting and each unary call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// The largest message a server may send (a read chunk).
const MAX_MESSAGE: usize = 64 << 20;

/// A remote content store. Cheap to clone.
#[derive(Clone)]
pub struct RemoteStore {
    inner: Arc<Inner>,
    /// Sent as `containerd-namespace` when set (a namespaced server such as a
    /// daemon's own content service); a plain blob store needs none.
    namespace: Option<String>,
    /// Sent as `containerd-lease` when set.
    lease: Option<String>,
}

struct Inner {
    name: String,
    address: PathBuf,
    handle: Handle,
    channel: OnceCell<Channel>,
    /// Dropped with the store: the runtime's thread then ends.
    _stop: oneshot::Sender<()>,
}

fn time(t: Option<prost_types::Timestamp>) -> SystemTime {
    t.and_then(|t| SystemTime::try_from(t).ok())
        .unwrap_or(UNIX_EPOCH)
}

fn from_status(s: tonic::Status) -> Error {
    let msg = s.message().to_string();
    match s.code() {
        Code::NotFound => Error::NotFound(msg),
        Code::AlreadyExists => Error::AlreadyExists(msg),
        Code::InvalidArgument | Code::OutOfRange => Error::InvalidArgument(msg),
        Code::FailedPrecondition => Error::FailedPrecondition(msg),
        Code::Unavailable | Code::Cancelled | Code::DeadlineExceeded => Error::Unavailable(msg),
        _ => Error::Internal(msg),
    }
}

fn info_from_wire(i: wire::Info) -> Info {
    Info {
        digest: i.digest,
        size: i.size,
        created_at: time(i.created_at),
        updated_at: time(i.updated_at),
    }
}

fn status_from_wire(s: wire::Status) -> Status {
    Status {
        reference: s.r#ref,
        offset: s.offset,
        total: s.total,
        expected: s.expected,
        started_at: time(s.started_at),
        updated_at: time(s.updated_at),
    }
}

impl RemoteStore {
    /// A store served at `address`; `name` appears in errors and in the name of
    /// the store's thread.
    pub fn new(name: impl Into<String>, address: impl Into<PathBuf>) -> Result<RemoteStore> {
        let name = name.into();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let handle = rt.handle().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        std::thread::Builder::new()
            .name(format!("content-{name}"))
            .spawn(move || {
                rt.block_on(async {
                    let _ = stopped.await;
                })
            })?;
        Ok(RemoteStore {
            inner: Arc::new(Inner {
                name,
                address: address.into(),
                handle,
                channel: OnceCell::new(),
                _stop: stop,
            }),
            namespace: None,
            lease: None,
        })
    }

    /// The same store, with requests made in `namespace` and under `lease`.
    pub fn scoped(&self, namespace: &str, lease: Option<&str>) -> RemoteStore {
        RemoteStore {
            inner: self.inner.clone(),
            namespace: Some(namespace.to_string()),
            lease: lease.map(str::to_string),
        }
    }

    fn request<T>(&self, msg: T) -> Request<T> {
        let mut r = Request::new(msg);
        let md = r.metadata_mut();
        if let Some(v) = self.namespace.as_ref().and_then(|n| n.parse().ok()) {
            md.insert("containerd-namespace", v);
        }
        if let Some(v) = self.lease.as_ref().and_then(|l| l.parse().ok()) {
            md.insert("containerd-lease", v);
        }
        r
    }

    /// Runs `f` with a client on the store's runtime and waits for it.
    fn call<T, F, Fut>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(ContentClient<Channel>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T>> + Send,
    {
        let inner = self.inner.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        self.inner.handle.spawn(async move {
            let r = async {
                let ch = tokio::time::timeout(
                    CALL_TIMEOUT,
                    inner
                        .channel
                        .get_or_try_init(|| containerd_client::connect(&inner.address)),
                )
                .await
                .map_err(|_| Error::Unavailable("connecting timed out".into()))?
                .map_err(|e| Error::Unavailable(format!("connecting: {e}")))?;
                let client = ContentClient::new(ch.clone())
                    .max_decoding_message_size(MAX_MESSAGE)
                    .max_encoding_message_size(MAX_MESSAGE);
                f(client).await
            }
            .await;
            let _ = tx.send(r);
        });
        let r = rx
            .recv()
            .map_err(|_| Error::Internal("the runtime dropped a content call".into()))?;
        r.map_err(|e| self.context(e))
    }

    /// Names the store in errors about its connection.
    fn context(&self, e: Error) -> Error {
        match e {
            Error::Unavailable(m) => Error::Unavailable(format!(
                "content store {} at {}: {m}",
                self.inner.name,
                self.inner.address.display()
            )),
            Error::Internal(m) => Error::Internal(format!(
                "content store {} at {}: {m}",
                self.inner.name,
                self.inner.address.display()
            )),
            e => e,
        }
    }

    fn unary<T, U, F, Fut>(&self, msg: T, f: F) -> Result<U>
    where
        T: Send + 'static,
        U: Send + 'static,
        F: FnOnce(ContentClient<Channel>, Request<T>) -> Fut + Send + 'static,
        Fut: Future<Output = std::result::Result<tonic::Response<U>, tonic::Status>> + Send,
    {
        let req = self.request(msg);
        self.call(move |c| async move {
            match tokio::time::timeout(CALL_TIMEOUT, f(c, req)).await {
                Ok(r) => r.map(|r| r.into_inner()).map_err(from_status),
                Err(_) => Err(Error::Unavailable("the call timed out".into())),
            }
        })
    }
}

impl Backend for RemoteStore {
    fn info(&self, digest: &str) -> Result<Info> {
        let r = self.unary(
            wire::InfoRequest {
                digest: digest.into(),
            },
            |mut c, r| async move { c.info(r).await },
        )?;
        r.info
            .map(info_from_wire)
            .ok_or_else(|| Error::Internal("the server sent no info".into()))
    }

    fn open_blob(&self, digest: &str) -> Result<Box<dyn Blob>> {
        let size = self.info(digest)?.size;
        Ok(Box::new(RemoteBlob {
            store: self.clone(),
            digest: digest.to_string(),
            size,
            pos: 0,
            chunks: None,
            buf: Vec::new(),
            at: 0,
        }))
    }

    fn delete(&self, digest: &str) -> Result<()> {
        self.unary(
            wire::DeleteContentRequest {
                digest: digest.into(),
            },
            |mut c, r| async move { c.delete(r).await },
        )
    }

    fn walk(&self) -> Result<Vec<Info>> {
        let req = self.request(wire::ListContentRequest { filters: vec![] });
        self.call(move |mut c| async move {
            let mut s = c.list(req).await.map_err(from_status)?.into_inner();
            let mut out = Vec::new();
            while let Some(m) = s.message().await.map_err(from_status)? {
                out.extend(m.info.into_iter().map(info_from_wire));
            }
            Ok(out)
        })
    }

    fn status(&self, reference: &str) -> Result<Status> {
        let r = self.unary(
            wire::StatusRequest {
                r#ref: reference.into(),
            },
            |mut c, r| async move { c.status(r).await },
        )?;
        r.status
            .map(status_from_wire)
            .ok_or_else(|| Error::NotFound(format!("ref {reference}")))
    }

    fn list_statuses(&self) -> Result<Vec<Status>> {
        let r = self.unary(
            wire::ListStatusesRequest { filters: vec![] },
            |mut c, r| async move { c.list_statuses(r).await },
        )?;
        Ok(r.statuses.into_iter().map(status_from_wire).collect())
    }

    fn abort(&self, reference: &str) -> Result<()> {
        self.unary(
            wire::AbortRequest {
                r#ref: reference.into(),
            },
            |mut c, r| async move { c.abort(r).await },
        )
    }

    fn writer(&self, reference: &str, total: i64, expected: &str) -> Result<Box<dyn Ingest>> {
        let (tx, rx) = mpsc::channel::<wire::WriteContentRequest>(4);
        let req = self.request(ReceiverStream::new(rx));
        let first = wire::WriteContentRequest {
            action: WriteAction::Stat as i32,
            r#ref: reference.into(),
            total,
            expected: expected.into(),
            ..Default::default()
        };
        let (session, resp) = self.call(move |mut c| async move {
            tx.send(first)
                .await
                .map_err(|_| Error::Unavailable("the write stream closed".into()))?;
            let mut rx = c.write(req).await.map_err(from_status)?.into_inner();
            let resp = next_response(&mut rx).await?;
            Ok((Session { tx, rx }, resp))
        })?;
        let status = Status {
            reference: reference.to_string(),
            offset: resp.offset,
            total: if resp.total > 0 { resp.total } else { total },
            expected: expected.to_string(),
            started_at: time(resp.started_at),
            updated_at: time(resp.updated_at),
        };
        Ok(Box::new(RemoteIngest {
            store: self.clone(),
            session: Some(session),
            status,
        }))
    }
}

async fn next_response(
    rx: &mut Streaming<wire::WriteContentResponse>,
) -> Result<wire::WriteContentResponse> {
    match tokio::time::timeout(CALL_TIMEOUT, rx.message()).await {
        Err(_) => Err(Error::Unavailable("the write timed out".into())),
        Ok(Err(s)) => Err(from_status(s)),
        Ok(Ok(None)) => Err(Error::Unavailable("the server ended the write".into())),
        Ok(Ok(Some(r))) => Ok(r),
    }
}

/// A blob read through `Read` requests from the current position on.
struct RemoteBlob {
    store: RemoteStore,
    digest: String,
    size: i64,
    pos: i64,
    /// Chunks of the running read, if one runs.
    chunks: Option<mpsc::Receiver<Result<Vec<u8>>>>,
    buf: Vec<u8>,
    at: usize,
}

impl RemoteBlob {
    fn start(&mut self) -> Result<()> {
        let (tx, rx) = mpsc::channel(4);
        let req = self.store.request(wire::ReadContentRequest {
            digest: self.digest.clone(),
            offset: self.pos,
            size: 0,
        });
        let store = self.store.clone();
        // The stream runs on the runtime and hands chunks over as they come.
        store.call(move |mut c| async move {
            tokio::spawn(async move {
                let mut s = match c.read(req).await {
                    Ok(s) => s.into_inner(),
                    Err(e) => {
                        let _ = tx.send(Err(from_status(e))).await;
                        return;
                    }
                };
                loop {
                    let m = match s.message().await {
                        Ok(Some(m)) => Ok(m.data),
                        Ok(None) => return,
                        Err(e) => Err(from_status(e)),
                    };
                    let failed = m.is_err();
                    if tx.send(m).await.is_err() || failed {
                        return;
                    }
                }
            });
            Ok(())
        })?;
        self.chunks = Some(rx);
        Ok(())
    }
}

impl Read for RemoteBlob {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if out.is_empty() || self.pos >= self.size {
            return Ok(0);
        }
        while self.at >= self.buf.len() {
            if self.chunks.is_none() {
                self.start().map_err(std::io::Error::other)?;
            }
            let mut rx = self.chunks.take().expect("started above");
            // Waited for on the store's runtime, so that a server that stops
            // answering times out.
            let (rx, next) = self
                .store
                .call(move |_| async move {
                    let next = tokio::time::timeout(CALL_TIMEOUT, rx.recv()).await;
                    Ok((rx, next))
                })
                .map_err(std::io::Error::other)?;
            let next = match next {
                Ok(n) => n,
                Err(_) => Some(Err(Error::Unavailable(format!(
                    "reading {} timed out",
                    self.digest
                )))),
            };
            self.chunks = Some(rx);
            match next {
                Some(Ok(data)) => {
                    self.buf = data;
                    self.at = 0;
                }
                Some(Err(e)) => {
                    self.chunks = None;
                    return Err(std::io::Error::other(self.store.context(e)));
                }
                None => {
                    self.chunks = None;
                    return Err(std::io::Error::other(self.store.context(
                        Error::Unavailable(format!("the read of {} ended early", self.digest)),
                    )));
                }
            }
        }
        let n = out.len().min(self.buf.len() - self.at);
        out[..n].copy_from_slice(&self.buf[self.at..self.at + n]);
        self.at += n;
        self.pos += n as i64;
        Ok(n)
    }
}

impl Seek for RemoteBlob {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        let pos = match to {
            SeekFrom::Start(p) => p as i64,
            SeekFrom::End(d) => self.size + d,
            SeekFrom::Current(d) => self.pos + d,
        };
        if pos < 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "seek before the start",
            ));
        }
        if pos != self.pos {
            self.pos = pos;
            self.chunks = None;
            self.buf.clear();
            self.at = 0;
        }
        Ok(pos as u64)
    }
}

/// One `Write` stream.
struct Session {
    tx: mpsc::Sender<wire::WriteContentRequest>,
    rx: Streaming<wire::WriteContentResponse>,
}

/// An ingest written through a `Write` stream; dropping it leaves the ingest on
/// the server, to be resumed.
struct RemoteIngest {
    store: RemoteStore,
    session: Option<Session>,
    status: Status,
}

impl RemoteIngest {
    fn send(&mut self, req: wire::WriteContentRequest) -> Result<wire::WriteContentResponse> {
        let mut s = self
            .session
            .take()
            .ok_or_else(|| Error::Unavailable("the write stream failed earlier".into()))?;
        let (s, resp) = self.store.call(move |_| async move {
            s.tx.send(req)
                .await
                .map_err(|_| Error::Unavailable("the write stream closed".into()))?;
            let resp = next_response(&mut s.rx).await?;
            Ok((s, resp))
        })?;
        self.session = Some(s);
        self.status.offset = resp.offset;
        if resp.total > 0 {
            self.status.total = resp.total;
        }
        self.status.updated_at = time(resp.updated_at);
        Ok(resp)
    }

    fn message(&self, action: WriteAction, data: Vec<u8>) -> wire::WriteContentRequest {
        wire::WriteContentRequest {
            action: action as i32,
            r#ref: self.status.reference.clone(),
            total: self.status.total,
            expected: self.status.expected.clone(),
            offset: self.status.offset,
            data,
            labels: HashMap::new(),
        }
    }
}

impl Ingest for RemoteIngest {
    fn status(&self) -> Status {
        self.status.clone()
    }

    fn set_total(&mut self, total: i64) -> Result<()> {
        if total > 0 {
            self.status.total = total;
        }
        Ok(())
    }

    fn set_expected(&mut self, expected: &str) -> Result<()> {
        if !expected.is_empty() {
            self.status.expected = expected.to_string();
        }
        Ok(())
    }

    fn write(&mut self, data: &[u8]) -> Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        let m = self.message(WriteAction::Write, data.to_vec());
        self.send(m).map(|_| ())
    }

    /// Only a restart from 0 is possible remotely; the server cuts the data at the
    /// next write.
    fn truncate(&mut self, size: i64) -> Result<()> {
        if size != 0 && size != self.status.offset {
            return Err(Error::InvalidArgument(format!(
                "a remote ingest can only restart from 0, not from {size}"
            )));
        }
        self.status.offset = size;
        Ok(())
    }

    fn commit(
        mut self: Box<Self>,
        size: i64,
        expected: &str,
        labels: &HashMap<String, String>,
    ) -> Result<Commit> {
        let mut m = self.message(WriteAction::Commit, vec![]);
        if size > 0 {
            m.total = size;
        }
        if !expected.is_empty() {
            m.expected = expected.to_string();
        }
        m.labels = labels.clone();
        let resp = self.send(m)?;
        Ok(Commit {
            digest: resp.digest,
            size: resp.offset,
            existed: false,
        })
    }
}
