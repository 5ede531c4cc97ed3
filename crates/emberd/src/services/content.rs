//! `containerd.services.content.v1.Content`: blobs by digest, and resumable writes
//! through a bidirectional stream.

use std::io::{Read, Seek, SeekFrom};
use std::pin::Pin;
use std::sync::Arc;

use containerd_client::events::{ContentCreate, ContentDelete};
use containerd_client::services::v1 as wire;
use containerd_client::services::v1::WriteAction;
use ember_metadata::{ContentInfo, IngestStatus};
use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::daemon::Metadata;
use crate::events::Exchange;
use crate::grpc::content::content_server::{Content, ContentServer};
use crate::plugin::{InitError, Registration, EVENT, GRPC, METADATA};
use crate::services::content_api::{ContentApi, ContentWriter};
use crate::services::{
    blocking, field_paths, filter, labels_in, labels_out, lease, namespace, status, timestamp,
    GrpcService, NAMESPACE_HEADER,
};

/// Bytes per `Read` response message.
const READ_CHUNK: usize = 1 << 20;
/// Infos per `List` response message.
const LIST_BATCH: usize = 100;

pub fn registration() -> Registration {
    Registration::new(GRPC, "content", &[METADATA, EVENT], |ctx| {
        let md: Arc<Metadata> = ctx.registry.first(METADATA).map_err(InitError::Failed)?;
        let service = Service {
            api: Arc::new(md.content.clone()),
            md: Some(md),
            events: Some(ctx.registry.first(EVENT).map_err(InitError::Failed)?),
        };
        Ok(GrpcService::instance(move |r| {
            r.add_service(service.clone().into_server());
        }))
    })
}

#[derive(Clone)]
pub struct Service {
    api: Arc<dyn ContentApi>,
    /// The daemon's metadata, when the store is the daemon's: deletions are
    /// followed by a collection.
    md: Option<Arc<Metadata>>,
    events: Option<Arc<Exchange>>,
}

impl Service {
    /// The service over a store that is not the daemon's (no events, no
    /// collection), such as a bare blob store behind a proxy plugin socket.
    pub fn new(api: Arc<dyn ContentApi>) -> Service {
        Service {
            api,
            md: None,
            events: None,
        }
    }

    pub fn into_server(self) -> ContentServer<Service> {
        ContentServer::new(self)
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20)
    }

    /// The namespace of a request; a store without namespaces takes requests
    /// without one.
    fn ns<T>(&self, r: &Request<T>) -> Result<String, Status> {
        if self.api.namespaced() {
            return namespace(r);
        }
        Ok(r.metadata()
            .get(NAMESPACE_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string())
    }

    fn publish<M: prost::Message + prost::Name>(&self, ns: &str, topic: &str, msg: &M) {
        if let Some(e) = &self.events {
            e.publish(ns, topic, msg);
        }
    }
}

fn info_to_wire(i: &ContentInfo) -> wire::Info {
    wire::Info {
        digest: i.digest.clone(),
        size: i.size,
        created_at: timestamp(i.created_at),
        updated_at: timestamp(i.updated_at),
        labels: labels_out(&i.labels),
    }
}

