//! `containerd.services.events.v1.Events`: publish into, forward into and subscribe
//! to the daemon's event exchange.

use std::pin::Pin;
use std::sync::Arc;
use std::time::SystemTime;

use containerd_client::services::v1 as wire;
use containerd_client::types::Envelope;
use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::events::{validate_topic, Event, Exchange};
use crate::grpc::events::events_server::{Events, EventsServer};
use crate::plugin::{InitError, Registration, EVENT, GRPC};
use crate::services::{filter, namespace, timestamp, GrpcService};

pub fn registration() -> Registration {
    Registration::new(GRPC, "events", &[EVENT], |ctx| {
        let service = Service {
            events: ctx.registry.first(EVENT).map_err(InitError::Failed)?,
        };
        Ok(GrpcService::instance(move |r| {
            r.add_service(limited!(EventsServer::new(service.clone())));
        }))
    })
}

#[derive(Clone)]
pub struct Service {
    events: Arc<Exchange>,
}

fn envelope(e: Event) -> Envelope {
    Envelope {
        timestamp: timestamp(e.timestamp),
        namespace: e.namespace,
        topic: e.topic,
        event: Some(prost_types::Any {
            type_url: e.type_url,
            value: e.value,
        }),
    }
}

#[tonic::async_trait]
impl Events for Service {
    async fn publish(&self, r: Request<wire::PublishRequest>) -> Result<Response<()>, Status> {
        let ns = namespace(&r)?;
        let r = r.into_inner();
        validate_topic(&r.topic)
            .map_err(|e| Status::invalid_argument(format!("envelope topic {e}")))?;
        let event = r
            .event
            .ok_or_else(|| Status::invalid_argument("event is required"))?;
        self.events.forward(Event {
            timestamp: SystemTime::now(),
            namespace: ns,
            topic: r.topic,
            type_url: event.type_url,
            value: event.value,
        });
        Ok(Response::new(()))
    }

    async fn forward(&self, r: Request<wire::ForwardRequest>) -> Result<Response<()>, Status> {
        let env = r
            .into_inner()
            .envelope
            .ok_or_else(|| Status::invalid_argument("envelope is required"))?;
        ember_metadata::identifiers::validate(&env.namespace)
            .map_err(|e| Status::invalid_argument(format!("envelope namespace: {e}")))?;
        validate_topic(&env.topic)
            .map_err(|e| Status::invalid_argument(format!("envelope topic {e}")))?;
        let event = env
            .event
            .ok_or_else(|| Status::invalid_argument("envelope event is required"))?;
        self.events.forward(Event {
            timestamp: env
                .timestamp
                .and_then(|t| SystemTime::try_from(t).ok())
                .unwrap_or_else(SystemTime::now),
            namespace: env.namespace,
            topic: env.topic,
            type_url: event.type_url,
            value: event.value,
        });
        Ok(Response::new(()))
    }

    type SubscribeStream = Pin<Box<dyn Stream<Item = Result<Envelope, Status>> + Send>>;

    async fn subscribe(
        &self,
        r: Request<wire::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let f = filter(&r.into_inner().filters)?;
        let mut sub = self.events.subscribe(f);
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    e = sub.next() => match e {
                        Some(e) => {
                            if tx.send(Ok(envelope(e))).await.is_err() {
                                return;
                            }
                        }
                        None => return,
                    },
                    _ = tx.closed() => return,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
