//! Generates the server side of `containerd.services.snapshots.v1.Snapshots`; the
//! messages and the client come from `containerd-client`.

/// containerd's API definitions, shared by the workspace.
/// Relative to the package directory, where cargo runs build scripts.
const PROTO: &str = "../../proto";

fn main() {
    let proto = format!(
        "{PROTO}/github.com/containerd/containerd/api/services/snapshots/v1/snapshots.proto"
    );
    println!("cargo:rerun-if-changed={proto}");
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(true)
        .extern_path(
            ".containerd.services.snapshots.v1",
            "::containerd_client::services::v1::snapshots",
        )
        .extern_path(".containerd.types", "::containerd_client::types")
        .compile_protos(&[proto.as_str()], &[PROTO])
        .expect("generating the snapshots server");
}
