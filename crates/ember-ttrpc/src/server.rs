//! A ttrpc server: registered services, each request handled in its own task.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;

use crate::frame::{read_frame, write_frame, MessageType};
use crate::proto::{Request, Response};
use crate::status::Status;
use crate::Error;

/// How long in-flight calls may still answer after the client closed the connection.
const DISCONNECT_GRACE: Duration = Duration::from_secs(1);

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// A method handler: takes the request payload, returns the reply payload or a status.
pub type Handler = Arc<dyn Fn(Vec<u8>) -> BoxFuture<Result<Vec<u8>, Status>> + Send + Sync>;

/// The methods of one service, keyed by method name.
#[derive(Default, Clone)]
pub struct Service {
    methods: HashMap<String, Handler>,
}

impl Service {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a typed method: the payload is decoded into `Req` and the result encoded.
    pub fn method<Req, Resp, F, Fut>(mut self, name: &str, f: F) -> Self
    where
        Req: Message + Default + 'static,
        Resp: Message + 'static,
        F: Fn(Req) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Resp, Status>> + Send + 'static,
    {
        let f = Arc::new(f);
        let h: Handler = Arc::new(move |payload: Vec<u8>| {
            let f = f.clone();
            Box::pin(async move {
                let req = Req::decode(payload.as_slice())
                    .map_err(|e| Status::invalid_argument(format!("bad request payload: {e}")))?;
                let resp = f(req).await?;
                Ok(resp.encode_to_vec())
            })
        });
        self.methods.insert(name.to_string(), h);
        self
    }
}

/// A set of services served on any number of connections.
#[derive(Default, Clone)]
pub struct Server {
    services: Arc<HashMap<String, Service>>,
}

impl Server {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn register(mut self, name: &str, service: Service) -> Self {
        Arc::make_mut(&mut self.services).insert(name.to_string(), service);
        self
    }

    fn lookup(&self, service: &str, method: &str) -> Result<Handler, Status> {
        let svc = self
            .services
            .get(service)
            .ok_or_else(|| Status::unimplemented(format!("service {service} is not served")))?;
        svc.methods.get(method).cloned().ok_or_else(|| {
            Status::unimplemented(format!("method {service}/{method} is not served"))
        })
    }

    /// Serves one connection until the peer closes it or breaks the protocol. A
    /// protocol violation ends the connection with an error; handlers still running
    /// have their replies dropped.
    pub async fn serve_connection<S>(&self, stream: S) -> Result<(), Error>
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (mut rd, mut wr) = tokio::io::split(stream);
        let (tx, mut rx) = mpsc::channel::<(u32, Vec<u8>)>(64);
        let writer = tokio::spawn(async move {
            while let Some((id, payload)) = rx.recv().await {
                if write_frame(&mut wr, id, MessageType::Response, 0, &payload)
                    .await
                    .is_err()
                {
                    break;
                }
            }
        });
        let mut handlers = tokio::task::JoinSet::new();
        let result = loop {
            // Reap finished handlers so the set does not grow without bound.
            while handlers.try_join_next().is_some() {}
            let (hdr, payload) = match read_frame(&mut rd).await {
                Ok(Some(f)) => f,
                Ok(None) => break Ok(()),
                Err(e) => break Err(e),
            };
            match hdr.kind {
                MessageType::Request => {}
                // Streaming data is not served: ignore such frames.
                MessageType::Data => continue,
                MessageType::Response => {
                    break Err(Error::Protocol("a client sent a response".into()));
                }
            }
            if hdr.stream_id % 2 == 0 {
                break Err(Error::Protocol(format!(
                    "request on even stream id {}",
                    hdr.stream_id
                )));
            }
            let req = match Request::decode(payload.as_slice()) {
                Ok(r) => r,
                Err(e) => break Err(Error::Protocol(format!("undecodable request: {e}"))),
            };
            let handler = self.lookup(&req.service, &req.method);
            let tx = tx.clone();
            handlers.spawn(async move {
                let fut = async {
                    match handler {
                        Ok(h) => h(req.payload).await,
                        Err(st) => Err(st),
                    }
                };
                let result = if req.timeout_nano > 0 {
                    let t = Duration::from_nanos(req.timeout_nano as u64);
                    match tokio::time::timeout(t, fut).await {
                        Ok(r) => r,
                        Err(_) => Err(Status::new(
                            crate::Code::DeadlineExceeded,
                            format!("{}/{} timed out", req.service, req.method),
                        )),
                    }
                } else {
                    fut.await
                };
                let resp = match result {
                    Ok(payload) => Response {
                        status: None,
                        payload,
                    },
                    Err(st) => Response {
                        status: Some(st.to_proto()),
                        payload: Vec::new(),
                    },
                };
                let _ = tx.send((hdr.stream_id, resp.encode_to_vec())).await;
            });
        };
        drop(tx);
        if result.is_ok() {
            // On a clean close, replies already under way may still go out; calls that
            // would wait longer (long polls) are abandoned with the connection.
            let drain = async { while handlers.join_next().await.is_some() {} };
            let _ = tokio::time::timeout(DISCONNECT_GRACE, drain).await;
            handlers.abort_all();
            let _ = tokio::time::timeout(DISCONNECT_GRACE, writer).await;
        } else {
            handlers.abort_all();
            writer.abort();
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Client, Code};

