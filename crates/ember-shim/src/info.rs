//! `-info`: the runtime's description, as containerd 2.x asks every shim for it
//! (a `containerd.types.RuntimeInfo` protobuf on stdout). Its annotations tell
//! containerd which mounts to hand over untouched instead of mounting them on the
//! host: EROFS layer images and ext4 images (the VM gets them as drives) and the
//! `mkdir/` and `format/` transforms over them (the guest's agent makes the
//! overlay).

use containerd_client::types::{RuntimeInfo, RuntimeVersion};
use prost::Message;

/// The runtime name containerd knows the shim by.
pub const RUNTIME_NAME: &str = "io.containerd.ember.v2";
/// containerd 2.2's annotation listing the mount types a shim handles itself.
pub const ALLOW_MOUNTS: &str = "containerd.io/runtime-allow-mounts";
/// What Ember's shim takes as it is.
pub const ALLOWED_MOUNTS: &str = "mkdir/*,format/*,erofs,ext4";

/// The runtime info of this shim.
pub fn runtime_info() -> RuntimeInfo {
    RuntimeInfo {
        name: RUNTIME_NAME.into(),
        version: Some(RuntimeVersion {
            version: env!("CARGO_PKG_VERSION").into(),
            revision: String::new(),
        }),
        annotations: [
            (ALLOW_MOUNTS.to_string(), ALLOWED_MOUNTS.to_string()),
            ("containerd.io/runtime-type".to_string(), "vm".to_string()),
        ]
        .into_iter()
        .collect(),
        ..Default::default()
    }
}

/// Writes the runtime info to stdout (containerd passes the runtime's options on
/// stdin; Ember's info does not depend on them).
pub fn print() -> std::io::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    out.write_all(&runtime_info().encode_to_vec())?;
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_info_names_the_runtime_and_the_mounts_it_takes() {
        let bytes = runtime_info().encode_to_vec();
        let back = RuntimeInfo::decode(bytes.as_slice()).unwrap();
        assert_eq!(back.name, "io.containerd.ember.v2");
        assert_eq!(
            back.annotations[ALLOW_MOUNTS],
            "mkdir/*,format/*,erofs,ext4"
        );
    }
}
