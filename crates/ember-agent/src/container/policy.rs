//! The spec's confinement checked and prepared by the agent at Create, before
//! any process exists: what cannot be honoured fails the create with a clear
//! error; fields the guest has no enforcement for are reported as warnings.

use oci_spec::runtime::{LinuxNamespaceType, Spec};

use super::seccomp::{self, Filter};

/// What the container's processes apply themselves.
#[derive(Debug, Default)]
pub struct Confinement {
    pub seccomp: Option<Filter>,
    /// Lines for the agent's log.
    pub warnings: Vec<String>,
}

pub fn prepare(spec: &Spec) -> Result<Confinement, String> {
    let mut out = Confinement::default();
    let linux = spec.linux().clone().unwrap_or_default();
    if let Some(p) = spec.process() {
        super::rlimits::check_spec(p)?;
        if let Some(profile) = p.apparmor_profile().as_deref().filter(|s| !s.is_empty()) {
            out.warnings.push(format!(
                "AppArmor profile {profile:?} not applied: the guest kernel has no AppArmor"
            ));
        }
        if let Some(label) = p.selinux_label().as_deref().filter(|s| !s.is_empty()) {
            out.warnings.push(format!(
                "SELinux label {label:?} not applied: the guest kernel has no SELinux"
            ));
        }
    }
    if let Some(label) = linux.mount_label().as_deref().filter(|s| !s.is_empty()) {
        out.warnings.push(format!(
            "SELinux mount label {label:?} not applied: the guest kernel has no SELinux"
        ));
    }
    let user_ns = linux
        .namespaces()
        .clone()
        .unwrap_or_default()
        .iter()
        .any(|n| n.typ() == LinuxNamespaceType::User);
    let mapped = linux.uid_mappings().as_ref().is_some_and(|m| !m.is_empty())
        || linux.gid_mappings().as_ref().is_some_and(|m| !m.is_empty());
    if user_ns || mapped {
        // Running the container without the namespace it asked for would give
        // its root the guest's root: refuse instead.
        return Err(
            "user namespaces (linux.uidMappings/gidMappings) are not supported in the guest".into(),
        );
    }
    super::sysctl::check(spec)?;
    if let Some(profile) = linux.seccomp() {
        let c = seccomp::compile(profile).map_err(|e| e.to_string())?;
        out.warnings.extend(c.warnings);
        out.seccomp = Some(c.filter);
    }
    Ok(out)
}
