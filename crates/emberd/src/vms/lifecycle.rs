//! CreateVM and StopVM: a VM's shim is started, booted, stopped and cleaned up.
//! Both run to their end in a task of their own, so a client that goes away in the
//! middle never leaves a half-made or half-stopped VM behind.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use ember_metadata::Error as E;
use ember_vm_api::fc::{CreateVmRequest, CreateVmResponse, StopVmRequest};
use ember_vm_api::VmClient;

use super::{validate_vm_id, vm_spec, Slot, Target, VmRecord, Vms};
use crate::runtime::{follow_shim_log, shim_binary, stop_unadopted_shim, Error, Result};

/// How long a boot may take when the request does not say.
const DEFAULT_BOOT_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a stop may take when the request does not say.
const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// What emberd waits beyond the time the shim is given, so the shim's own answer
/// (with its reason) arrives before emberd gives up.
const SLACK: Duration = Duration::from_secs(10);
/// How long a VM's shim has to exit by itself once the VM stopped.
const SHIM_EXIT_TIMEOUT: Duration = Duration::from_secs(10);

/// The time a call may take: the request's seconds, else the default, plus slack.
fn call_timeout(seconds: u32, default: Duration) -> Duration {
    let given = if seconds == 0 {
        default
    } else {
        Duration::from_secs(seconds.into())
    };
    given + SLACK
}

/// Runs `f` to its end even if the caller stops waiting.
async fn detached<T: Send + 'static>(
    f: impl std::future::Future<Output = Result<T>> + Send + 'static,
) -> Result<T> {
    tokio::spawn(f)
        .await
        .map_err(|e| E::Internal(format!("VM operation failed: {e}")))?
}

impl Vms {
    /// Boots a VM in a shim of its own (`CreateVM`); an empty VMID gets a UUID.
    pub async fn create(&self, ns: &str, mut req: CreateVmRequest) -> Result<CreateVmResponse> {
        if req.vmid.is_empty() {
            req.vmid = uuid::Uuid::new_v4().to_string();
        }
        validate_vm_id(&req.vmid)?;
        let id = req.vmid.clone();
        let key = (ns.to_string(), id.clone());
        let exists = || E::AlreadyExists(format!("VM {id}: already exists"));
        // Containers already run in a VM of that name.
        if !self.implicit_tasks(ns, &id).is_empty() {
            return Err(exists().into());
        }
        {
            let mut slots = self.lock();
            if slots.contains_key(&key) {
                return Err(exists().into());
            }
            slots.insert(key.clone(), Slot::Creating);
        }
        let me = self
            .me
            .upgrade()
            .ok_or_else(|| E::Unavailable("shutting down".into()))?;
        let ns = ns.to_string();
        detached(async move {
            match me.boot(&ns, req).await {
                Ok((record, resp)) => {
                    me.lock().insert(key, Slot::Ready(record.clone()));
                    if let Ok(mut v) = me.tasks.vm_shims.lock() {
                        v.insert(record.address.clone());
                    }
                    me.watch(record);
                    Ok(resp)
                }
                Err(e) => {
                    me.lock().remove(&key);
                    Err(e)
                }
            }
        })
        .await
    }

    /// Writes the bundle, starts the shim and has it boot the VM; on failure,
    /// nothing of it is left.
    async fn boot(
        &self,
        ns: &str,
        req: CreateVmRequest,
    ) -> Result<(Arc<VmRecord>, CreateVmResponse)> {
        let id = req.vmid.clone();
        let binary = shim_binary(&self.runtime)?;
        let bundle = self.bundle(ns, &id);
        if bundle.exists() {
            // Left over from a VM that was not cleaned up.
            self.tasks.cleanup_bundle(ns, &id, &bundle).await;
        }
        let io = |e: std::io::Error| E::Internal(format!("VM bundle {}: {e}", bundle.display()));
        std::fs::create_dir_all(&bundle).map_err(io)?;
        std::fs::write(bundle.join("config.json"), vm_spec(&id)).map_err(io)?;
        std::fs::write(bundle.join("runtime"), &self.runtime).map_err(io)?;
        let log = follow_shim_log(&bundle, ns, &id)?;
        let t0 = std::time::Instant::now();
        let address = match self.tasks.start_shim(&binary, ns, &id, &bundle, None).await {
            Ok(a) => {
                tracing::info!(namespace = ns, vm = %id, runtime = %self.runtime, address = %a, "shim started for CreateVM");
                a
            }
            Err(e) => {
                log.abort();
                self.tasks.cleanup_bundle(ns, &id, &bundle).await;
                return Err(e);
            }
        };
        let booted = async {
            std::fs::write(bundle.join("address"), &address).map_err(io)?;
            let client = VmClient::connect(&address).await.map_err(|e| {
                E::Internal(format!("connecting to the VM's shim at {address}: {e}"))
            })?;
            let timeout = call_timeout(req.timeout_seconds, DEFAULT_BOOT_TIMEOUT);
            let resp = match client.create_vm(&req, timeout).await {
                Ok(r) => r,
                Err(e @ (ember_ttrpc::Error::Status(_) | ember_ttrpc::Error::Timeout(_))) => {
                    return Err(e.into())
                }
                // The shim died on the way: its log tells why.
                Err(e) => {
                    let why = crate::shim_log::explain(&log).await;
                    return Err(E::Internal(format!("{binary} for VM {id}: {e}{why}")).into());
                }
            };
            Ok::<_, Error>((client, resp))
        };
        match booted.await {
            Ok((client, mut resp)) => {
                self.tasks
                    .metrics
                    .vm_booted(crate::metrics::BootKind::CreateVm, t0.elapsed());
                if resp.vmid.is_empty() {
                    resp.vmid = id.clone();
                }
                tracing::info!(namespace = ns, vm = %id, %address, "VM created");
                let record = Arc::new(VmRecord {
                    namespace: ns.to_string(),
                    id,
                    bundle,
                    address,
                    client,
                    stopping: Default::default(),
                    log,
                });
                Ok((record, resp))
            }
            Err(e) => {
                tracing::info!(namespace = ns, vm = %id, "CreateVM failed, cleaning up: {e}");
                log.abort();
                self.discard_shim(ns, &id, &bundle, &address).await;
                Err(e)
            }
        }
    }

