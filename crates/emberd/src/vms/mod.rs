//! The VM registry: VMs made by `CreateVM` (explicit), each owned by a shim that
//! emberd starts in a bundle of its own, and the VMs that containers name by
//! annotation (implicit), found through the tasks' shims.
//!
//! An explicit VM's bundle is `<state>/ember.vm/<namespace>/<vm id>/`: the
//! `config.json` that tells the shim which VM it owns, the shim's `address`, the
//! `runtime` it was started with and the shim's `log` FIFO. The shim is started
//! through the task runtime's own code ([`TaskManager`]), and every call after
//! `CreateVM` goes to it over ttrpc ([`VmClient`]). A record lives until StopVM or
//! until its shim exits (the VM ended with its last task, the VMM died, the shim
//! was killed); after a restart of emberd, records whose shim still answers are
//! adopted again.

mod lifecycle;
mod recover;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use ember_metadata::Error as E;
use ember_vm_api::ember::VmDescription;
use ember_vm_api::VmClient;

use crate::config::plugin_section;
use crate::plugin::{InitError, Instance, Registration, RUNTIME, SERVICE};
use crate::runtime::{Result, ShimTask, TaskManager};

/// The registry's plugin id (type `io.containerd.service.v1`).
pub const PLUGIN_ID: &str = "fc-control";

/// The runtime a `CreateVM` shim is started with unless configured otherwise.
pub const DEFAULT_RUNTIME: &str = "io.containerd.ember.v2";

/// The annotation that tells a shim started for a VM which VM it owns.
const VM_ANNOTATION: &str = ember_vm_api::annotations::EMBER_VM_ID;

/// The registry's configuration section
/// (`[plugins."io.containerd.service.v1.fc-control"]`).
#[derive(serde::Deserialize, Default)]
#[serde(default)]
struct VmsConfig {
    /// The runtime CreateVM starts shims with.
    runtime: String,
}

/// The VM registry's plugin: VM bundles live under `<state>/ember.vm`.
pub fn registration() -> Registration {
    Registration::new(SERVICE, PLUGIN_ID, &[RUNTIME], |ctx| {
        let cfg: VmsConfig = plugin_section(ctx.section)?;
        let runtime = if cfg.runtime.is_empty() {
            DEFAULT_RUNTIME.to_string()
        } else {
            cfg.runtime
        };
        let tasks = ctx
            .registry
            .first::<TaskManager>(RUNTIME)
            .map_err(InitError::Failed)?;
        let root = ctx.config.state.join("ember.vm");
        std::fs::create_dir_all(&root)?;
        ctx.exports
            .insert("state".into(), root.display().to_string());
        ctx.exports.insert("runtime".into(), runtime.clone());
        Ok(Vms::new(root, runtime, tasks) as Instance)
    })
}

/// The VM a container's OCI spec places it in, if its annotations name one.
pub fn spec_vm_id(spec: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(spec).ok()?;
    let a = v.get("annotations")?.as_object()?;
    ember_vm_api::annotations::vm_id(|k| a.get(k).and_then(|v| v.as_str())).map(str::to_string)
}

/// The `config.json` of an explicit VM's bundle.
fn vm_spec(vm_id: &str) -> Vec<u8> {
    serde_json::json!({
        "ociVersion": "1.0.2",
        "annotations": { VM_ANNOTATION: vm_id },
    })
    .to_string()
    .into_bytes()
}

/// Checks a VM id as it names a directory and a shim: containerd's identifier rules.
pub fn validate_vm_id(id: &str) -> Result<()> {
    if id.is_empty() {
        return Err(E::InvalidArgument("VMID is required".into()).into());
    }
    ember_metadata::identifiers::validate_as("VMID", id)?;
    Ok(())
}

