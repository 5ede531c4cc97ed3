//! Images with Debian's `ctr`: import (docker-archive and OCI layout), unpack into
//! snapshots through the diff service, tag, export, mount, containers from images,
//! removal with garbage collection, malicious layers, restarts.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

const NS: &str = "imgs";

fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A tar of the contents of `dir`, deterministic.
fn tar_dir(dir: &Path, out: &Path) {
    run(Command::new("tar")
        .args([
            "--numeric-owner",
            "--owner=0",
            "--group=0",
            "--sort=name",
            "--mtime=@0",
            "-C",
        ])
        .arg(dir)
        .arg("-cf")
        .arg(out)
        .arg("."));
}

/// An OCI image layout tar of the busybox rootfs (gzip layer), named through
/// `io.containerd.image.name`, plus a second linux/arm64 manifest in the index.
fn oci_layout(work: &Path, name: &str) -> PathBuf {
    let rootfs = work.join("oci-rootfs");
    std::fs::create_dir_all(&rootfs).unwrap();
    ember_guest::busybox_rootfs(&rootfs).unwrap();
    std::fs::write(rootfs.join("etc/oci-marker"), "from the OCI layout\n").unwrap();
    let layer_tar = work.join("oci-layer.tar");
    tar_dir(&rootfs, &layer_tar);
    let tar_bytes = std::fs::read(&layer_tar).unwrap();
    let diff_id = sha256_hex(&tar_bytes);
    let gz = Command::new("gzip")
        .args(["-n", "-c"])
        .arg(&layer_tar)
        .output()
        .unwrap()
        .stdout;
    let layout = work.join("oci-layout");
    let blobs = layout.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let put = |data: &[u8]| -> (String, usize) {
        let h = sha256_hex(data);
        std::fs::write(blobs.join(&h), data).unwrap();
        (format!("sha256:{h}"), data.len())
    };
    let (layer, layer_size) = put(&gz);
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["sh"]},
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{diff_id}")]}
    });
    let (config, config_size) = put(config.to_string().as_bytes());
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": config_size},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer, "size": layer_size}]
    });
    let (manifest, manifest_size) = put(manifest.to_string().as_bytes());
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest, "size": manifest_size,
            "platform": {"architecture": "amd64", "os": "linux"},
            "annotations": {
                "io.containerd.image.name": name,
                "org.opencontainers.image.ref.name": name.rsplit(':').next().unwrap()
            }
        }]
    });
    std::fs::write(layout.join("index.json"), index.to_string()).unwrap();
    std::fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    let out = work.join("oci.tar");
    tar_dir(&layout, &out);
    out
}

/// A docker-archive tar with one layer made of `layer` (raw tar bytes).
fn docker_archive_with_layer(work: &Path, name: &str, layer: &[u8]) -> PathBuf {
    let staging = work.join(format!("staging-{}", sha256_hex(name.as_bytes())));
    let _ = std::fs::remove_dir_all(&staging);
    let diff_id = sha256_hex(layer);
    std::fs::create_dir_all(staging.join(&diff_id)).unwrap();
    std::fs::write(staging.join(&diff_id).join("layer.tar"), layer).unwrap();
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux", "config": {},
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{diff_id}")]}
    })
    .to_string();
    let config_name = format!("{}.json", sha256_hex(config.as_bytes()));
    std::fs::write(staging.join(&config_name), &config).unwrap();
    let manifest = serde_json::json!([{
        "Config": config_name, "RepoTags": [name], "Layers": [format!("{diff_id}/layer.tar")]
    }]);
    std::fs::write(staging.join("manifest.json"), manifest.to_string()).unwrap();
    let out = work.join(format!("{}.tar", sha256_hex(name.as_bytes())));
    tar_dir(&staging, &out);
    out
}

/// One raw ustar entry (names unchecked, for malicious layers).
fn raw_entry(out: &mut Vec<u8>, name: &str, kind: u8, link: &str, data: &[u8]) {
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    let oct = |v: u64, w: usize| format!("{:0w$o}\0", v, w = w - 1).into_bytes();
    h[100..108].copy_from_slice(&oct(0o755, 8));
    h[108..116].copy_from_slice(&oct(0, 8));
    h[116..124].copy_from_slice(&oct(0, 8));
    h[124..136].copy_from_slice(&oct(data.len() as u64, 12));
    h[136..148].copy_from_slice(&oct(0, 12));
    h[156] = kind;
    h[157..157 + link.len()].copy_from_slice(link.as_bytes());
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|b| *b as u32).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    out.extend_from_slice(&h);
    out.extend_from_slice(data);
    out.extend(std::iter::repeat_n(0u8, (512 - data.len() % 512) % 512));
}