    /// Stops the shim a VM bundle was made for and removes the bundle; a shim that
    /// serves tasks (the VM exists through containers naming it) stays.
    pub(super) async fn discard_shim(&self, ns: &str, id: &str, bundle: &Path, address: &str) {
        if self.tasks_at(ns, address).is_empty() {
            stop_unadopted_shim(id, bundle).await;
            self.tasks.cleanup_bundle(ns, id, bundle).await;
        } else if let Err(e) = std::fs::remove_dir_all(bundle) {
            tracing::warn!(bundle = %bundle.display(), "removing the VM bundle: {e}");
        }
    }

    /// Stops a VM (`StopVM`): the shim stops it (its processes exit), its tasks are
    /// deleted, and an explicit VM's shim, record and bundle go.
    pub async fn stop(&self, ns: &str, req: StopVmRequest) -> Result<()> {
        let target = self.find(ns, &req.vmid).await?;
        if let Target::Explicit(r) = &target {
            if r.stopping.swap(true, Ordering::SeqCst) {
                return Err(E::FailedPrecondition(format!("VM {} is stopping", r.id)).into());
            }
        }
        let me = self
            .me
            .upgrade()
            .ok_or_else(|| E::Unavailable("shutting down".into()))?;
        let ns = ns.to_string();
        detached(async move { me.stop_target(&ns, req, target).await }).await
    }

    async fn stop_target(&self, ns: &str, req: StopVmRequest, target: Target) -> Result<()> {
        let timeout = call_timeout(req.timeout_seconds, DEFAULT_STOP_TIMEOUT);
        match target.client().stop_vm(&req, timeout).await {
            Ok(()) => {}
            Err(e @ (ember_ttrpc::Error::Status(_) | ember_ttrpc::Error::Timeout(_)))
                if !target.client().is_closed() =>
            {
                if let Target::Explicit(r) = &target {
                    r.stopping.store(false, Ordering::SeqCst);
                }
                return Err(e.into());
            }
            // The shim is gone, and the VM with it: what is left is cleaned up.
            Err(e) => tracing::warn!(namespace = ns, vm = %req.vmid, "StopVM: {e}"),
        }
        // The VM's tasks go, as firecracker-containerd's do (container records stay).
        for t in self.tasks_at(ns, target.address()) {
            if let Err(e) = self.tasks.delete(ns, &t.id).await {
                tracing::warn!(namespace = ns, task = %t.id, "deleting a task of a stopped VM: {e}");
            }
        }
        if let Target::Explicit(r) = target {
            self.retire(&r).await;
        }
        tracing::info!(namespace = ns, vm = %req.vmid, "VM stopped");
        Ok(())
    }

    /// After its VM stopped: waits for the shim to exit (asks it to when it does
    /// not), runs the shim's cleanup, removes the bundle and the record.
    async fn retire(&self, r: &Arc<VmRecord>) {
        if tokio::time::timeout(SHIM_EXIT_TIMEOUT, r.client.closed())
            .await
            .is_err()
        {
            tracing::warn!(vm = %r.id, "the VM's shim did not exit after StopVM: stopping it");
            stop_unadopted_shim(&r.id, &r.bundle).await;
        }
        self.tasks
            .cleanup_bundle(&r.namespace, &r.id, &r.bundle)
            .await;
        self.forget(r);
    }

    /// Removes a record if it is still the registered one; whether it was.
    pub(super) fn forget(&self, r: &Arc<VmRecord>) -> bool {
        let key = (r.namespace.clone(), r.id.clone());
        let mut slots = self.lock();
        let current = match slots.get(&key) {
            Some(Slot::Ready(cur)) if Arc::ptr_eq(cur, r) => slots.remove(&key).is_some(),
            _ => false,
        };
        if current {
            if let Ok(mut v) = self.tasks.vm_shims.lock() {
                v.remove(&r.address);
            }
        }
        current
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_get_the_requested_time_and_slack() {
        assert_eq!(
            call_timeout(0, DEFAULT_BOOT_TIMEOUT),
            DEFAULT_BOOT_TIMEOUT + SLACK
        );
        assert_eq!(
            call_timeout(5, DEFAULT_BOOT_TIMEOUT),
            Duration::from_secs(5) + SLACK
        );
    }
}