fn status_to_wire(s: &IngestStatus) -> wire::Status {
    wire::Status {
        started_at: timestamp(s.started_at),
        updated_at: timestamp(s.updated_at),
        r#ref: s.reference.clone(),
        offset: s.offset,
        total: s.total,
        expected: s.expected.clone(),
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl Content for Service {
    async fn info(
        &self,
        r: Request<wire::InfoRequest>,
    ) -> Result<Response<wire::InfoResponse>, Status> {
        let ns = self.ns(&r)?;
        let digest = r.into_inner().digest;
        let cs = self.api.clone();
        let info = blocking(move || cs.info(&ns, &digest)).await?;
        Ok(Response::new(wire::InfoResponse {
            info: Some(info_to_wire(&info)),
        }))
    }

    async fn update(
        &self,
        r: Request<wire::UpdateRequest>,
    ) -> Result<Response<wire::UpdateResponse>, Status> {
        let ns = self.ns(&r)?;
        let r = r.into_inner();
        let i = r
            .info
            .ok_or_else(|| Status::invalid_argument("info is required"))?;
        let update = ContentInfo {
            digest: i.digest,
            size: i.size,
            labels: labels_in(i.labels),
            created_at: std::time::UNIX_EPOCH,
            updated_at: std::time::UNIX_EPOCH,
        };
        let paths = field_paths(r.update_mask);
        let cs = self.api.clone();
        let info = blocking(move || cs.update(&ns, &update, &paths)).await?;
        Ok(Response::new(wire::UpdateResponse {
            info: Some(info_to_wire(&info)),
        }))
    }

    type ListStream = BoxStream<wire::ListContentResponse>;

    async fn list(
        &self,
        r: Request<wire::ListContentRequest>,
    ) -> Result<Response<Self::ListStream>, Status> {
        let ns = self.ns(&r)?;
        let f = filter(&r.into_inner().filters)?;
        let cs = self.api.clone();
        let infos = blocking(move || cs.list(&ns, &f)).await?;
        let batches: Vec<_> = infos
            .chunks(LIST_BATCH)
            .map(|c| {
                Ok(wire::ListContentResponse {
                    info: c.iter().map(info_to_wire).collect(),
                })
            })
            .collect();
        Ok(Response::new(Box::pin(futures::stream::iter(batches))))
    }

    async fn delete(&self, r: Request<wire::DeleteContentRequest>) -> Result<Response<()>, Status> {
        let ns = self.ns(&r)?;
        let digest = r.into_inner().digest;
        let cs = self.api.clone();
        let (n, d) = (ns.clone(), digest.clone());
        blocking(move || cs.delete(&n, &d)).await?;
        // The blob goes once nothing holds it.
        if let Some(md) = &self.md {
            md.gc.run().await.map_err(status)?;
        }
        self.publish(&ns, "/content/delete", &ContentDelete { digest });
        Ok(Response::new(()))
    }

    type ReadStream = BoxStream<wire::ReadContentResponse>;

    async fn read(
        &self,
        r: Request<wire::ReadContentRequest>,
    ) -> Result<Response<Self::ReadStream>, Status> {
        let ns = self.ns(&r)?;
        let r = r.into_inner();
        if r.offset < 0 {
            return Err(Status::invalid_argument("offset must not be negative"));
        }
        let cs = self.api.clone();
        let digest = r.digest.clone();
        let (mut file, total) = blocking(move || cs.open_blob(&ns, &digest)).await?;
        if r.offset > total {
            return Err(Status::out_of_range(format!(
                "read past object length {total} bytes"
            )));
        }
        let mut left = if r.size <= 0 || r.offset + r.size > total {
            total - r.offset
        } else {
            r.size
        };
        let mut offset = r.offset;
        let (tx, rx) = mpsc::channel(4);
        tokio::task::spawn_blocking(move || {
            if let Err(e) = file.seek(SeekFrom::Start(offset as u64)) {
                let _ = tx.blocking_send(Err(Status::internal(e.to_string())));
                return;
            }
            let mut buf = vec![0u8; READ_CHUNK];
            while left > 0 {
                let want = (left as usize).min(READ_CHUNK);
                let n = match file.read(&mut buf[..want]) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) => {
                        let _ = tx.blocking_send(Err(Status::internal(e.to_string())));
                        return;
                    }
                };
                let msg = wire::ReadContentResponse {
                    offset,
                    data: buf[..n].to_vec(),
                };
                if tx.blocking_send(Ok(msg)).is_err() {
                    return;
                }
                offset += n as i64;
                left -= n as i64;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn status(
        &self,
        r: Request<wire::StatusRequest>,
    ) -> Result<Response<wire::StatusResponse>, Status> {
        let ns = self.ns(&r)?;
        let reference = r.into_inner().r#ref;
        let cs = self.api.clone();
        let s = blocking(move || cs.status(&ns, &reference)).await?;
        Ok(Response::new(wire::StatusResponse {
            status: Some(status_to_wire(&s)),
        }))
    }

    async fn list_statuses(
        &self,
        r: Request<wire::ListStatusesRequest>,
    ) -> Result<Response<wire::ListStatusesResponse>, Status> {
        let ns = self.ns(&r)?;
        let f = filter(&r.into_inner().filters)?;
        let cs = self.api.clone();
        let all = blocking(move || cs.list_statuses(&ns, &f)).await?;
        Ok(Response::new(wire::ListStatusesResponse {
            statuses: all.iter().map(status_to_wire).collect(),
        }))
    }

    type WriteStream = BoxStream<wire::WriteContentResponse>;

    async fn write(
        &self,
        r: Request<Streaming<wire::WriteContentRequest>>,
    ) -> Result<Response<Self::WriteStream>, Status> {
        let ns = self.ns(&r)?;
        let lease = lease(&r);
        let stream = r.into_inner();
        let (tx, rx) = mpsc::channel(4);
        let service = self.clone();
        tokio::spawn(async move {
            if let Err(e) = service.write_session(ns, lease, stream, &tx).await {
                let _ = tx.send(Err(e)).await;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn abort(&self, r: Request<wire::AbortRequest>) -> Result<Response<()>, Status> {
        let ns = self.ns(&r)?;
        let reference = r.into_inner().r#ref;
        let cs = self.api.clone();
        blocking(move || cs.abort(&ns, &reference)).await?;
        Ok(Response::new(()))
    }
}

impl Service {
    /// One `Write` stream: the first message names the ingest; every message gets
    /// one response; a commit ends the session.
    async fn write_session(
        &self,
        ns: String,
        lease: Option<String>,
        mut stream: Streaming<wire::WriteContentRequest>,
        tx: &mpsc::Sender<Result<wire::WriteContentResponse, Status>>,
    ) -> Result<(), Status> {
        let Some(first) = stream.message().await? else {
            return Ok(());
        };
        if first.r#ref.is_empty() {
            return Err(Status::invalid_argument(
                "first message must have a reference",
            ));
        }
        let reference = first.r#ref.clone();
        let cs = self.api.clone();
        let (n, rf, exp, total) = (
            ns.clone(),
            reference.clone(),
            first.expected.clone(),
            first.total,
        );
        let mut writer: Box<dyn ContentWriter> =
            blocking(move || cs.writer(&n, &rf, total, &exp, lease.as_deref())).await?;
        let mut next = Some(first);
        while let Some(req) = next.take() {
            let action = WriteAction::try_from(req.action).map_err(|_| {
                Status::invalid_argument(format!("unknown write action {}", req.action))
            })?;
            if req.total > 0 {
                writer.set_total(req.total).map_err(status)?;
            }
            if !req.expected.is_empty() {
                writer.set_expected(&req.expected).map_err(status)?;
            }
            let mut resp = wire::WriteContentResponse {
                action: req.action,
                ..Default::default()
            };
            match action {
                WriteAction::Stat => {}
                WriteAction::Write | WriteAction::Commit => {
                    let current = writer.status().offset;
                    if req.offset > 0 && req.offset != current {
                        return Err(Status::out_of_range(format!(
                            "write @{} must occur at current offset {current}",
                            req.offset
                        )));
                    }
                    if req.offset == 0 && current > 0 && !req.data.is_empty() {
                        writer.truncate(0).map_err(status)?;
                    }
                    writer.write(&req.data).map_err(status)?;
                }
            }
            let st = writer.status();
            resp.started_at = timestamp(st.started_at);
            resp.updated_at = timestamp(st.updated_at);
            resp.offset = st.offset;
            resp.total = st.total;
            if action == WriteAction::Commit {
                let labels = labels_in(req.labels);
                let (size, expected) = (req.total, req.expected);
                let digest = blocking(move || writer.commit(size, &expected, labels)).await?;
                self.publish(
                    &ns,
                    "/content/create",
                    &ContentCreate {
                        digest: digest.clone(),
                        size: st.offset,
                    },
                );
                resp.digest = digest;
                let _ = tx.send(Ok(resp)).await;
                return Ok(());
            }
            if tx.send(Ok(resp)).await.is_err() {
                return Ok(());
            }
            next = stream.message().await?;
        }
        Ok(())
    }
}