    #[derive(Clone, PartialEq, prost::Message)]
    struct Echo {
        #[prost(string, tag = "1")]
        text: String,
        #[prost(uint64, tag = "2")]
        delay_ms: u64,
    }

    fn server() -> Server {
        Server::new().register(
            "test.Echo",
            Service::new().method("Echo", |r: Echo| async move {
                tokio::time::sleep(Duration::from_millis(r.delay_ms)).await;
                if r.text == "fail" {
                    return Err(Status::not_found("no such thing"));
                }
                Ok(Echo {
                    text: r.text.to_uppercase(),
                    delay_ms: 0,
                })
            }),
        )
    }

    #[tokio::test]
    async fn concurrent_calls_and_errors() {
        let (a, b) = tokio::io::duplex(1 << 16);
        let srv = server();
        tokio::spawn(async move { srv.serve_connection(b).await });
        let c = Client::new(a);
        let slow = {
            let c = c.clone();
            tokio::spawn(async move {
                c.call::<_, Echo>(
                    "test.Echo",
                    "Echo",
                    &Echo {
                        text: "slow".into(),
                        delay_ms: 100,
                    },
                    None,
                )
                .await
            })
        };
        let fast: Echo = c
            .call(
                "test.Echo",
                "Echo",
                &Echo {
                    text: "fast".into(),
                    delay_ms: 0,
                },
                None,
            )
            .await
            .unwrap();
        assert_eq!(fast.text, "FAST");
        assert_eq!(slow.await.unwrap().unwrap().text, "SLOW");
        let err = c
            .call::<_, Echo>(
                "test.Echo",
                "Echo",
                &Echo {
                    text: "fail".into(),
                    delay_ms: 0,
                },
                None,
            )
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::NotFound);
        let err = c
            .call::<_, Echo>("test.Nope", "Echo", &Echo::default(), None)
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unimplemented);
        let err = c
            .call::<_, Echo>(
                "test.Echo",
                "Echo",
                &Echo {
                    text: "x".into(),
                    delay_ms: 2000,
                },
                Some(Duration::from_millis(50)),
            )
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Timeout(_)));
    }

    #[tokio::test]
    async fn a_closed_connection_abandons_long_calls() {
        let (a, b) = tokio::io::duplex(1 << 16);
        let srv = server();
        let h = tokio::spawn(async move { srv.serve_connection(b).await });
        let c = Client::new(a);
        let pending = {
            let c = c.clone();
            tokio::spawn(async move {
                c.call::<_, Echo>(
                    "test.Echo",
                    "Echo",
                    &Echo {
                        text: "long".into(),
                        delay_ms: 60_000,
                    },
                    None,
                )
                .await
            })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        pending.abort();
        drop(c);
        let r = tokio::time::timeout(Duration::from_secs(5), h).await;
        assert!(matches!(r, Ok(Ok(Ok(())))), "{r:?}");
    }

    #[tokio::test]
    async fn garbage_ends_the_connection() {
        use tokio::io::AsyncWriteExt;
        let (mut a, b) = tokio::io::duplex(1 << 16);
        let srv = server();
        let h = tokio::spawn(async move { srv.serve_connection(b).await });
        a.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let r = h.await.unwrap();
        assert!(matches!(r, Err(Error::Protocol(_))), "{r:?}");
    }

    #[tokio::test]
    async fn pending_calls_fail_when_the_server_goes_away() {
        let (a, b) = tokio::io::duplex(1 << 16);
        let c = Client::new(a);
        let call = tokio::spawn(async move {
            c.call::<_, Echo>("test.Echo", "Echo", &Echo::default(), None)
                .await
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(b);
        assert!(matches!(call.await.unwrap(), Err(Error::Closed)));
    }
}