/// An explicit VM and the shim that owns it.
pub struct VmRecord {
    pub namespace: String,
    pub id: String,
    pub bundle: PathBuf,
    pub address: String,
    pub client: VmClient,
    /// Set while StopVM runs: the shim's exit is expected then.
    stopping: AtomicBool,
    /// Copies the shim's log into the daemon's; stopped with the record.
    log: crate::runtime::ShimLog,
}

/// What a (namespace, VM id) holds in the registry.
#[derive(Clone)]
enum Slot {
    /// CreateVM is booting it.
    Creating,
    Ready(Arc<VmRecord>),
}

/// How a call reaches a VM: the record of an explicit one, or the shim of the
/// tasks that name an implicit one.
pub enum Target {
    Explicit(Arc<VmRecord>),
    Implicit { address: String, client: VmClient },
}

impl Target {
    pub fn client(&self) -> &VmClient {
        match self {
            Target::Explicit(r) => &r.client,
            Target::Implicit { client, .. } => client,
        }
    }

    pub fn address(&self) -> &str {
        match self {
            Target::Explicit(r) => &r.address,
            Target::Implicit { address, .. } => address,
        }
    }
}

/// The registry of VMs.
pub struct Vms {
    me: std::sync::Weak<Vms>,
    /// `<state>/ember.vm`.
    root: PathBuf,
    runtime: String,
    tasks: Arc<TaskManager>,
    slots: Mutex<HashMap<(String, String), Slot>>,
}

