//! What `ember info` says about the VMM jail: read from the `[jailer]` table of the
//! shim's runtime configuration (defaults where it says nothing) and from the host.

use std::path::Path;

use ember_vmm::jail::{self, JailConfig};

/// The jail as configured, for `ember info`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct JailInfo {
    pub enabled: bool,
    pub uid_range: [u32; 2],
    pub cgroup_parent: String,
    /// The cgroup hierarchy VMM cgroups go into (`v2`, `v1 (...)`, `none`).
    pub cgroup: String,
    pub memory_overhead_mib: u32,
    pub expose: String,
    /// The seccomp filter each VMM runs under.
    pub seccomp: String,
    /// Why the table could not be read, if it could not.
    pub error: Option<String>,
}

/// Reads the `[jailer]` table of the runtime configuration at `path`.
pub fn jail_info(path: &Path) -> JailInfo {
    let d = JailConfig::default();
    let mut info = JailInfo {
        enabled: true,
        uid_range: [d.uid_first, d.uid_first + (d.uid_count - 1)],
        cgroup_parent: d.cgroup_parent,
        cgroup: jail::cgroup_hierarchy(),
        memory_overhead_mib: d.memory_overhead_mib,
        expose: "bind".into(),
        seccomp: format!(
            "QEMU: -sandbox {}; Firecracker: its built-in filters",
            ember_vmm::qemu::SANDBOX
        ),
        error: None,
    };
    let table = match std::fs::read_to_string(path) {
        Ok(text) => match text.parse::<toml::Table>() {
            Ok(t) => t,
            Err(e) => {
                info.error = Some(format!("parsing {}: {e}", path.display()));
                return info;
            }
        },
        Err(_) => return info,
    };
    let Some(j) = table.get("jailer").and_then(|j| j.as_table()) else {
        return info;
    };
    if let Some(v) = j.get("enabled").and_then(|v| v.as_bool()) {
        info.enabled = v;
    }
    if let Some(r) = j.get("uid_range").and_then(|v| v.as_array()) {
        let n: Vec<u32> = r
            .iter()
            .filter_map(|x| x.as_integer().and_then(|i| u32::try_from(i).ok()))
            .collect();
        if let [a, b] = n[..] {
            info.uid_range = [a, b];
        }
    }
    if let Some(v) = j.get("cgroup_parent").and_then(|v| v.as_str()) {
        info.cgroup_parent = v.into();
    }
    if let Some(v) = j.get("memory_overhead_mib").and_then(|v| v.as_integer()) {
        info.memory_overhead_mib = v as u32;
    }
    if let Some(v) = j.get("expose").and_then(|v| v.as_str()) {
        info.expose = v.into();
    }
    info
}

impl JailInfo {
    /// One line for `ember info`.
    pub fn line(&self) -> String {
        if let Some(e) = &self.error {
            return format!("unknown: {e}");
        }
        if !self.enabled {
            return "off: VMMs run as root, unconfined ([jailer] enabled = false)".into();
        }
        format!(
            "on: uids {}-{}, own mount/pid/ipc/uts namespaces, no capabilities, no_new_privs, cgroup {}/<vm> ({}, guest memory + {} MiB), drives {}",
            self.uid_range[0],
            self.uid_range[1],
            self.cgroup_parent,
            self.cgroup,
            self.memory_overhead_mib,
            self.expose
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_is_read_with_defaults() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("runtime.toml");
        let i = jail_info(&p);
        assert!(i.enabled && i.line().starts_with("on: uids 200000-265535"));
        std::fs::write(
            &p,
            "[jailer]\nuid_range = [5000, 5999]\nexpose = \"copy\"\n",
        )
        .unwrap();
        let i = jail_info(&p);
        assert_eq!(i.uid_range, [5000, 5999]);
        assert!(i.line().contains("drives copy"), "{}", i.line());
        std::fs::write(&p, "[jailer]\nenabled = false\n").unwrap();
        assert!(jail_info(&p).line().starts_with("off"));
        std::fs::write(&p, "[jailer\n").unwrap();
        assert!(jail_info(&p).line().starts_with("unknown"));
    }
}
