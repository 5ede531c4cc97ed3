//! `linux.sysctl`: only namespaced keys, each in a namespace the container has
//! of its own (as runc checks), so no container changes the guest's settings.

use oci_spec::runtime::{LinuxNamespaceType, Spec};

const IPC_KEYS: &[&str] = &[
    "kernel.msgmax",
    "kernel.msgmnb",
    "kernel.msgmni",
    "kernel.sem",
    "kernel.shmall",
    "kernel.shmmax",
    "kernel.shmmni",
    "kernel.shm_rmid_forced",
];

/// Whether the container gets a namespace of type `t` of its own: a new one
/// (the agent always makes mount, pid, uts and ipc namespaces unless the spec
/// joins one by path).
fn own_namespace(spec: &Spec, t: LinuxNamespaceType) -> bool {
    let ns = spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().clone())
        .unwrap_or_default();
    match ns.iter().find(|n| n.typ() == t) {
        Some(n) => n.path().is_none(),
        None => matches!(t, LinuxNamespaceType::Ipc | LinuxNamespaceType::Uts),
    }
}

/// Refuses sysctl keys that are not namespaced, or whose namespace the container
/// shares with the guest.
pub fn check(spec: &Spec) -> Result<(), String> {
    let Some(sysctl) = spec.linux().as_ref().and_then(|l| l.sysctl().clone()) else {
        return Ok(());
    };
    for key in sysctl.keys() {
        // The /proc/sys path form is accepted too.
        let k = key.replace('/', ".");
        let needs = if IPC_KEYS.contains(&k.as_str()) || k.starts_with("fs.mqueue.") {
            LinuxNamespaceType::Ipc
        } else if k.starts_with("net.") {
            LinuxNamespaceType::Network
        } else if k == "kernel.hostname" || k == "kernel.domainname" {
            LinuxNamespaceType::Uts
        } else {
            return Err(format!(
                "sysctl {key:?} is not namespaced; a container may not set it"
            ));
        };
        if !own_namespace(spec, needs) {
            return Err(format!(
                "sysctl {key:?} needs a {needs:?} namespace of the container's own"
            ));
        }
        if k.split('.').any(|p| p.is_empty() || p == "..") {
            return Err(format!("sysctl {key:?}: bad key"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(sysctl: serde_json::Value, ns: serde_json::Value) -> Spec {
        serde_json::from_value(json!({
            "ociVersion": "1.0.2",
            "linux": {"sysctl": sysctl, "namespaces": ns}
        }))
        .unwrap()
    }

    #[test]
    fn namespaced_keys_only() {
        let own = json!([{"type": "ipc"}, {"type": "network"}]);
        assert!(check(&spec(json!({"kernel.shmmax": "1"}), own.clone())).is_ok());
        assert!(check(&spec(json!({"fs.mqueue.msg_max": "9"}), json!([]))).is_ok());
        assert!(check(&spec(json!({"net.ipv4.ip_forward": "1"}), own.clone())).is_ok());
        // No network namespace of its own: the guest's.
        let e = check(&spec(json!({"net.ipv4.ip_forward": "1"}), json!([]))).unwrap_err();
        assert!(e.contains("Network"), "{e}");
        let joined = json!([{"type": "ipc", "path": "/proc/1/ns/ipc"}]);
        assert!(check(&spec(json!({"kernel.sem": "1 1 1 1"}), joined)).is_err());
        let e = check(&spec(json!({"kernel.panic": "1"}), own.clone())).unwrap_err();
        assert!(e.contains("not namespaced"), "{e}");
        assert!(check(&spec(json!({"vm.overcommit_memory": "1"}), own)).is_err());
    }
}
