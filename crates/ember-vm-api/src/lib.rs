//! The VM control API.
//!
//! - `Firecracker`: firecracker-containerd's service (no proto package, so its gRPC
//!   paths are `/Firecracker/CreateVM` and so on). emberd serves it over gRPC, namespaced
//!   by the `containerd-namespace` header; Ember's shim serves the same messages over
//!   ttrpc to emberd for the VM it owns.
//! - `ember.vm.v1.VMs`: what Ember adds (listing and describing VMs).
//!
//! The message types are generated from `proto/`, which restates the published
//! interface; field names and numbers are the wire protocol.

mod client;

pub use client::VmClient;

/// firecracker-containerd's messages and the `Firecracker` service.
#[allow(clippy::all, missing_docs)]
pub mod fc {
    include!(concat!(env!("OUT_DIR"), "/_.rs"));
}

/// Ember's VM listing service.
#[allow(clippy::all, missing_docs)]
pub mod ember {
    include!(concat!(env!("OUT_DIR"), "/ember.vm.v1.rs"));
}

/// Name of firecracker-containerd's service (gRPC and ttrpc).
pub const FC_SERVICE: &str = "Firecracker";
/// Name of Ember's VM service (gRPC and ttrpc).
pub const VMS_SERVICE: &str = "ember.vm.v1.VMs";

/// OCI annotations that place a container in a VM, strongest first.
pub mod annotations {
    /// firecracker-containerd's: the id of the VM to run in.
    pub const FC_VM_ID: &str = "aws.firecracker.vm.id";
    /// Ember's own: the id of the VM to run in.
    pub const EMBER_VM_ID: &str = "io.ember.vm.id";
    /// containerd's CRI: the pod a container belongs to.
    pub const CRI_SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";
    /// containerd's CRI: `sandbox` or `container`.
    pub const CRI_CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";

    /// The VM a container with these annotations runs in, if they name one.
    pub fn vm_id<'a>(get: impl Fn(&str) -> Option<&'a str>) -> Option<&'a str> {
        [FC_VM_ID, EMBER_VM_ID, CRI_SANDBOX_ID]
            .into_iter()
            .filter_map(get)
            .find(|v| !v.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn wire_fields_keep_their_numbers() {
        // GetVMInfoResponse.VSockPath is field 6 (tag byte 6<<3|2 = 0x32).
        let m = fc::GetVmInfoResponse {
            v_sock_path: "x".into(),
            ..Default::default()
        };
        assert_eq!(m.encode_to_vec(), vec![0x32, 1, b'x']);
    }

    #[test]
    fn annotations_pick_the_strongest() {
        let m = std::collections::HashMap::from([
            (annotations::CRI_SANDBOX_ID, "pod"),
            (annotations::FC_VM_ID, "vm1"),
        ]);
        assert_eq!(annotations::vm_id(|k| m.get(k).copied()), Some("vm1"));
        assert_eq!(annotations::vm_id(|_| None), None);
    }
}
