//! Ember and other tools on one real `docker-registry`:
//!
//! - a multi-platform OCI index (linux/amd64 and linux/arm64, a zstd layer on
//!   one side, gzip on the other) pushed by `skopeo copy`: `ember pull` keeps
//!   this host's platform, `--platform linux/arm64` the other, `--all-platforms`
//!   both (each in a namespace of its own, checked by the blobs it holds);
//! - the pulled image runs in microVMs (`ember run --rm`: the file from the
//!   zstd layer printed, the exit code passed on; `run -d --name`, `ps`, `logs`,
//!   `exec`, `stop`, `rm`);
//! - `ember images tag` and `ember push` of an imported image, and push of the whole index: `skopeo inspect`
//!   sees the digests Ember has, and the second repository gets its blobs by
//!   cross-repository mounts, not uploads;
//! - Debian's `ctr pull` (client-side, containerd 1.6) into emberd.

mod common;
mod regkit;

use std::process::Command;

use common::containers::{self as support, ok, text, Daemon};
use ember_registry::testing::{RegistryOptions, TestRegistry};
use regkit::layout::{self, Compression, Layout};
use regkit::proxy::Proxy;

fn host_arch() -> String {
    ember_images::Platform::host().architecture
}

/// Blob digests a namespace holds.
fn blobs(d: &Daemon, ns: &str) -> String {
    ok(&d.run(&["-n", ns, "content", "ls", "-q"]))
}

