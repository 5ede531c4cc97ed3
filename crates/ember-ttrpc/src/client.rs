//! A ttrpc client: many concurrent calls over one connection.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prost::Message;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

use crate::frame::{read_frame, write_frame, MessageType};
use crate::proto::{Request, Response};
use crate::status::Status;
use crate::{Error, Result};

type Pending = Arc<Mutex<Option<HashMap<u32, oneshot::Sender<Result<Response>>>>>>;

struct Outgoing {
    stream_id: u32,
    payload: Vec<u8>,
}

/// A ttrpc client bound to one connection. Cloning shares the connection.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    next_id: Mutex<u32>,
    pending: Pending,
    tx: mpsc::Sender<Outgoing>,
    /// Becomes true when the reading side ends.
    closed: tokio::sync::watch::Receiver<bool>,
}

impl Client {
    /// Starts a client over `stream`; background tasks run on the current tokio runtime.
    pub fn new<S>(stream: S) -> Self
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (mut rd, mut wr) = tokio::io::split(stream);
        let pending: Pending = Arc::new(Mutex::new(Some(HashMap::new())));
        let (tx, mut rx) = mpsc::channel::<Outgoing>(64);

        let wpending = pending.clone();
        tokio::spawn(async move {
            while let Some(out) = rx.recv().await {
                if let Err(e) = write_frame(
                    &mut wr,
                    out.stream_id,
                    MessageType::Request,
                    0,
                    &out.payload,
                )
                .await
                {
                    tracing::debug!("ttrpc client write failed: {e}");
                    fail_all(&wpending);
                    break;
                }
            }
            // Every handle is gone: half-close so the peer sees the end of the stream.
            let _ = wr.shutdown().await;
        });

        let rpending = pending.clone();
        let (closed_tx, closed_rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            loop {
                match read_frame(&mut rd).await {
                    Ok(Some((hdr, payload))) => {
                        if hdr.kind != MessageType::Response {
                            continue;
                        }
                        let waiter = rpending
                            .lock()
                            .unwrap()
                            .as_mut()
                            .and_then(|m| m.remove(&hdr.stream_id));
                        if let Some(w) = waiter {
                            let res = Response::decode(payload.as_slice()).map_err(Error::from);
                            let _ = w.send(res);
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        tracing::debug!("ttrpc client read failed: {e}");
                        break;
                    }
                }
            }
            fail_all(&rpending);
            let _ = closed_tx.send(true);
        });

        Client {
            inner: Arc::new(Inner {
                next_id: Mutex::new(first_stream_id()),
                pending,
                tx,
                closed: closed_rx,
            }),
        }
    }

    /// Returns when the connection has ended (the peer closed it or it failed).
    pub async fn closed(&self) {
        let mut rx = self.inner.closed.clone();
        let _ = rx.wait_for(|c| *c).await;
    }

    /// Whether the connection has ended.
    pub fn is_closed(&self) -> bool {
        self.inner.pending.lock().unwrap().is_none()
    }

    /// Calls `service/method` with an encoded payload and returns the reply payload.
    pub async fn call_raw(
        &self,
        service: &str,
        method: &str,
        payload: Vec<u8>,
        timeout: Option<Duration>,
    ) -> Result<Vec<u8>> {
        let stream_id = {
            let mut id = self.inner.next_id.lock().unwrap();
            let cur = *id;
            // Client streams are odd; wrap before overflow.
            *id = if cur >= u32::MAX - 2 { 1 } else { cur + 2 };
            cur
        };
        let req = Request {
            service: service.to_string(),
            method: method.to_string(),
            payload,
            timeout_nano: timeout.map(|t| t.as_nanos() as i64).unwrap_or(0),
            metadata: Vec::new(),
        };
        let (wtx, wrx) = oneshot::channel();
        {
            let mut guard = self.inner.pending.lock().unwrap();
            match guard.as_mut() {
                Some(m) => {
                    m.insert(stream_id, wtx);
                }
                None => return Err(Error::Closed),
            }
        }
        let out = Outgoing {
            stream_id,
            payload: req.encode_to_vec(),
        };
        if self.inner.tx.send(out).await.is_err() {
            self.forget(stream_id);
            return Err(Error::Closed);
        }
        let resp = match timeout {
            Some(t) => match tokio::time::timeout(t, wrx).await {
                Ok(r) => r,
                Err(_) => {
                    self.forget(stream_id);
                    return Err(Error::Timeout(t));
                }
            },
            None => wrx.await,
        };
        let resp = resp.map_err(|_| Error::Closed)??;
        if let Some(st) = resp.status.as_ref().filter(|s| s.code != 0) {
            return Err(Error::Status(Status::from_proto(st)));
        }
        Ok(resp.payload)
    }

    /// Calls a method with typed request and response messages.
    pub async fn call<Req: Message, Resp: Message + Default>(
        &self,
        service: &str,
        method: &str,
        req: &Req,
        timeout: Option<Duration>,
    ) -> Result<Resp> {
        let bytes = self
            .call_raw(service, method, req.encode_to_vec(), timeout)
            .await?;
        Ok(Resp::decode(bytes.as_slice())?)
    }

    fn forget(&self, id: u32) {
        if let Some(m) = self.inner.pending.lock().unwrap().as_mut() {
            m.remove(&id);
        }
    }
}

/// A distinct odd stream id to start from. A byte stream may carry replies meant for
/// an earlier client (a virtio-serial port, which has no connections of its own):
/// starting elsewhere keeps such stale replies from matching this client's calls.
fn first_stream_id() -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static CLIENTS: AtomicU32 = AtomicU32::new(0);
    let n = CLIENTS.fetch_add(1, Ordering::Relaxed);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() ^ (d.as_secs() as u32))
        .unwrap_or(0);
    ((t ^ n.wrapping_mul(0x9E37_79B9)) & 0x3fff_fffe) | 1
}

fn fail_all(p: &Pending) {
    if let Some(map) = p.lock().unwrap().take() {
        for (_, w) in map {
            let _ = w.send(Err(Error::Closed));
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn clients_start_at_distinct_odd_ids() {
        let a = super::first_stream_id();
        let b = super::first_stream_id();
        assert_eq!(a % 2, 1);
        assert_eq!(b % 2, 1);
        assert_ne!(a, b);
    }
}