/// The rows of `ctr images ls` as (name, digest, size) columns.
fn image_rows(ls: &str) -> Vec<(String, String, String)> {
    ls.lines()
        .skip(1)
        .map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            (
                w[0].to_string(),
                w[2].to_string(),
                format!("{} {}", w[3], w[4]),
            )
        })
        .collect()
}

fn committed_snapshots(s: &Path) -> Vec<String> {
    ctr(s, NS, &["snapshots", "ls"])
        .expect_ok()
        .lines()
        .skip(1)
        .filter(|l| l.trim_end().ends_with("Committed"))
        .map(|l| l.split_whitespace().next().unwrap().to_string())
        .collect()
}

#[test]
fn import_unpack_tag_export_mount_and_collect() {
    if !can_run() || !Path::new("/bin/busybox").exists() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let docker = work.join("busybox.tar");
    ember_guest::busybox_docker_archive(&docker, "docker.io/ember/busybox:latest").unwrap();
    let oci = oci_layout(&work, "docker.io/ember/oci:1.0");

    std::fs::create_dir_all(dir.path().join("ember")).unwrap();
    let mut d = Emberd::start(&dir.path().join("ember"));
    let s = d.socket.clone();
    let out = ctr(&s, NS, &["images", "import", docker.to_str().unwrap()]);
    assert!(
        out.expect_ok()
            .contains("unpacking docker.io/ember/busybox:latest"),
        "{}",
        out.stdout
    );
    let out = ctr(&s, NS, &["images", "import", oci.to_str().unwrap()]);
    assert!(
        out.expect_ok().contains("docker.io/ember/oci:1.0"),
        "{}",
        out.stdout
    );
    let ls = ctr(&s, NS, &["images", "ls"]);
    let rows = image_rows(ls.expect_ok());
    let names: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
    assert_eq!(
        names,
        ["docker.io/ember/busybox:latest", "docker.io/ember/oci:1.0"]
    );

    // The same imports on containerd list the same digests and sizes.
    if let Some(c) = Containerd::start() {
        ctr(
            &c.socket,
            NS,
            &["images", "import", docker.to_str().unwrap()],
        )
        .expect_ok();
        ctr(&c.socket, NS, &["images", "import", oci.to_str().unwrap()]).expect_ok();
        let theirs = image_rows(ctr(&c.socket, NS, &["images", "ls"]).expect_ok());
        assert_eq!(rows, theirs);
        assert_eq!(
            committed_snapshots(&s),
            ctr(&c.socket, NS, &["snapshots", "ls"])
                .expect_ok()
                .lines()
                .skip(1)
                .filter(|l| l.trim_end().ends_with("Committed"))
                .map(|l| l.split_whitespace().next().unwrap().to_string())
                .collect::<Vec<_>>()
        );
        let check = ctr(&c.socket, NS, &["images", "check"]);
        assert_eq!(
            ctr(&s, NS, &["images", "check"])
                .expect_ok()
                .lines()
                .count(),
            check.expect_ok().lines().count()
        );
    }

    // Content: layers carry their uncompressed digest, configs their snapshot.
    let content = ctr(&s, NS, &["content", "ls"]);
    assert!(content
        .expect_ok()
        .contains("containerd.io/uncompressed=sha256:"));
    assert!(content
        .stdout
        .contains("containerd.io/gc.ref.snapshot.overlayfs=sha256:"));
    assert!(content
        .stdout
        .contains("containerd.io/gc.ref.content.l.0=sha256:"));
    let check = ctr(&s, NS, &["images", "check"]);
    assert_eq!(
        check.expect_ok().matches("complete").count(),
        2,
        "{}",
        check.stdout
    );

    // The unpacked snapshots: one chain id per image (one layer each).
    let snaps = committed_snapshots(&s);
    assert_eq!(snaps.len(), 2, "{snaps:?}");
    for (i, snap) in snaps.iter().enumerate() {
        let key = format!("view-{i}");
        ctr(&s, NS, &["snapshots", "view", &key, snap]).expect_ok();
        let mnt = dir.path().join(format!("mnt{i}"));
        std::fs::create_dir_all(&mnt).unwrap();
        let line = ctr(
            &s,
            NS,
            &["snapshots", "mounts", mnt.to_str().unwrap(), &key],
        );
        let m = Mounted::run(line.expect_ok(), &mnt);
        assert!(mnt.join("bin/busybox").is_file());
        assert!(std::fs::read_to_string(mnt.join("etc/os-release"))
            .unwrap()
            .contains("Ember test busybox"));
        drop(m);
        ctr(&s, NS, &["snapshots", "rm", &key]).expect_ok();
    }
    let mnt = dir.path().join("mnt-oci");
    std::fs::create_dir_all(&mnt).unwrap();
    ctr(
        &s,
        NS,
        &[
            "images",
            "mount",
            "docker.io/ember/oci:1.0",
            mnt.to_str().unwrap(),
        ],
    )
    .expect_ok();
    let marker = std::fs::read_to_string(mnt.join("etc/oci-marker"));
    ctr(
        &s,
        NS,
        &["images", "unmount", "--rm", mnt.to_str().unwrap()],
    )
    .expect_ok();
    assert_eq!(marker.unwrap(), "from the OCI layout\n");

    // Tag and export.
    ctr(
        &s,
        NS,
        &[
            "images",
            "tag",
            "docker.io/ember/busybox:latest",
            "docker.io/ember/busybox:v2",
        ],
    )
    .expect_ok();
    let exported = dir.path().join("export.tar");
    ctr(
        &s,
        NS,
        &[
            "images",
            "export",
            exported.to_str().unwrap(),
            "docker.io/ember/busybox:v2",
        ],
    )
    .expect_ok();
    let list = Command::new("tar")
        .arg("-tf")
        .arg(&exported)
        .output()
        .unwrap();
    let list = String::from_utf8_lossy(&list.stdout);
    assert!(
        list.contains("index.json") && list.contains("blobs/sha256/"),
        "{list}"
    );

    // A container from the image.
    ctr(
        &s,
        NS,
        &[
            "containers",
            "create",
            "docker.io/ember/busybox:latest",
            "c1",
        ],
    )
    .expect_ok();
    let info = ctr(&s, NS, &["containers", "info", "c1"]);
    let info: serde_json::Value = serde_json::from_str(info.expect_ok()).unwrap();
    assert_eq!(info["Image"], "docker.io/ember/busybox:latest");
    assert_eq!(info["SnapshotKey"], "c1");
    assert!(ctr(&s, NS, &["snapshots", "ls"]).expect_ok().contains("c1"));

    // A restart keeps everything.
    d.restart();
    let again = image_rows(ctr(&s, NS, &["images", "ls"]).expect_ok());
    assert_eq!(again.len(), 3);
    assert_eq!(committed_snapshots(&s), snaps);
    ctr(&s, NS, &["containers", "info", "c1"]).expect_ok();

    // Removing everything collects content and snapshots.
    ctr(&s, NS, &["containers", "rm", "c1"]).expect_ok();
    ctr(&s, NS, &["images", "rm", "docker.io/ember/busybox:v2"]).expect_ok();
    // Still referenced by the other tag.
    assert_eq!(committed_snapshots(&s).len(), 2);
    ctr(
        &s,
        NS,
        &[
            "images",
            "rm",
            "--sync",
            "docker.io/ember/busybox:latest",
            "docker.io/ember/oci:1.0",
        ],
    )
    .expect_ok();
    assert!(image_rows(ctr(&s, NS, &["images", "ls"]).expect_ok()).is_empty());
    assert!(first_column(ctr(&s, NS, &["content", "ls"]).expect_ok()).is_empty());
    assert!(first_column(ctr(&s, NS, &["snapshots", "ls"]).expect_ok()).is_empty());
    let blobs = d.root.join("io.containerd.content.v1.content/blobs/sha256");
    assert_eq!(std::fs::read_dir(&blobs).map(|r| r.count()).unwrap_or(0), 0);
    let snapdirs = d
        .root
        .join("io.containerd.snapshotter.v1.overlayfs/snapshots");
    assert_eq!(std::fs::read_dir(&snapdirs).unwrap().count(), 0);
}