impl Vms {
    pub fn new(root: PathBuf, runtime: String, tasks: Arc<TaskManager>) -> Arc<Vms> {
        Arc::new_cyclic(|me| Vms {
            me: me.clone(),
            root,
            runtime,
            tasks,
            slots: Mutex::default(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<(String, String), Slot>> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn bundle(&self, ns: &str, id: &str) -> PathBuf {
        self.root.join(ns).join(id)
    }

    /// The namespaces that hold explicit VMs, sorted.
    pub fn namespaces(&self) -> Vec<String> {
        let mut v: Vec<String> = self.lock().keys().map(|(ns, _)| ns.clone()).collect();
        v.sort();
        v.dedup();
        v
    }

    /// The tasks of namespace `ns` whose containers name VM `id`.
    fn implicit_tasks(&self, ns: &str, id: &str) -> Vec<Arc<ShimTask>> {
        self.tasks
            .list(ns)
            .into_iter()
            .filter(|t| t.vm_id.as_deref() == Some(id))
            .collect()
    }

    /// The tasks of namespace `ns` whose shim serves at `address`.
    fn tasks_at(&self, ns: &str, address: &str) -> Vec<Arc<ShimTask>> {
        self.tasks
            .list(ns)
            .into_iter()
            .filter(|t| t.address == address)
            .collect()
    }

    /// The explicit VM `id` of `ns`, if there is one and it is up.
    fn record(&self, ns: &str, id: &str) -> Result<Option<Arc<VmRecord>>> {
        match self.lock().get(&(ns.to_string(), id.to_string())) {
            Some(Slot::Ready(r)) => Ok(Some(r.clone())),
            Some(Slot::Creating) => {
                Err(E::FailedPrecondition(format!("VM {id} is being created")).into())
            }
            None => Ok(None),
        }
    }

    /// Finds VM `id` of namespace `ns`: explicit, else implicit.
    pub async fn find(&self, ns: &str, id: &str) -> Result<Target> {
        validate_vm_id(id)?;
        if let Some(r) = self.record(ns, id)? {
            return Ok(Target::Explicit(r));
        }
        let not_found = || E::NotFound(format!("VM {id}: not found"));
        let task = self
            .implicit_tasks(ns, id)
            .into_iter()
            .next()
            .ok_or_else(not_found)?;
        let client = VmClient::connect(&task.address)
            .await
            .map_err(|e| E::Unavailable(format!("VM {id}: connecting to its shim: {e}")))?;
        Ok(Target::Implicit {
            address: task.address.clone(),
            client,
        })
    }

    /// Describes VM `id` of namespace `ns`.
    pub async fn describe(&self, ns: &str, id: &str) -> Result<VmDescription> {
        let target = self.find(ns, id).await?;
        let mut d = target.client().describe(id).await?;
        fill(&mut d, ns, id, matches!(target, Target::Explicit(_)));
        Ok(d)
    }

    /// Every VM of namespace `ns`: the explicit ones, then those of the tasks'
    /// shims (one per shim socket), sorted by id. A shim that does not describe a
    /// VM (a runc shim, one that just went away) is left out.
    pub async fn list(&self, ns: &str) -> Vec<VmDescription> {
        let explicit: Vec<Arc<VmRecord>> = self
            .lock()
            .iter()
            .filter(|((n, _), _)| n == ns)
            .filter_map(|(_, s)| match s {
                Slot::Ready(r) => Some(r.clone()),
                Slot::Creating => None,
            })
            .collect();
        let mut out = Vec::new();
        let mut seen: Vec<String> = explicit.iter().map(|r| r.address.clone()).collect();
        for r in &explicit {
            match r.client.describe(&r.id).await {
                Ok(mut d) => {
                    fill(&mut d, ns, &r.id, true);
                    out.push(d);
                }
                Err(e) => tracing::warn!(namespace = ns, vm = %r.id, "describing the VM: {e}"),
            }
        }
        for t in self.tasks.list(ns) {
            if seen.contains(&t.address) {
                continue;
            }
            seen.push(t.address.clone());
            let id = t.vm_id.clone().unwrap_or_else(|| t.id.clone());
            let Ok(client) = VmClient::connect(&t.address).await else {
                continue;
            };
            match client.describe(&id).await {
                Ok(mut d) => {
                    fill(&mut d, ns, &id, false);
                    out.push(d);
                }
                Err(e) => tracing::debug!(namespace = ns, task = %t.id, "no VM to describe: {e}"),
            }
        }
        out.sort_by(|a, b| a.vm_id.cmp(&b.vm_id));
        out
    }
}

/// Fills in what emberd knows better than the shim.
fn fill(d: &mut VmDescription, ns: &str, id: &str, explicit: bool) {
    if d.vm_id.is_empty() {
        d.vm_id = id.to_string();
    }
    d.namespace = ns.to_string();
    d.explicit |= explicit;
}

impl VmRecord {
    fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn containers_name_their_vm_by_annotation() {
        let spec = br#"{"annotations":{"io.kubernetes.cri.sandbox-id":"pod","aws.firecracker.vm.id":"vm1"}}"#;
        assert_eq!(spec_vm_id(spec).as_deref(), Some("vm1"));
        assert_eq!(spec_vm_id(br#"{"annotations":{}}"#), None);
        assert_eq!(spec_vm_id(br#"{"process":{}}"#), None);
        assert_eq!(spec_vm_id(b"not json"), None);
    }

    #[test]
    fn a_vm_bundle_names_its_vm() {
        let spec = vm_spec("vm-7");
        assert_eq!(spec_vm_id(&spec).as_deref(), Some("vm-7"));
        let v: serde_json::Value = serde_json::from_slice(&spec).unwrap();
        assert_eq!(v["ociVersion"], "1.0.2");
        assert_eq!(v["annotations"]["io.ember.vm.id"], "vm-7");
    }

    #[test]
    fn vm_ids_follow_the_identifier_rules() {
        assert!(validate_vm_id("vm1").is_ok());
        assert!(validate_vm_id("a.b-c_d").is_ok());
        for bad in ["", "a/b", "../x", "vm 1", "-x", &"x".repeat(77)] {
            let e = validate_vm_id(bad).unwrap_err();
            assert!(
                matches!(e, crate::runtime::Error::Daemon(E::InvalidArgument(_))),
                "{bad:?}: {e}"
            );
        }
    }
}
