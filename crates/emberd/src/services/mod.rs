//! The gRPC services, one file each. [`registrations`] is the single place where
//! services are added: each is a plugin of type `io.containerd.grpc.v1` whose
//! instance adds itself to the server's routes.
//!
//! Services convert wire messages to the store types at the edge and call the
//! stores (`ember-metadata`, `ember-content`, `ember-snapshot`); errors become
//! statuses with containerd's codes through [`status`].

/// containerd's default limit on a message a server receives.
pub const MAX_RECV_MESSAGE: usize = 16 << 20;
/// containerd's default limit on a message a server sends.
pub const MAX_SEND_MESSAGE: usize = 16 << 20;

/// A generated gRPC server with containerd's message size limits (tonic's own
/// default refuses requests over 4 MiB).
macro_rules! limited {
    ($server:expr) => {
        $server
            .max_decoding_message_size($crate::services::MAX_RECV_MESSAGE)
            .max_encoding_message_size($crate::services::MAX_SEND_MESSAGE)
    };
}

pub mod containers;
pub mod content;
pub mod content_api;
pub mod diff;
pub mod events;
pub mod health;
pub mod images;
pub mod introspection;
pub mod leases;
pub mod namespaces;
pub mod sandbox;
pub mod snapshots;
pub mod streaming;
pub mod tasks;
pub mod transfer;
pub mod version;
pub mod vm;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use ember_metadata::{Error, Labels};
use tonic::service::RoutesBuilder;
use tonic::{Code, Request, Status};

use crate::daemon::DaemonInfo;
use crate::plugin::{Instance, Registration};

/// The metadata header naming the namespace of a request.
pub const NAMESPACE_HEADER: &str = "containerd-namespace";
/// The metadata header naming the lease a request's new resources belong to.
pub const LEASE_HEADER: &str = "containerd-lease";

/// What a gRPC plugin's instance is: something that adds its service to the routes.
pub struct GrpcService(Box<dyn Fn(&mut RoutesBuilder) + Send + Sync>);

impl GrpcService {
    /// The plugin instance of a service that `add` puts into the routes.
    pub fn instance(add: impl Fn(&mut RoutesBuilder) + Send + Sync + 'static) -> Instance {
        Arc::new(GrpcService(Box::new(add)))
    }

    pub fn register(&self, routes: &mut RoutesBuilder) {
        (self.0)(routes)
    }
}

/// All gRPC service plugins.
pub fn registrations(info: Arc<DaemonInfo>) -> Vec<Registration> {
    let mut regs = vec![
        version::registration(),
        introspection::registration(info),
        namespaces::registration(),
        content::registration(),
        containers::registration(),
        leases::registration(),
        events::registration(),
        snapshots::registration(),
        images::registration(),
        diff::registration(),
        tasks::registration(),
        health::registration(),
        streaming::manager_registration(),
        streaming::registration(),
        transfer::registration(),
    ];
    regs.extend(sandbox::registrations());
    regs.extend(vm::registrations());
    regs
}

/// The namespace of a request: required, and a valid identifier.
pub fn namespace<T>(req: &Request<T>) -> Result<String, Status> {
    let ns = req
        .metadata()
        .get(NAMESPACE_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    if ns.is_empty() {
        return Err(Status::failed_precondition(
            "namespace is required: failed precondition",
        ));
    }
    ember_metadata::identifiers::validate(&ns)
        .map_err(|e| Status::invalid_argument(format!("namespace validation: {e}")))?;
    Ok(ns)
}

/// The lease of a request, if it names one.
pub fn lease<T>(req: &Request<T>) -> Option<String> {
    req.metadata()
        .get(LEASE_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

/// The status for a store error.
pub fn status(e: Error) -> Status {
    let code = match &e {
        Error::NotFound(_) => Code::NotFound,
        Error::AlreadyExists(_) => Code::AlreadyExists,
        Error::InvalidArgument(_) => Code::InvalidArgument,
        Error::FailedPrecondition(_) => Code::FailedPrecondition,
        Error::Unavailable(_) => Code::Unavailable,
        Error::Unimplemented(_) => Code::Unimplemented,
        Error::Internal(_) => Code::Unknown,
    };
    if code == Code::Unknown {
        tracing::error!(error = %e, "request failed");
    }
    Status::new(code, e.to_string())
}

pub fn filter<S: AsRef<str>>(filters: &[S]) -> Result<ember_metadata::Filter, Status> {
    ember_metadata::Filter::parse_all(filters).map_err(status)
}

pub fn labels_in(m: HashMap<String, String>) -> Labels {
    m.into_iter().collect()
}

pub fn labels_out(l: &Labels) -> HashMap<String, String> {
    l.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

pub fn timestamp(t: SystemTime) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp::from(t))
}

pub fn field_paths(mask: Option<prost_types::FieldMask>) -> Vec<String> {
    mask.map(|m| m.paths).unwrap_or_default()
}

/// Runs blocking store work without holding up other requests.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> ember_metadata::Result<T> + Send + 'static,
) -> Result<T, Status> {
    // Metadata calls are short (the log sync is the longest part): on the
    // multi-threaded runtime they run in place, which saves two thread hand-offs
    // per request; elsewhere they go to the blocking pool.
    use tokio::runtime::{Handle, RuntimeFlavor};
    if Handle::current().runtime_flavor() == RuntimeFlavor::MultiThread {
        return tokio::task::block_in_place(f).map_err(status);
    }
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Status::internal(format!("task failed: {e}")))?
        .map_err(status)
}
