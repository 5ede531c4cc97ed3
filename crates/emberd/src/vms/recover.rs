//! Records follow their shims: one whose shim exits (or dies) goes, and after a
//! restart of emberd the records whose shims still answer are adopted again.

use std::path::Path;
use std::sync::Arc;

use ember_metadata::Error as E;
use ember_vm_api::fc::GetVmInfoRequest;
use ember_vm_api::VmClient;

use super::{Slot, VmRecord, Vms};
use crate::runtime::{follow_shim_log, Result};

impl Vms {
    /// Removes the record once its shim's connection closes, unless StopVM is
    /// what ended it (StopVM cleans up itself).
    pub(super) fn watch(&self, r: Arc<VmRecord>) {
        let me = self.me.clone();
        tokio::spawn(async move {
            r.client.closed().await;
            if r.stopping() {
                return;
            }
            let Some(me) = me.upgrade() else { return };
            if !me.forget(&r) {
                return;
            }
            tracing::warn!(namespace = %r.namespace, vm = %r.id, address = %r.address,
                exit_status = %"unknown", log_tail = %r.log.tail().replace('\n', " | "),
                "shim unexpected exit: the VM's shim went away; removing the VM");
            me.tasks
                .metrics
                .shim_unexpected_exits
                .inc(vec![crate::metrics::label(
                    "shim",
                    crate::runtime::shim_binary(&me.runtime).unwrap_or_default(),
                )]);
            me.tasks
                .cleanup_bundle(&r.namespace, &r.id, &r.bundle)
                .await;
        });
    }

    /// Adopts the VMs of a previous run whose shims still answer; cleans up the
    /// rest. Runs after the task runtime recovered its tasks.
    pub async fn recover(&self) {
        for (ns_name, id, bundle) in crate::runtime::bundles(&self.root) {
            match self.adopt(&ns_name, &id, &bundle).await {
                Ok(r) => {
                    tracing::info!(namespace = %ns_name, vm = %id, "reconnected to a VM's shim");
                    self.lock()
                        .insert((ns_name.clone(), id.clone()), Slot::Ready(r.clone()));
                    if let Ok(mut v) = self.tasks.vm_shims.lock() {
                        v.insert(r.address.clone());
                    }
                    self.watch(r);
                }
                Err(e) => {
                    tracing::info!(namespace = %ns_name, vm = %id, "cleaning up a VM that cannot be adopted: {e}");
                    let address =
                        std::fs::read_to_string(bundle.join("address")).unwrap_or_default();
                    self.discard_shim(&ns_name, &id, &bundle, address.trim())
                        .await;
                }
            }
        }
    }

    async fn adopt(&self, ns: &str, id: &str, bundle: &Path) -> Result<Arc<VmRecord>> {
        let address = std::fs::read_to_string(bundle.join("address"))
            .map(|s| s.trim().to_string())
            .map_err(|e| E::Internal(format!("address: {e}")))?;
        let client = VmClient::connect(&address)
            .await
            .map_err(|e| E::Internal(format!("connecting to {address}: {e}")))?;
        client
            .get_vm_info(&GetVmInfoRequest {
                vmid: id.to_string(),
            })
            .await?;
        Ok(Arc::new(VmRecord {
            namespace: ns.to_string(),
            id: id.to_string(),
            bundle: bundle.to_path_buf(),
            address,
            client,
            stopping: Default::default(),
            log: follow_shim_log(bundle, ns, id)?,
        }))
    }
}
