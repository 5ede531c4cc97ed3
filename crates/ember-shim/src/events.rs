//! Publishing task events to containerd: `Forward` on its ttrpc events service at
//! `TTRPC_ADDRESS`, in order, reconnecting when containerd restarts.

use std::time::{Duration, SystemTime};

use ember_ttrpc::Client;
use prost_types::Any;
use tokio::net::UnixStream;
use tokio::sync::mpsc;

use ember_shim_api::{timestamp, Empty, Envelope, ForwardRequest, EVENTS_SERVICE};

/// An event for containerd: topic (`/tasks/exit`, …) and payload.
#[derive(Debug, Clone)]
pub struct Event {
    pub topic: &'static str,
    pub event: Any,
    pub at: SystemTime,
}

#[derive(Clone)]
pub struct Publisher {
    tx: mpsc::UnboundedSender<Event>,
}

impl Publisher {
    /// Starts the publishing task. Without an address events are only logged.
    pub fn start(address: Option<String>, namespace: String) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(address, namespace, rx));
        Publisher { tx }
    }

    pub fn publish<M: prost::Message>(&self, topic: &'static str, type_name: &str, m: &M) {
        let event = Any {
            type_url: format!("containerd.events.{type_name}"),
            value: m.encode_to_vec(),
        };
        let _ = self.tx.send(Event {
            topic,
            event,
            at: SystemTime::now(),
        });
    }
}

async fn run(address: Option<String>, namespace: String, mut rx: mpsc::UnboundedReceiver<Event>) {
    let mut client: Option<Client> = None;
    while let Some(ev) = rx.recv().await {
        tracing::info!(topic = ev.topic, "event");
        let Some(addr) = address.as_deref() else {
            continue;
        };
        let req = ForwardRequest {
            envelope: Some(Envelope {
                timestamp: Some(timestamp(ev.at)),
                namespace: namespace.clone(),
                topic: ev.topic.to_string(),
                event: Some(ev.event.clone()),
            }),
        };
        // containerd may be restarting: retry for a while before giving the event up.
        for attempt in 0..50 {
            if client.as_ref().map(|c| c.is_closed()).unwrap_or(true) {
                let path = addr.trim_start_matches("unix://");
                client = UnixStream::connect(path).await.ok().map(Client::new);
            }
            if let Some(c) = &client {
                match c
                    .call::<_, Empty>(
                        EVENTS_SERVICE,
                        "Forward",
                        &req,
                        Some(Duration::from_secs(5)),
                    )
                    .await
                {
                    Ok(_) => break,
                    Err(e) => {
                        tracing::warn!("publishing {} failed (attempt {attempt}): {e}", ev.topic);
                        client = None;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}
