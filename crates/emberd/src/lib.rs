//! emberd's library: configuration, plugins, the event exchange and the gRPC
//! services; `main.rs` is the command line around [`daemon::run`].

pub mod authority;
pub mod config;
pub mod daemon;
pub mod erofs;
pub mod events;
pub mod gc;
pub mod limits;
pub mod metrics;
pub mod mounts;
pub mod plugin;
pub mod proxy;
pub mod runtime;
pub mod services;
pub mod shim_binary;
pub mod shim_log;
pub mod ttrpc;
pub mod vms;

/// Server stubs generated from containerd's protos (see `build.rs`).
#[allow(clippy::all)]
pub mod grpc {
    pub mod containers {
        tonic::include_proto!("containerd.services.containers.v1");
    }
    pub mod content {
        tonic::include_proto!("containerd.services.content.v1");
    }
    pub mod diff {
        tonic::include_proto!("containerd.services.diff.v1");
    }
    pub mod events {
        tonic::include_proto!("containerd.services.events.v1");
    }
    pub mod images {
        tonic::include_proto!("containerd.services.images.v1");
    }
    pub mod introspection {
        tonic::include_proto!("containerd.services.introspection.v1");
    }
    pub mod leases {
        tonic::include_proto!("containerd.services.leases.v1");
    }
    pub mod namespaces {
        tonic::include_proto!("containerd.services.namespaces.v1");
    }
    pub mod streaming {
        tonic::include_proto!("containerd.services.streaming.v1");
    }
    pub mod sandbox {
        tonic::include_proto!("containerd.services.sandbox.v1");
    }
    pub mod tasks {
        tonic::include_proto!("containerd.services.tasks.v1");
    }
    pub mod transfer {
        tonic::include_proto!("containerd.services.transfer.v1");
    }
    pub mod version {
        tonic::include_proto!("containerd.services.version.v1");
    }
    pub use ember_snapshot::grpc as snapshots;
}
