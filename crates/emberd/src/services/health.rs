//! `grpc.health.v1.Health`: the standard gRPC health service, as containerd serves
//! it (plugin `io.containerd.grpc.v1.healthcheck`). The server as a whole (the
//! empty service name) is `SERVING` once the plugins are up; any other name is
//! unknown (`NOT_FOUND`), as on containerd. dockerd polls `Check` to learn that
//! its containerd is ready.

use crate::plugin::{Registration, GRPC};
use crate::services::GrpcService;

pub fn registration() -> Registration {
    Registration::new(GRPC, "healthcheck", &[], |_ctx| {
        // The reporter starts with the server `SERVING`; nothing changes it while
        // the daemon runs, so it need not be kept.
        let (_reporter, server) = tonic_health::server::health_reporter();
        Ok(GrpcService::instance(move |r| {
            r.add_service(limited!(server.clone()));
        }))
    })
}