#[test]
fn malicious_layers_are_refused() {
    if !can_run() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    let outside = dir.path().join("outside");
    std::fs::create_dir_all(&work).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("secret"), "s").unwrap();
    std::fs::create_dir_all(dir.path().join("ember")).unwrap();
    let d = Emberd::start(&dir.path().join("ember"));
    let s = &d.socket;
    let out_abs = outside.to_str().unwrap().to_string();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("traversal", {
            let mut t = Vec::new();
            raw_entry(
                &mut t,
                "../../../../../../../../outside-pwned",
                b'0',
                "",
                b"x",
            );
            t
        }),
        ("symlink", {
            let mut t = Vec::new();
            raw_entry(&mut t, "escape", b'2', &out_abs, b"");
            raw_entry(&mut t, "escape/pwned", b'0', "", b"x");
            t
        }),
        ("hardlink", {
            let mut t = Vec::new();
            raw_entry(&mut t, "h", b'1', "../../../../../../../../etc/passwd", b"");
            t
        }),
    ];
    for (what, mut layer) in cases {
        layer.extend(std::iter::repeat_n(0u8, 1024));
        let name = format!("docker.io/ember/evil-{what}:latest");
        let archive = docker_archive_with_layer(&work, &name, &layer);
        let out = ctr(s, NS, &["images", "import", archive.to_str().unwrap()]);
        assert!(!out.ok, "{what}: {}", out.stdout);
        assert!(
            out.stderr.contains("refusing layer entry"),
            "{what}: {}",
            out.stderr
        );
        let mut left: Vec<_> = std::fs::read_dir(&outside)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        left.sort();
        assert_eq!(left, vec![std::ffi::OsString::from("secret")], "{what}");
        assert!(!Path::new("/outside-pwned").exists());
        // Nothing half-applied stays behind as a committed snapshot.
        assert!(committed_snapshots(s).is_empty(), "{what}");
    }
}