#[test]
fn skopeo_index_pulled_per_platform_run_pushed_and_inspected() {
    if !support::can_run() || !ember_registry::testing::available() || !regkit::have_skopeo() {
        eprintln!("skipping: needs root, emberd, docker-registry and skopeo");
        return;
    }
    if host_arch() != "amd64" {
        eprintln!("skipping: the index's runnable side is linux/amd64");
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let reg = TestRegistry::start(&w.join("reg"), &RegistryOptions::default()).unwrap();
    // Pushes go through a proxy that records what was asked.
    let proxy = Proxy::start(&reg.host);

    let mut lay = Layout::new(&w.join("layout"));
    let busybox = lay.layer(&layout::busybox_tar(&w.join("scratch")), Compression::Gzip);
    let amd_tar = layout::tar_of(
        &w.join("scratch"),
        &[("etc/ember-platform", b"amd64 from zstd\n")],
    );
    let amd = lay.layer(&amd_tar, Compression::Zstd);
    let arm_tar = layout::tar_of(&w.join("scratch"), &[("etc/ember-platform", b"arm64\n")]);
    let arm = lay.layer(&arm_tar, Compression::Gzip);
    let m_amd = lay.image("amd64", &[busybox.clone(), amd.clone()]);
    let m_arm = lay.image("arm64", std::slice::from_ref(&arm));
    let index = lay.index(&[m_amd.clone(), m_arm.clone()]);
    lay.name("multi", &index);
    // Ember reaches the registry through the proxy (so the source its blobs are
    // labelled with is the host it pushes to later).
    lay.skopeo_push("multi", &format!("{}/ember/multi:1", reg.host));
    let multi = format!("{}/ember/multi:1", proxy.host);
    let index_digest = index["digest"].as_str().unwrap().to_string();
    let raw: serde_json::Value =
        serde_json::from_slice(&regkit::skopeo_inspect(&multi, true)).unwrap();
    assert_eq!(raw["manifests"].as_array().unwrap().len(), 2, "{raw}");

    let d = Daemon::start();
    // This host's platform by default: the amd64 layers, not the arm64 one.
    let out = ok(&d.run(&["pull", "-q", "--plain-http", &multi]));
    assert_eq!(out.trim(), format!("{multi} {index_digest}"));
    let held = blobs(&d, "default");
    assert!(
        held.contains(&amd.digest()) && held.contains(&busybox.digest()),
        "{held}"
    );
    assert!(!held.contains(&arm.digest()), "{held}");
    // The other platform asked for by name.
    ok(&d.run(&[
        "-n",
        "arm",
        "pull",
        "--plain-http",
        "--platform",
        "linux/arm64",
        &multi,
    ]));
    let held = blobs(&d, "arm");
    assert!(held.contains(&arm.digest()), "{held}");
    assert!(!held.contains(&amd.digest()), "{held}");
    // Every platform.
    ok(&d.run(&[
        "-n",
        "all",
        "pull",
        "--plain-http",
        "--all-platforms",
        &multi,
    ]));
    let held = blobs(&d, "all");
    for l in [&amd, &arm, &busybox] {
        assert!(held.contains(&l.digest()), "{held}");
    }
    // A platform the index lacks.
    let o = d.run(&[
        "-n",
        "none",
        "pull",
        "--plain-http",
        "--platform",
        "linux/s390x",
        &multi,
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains("s390x"), "{}", text(&o.stderr));
    let images = ok(&d.run(&["-n", "none", "images", "ls", "-q"]));
    assert!(images.trim().is_empty(), "{images}");

    // The skopeo-pushed image runs in a microVM, its zstd layer unpacked.
    if support::has_guest() {
        let o = d.run(&[
            "run",
            "--rm",
            &multi,
            "sh",
            "-c",
            "cat /etc/ember-platform; exit 3",
        ]);
        assert_eq!(o.status.code(), Some(3), "{}\n{}", text(&o.stderr), d.log());
        assert_eq!(text(&o.stdout), "amd64 from zstd\n");
        // Detached, named: listed, its logs read, exec'd into, stopped, removed.
        ok(&d.run(&[
            "run",
            "-d",
            "--name",
            "pulled",
            &multi,
            "sh",
            "-c",
            "trap 'exit 0' TERM; cat /etc/ember-platform; while true; do sleep 0.1; done",
        ]));
        let ps = ok(&d.run(&["ps"]));
        assert!(ps.lines().any(|l| l.starts_with("pulled ")), "{ps}");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while !ok(&d.run(&["logs", "pulled"])).contains("amd64 from zstd") {
            assert!(
                std::time::Instant::now() < deadline,
                "no output in the logs"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let o = d.run(&[
            "exec",
            "pulled",
            "sh",
            "-c",
            "cat /etc/ember-platform; exit 5",
        ]);
        assert_eq!(o.status.code(), Some(5), "{}", text(&o.stderr));
        assert_eq!(text(&o.stdout), "amd64 from zstd\n");
        ok(&d.run(&["stop", "pulled"]));
        ok(&d.run(&["rm", "pulled"]));
        let ps = ok(&d.run(&["ps", "-a"]));
        assert!(!ps.lines().any(|l| l.starts_with("pulled ")), "{ps}");
    }

    // Ember pushes, skopeo reads: an imported docker-archive image, tagged with
    // the name it is pushed under...
    d.import_busybox("docker.io/ember/busybox:latest");
    let pushed = format!("{}/ember/busybox:1", proxy.host);
    ok(&d.run(&["images", "tag", "docker.io/ember/busybox:latest", &pushed]));
    ok(&d.run(&["push", "--plain-http", &pushed]));
    let local: serde_json::Value =
        serde_json::from_str(&ok(&d.run(&["--json", "images"]))).unwrap();
    let local_digest = local
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == "docker.io/ember/busybox:latest")
        .map(|i| i["digest"].as_str().unwrap().to_string())
        .unwrap_or_else(|| panic!("{local}"));
    let seen: serde_json::Value =
        serde_json::from_slice(&regkit::skopeo_inspect(&pushed, false)).unwrap();
    assert_eq!(seen["Digest"], local_digest.as_str(), "{seen}");
    assert_eq!(seen["Architecture"], "amd64", "{seen}");

    // ...and the whole index, into another repository of the same registry:
    // its blobs are mounted from the first, not uploaded again.
    proxy.take_requests();
    let copy = format!("{}/ember/multi-copy:2", proxy.host);
    ok(&d.run(&["-n", "all", "push", "--plain-http", &copy, &multi]));
    let requests = proxy.take_requests();
    let mounts = requests.iter().filter(|r| r.contains("mount=")).count();
    assert!(mounts >= 3, "no cross-repository mounts: {requests:#?}");
    assert!(
        !requests
            .iter()
            .any(|r| r.starts_with("PATCH ") || r.contains("digest=sha256")),
        "blobs uploaded again: {requests:#?}"
    );
    let seen: serde_json::Value =
        serde_json::from_slice(&regkit::skopeo_inspect(&copy, false)).unwrap();
    assert_eq!(seen["Digest"], index_digest.as_str(), "{seen}");
    // Pushed once more: every blob is found present.
    ok(&d.run(&["-n", "all", "push", "--plain-http", &copy, &multi]));
    let again = proxy.take_requests();
    assert!(
        !again.iter().any(|r| r.starts_with("POST ")),
        "pushed blobs the registry has: {again:#?}"
    );

    // Debian's ctr pulls into emberd (content and unpack through its APIs).
    if std::path::Path::new("/usr/bin/ctr").exists() {
        let ctr = |args: &[&str]| {
            Command::new("/usr/bin/ctr")
                .arg("--address")
                .arg(&d.socket)
                .args(["-n", "ctr"])
                .args(args)
                .output()
                .unwrap()
        };
        let o = ctr(&["images", "pull", "--plain-http", &multi]);
        assert!(
            o.status.success(),
            "ctr pull: {}\n{}",
            text(&o.stdout),
            text(&o.stderr)
        );
        let ls = text(&ctr(&["images", "ls", "-q"]).stdout);
        assert!(ls.contains(&multi), "{ls}");
        let held = blobs(&d, "ctr");
        assert!(held.contains(&amd.digest()), "{held}");
    }
}
