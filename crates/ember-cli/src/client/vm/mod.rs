//! `ember vm` verbs against the daemon: VMs as objects of their own (firecracker-containerd's
//! `Firecracker` service for the life cycle and metadata, Ember's `ember.vm.v1.VMs` for
//! listing and describing), one file per verb.

pub mod create;
pub mod info;
pub mod ls;
pub mod metadata;
pub mod pause;
pub mod resume;
pub mod stop;

use anyhow::{anyhow, Result};
use containerd_client::tonic::transport::Channel;
use containerd_client::tonic::{Code, Status};
use ember_vm_api::ember::v_ms_client::VMsClient;
use ember_vm_api::fc::firecracker_client::FirecrackerClient;

use super::ClientOpts;

/// The VM services of one daemon, in one namespace.
pub struct VmConn {
    pub opts: ClientOpts,
    channel: Channel,
}

impl VmConn {
    pub async fn new(opts: &ClientOpts) -> Result<VmConn> {
        Ok(VmConn {
            opts: opts.clone(),
            channel: opts.channel().await?,
        })
    }

    pub fn fc(&self) -> FirecrackerClient<Channel> {
        FirecrackerClient::new(self.channel.clone())
    }

    pub fn vms(&self) -> VMsClient<Channel> {
        VMsClient::new(self.channel.clone())
    }

    pub fn req<T>(&self, msg: T) -> containerd_client::tonic::Request<T> {
        self.opts.req(msg)
    }
}

/// A gRPC status about VM `id` as a one-line error.
pub fn vm_error(s: Status, id: &str) -> anyhow::Error {
    let msg = s.message().trim();
    match s.code() {
        Code::NotFound => anyhow!("no such VM: {id}"),
        Code::AlreadyExists => anyhow!("VM {id} already exists"),
        Code::InvalidArgument => anyhow!("invalid request for VM {id}: {msg}"),
        Code::FailedPrecondition => anyhow!("VM {id}: {msg}"),
        // No such service: the answer of gRPC servers that do not serve it (containerd's).
        Code::Unimplemented if msg.is_empty() || msg.starts_with("unknown service") => {
            anyhow!("the daemon does not serve the VM API (is it emberd?)")
        }
        Code::Unimplemented => anyhow!("{msg}"),
        Code::Unavailable => anyhow!("the daemon is not reachable: {msg}"),
        Code::DeadlineExceeded => anyhow!("VM {id}: timed out: {msg}"),
        _ if msg.is_empty() => anyhow!("VM {id}: {}", s.code()),
        _ => anyhow!("{msg}"),
    }
}

/// Runs a verb over several VM ids: each one printed once done, errors printed
/// per id; exit 1 if any failed.
pub async fn each<F, Fut>(ids: Vec<String>, f: F) -> Result<i32>
where
    F: FnMut(String) -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    super::container::each(ids, f).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_read_as_one_line() {
        let e = vm_error(Status::not_found("vm x not found"), "x");
        assert_eq!(e.to_string(), "no such VM: x");
        let e = vm_error(Status::already_exists("exists"), "x");
        assert_eq!(e.to_string(), "VM x already exists");
        let e = vm_error(Status::invalid_argument("bad vcpus"), "x");
        assert_eq!(e.to_string(), "invalid request for VM x: bad vcpus");
        let e = vm_error(Status::unimplemented(""), "x");
        assert!(e.to_string().contains("VM API"), "{e}");
        let e = vm_error(Status::unimplemented("unknown service Firecracker"), "x");
        assert!(e.to_string().contains("VM API"), "{e}");
        let e = vm_error(
            Status::unimplemented("network interfaces are not supported yet"),
            "x",
        );
        assert_eq!(e.to_string(), "network interfaces are not supported yet");
    }
}
