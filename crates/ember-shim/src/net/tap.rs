//! Host tap devices the VMM's NICs are backed by (persistent: they outlive the VMM
//! until Ember deletes them).

use std::path::Path;

use super::{netns, NetError};

/// Creates the persistent tap `name` in the namespace at `ns`, with `mtu` (0: the
/// default) and up.
pub fn create(ns: &Path, name: &str, mtu: u32) -> Result<(), NetError> {
    netns::run(ns, "ip", &["tuntap", "add", "dev", name, "mode", "tap"])?;
    let mtu = mtu.to_string();
    let mut args = vec!["link", "set", "dev", name];
    if mtu != "0" {
        args.extend(["mtu", &mtu]);
    }
    args.push("up");
    if let Err(e) = netns::run(ns, "ip", &args) {
        delete(ns, name);
        return Err(e);
    }
    Ok(())
}

/// Deletes tap `name` (its tc qdiscs and filters go with it); a tap already gone is
/// no error.
pub fn delete(ns: &Path, name: &str) {
    if let Err(e) = netns::run(ns, "ip", &["link", "del", "dev", name]) {
        if !e.to_string().contains("Cannot find device") {
            tracing::warn!("deleting tap {name}: {e}");
        }
    }
}

/// The first `tapN` names not taken in `taken`, `count` of them.
pub fn free_names(taken: &[String], count: usize) -> Vec<String> {
    (0..)
        .map(|i| format!("tap{i}"))
        .filter(|n| !taken.iter().any(|t| t == n))
        .take(count)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_names_skip_taken_ones() {
        assert_eq!(free_names(&[], 2), ["tap0", "tap1"]);
        assert_eq!(
            free_names(&["tap0".into(), "eth0".into(), "tap2".into()], 2),
            ["tap1", "tap3"]
        );
        assert!(free_names(&[], 0).is_empty());
    }
}
