//! firecracker-containerd's `CreateVM.JailerConfig` onto Ember's VMM jail: the
//! request's uid/gid, CPUs/Mems (a cpuset), cgroup parent, network namespace and
//! drive exposure override the runtime configuration's `[jailer]` table; a request
//! with a JailerConfig is jailed even where the table disables the jailer.

use std::path::PathBuf;

use ember_ttrpc::{Code, Status};
use ember_vm_api::fc::JailerConfig as WireJailer;
use ember_vmm::jail::{DriveExposePolicy, JailConfig};

use super::err;
use crate::config::JailerSettings;

/// What a CreateVM asked of the jail, checked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JailRequest {
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub cpus: Option<String>,
    pub mems: Option<String>,
    pub cgroup_parent: Option<String>,
    pub netns: Option<PathBuf>,
    pub expose: DriveExposePolicy,
}

fn cpu_list(field: &str, v: &str) -> Result<Option<String>, Status> {
    if v.is_empty() {
        return Ok(None);
    }
    if !v
        .bytes()
        .all(|b| b.is_ascii_digit() || b == b',' || b == b'-')
    {
        return Err(err(
            Code::InvalidArgument,
            format!("JailerConfig.{field} {v:?}: a list such as 0-3,6"),
        ));
    }
    Ok(Some(v.to_string()))
}

impl JailRequest {
    pub fn from_wire(j: &WireJailer) -> Result<Self, Status> {
        let bad = |m: String| err(Code::InvalidArgument, m);
        if j.cgroup_path.split('/').any(|c| c == "..") {
            return Err(bad(format!(
                "JailerConfig.CgroupPath {:?} leaves the cgroup hierarchy",
                j.cgroup_path
            )));
        }
        let netns = if j.net_ns.is_empty() {
            None
        } else {
            let p = PathBuf::from(&j.net_ns);
            if !p.exists() {
                return Err(bad(format!(
                    "JailerConfig.NetNS {}: no such file",
                    p.display()
                )));
            }
            Some(p)
        };
        let expose = match ember_vm_api::fc::DriveExposePolicy::try_from(j.drive_expose_policy) {
            Ok(ember_vm_api::fc::DriveExposePolicy::Bind) => DriveExposePolicy::Bind,
            Ok(ember_vm_api::fc::DriveExposePolicy::Copy) => DriveExposePolicy::Copy,
            Err(_) => {
                return Err(bad(format!(
                    "JailerConfig.DriveExposePolicy {}: COPY (0) or BIND (1)",
                    j.drive_expose_policy
                )))
            }
        };
        Ok(JailRequest {
            uid: (j.uid != 0).then_some(j.uid),
            gid: (j.gid != 0).then_some(j.gid),
            cpus: cpu_list("CPUs", &j.cp_us)?,
            mems: cpu_list("Mems", &j.mems)?,
            cgroup_parent: (!j.cgroup_path.is_empty())
                .then(|| j.cgroup_path.trim_matches('/').to_string()),
            netns,
            expose,
        })
    }

    /// The jail of a VM so requested, over the runtime's settings.
    pub fn jail_config(&self, settings: &JailerSettings) -> Result<JailConfig, Status> {
        let base = JailerSettings {
            enabled: true,
            ..settings.clone()
        };
        let mut j = base.jail_config().expect("enabled");
        if let Some(uid) = self.uid {
            j.use_uid(uid)
                .map_err(|e| err(Code::FailedPrecondition, format!("JailerConfig.UID: {e}")))?;
        }
        j.gid = self.gid;
        j.cpus = self.cpus.clone();
        j.mems = self.mems.clone();
        if let Some(c) = &self.cgroup_parent {
            j.cgroup_parent = c.clone();
        }
        j.expose = self.expose;
        Ok(j)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_fields_map_and_bad_ones_are_refused() {
        let r = JailRequest::from_wire(&WireJailer {
            uid: 123_456,
            gid: 123_457,
            cp_us: "0".into(),
            mems: "0".into(),
            cgroup_path: "/firecracker-containerd/".into(),
            drive_expose_policy: 1,
            ..Default::default()
        })
        .unwrap();
        assert_eq!(r.uid, Some(123_456));
        assert_eq!(r.gid, Some(123_457));
        assert_eq!(r.cgroup_parent.as_deref(), Some("firecracker-containerd"));
        assert_eq!(r.expose, DriveExposePolicy::Bind);
        // Firecracker-containerd's default policy is COPY (0).
        assert_eq!(
            JailRequest::from_wire(&WireJailer::default())
                .unwrap()
                .expose,
            DriveExposePolicy::Copy
        );
        for bad in [
            WireJailer {
                cp_us: "all".into(),
                ..Default::default()
            },
            WireJailer {
                cgroup_path: "../x".into(),
                ..Default::default()
            },
            WireJailer {
                net_ns: "/nonexistent/netns".into(),
                ..Default::default()
            },
            WireJailer {
                drive_expose_policy: 7,
                ..Default::default()
            },
        ] {
            assert_eq!(
                JailRequest::from_wire(&bad).unwrap_err().code(),
                Code::InvalidArgument
            );
        }
    }
}
