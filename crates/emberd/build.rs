//! Generates the server side of containerd's gRPC services. The messages (and the
//! clients) come from `containerd-client`, which is built from the same protos;
//! `extern_path` points every containerd package at its module there.

const SERVICES: &[&str] = &[
    "containers/v1/containers.proto",
    "content/v1/content.proto",
    "diff/v1/diff.proto",
    "events/v1/events.proto",
    "images/v1/images.proto",
    "introspection/v1/introspection.proto",
    "leases/v1/leases.proto",
    "namespaces/v1/namespace.proto",
    "streaming/v1/streaming.proto",
    "sandbox/v1/sandbox.proto",
    "tasks/v1/tasks.proto",
    "transfer/v1/transfer.proto",
    "version/v1/version.proto",
];

const V1_PACKAGES: &[&str] = &[
    "containers",
    "content",
    "diff",
    "events",
    "images",
    "introspection",
    "leases",
    "namespaces",
    "streaming",
    "tasks",
    "transfer",
    "version",
];

/// containerd's API definitions, shared by the workspace.
/// Relative to the package directory, where cargo runs build scripts.
const PROTO: &str = "../../proto";

fn main() {
    let root = format!("{PROTO}/github.com/containerd/containerd/api/services");
    let protos: Vec<String> = SERVICES.iter().map(|s| format!("{root}/{s}")).collect();
    println!("cargo:rerun-if-changed={PROTO}");
    let mut b = tonic_prost_build::configure()
        .build_client(false)
        .build_server(true)
        .extern_path(".containerd.types", "::containerd_client::types")
        .extern_path(".containerd.v1.types", "::containerd_client::types::v1")
        .extern_path(
            ".containerd.types.transfer",
            "::containerd_client::types::transfer",
        )
        .extern_path(".containerd.events", "::containerd_client::events")
        .extern_path(".google.rpc", "::containerd_client::google::rpc")
        .extern_path(
            ".containerd.services.snapshots.v1",
            "::containerd_client::services::v1::snapshots",
        )
        .extern_path(
            ".containerd.services.sandbox.v1",
            "::containerd_client::services::v1::sandbox",
        );
    for p in V1_PACKAGES {
        b = b.extern_path(
            format!(".containerd.services.{p}.v1"),
            "::containerd_client::services::v1",
        );
    }
    b.compile_protos(&protos, &[PROTO.to_string()])
        .expect("generating the gRPC servers");
}
