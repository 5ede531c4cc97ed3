//! The VM services on the shim's socket, beside `containerd.task.v2.Task`:
//! firecracker-containerd's `Firecracker` (for the one VM this shim owns) and
//! Ember's `ember.vm.v1.VMs`. Wire messages in, calls on [`VmHost`] out.

use std::sync::Arc;
use std::time::Duration;

use ember_ttrpc::{Code, Service, Status};
use ember_vm_api::ember::{DescribeVmRequest, ListVMsRequest, ListVMsResponse, VmDescription};
use ember_vm_api::fc::*;

use crate::sizing::Host;
use crate::task::Task;
use crate::vm::{err, BootSpec, Phase, VmHost};

/// Grace a guest gets to power off at `StopVM` without a TimeoutSeconds.
const DEFAULT_STOP_GRACE: Duration = Duration::from_secs(5);

/// Registers `$name`, calling `$body` with the VM `$vm` (checked against the
/// request's VMID first) and the request `$r`.
macro_rules! vm_call {
    ($svc:ident, $host:ident, $name:literal, |$vm:ident, $r:ident: $req:ty| $body:expr) => {
        let $svc = {
            let host = $host.clone();
            $svc.method($name, move |$r: $req| {
                let $vm = host.clone();
                async move {
                    $vm.check_id(&$r.vmid)?;
                    $body
                }
            })
        };
    };
}

pub fn firecracker_service(task: Arc<Task>) -> Service {
    let host = task.vm.clone();
    let svc = Service::new();
    let svc = {
        let task = task.clone();
        svc.method("CreateVM", move |r: CreateVmRequest| {
            let task = task.clone();
            async move { create_vm(&task, r).await }
        })
    };
    vm_call!(svc, host, "PauseVM", |vm, r: PauseVmRequest| vm
        .pause()
        .await);
    vm_call!(svc, host, "ResumeVM", |vm, r: ResumeVmRequest| vm
        .resume()
        .await);
    vm_call!(svc, host, "StopVM", |vm, r: StopVmRequest| stop_vm(&vm, &r)
        .await);
    vm_call!(svc, host, "GetVMInfo", |vm, r: GetVmInfoRequest| vm.info());
    vm_call!(svc, host, "SetVMMetadata", |vm, r: SetVmMetadataRequest| vm
        .set_metadata(&r.metadata)
        .await);
    vm_call!(
        svc,
        host,
        "UpdateVMMetadata",
        |vm, r: UpdateVmMetadataRequest| vm.update_metadata(&r.metadata).await
    );
    vm_call!(
        svc,
        host,
        "GetVMMetadata",
        |vm, r: GetVmMetadataRequest| Ok(GetVmMetadataResponse {
            metadata: vm.metadata()
        })
    );
    vm_call!(
        svc,
        host,
        "GetBalloonConfig",
        |vm, r: GetBalloonConfigRequest| vm.balloon_config().await.map(|c| {
            GetBalloonConfigResponse {
                balloon_config: Some(c),
            }
        })
    );
    vm_call!(svc, host, "UpdateBalloon", |vm, r: UpdateBalloonRequest| vm
        .balloon_update(r.amount_mib)
        .await);
    vm_call!(
        svc,
        host,
        "GetBalloonStats",
        |vm, r: GetBalloonStatsRequest| vm.balloon_stats().await
    );
    vm_call!(
        svc,
        host,
        "UpdateBalloonStats",
        |vm, r: UpdateBalloonStatsRequest| vm.balloon_update_stats(r.stats_polling_intervals).await
    );
    svc
}

pub fn vms_service(host: Arc<VmHost>) -> Service {
    let svc = Service::new();
    let svc = {
        let host = host.clone();
        svc.method("List", move |_: ListVMsRequest| {
            let host = host.clone();
            async move {
                Ok(ListVMsResponse {
                    vms: vec![host.describe()],
                })
            }
        })
    };
    svc.method("Describe", move |r: DescribeVmRequest| {
        let host = host.clone();
        async move {
            if !r.vm_id.is_empty() {
                host.check_id(&r.vm_id)?;
            }
            Ok::<VmDescription, Status>(host.describe())
        }
    })
}

