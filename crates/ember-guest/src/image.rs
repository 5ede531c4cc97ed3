//! Container images of the busybox rootfs, as archives `ctr images import` (and
//! `ember images import`) read: a docker-archive tar (`manifest.json` with RepoTags)
//! with one layer.

use std::path::Path;
use std::process::Command;

use sha2::{Digest, Sha256};

use crate::rootfs::busybox_rootfs;
use crate::Error;

fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Writes a docker-archive tar at `out` holding a busybox image tagged `name`
/// (e.g. `docker.io/ember/busybox:latest`), running `sh` by default.
pub fn busybox_docker_archive(out: &Path, name: &str) -> Result<(), Error> {
    let work = out.with_extension("build");
    let _ = std::fs::remove_dir_all(&work);
    let rootfs = work.join("rootfs");
    let staging = work.join("archive");
    std::fs::create_dir_all(&rootfs)?;
    std::fs::create_dir_all(&staging)?;
    busybox_rootfs(&rootfs)?;
    let layer = work.join("layer.tar");
    run(Command::new("tar")
        .args([
            "--numeric-owner",
            "--owner=0",
            "--group=0",
            "--sort=name",
            "--mtime=@0",
            "-C",
        ])
        .arg(&rootfs)
        .args(["-cf"])
        .arg(&layer)
        .arg("."))?;
    let layer_bytes = std::fs::read(&layer)?;
    let diff_id = sha256_hex(&layer_bytes);
    std::fs::create_dir_all(staging.join(&diff_id))?;
    std::fs::rename(&layer, staging.join(&diff_id).join("layer.tar"))?;
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": ["sh"],
            "WorkingDir": "/"
        },
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{diff_id}")]},
        "history": [{"created_by": "ember busybox test image"}]
    });
    let config_bytes = serde_json::to_vec(&config).map_err(|e| Error::Tool(e.to_string()))?;
    let config_name = format!("{}.json", sha256_hex(&config_bytes));
    std::fs::write(staging.join(&config_name), &config_bytes)?;
    let manifest = serde_json::json!([{
        "Config": config_name,
        "RepoTags": [name],
        "Layers": [format!("{diff_id}/layer.tar")]
    }]);
    std::fs::write(staging.join("manifest.json"), manifest.to_string())?;
    run(Command::new("tar")
        .args(["--numeric-owner", "--owner=0", "--group=0", "-C"])
        .arg(&staging)
        .arg("-cf")
        .arg(out)
        .arg("."))?;
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}

fn run(cmd: &mut Command) -> Result<(), Error> {
    let out = cmd
        .output()
        .map_err(|e| Error::Tool(format!("{cmd:?}: {e}")))?;
    if !out.status.success() {
        return Err(Error::Tool(format!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_has_manifest_config_and_layer() {
        if !Path::new(crate::rootfs::BUSYBOX).is_file() {
            eprintln!("skipping: busybox-static missing");
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("bb.tar");
        busybox_docker_archive(&out, "docker.io/ember/busybox:latest").unwrap();
        let list = Command::new("tar").arg("-tf").arg(&out).output().unwrap();
        let list = String::from_utf8_lossy(&list.stdout);
        assert!(list.contains("manifest.json"));
        assert!(list.contains("/layer.tar"));
    }
}
