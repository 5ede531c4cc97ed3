//! The daemon's ttrpc socket (`<address>.ttrpc`): shims forward their task events
//! here (`containerd.services.events.ttrpc.v1.Events/Forward`), and the events go
//! onto the exchange like the daemon's own.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use anyhow::{Context, Result};
use ember_shim_api::{Empty, ForwardRequest, EVENTS_SERVICE};
use ember_ttrpc::Status;

use crate::events::{validate_topic, Event, Exchange};

/// The socket path for a gRPC address.
pub fn address(grpc: &std::path::Path) -> PathBuf {
    let mut p = grpc.as_os_str().to_owned();
    p.push(".ttrpc");
    PathBuf::from(p)
}

fn forward(events: &Exchange, r: ForwardRequest) -> Result<Empty, Status> {
    let env = r
        .envelope
        .ok_or_else(|| Status::invalid_argument("envelope is required"))?;
    validate_topic(&env.topic).map_err(Status::invalid_argument)?;
    if env.namespace.is_empty() {
        return Err(Status::invalid_argument("namespace is required"));
    }
    let any = env.event.unwrap_or_default();
    let timestamp = env
        .timestamp
        .and_then(|t| SystemTime::try_from(t).ok())
        .unwrap_or_else(SystemTime::now);
    events.forward(Event {
        timestamp,
        namespace: env.namespace,
        topic: env.topic,
        type_url: any.type_url,
        value: any.value,
    });
    Ok(Empty {})
}

/// Binds the socket and serves it until the runtime stops.
pub fn serve(path: PathBuf, events: Arc<Exchange>) -> Result<()> {
    if path.exists() {
        std::fs::remove_file(&path)
            .with_context(|| format!("removing the stale socket {}", path.display()))?;
    }
    let listener = tokio::net::UnixListener::bind(&path)
        .with_context(|| format!("binding {}", path.display()))?;
    let service = ember_ttrpc::Service::new().method("Forward", move |r: ForwardRequest| {
        let events = events.clone();
        async move { forward(&events, r) }
    });
    let server = ember_ttrpc::Server::new().register(EVENTS_SERVICE, service);
    tokio::spawn(async move {
        loop {
            let stream = match listener.accept().await {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!("ttrpc accept: {e}");
                    continue;
                }
            };
            let server = server.clone();
            tokio::spawn(async move {
                if let Err(e) = server.serve_connection(stream).await {
                    tracing::debug!("ttrpc connection: {e}");
                }
            });
        }
    });
    Ok(())
}