#[test]
fn ember_images_verbs() {
    if !can_run() || !Path::new("/bin/busybox").exists() {
        return;
    }
    let ember = Path::new(env!("CARGO_BIN_EXE_emberd")).with_file_name("ember");
    if !ember.exists() {
        eprintln!(
            "skipping: {} not built (cargo build -p ember-cli)",
            ember.display()
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let docker = work.join("busybox.tar");
    ember_guest::busybox_docker_archive(&docker, "docker.io/ember/busybox:latest").unwrap();
    let oci = oci_layout(&work, "docker.io/ember/oci:1.0");
    std::fs::create_dir_all(dir.path().join("ember")).unwrap();
    let d = Emberd::start(&dir.path().join("ember"));
    let s = &d.socket;
    let run = |args: &[&str]| -> String {
        let out = Command::new(&ember)
            .arg("--address")
            .arg(s)
            .args(["-n", NS])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "ember {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let out = run(&["images", "import", "-q", docker.to_str().unwrap()]);
    assert!(out.contains("docker.io/ember/busybox:latest"), "{out}");
    run(&["images", "import", "-q", oci.to_str().unwrap()]);
    // The same manifests ctr makes and reads.
    let ctr_rows = image_rows(ctr(s, NS, &["images", "ls"]).expect_ok());
    assert_eq!(ctr_rows.len(), 2);
    let check = ctr(s, NS, &["images", "check"]);
    assert_eq!(
        check.expect_ok().matches("complete").count(),
        2,
        "{}",
        check.stdout
    );
    assert_eq!(committed_snapshots(s).len(), 2);
    if let Some(c) = Containerd::start() {
        ctr(
            &c.socket,
            NS,
            &["images", "import", docker.to_str().unwrap()],
        )
        .expect_ok();
        let theirs = image_rows(ctr(&c.socket, NS, &["images", "ls"]).expect_ok());
        assert_eq!(theirs[0], ctr_rows[0]);
    }
    run(&[
        "images",
        "tag",
        "docker.io/ember/busybox:latest",
        "docker.io/ember/busybox:v2",
    ]);
    let ls = run(&["images", "ls", "-q"]);
    assert_eq!(ls.lines().count(), 3, "{ls}");
    let exported = dir.path().join("exp.tar");
    run(&[
        "images",
        "export",
        exported.to_str().unwrap(),
        "docker.io/ember/busybox:v2",
    ]);
    run(&[
        "images",
        "rm",
        "docker.io/ember/busybox:latest",
        "docker.io/ember/busybox:v2",
        "docker.io/ember/oci:1.0",
        "--sync",
    ]);
    assert!(first_column(ctr(s, NS, &["content", "ls"]).expect_ok()).is_empty());
    assert!(committed_snapshots(s).is_empty());
    // The export imports again, with ctr too.
    ctr(s, NS, &["images", "import", exported.to_str().unwrap()]).expect_ok();
    let rows = image_rows(ctr(s, NS, &["images", "ls"]).expect_ok());
    assert_eq!(rows[0].0, "docker.io/ember/busybox:v2");
    assert_eq!(rows[0].1, ctr_rows[0].1);
}
