//! Generates the messages, gRPC servers and clients of the VM control services.

const PROTOS: &[&str] = &[
    "proto/fccontrol.proto",
    "proto/firecracker.proto",
    "proto/types.proto",
    "proto/ember_vm.proto",
];

fn main() {
    println!("cargo:rerun-if-changed=proto");
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_protos(PROTOS, &["proto", "../../proto"])
        .expect("generating the VM control API");
}
