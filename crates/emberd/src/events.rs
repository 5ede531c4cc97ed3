//! The event exchange: every event published in the daemon (or forwarded to it) goes
//! to every subscriber whose filters match.

use std::time::SystemTime;

use ember_metadata::filters::{present, Fields, Filter};
use prost::{Message, Name};
use tokio::sync::broadcast;

/// Events kept for slow subscribers before they start missing some.
const BACKLOG: usize = 1024;

/// An event on the bus.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub timestamp: SystemTime,
    pub namespace: String,
    pub topic: String,
    pub type_url: String,
    pub value: Vec<u8>,
}

impl Fields for Event {
    fn field(&self, path: &[String]) -> Option<String> {
        match path[0].as_str() {
            "namespace" => present(&self.namespace),
            "topic" => present(&self.topic),
            _ => None,
        }
    }
}

pub struct Exchange {
    tx: broadcast::Sender<Event>,
}

impl Default for Exchange {
    fn default() -> Self {
        Exchange {
            tx: broadcast::channel(BACKLOG).0,
        }
    }
}

impl Exchange {
    /// Publishes a typed event; its type URL is the message's full protobuf name,
    /// as containerd's clients expect.
    pub fn publish<M: Message + Name>(&self, namespace: &str, topic: &str, event: &M) {
        self.forward(Event {
            timestamp: SystemTime::now(),
            namespace: namespace.to_string(),
            topic: topic.to_string(),
            type_url: M::full_name(),
            value: event.encode_to_vec(),
        });
    }

    pub fn forward(&self, event: Event) {
        tracing::debug!(topic = %event.topic, namespace = %event.namespace, "event");
        // No subscribers is fine.
        let _ = self.tx.send(event);
    }

    /// A subscription; events not matching `filter` are skipped.
    pub fn subscribe(&self, filter: Filter) -> Subscription {
        Subscription {
            rx: self.tx.subscribe(),
            filter,
        }
    }
}

pub struct Subscription {
    rx: broadcast::Receiver<Event>,
    filter: Filter,
}

impl Subscription {
    /// The next matching event; `None` when the exchange is gone. A subscriber that
    /// falls more than the backlog behind loses the oldest events (with a warning).
    pub async fn next(&mut self) -> Option<Event> {
        loop {
            match self.rx.recv().await {
                Ok(e) if self.filter.matches(&e) => return Some(e),
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "event subscriber too slow; events dropped");
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}

/// Checks a topic as containerd does: `/`-separated identifiers, starting with `/`.
pub fn validate_topic(topic: &str) -> Result<(), String> {
    if topic.is_empty() {
        return Err("must not be empty for event".into());
    }
    let Some(rest) = topic.strip_prefix('/') else {
        return Err(format!("must start with '/' for event {topic:?}"));
    };
    if rest.is_empty() {
        return Err(format!(
            "must have at least one component for event {topic:?}"
        ));
    }
    for part in rest.split('/') {
        ember_metadata::identifiers::validate(part)
            .map_err(|e| format!("failed validation on component {part:?} of {topic:?}: {e}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn filtered_subscriptions() {
        let ex = Exchange::default();
        let mut all = ex.subscribe(Filter::default());
        let mut ns = ex.subscribe(Filter::parse_all(&["namespace==b"]).unwrap());
        let mut topic = ex.subscribe(Filter::parse_all(&["topic~=^/containers/"]).unwrap());
        let ev = containerd_client::events::NamespaceCreate {
            name: "x".into(),
            labels: Default::default(),
        };
        ex.publish("a", "/namespaces/create", &ev);
        ex.publish("b", "/containers/create", &ev);
        assert_eq!(all.next().await.unwrap().namespace, "a");
        assert_eq!(all.next().await.unwrap().namespace, "b");
        let e = ns.next().await.unwrap();
        assert_eq!(e.topic, "/containers/create");
        assert_eq!(e.type_url, "containerd.events.NamespaceCreate");
        assert_eq!(topic.next().await.unwrap().namespace, "b");
    }

    #[test]
    fn topics() {
        assert!(validate_topic("/tasks/exit").is_ok());
        for bad in ["", "tasks", "/", "/a//b", "/a b"] {
            assert!(validate_topic(bad).is_err(), "{bad}");
        }
    }
}