/// `CreateVM`: boots the shim's VM as an explicit one.
async fn create_vm(task: &Task, r: CreateVmRequest) -> Result<CreateVmResponse, Status> {
    let vm = &task.vm;
    if r.vmid.is_empty() {
        return Err(err(Code::InvalidArgument, "CreateVM needs a VMID"));
    }
    if r.vmid != vm.id {
        return Err(err(
            Code::InvalidArgument,
            format!("CreateVM for {} on the shim of VM {}", r.vmid, vm.id),
        ));
    }
    let mut spec = BootSpec::from_create_vm(vm.usable_config()?, &r, &Host::probe())?;
    if r.container_count > 0 {
        tracing::info!(
            vm = %vm.id,
            containers = r.container_count,
            "CreateVM expects this many containers (a hint)"
        );
    }
    let _l = vm.lifecycle.lock().await;
    vm.admit()?;
    if vm.phase() != Phase::Absent {
        return Err(err(
            Code::AlreadyExists,
            format!("VM {} already exists", vm.id),
        ));
    }
    if !spec.network_interfaces.is_empty() {
        let (id, planned, dir) = (
            vm.id.clone(),
            spec.network_interfaces.clone(),
            vm.dir.clone(),
        );
        let made =
            tokio::task::spawn_blocking(move || crate::vm_network::prepare(&id, &planned, &dir))
                .await
                .map_err(|e| err(Code::Internal, e.to_string()))??;
        spec.fc_network = Some(made);
    }
    if let Err(e) = vm.boot(spec).await {
        release_network(vm).await;
        return Err(e);
    }
    task.watch_vm(vm.agent()?);
    let info = vm.info()?;
    Ok(CreateVmResponse {
        vmid: info.vmid,
        socket_path: info.socket_path,
        log_fifo_path: info.log_fifo_path,
        metrics_fifo_path: info.metrics_fifo_path,
        cgroup_path: info.cgroup_path,
    })
}

/// `StopVM`: refuses new containers, stops the VMM (the guest gets TimeoutSeconds
/// to power off), every live process exits 137; the shim goes once its containers
/// are deleted.
async fn stop_vm(vm: &VmHost, r: &StopVmRequest) -> Result<(), Status> {
    let grace = if r.timeout_seconds > 0 {
        Duration::from_secs(r.timeout_seconds.into())
    } else {
        DEFAULT_STOP_GRACE
    };
    let _l = vm.lifecycle.lock().await;
    match vm.phase() {
        Phase::Running | Phase::Paused => {
            if vm.phase() == Phase::Paused {
                // A frozen guest cannot power itself off.
                let _ = vm.resume().await;
            }
            vm.stop(grace, Phase::Stopped).await;
        }
        Phase::Absent => vm.mark_stopped(),
        Phase::Booting | Phase::Stopping | Phase::Stopped | Phase::Lost => {}
    }
    release_network(vm).await;
    if vm.members().is_empty() {
        vm.exit_shim();
    }
    Ok(())
}

/// The taps (when a failed boot left them recorded), CNI DEL and the VM's network
/// namespace, once its VMM is gone.
async fn release_network(vm: &VmHost) {
    let dir = vm.dir.clone();
    let _ = tokio::task::spawn_blocking(move || {
        crate::net::release_recorded(&dir);
        crate::vm_network::release(&dir);
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::Publisher;

    /// CreateVM on a shim whose configuration broke after `start` answers with the
    /// configuration's error, as Create does.
    #[tokio::test]
    async fn create_vm_with_a_broken_config_is_an_error_with_its_message() {
        let d = tempfile::tempdir().unwrap();
        let why = "/etc/ember/runtime.toml:1: vcpus = 0: a VM needs at least 1 vCPU".to_string();
        let host = VmHost::new(
            "vm1".into(),
            true,
            "default".into(),
            Err(why.clone()),
            d.path().join("state"),
        );
        let task = Task::new(host.clone(), Publisher::start(None, "default".into()));
        let e = create_vm(
            &task,
            CreateVmRequest {
                vmid: "vm1".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
        assert_eq!(
            (e.code(), e.message()),
            (Code::FailedPrecondition, why.as_str())
        );
        assert_eq!(host.phase(), Phase::Absent);
    }
}
