//! Which shim binary runs a runtime, and the options a runc shim is given.

use std::path::Path;

use ember_metadata::Error as E;
use ember_shim_api::RuncOptions;

use crate::runtime::Result;

/// Whether a runtime is run by the runc shim (which takes runc's options).
pub(crate) fn is_runc(runtime: &str, binary: &str) -> bool {
    runtime.starts_with("io.containerd.runc.")
        || Path::new(binary)
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("containerd-shim-runc-"))
}

/// The options of a runc task: the client's, with runc's root set to `root` unless
/// the client chose one.
pub(crate) fn with_runc_root(
    options: Option<prost_types::Any>,
    root: &Path,
) -> Result<Option<prost_types::Any>> {
    let mut o = match &options {
        None => RuncOptions::default(),
        Some(any) => match RuncOptions::from_any(any) {
            Ok(Some(o)) => o,
            // Another type: the shim decides what it makes of it.
            Ok(None) => return Ok(options),
            Err(e) => {
                return Err(E::InvalidArgument(format!("runc options: {e}")).into());
            }
        },
    };
    if o.root.is_empty() {
        o.root = root.display().to_string();
    }
    Ok(Some(o.to_any()))
}

/// The shim binary for a runtime name: `io.containerd.NAME.VERSION` →
/// `containerd-shim-NAME-VERSION`; an absolute path is used as is.
pub fn shim_binary(runtime: &str) -> Result<String> {
    if runtime.starts_with('/') {
        return Ok(runtime.to_string());
    }
    let parts: Vec<&str> = runtime.split('.').collect();
    if parts.len() < 2 || parts.iter().any(|p| p.is_empty()) {
        return Err(E::InvalidArgument(format!(
            "runtime name {runtime:?} is not of the form io.containerd.NAME.VERSION"
        ))
        .into());
    }
    let (name, version) = (parts[parts.len() - 2], parts[parts.len() - 1]);
    Ok(format!("containerd-shim-{name}-{version}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shim_binaries_follow_the_runtime_name() {
        assert_eq!(
            shim_binary("io.containerd.ember.v2").unwrap(),
            "containerd-shim-ember-v2"
        );
        assert_eq!(
            shim_binary("io.containerd.runc.v2").unwrap(),
            "containerd-shim-runc-v2"
        );
        assert_eq!(shim_binary("/opt/shim").unwrap(), "/opt/shim");
        assert!(shim_binary("runc").is_err());
        assert!(shim_binary("io..v2").is_err());
    }

    #[test]
    fn runc_tasks_get_the_daemon_runc_root() {
        let root = Path::new("/run/emberd/runc");
        assert!(is_runc("io.containerd.runc.v2", "containerd-shim-runc-v2"));
        assert!(is_runc(
            "/usr/bin/containerd-shim-runc-v2",
            "/usr/bin/containerd-shim-runc-v2"
        ));
        assert!(!is_runc(
            "io.containerd.ember.v2",
            "containerd-shim-ember-v2"
        ));
        let o = with_runc_root(None, root).unwrap().unwrap();
        let o = RuncOptions::from_any(&o).unwrap().unwrap();
        assert_eq!(o.root, "/run/emberd/runc");
        // The client's other options stay; its own root wins.
        let mine = RuncOptions {
            binary_name: "crun".into(),
            ..Default::default()
        };
        let o = with_runc_root(Some(mine.to_any()), root).unwrap().unwrap();
        let o = RuncOptions::from_any(&o).unwrap().unwrap();
        assert_eq!(
            (o.binary_name.as_str(), o.root.as_str()),
            ("crun", "/run/emberd/runc")
        );
        let chosen = RuncOptions {
            root: "/x".into(),
            ..Default::default()
        };
        let o = with_runc_root(Some(chosen.to_any()), root)
            .unwrap()
            .unwrap();
        assert_eq!(RuncOptions::from_any(&o).unwrap().unwrap().root, "/x");
    }
}
