//! `containerd.services.streaming.v1.Streaming`: bidirectional streams of `Any`
//! messages a client opens ahead of a call that refers to them by id (the
//! Transfer service's progress, credentials and archive data).
//!
//! A stream starts with a `StreamInit` naming it; the daemon registers it in the
//! [`StreamManager`] under the request's namespace and answers with an `Empty`.
//! Whoever takes it from the manager then sends and receives on it; dropping the
//! taken [`Stream`] ends the call.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use containerd_client::services::v1::StreamInit;
use prost::{Message, Name};
use prost_types::Any;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming as Incoming};

use crate::grpc::streaming::streaming_server::{Streaming, StreamingServer};
use crate::plugin::{InitError, Instance, Registration, GRPC};
use crate::services::{namespace, GrpcService};

/// The plugin type of the stream manager.
pub const STREAMING: &str = "io.containerd.streaming.v1";

/// Streams nobody took within this long are dropped.
const UNCLAIMED: Duration = Duration::from_secs(600);

/// Packs a message the way containerd's typeurl does: the type URL is the
/// message's full name.
pub fn pack<M: Message + Name>(m: &M) -> Any {
    Any {
        type_url: M::full_name(),
        value: m.encode_to_vec(),
    }
}

/// Unpacks `a` as `M`; the type URL may carry a `…/` prefix.
pub fn unpack<M: Message + Name + Default>(a: &Any) -> Result<M, Status> {
    let name = a.type_url.rsplit('/').next().unwrap_or_default();
    if name != M::full_name() {
        return Err(Status::invalid_argument(format!(
            "expected {}, got {:?}",
            M::full_name(),
            a.type_url
        )));
    }
    M::decode(a.value.as_slice())
        .map_err(|e| Status::invalid_argument(format!("decoding {}: {e}", M::full_name())))
}

/// The message name of an `Any`.
pub fn type_name(a: &Any) -> &str {
    a.type_url.rsplit('/').next().unwrap_or_default()
}

/// A registered stream, taken by the call that uses it.
pub struct Stream {
    tx: tokio::sync::mpsc::Sender<Result<Any, Status>>,
    rx: Incoming<Any>,
}

impl Stream {
    /// Sends to the client; an error when the client has gone.
    pub async fn send(&self, a: Any) -> Result<(), Status> {
        self.tx
            .send(Ok(a))
            .await
            .map_err(|_| Status::cancelled("the stream's client has gone"))
    }

    /// The next message from the client; `None` once it closed its side.
    pub async fn recv(&mut self) -> Result<Option<Any>, Status> {
        self.rx.message().await
    }
}

struct Pending {
    stream: Stream,
    since: Instant,
}

/// Streams by namespace and id, until a call takes them.
#[derive(Default)]
pub struct StreamManager {
    streams: Mutex<HashMap<(String, String), Pending>>,
}

impl StreamManager {
    fn register(&self, ns: &str, id: &str, stream: Stream) -> Result<(), Status> {
        let mut s = self.streams.lock().unwrap_or_else(|e| e.into_inner());
        s.retain(|_, p| p.since.elapsed() < UNCLAIMED && !p.stream.tx.is_closed());
        let key = (ns.to_string(), id.to_string());
        if s.contains_key(&key) {
            return Err(Status::already_exists(format!(
                "stream {id:?}: already exists"
            )));
        }
        s.insert(
            key,
            Pending {
                stream,
                since: Instant::now(),
            },
        );
        Ok(())
    }

    /// Takes the stream `id` of namespace `ns`.
    pub fn take(&self, ns: &str, id: &str) -> Result<Stream, Status> {
        self.streams
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&(ns.to_string(), id.to_string()))
            .map(|p| p.stream)
            .ok_or_else(|| Status::not_found(format!("stream {id:?}: not found")))
    }
}

pub fn manager_registration() -> Registration {
    Registration::new(STREAMING, "manager", &[], |_| {
        Ok(Arc::new(StreamManager::default()) as Instance)
    })
}

pub fn registration() -> Registration {
    Registration::new(GRPC, "streaming", &[STREAMING], |ctx| {
        let service = Service {
            manager: ctx.registry.first(STREAMING).map_err(InitError::Failed)?,
        };
        Ok(GrpcService::instance(move |r| {
            r.add_service(StreamingServer::new(service.clone()));
        }))
    })
}

#[derive(Clone)]
pub struct Service {
    manager: Arc<StreamManager>,
}

type AnyStream = Pin<Box<dyn tokio_stream::Stream<Item = Result<Any, Status>> + Send>>;

#[tonic::async_trait]
impl Streaming for Service {
    type StreamStream = AnyStream;

    async fn stream(
        &self,
        r: Request<Incoming<Any>>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        let ns = namespace(&r)?;
        let mut rx = r.into_inner();
        let first = tokio::time::timeout(Duration::from_secs(30), rx.message())
            .await
            .map_err(|_| Status::deadline_exceeded("no stream init message"))??
            .ok_or_else(|| Status::invalid_argument("stream closed before its init message"))?;
        let init: StreamInit = unpack(&first)?;
        if init.id.is_empty() {
            return Err(Status::invalid_argument("stream id must not be empty"));
        }
        let (tx, out) = tokio::sync::mpsc::channel(16);
        tx.send(Ok(pack(&())))
            .await
            .map_err(|_| Status::internal("stream closed"))?;
        tracing::debug!(stream = %init.id, %ns, "registering stream");
        self.manager.register(&ns, &init.id, Stream { tx, rx })?;
        Ok(Response::new(Box::pin(ReceiverStream::new(out))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packs_like_typeurl() {
        let a = pack(&StreamInit { id: "x".into() });
        assert_eq!(a.type_url, "containerd.services.streaming.v1.StreamInit");
        assert_eq!(pack(&()).type_url, "google.protobuf.Empty");
        let mut b = a.clone();
        b.type_url = format!("type.googleapis.com/{}", b.type_url);
        assert_eq!(unpack::<StreamInit>(&b).unwrap().id, "x");
        assert!(unpack::<StreamInit>(&pack(&())).is_err());
    }
}
