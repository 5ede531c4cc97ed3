//! Layered test images as docker archives, built from directories.

use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

pub fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{cmd:?}: {out:?}");
}

pub fn tar_dir(dir: &Path, out: &Path) {
    run(Command::new("tar")
        .args(["--numeric-owner", "--sort=name", "--mtime=@0", "-C"])
        .arg(dir)
        .arg("-cf")
        .arg(out)
        .arg("."));
}

/// A docker-archive tar of an image made of `layers` (directories, bottom first).
pub fn docker_archive(work: &Path, name: &str, layers: &[PathBuf]) -> PathBuf {
    let staging = work.join(format!("{}.staging", sha256_hex(name.as_bytes())));
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging).unwrap();
    let mut diff_ids = Vec::new();
    let mut paths = Vec::new();
    for (i, l) in layers.iter().enumerate() {
        let t = staging.join(format!("layer{i}.tar"));
        tar_dir(l, &t);
        let id = sha256_hex(&std::fs::read(&t).unwrap());
        std::fs::create_dir_all(staging.join(&id)).unwrap();
        std::fs::rename(&t, staging.join(&id).join("layer.tar")).unwrap();
        diff_ids.push(format!("sha256:{id}"));
        paths.push(format!("{id}/layer.tar"));
    }
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["sh"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    });
    let config_bytes = serde_json::to_vec(&config).unwrap();
    let config_name = format!("{}.json", sha256_hex(&config_bytes));
    std::fs::write(staging.join(&config_name), &config_bytes).unwrap();
    let manifest = serde_json::json!([{
        "Config": config_name, "RepoTags": [name], "Layers": paths
    }]);
    std::fs::write(
        staging.join("manifest.json"),
        serde_json::to_vec(&manifest).unwrap(),
    )
    .unwrap();
    let out = work.join(format!("{}.tar", sha256_hex(name.as_bytes())));
    run(Command::new("tar")
        .arg("-C")
        .arg(&staging)
        .arg("-cf")
        .arg(&out)
        .arg("."));
    std::fs::remove_dir_all(&staging).unwrap();
    out
}

/// Three layers: busybox plus a data tree; a layer deleting a file and making a
/// directory opaque; a layer of random bytes.
pub fn layered_image(work: &Path) -> PathBuf {
    let l1 = work.join("l1");
    ember_guest::busybox_rootfs(&l1).unwrap();
    std::fs::create_dir_all(l1.join("data/old")).unwrap();
    std::fs::write(l1.join("data/old/a"), b"a").unwrap();
    std::fs::write(l1.join("data/keep"), b"keep").unwrap();
    std::fs::write(l1.join("data/gone"), b"gone").unwrap();
    let l2 = work.join("l2");
    std::fs::create_dir_all(l2.join("data/old")).unwrap();
    std::fs::write(l2.join("data/.wh.gone"), b"").unwrap();
    std::fs::write(l2.join("data/old/.wh..wh..opq"), b"").unwrap();
    std::fs::write(l2.join("data/old/b"), b"b").unwrap();
    std::fs::create_dir_all(l2.join("etc")).unwrap();
    std::fs::write(l2.join("etc/l2"), b"layer two").unwrap();
    let l3 = work.join("l3");
    std::fs::create_dir_all(l3.join("blob")).unwrap();
    let random: Vec<u8> = (0..(1u32 << 20))
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    std::fs::write(l3.join("blob/random"), random).unwrap();
    docker_archive(work, "docker.io/ember/layered:1", &[l1, l2, l3])
}

/// Unmounts everything mounted under `root`, deepest first.
pub fn unmount_under(root: &Path) {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    let mut targets: Vec<&str> = mounts
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter(|t| t.starts_with(root.to_str().unwrap()))
        .collect();
    targets.sort_by_key(|t| std::cmp::Reverse(t.len()));
    for t in targets {
        let _ = Command::new("umount").arg(t).status();
    }
}

/// Unmounts what the snapshotters left mounted under the test's directory.
pub struct Unmount(pub PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        unmount_under(&self.0);
    }
}
