//! What the registry tests build on besides the daemons: OCI layouts for
//! `skopeo` to push, a misbehaving proxy, and `skopeo inspect`.

#![allow(dead_code)]

pub mod layout;
pub mod proxy;

use std::process::Command;

/// `skopeo inspect` (`--raw` for the manifest's own bytes) of a plain-HTTP
/// reference.
pub fn skopeo_inspect(reference: &str, raw: bool) -> Vec<u8> {
    let mut c = Command::new("skopeo");
    c.args(["inspect", "--tls-verify=false"]);
    if raw {
        c.arg("--raw");
    }
    let out = c.arg(format!("docker://{reference}")).output().unwrap();
    assert!(
        out.status.success(),
        "skopeo inspect {reference}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

pub fn have_skopeo() -> bool {
    std::path::Path::new("/usr/bin/skopeo").exists()
}
