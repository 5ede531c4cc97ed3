//! The `[jailer]` table of the runtime configuration: how the VMM of each VM is
//! confined on the host (see `ember_vmm::jail` and docs/security.md).

use std::path::PathBuf;

use ember_vmm::jail::{self, DriveExposePolicy, JailConfig};
use serde::Deserialize;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JailerSettings {
    /// Jail every VMM (the default). `false` runs VMMs as the shim runs: root.
    pub enabled: bool,
    /// First and last uid (inclusive) given to VMMs, one per running VM; the gid
    /// is the same number.
    pub uid_range: [u32; 2],
    /// Parent cgroup of each VMM's cgroup (below the hierarchy's root).
    pub cgroup_parent: String,
    /// The VMM's memory limit is the guest's memory plus this (MiB).
    pub memory_overhead_mib: u32,
    /// How drives reach the jail: `bind` or `copy` (read-only drives copied).
    pub expose: DriveExposePolicy,
    /// A CPU quota of (vCPUs + 1) CPUs in the VMM's cgroup (off by default).
    pub cpu_quota: bool,
    /// Where per-VM jail directories are made.
    pub dir: PathBuf,
}

impl Default for JailerSettings {
    fn default() -> Self {
        let d = JailConfig::default();
        JailerSettings {
            enabled: true,
            uid_range: [d.uid_first, d.uid_first + (d.uid_count - 1)],
            cgroup_parent: d.cgroup_parent,
            memory_overhead_mib: d.memory_overhead_mib,
            expose: d.expose,
            cpu_quota: d.cpu_quota,
            dir: d.base_dir,
        }
    }
}

impl JailerSettings {
    /// What is wrong with the settings, as (key, why).
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        let [first, last] = self.uid_range;
        if first == 0 || last < first {
            return Err((
                "uid_range",
                "[first, last]: first at least 1, last not below first".into(),
            ));
        }
        if self.memory_overhead_mib < 64 {
            return Err((
                "memory_overhead_mib",
                "at least 64 MiB: QEMU alone needs that beside the guest".into(),
            ));
        }
        if self.cgroup_parent.split('/').any(|c| c == "..") {
            return Err(("cgroup_parent", "must stay inside the hierarchy".into()));
        }
        if !self.dir.is_absolute() {
            return Err(("dir", "an absolute path".into()));
        }
        Ok(())
    }

    /// The VMM's jail, or None when the jailer is disabled.
    pub fn jail_config(&self) -> Option<JailConfig> {
        if !self.enabled {
            return None;
        }
        let [first, last] = self.uid_range;
        Some(JailConfig {
            uid_first: first,
            uid_count: last - first + 1,
            cgroup_parent: self.cgroup_parent.clone(),
            memory_overhead_mib: self.memory_overhead_mib,
            expose: self.expose,
            cpu_quota: self.cpu_quota,
            base_dir: self.dir.clone(),
            lock_dir: PathBuf::from(jail::DEFAULT_LOCK_DIR),
            ..Default::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_jail_and_map_onto_the_jail_config() {
        let s = JailerSettings::default();
        assert!(s.check().is_ok());
        let j = s.jail_config().unwrap();
        assert_eq!((j.uid_first, j.uid_count), (200_000, 65_536));
        assert_eq!(j.expose, DriveExposePolicy::Bind);
        let off = JailerSettings {
            enabled: false,
            ..Default::default()
        };
        assert!(off.jail_config().is_none());
    }

    #[test]
    fn bad_settings_name_their_key() {
        let s = JailerSettings {
            uid_range: [5, 4],
            ..Default::default()
        };
        assert_eq!(s.check().unwrap_err().0, "uid_range");
        let s = JailerSettings {
            uid_range: [0, 4],
            ..Default::default()
        };
        assert_eq!(s.check().unwrap_err().0, "uid_range");
        let s = JailerSettings {
            memory_overhead_mib: 1,
            ..Default::default()
        };
        assert_eq!(s.check().unwrap_err().0, "memory_overhead_mib");
    }
}
