//! The VM services over the registry in [`crate::vms`]: firecracker-containerd's
//! `Firecracker` (plugin `io.containerd.grpc.v1.fc-control`) and Ember's
//! `ember.vm.v1.VMs` (`io.containerd.grpc.v1.vms`), both namespaced by the
//! `containerd-namespace` header.

pub mod firecracker;
pub mod vms;

use tonic::{Code, Status};

use crate::plugin::Registration;
use crate::runtime::Error;

pub fn registrations() -> Vec<Registration> {
    vec![firecracker::registration(), vms::registration()]
}

/// The status for a VM call's error: the daemon's classes, a shim's own code, and
/// for a shim that cannot be reached, Unavailable (or DeadlineExceeded when it did
/// not answer in time).
pub fn status(e: Error) -> Status {
    match e {
        Error::Daemon(e) => crate::services::status(e),
        Error::Shim(ember_ttrpc::Error::Status(s)) => {
            Status::new(Code::from_i32(s.code() as i32), s.message().to_string())
        }
        Error::Shim(e) => {
            let code = match e.code() {
                ember_ttrpc::Code::DeadlineExceeded => Code::DeadlineExceeded,
                ember_ttrpc::Code::Unavailable => Code::Unavailable,
                _ => Code::Unknown,
            };
            tracing::warn!(error = %e, "VM request failed");
            Status::new(code, format!("the VM's shim: {e}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shim_codes_reach_the_client() {
        let s = status(Error::Shim(ember_ttrpc::Error::Status(
            ember_ttrpc::Status::invalid_argument("bad JSON"),
        )));
        assert_eq!((s.code(), s.message()), (Code::InvalidArgument, "bad JSON"));
        let s = status(Error::Shim(ember_ttrpc::Error::Status(
            ember_ttrpc::Status::new(ember_ttrpc::Code::Unimplemented, "no jailer"),
        )));
        assert_eq!(s.code(), Code::Unimplemented);
        assert_eq!(
            status(Error::Shim(ember_ttrpc::Error::Closed)).code(),
            Code::Unavailable
        );
        assert_eq!(
            status(Error::Shim(ember_ttrpc::Error::Timeout(
                std::time::Duration::from_secs(1)
            )))
            .code(),
            Code::DeadlineExceeded
        );
        let s = status(Error::Daemon(ember_metadata::Error::NotFound(
            "VM x".into(),
        )));
        assert_eq!(s.code(), Code::NotFound);
    }
}
