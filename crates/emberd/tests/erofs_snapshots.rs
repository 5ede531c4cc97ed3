//! The `erofs` snapshotter through Debian's `ctr`: on emberd (built in, layers
//! written straight to EROFS by emberd's differ) and on Debian's containerd (as a
//! proxy plugin served by `ember-snapshotter-proxy`), compared with overlayfs on
//! the same daemon; restarts, kill -9 mid-unpack, refused layers.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::layered::{docker_archive, layered_image, run, sha256_hex, Unmount};
use common::{can_run, ctr, Containerd, Emberd, Mounted};

const NS: &str = "erofs-test";

/// A tree's paths with their kind, mode and contents (for regular files).
fn tree(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let md = std::fs::symlink_metadata(&p).unwrap();
        let rel = p.strip_prefix(root).unwrap().display().to_string();
        let what = if md.is_dir() {
            for e in std::fs::read_dir(&p).unwrap() {
                stack.push(e.unwrap().path());
            }
            format!("dir {:o}", md.mode())
        } else if md.file_type().is_symlink() {
            format!("link {}", std::fs::read_link(&p).unwrap().display())
        } else if md.is_file() {
            format!(
                "file {:o} {}",
                md.mode(),
                sha256_hex(&std::fs::read(&p).unwrap())
            )
        } else {
            format!("other {:o}", md.mode())
        };
        out.insert(rel, what);
    }
    out
}

/// Rows of `ctr snapshots ls`: key → (parent, kind).
fn snapshot_rows(out: &str) -> BTreeMap<String, (String, String)> {
    out.lines()
        .skip(1)
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            match w.as_slice() {
                [k, p, kind] => Some((k.to_string(), (p.to_string(), kind.to_string()))),
                [k, kind] => Some((k.to_string(), (String::new(), kind.to_string()))),
                _ => None,
            }
        })
        .collect()
}

fn sn<'a>(snapshotter: &'a str, args: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec!["snapshots", "--snapshotter", snapshotter];
    v.extend_from_slice(args);
    v
}

/// The merged view of image `chain` (its top chain id) on `snapshotter`, read
/// through a host mount of a fresh active snapshot's mounts.
fn merged_view(
    socket: &Path,
    snapshotter: &str,
    chain: &str,
    at: &Path,
) -> BTreeMap<String, String> {
    let key = format!("view-{snapshotter}");
    ctr(socket, NS, &sn(snapshotter, &["prepare", &key, chain])).expect_ok();
    std::fs::create_dir_all(at).unwrap();
    let line = ctr(
        socket,
        NS,
        &sn(snapshotter, &["mounts", at.to_str().unwrap(), &key]),
    )
    .expect_ok()
    .to_string();
    let t = {
        let _m = Mounted::run(&line, at);
        tree(at)
    };
    ctr(socket, NS, &sn(snapshotter, &["rm", &key])).expect_ok();
    t
}

/// The same snapshot verbs on two snapshotters of one daemon give the same
/// outcomes (exit status and error class).
fn compare_verbs(socket: &Path, top: &str) {
    let steps: Vec<Vec<&str>> = vec![
        vec!["prepare", "k1", top],
        vec!["prepare", "k1", top],
        vec!["prepare", "k2", "no-such-parent"],
        vec!["prepare", "k3", "k1"],
        vec!["commit", "c1", "k1"],
        vec!["commit", "c1", "nope"],
        vec!["info", "c1"],
        vec!["info", "nope"],
        vec!["label", "c1", "x=y"],
        vec!["usage", "c1"],
        vec!["usage", "nope"],
        vec!["view", "v1", "c1"],
        vec!["mounts", "/tmp/unused", "c1"],
        vec!["rm", "c1"],
        vec!["rm", "v1"],
        vec!["rm", "c1"],
        vec!["rm", "c1"],
    ];
    for step in steps {
        let theirs = ctr(socket, NS, &sn("overlayfs", &step));
        let ours = ctr(socket, NS, &sn("erofs", &step));
        assert_eq!(
            (ours.ok, ours.class()),
            (theirs.ok, theirs.class()),
            "{step:?}: erofs {}{} vs overlayfs {}{}",
            ours.stdout,
            ours.stderr,
            theirs.stdout,
            theirs.stderr
        );
        if step[0] == "info" && ours.ok {
            assert!(
                ours.stdout.contains("\"Kind\": \"Committed\""),
                "{}",
                ours.stdout
            );
        }
        if step[0] == "label" {
            assert!(ours.stdout.contains("x=y"), "{}", ours.stdout);
        }
    }
}

fn erofs_root(d: &Emberd) -> PathBuf {
    d.root.join("io.containerd.snapshotter.v1.erofs")
}

fn files_named(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir.join("snapshots")) else {
        return out;
    };
    for e in rd.flatten() {
        if let Ok(inner) = std::fs::read_dir(e.path()) {
            for f in inner.flatten() {
                if f.file_name().to_string_lossy().ends_with(suffix) {
                    out.push(f.path());
                }
            }
        }
    }
    out
}

fn top_chain(socket: &Path, snapshotter: &str) -> String {
    // The committed snapshot no other one names as parent.
    let rows = snapshot_rows(ctr(socket, NS, &sn(snapshotter, &["ls"])).expect_ok());
    let parents: Vec<&String> = rows.values().map(|(p, _)| p).collect();
    rows.iter()
        .filter(|(k, (_, kind))| kind == "Committed" && !parents.contains(k))
        .map(|(k, _)| k.clone())
        .next()
        .expect("a committed top layer")
}

#[test]
fn erofs_on_emberd_matches_overlayfs() {
    if !can_run() || ember_snapshot::erofs::tool_available().is_none_or(|t| !t.reads_tar()) {
        eprintln!("skipping: needs root, ctr and mkfs.erofs 1.8 (scripts/trixie.sh)");
        return;
    }
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let _u = Unmount(dir.path().to_path_buf());
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let image = layered_image(&work);
    std::fs::create_dir_all(dir.path().join("ember")).unwrap();
    let mut d = Emberd::start(&dir.path().join("ember"));
    let s = d.socket.clone();
    let img = image.to_str().unwrap();
    ctr(&s, NS, &["images", "import", "--snapshotter", "erofs", img]).expect_ok();
    ctr(&s, NS, &["images", "import", img]).expect_ok();

    // The same chain of committed snapshots on both.
    let ours = snapshot_rows(ctr(&s, NS, &sn("erofs", &["ls"])).expect_ok());
    let theirs = snapshot_rows(ctr(&s, NS, &sn("overlayfs", &["ls"])).expect_ok());
    assert_eq!(ours.len(), 3, "{ours:?}");
    assert_eq!(ours, theirs);
    let layers = files_named(&erofs_root(&d), "layer.erofs");
    assert_eq!(layers.len(), 3, "{layers:?}");
    assert!(files_named(&erofs_root(&d), "rw.ext4").is_empty());
    assert!(files_named(&erofs_root(&d), ".tmp").is_empty());

    // Usage counts the images' blocks.
    let top = top_chain(&s, "erofs");
    let usage = ctr(&s, NS, &sn("erofs", &["usage", &top]))
        .expect_ok()
        .to_string();
    assert!(usage.contains(&top), "{usage}");
    assert!(
        !usage.lines().nth(1).unwrap_or("").contains(" 0B "),
        "{usage}"
    );

    // The merged view through a host mount is overlayfs's.
    let a = merged_view(&s, "erofs", &top, &dir.path().join("m1"));
    let b = merged_view(&s, "overlayfs", &top, &dir.path().join("m2"));
    assert!(
        a.contains_key("etc/l2") && !a.contains_key("data/gone"),
        "{a:?}"
    );
    assert!(a.contains_key("data/old/b") && !a.contains_key("data/old/a"));
    assert_eq!(a, b);

    compare_verbs(&s, &top);

    // `ember snapshots`: real sizes, and the containers standing on each layer.
    let ember = Path::new(env!("CARGO_BIN_EXE_emberd"))
        .parent()
        .unwrap()
        .join("ember");
    if ember.exists() {
        ctr(
            &s,
            NS,
            &[
                "containers",
                "create",
                "--snapshotter",
                "erofs",
                "docker.io/ember/layered:1",
                "c1",
            ],
        )
        .expect_ok();
        let out = Command::new(&ember)
            .arg("--address")
            .arg(&s)
            .args(["-n", NS, "snapshots", "--snapshotter", "erofs", "--json"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let rows = rows.as_array().unwrap();
        assert_eq!(rows.len(), 4, "{rows:?}");
        for r in rows {
            assert_eq!(r["containers"], serde_json::json!(["c1"]), "{r}");
            assert!(r["size"].as_i64().unwrap() > 0, "{r}");
        }
        let active: Vec<_> = rows.iter().filter(|r| r["kind"] == "Active").collect();
        assert_eq!(active.len(), 1);
        assert_eq!(active[0]["name"], "c1");
        let table = Command::new(&ember)
            .arg("--address")
            .arg(&s)
            .args(["-n", NS, "snapshots", "-s", "erofs"])
            .output()
            .unwrap();
        let table = String::from_utf8_lossy(&table.stdout).to_string();
        assert!(table.starts_with("KEY"), "{table}");
        assert!(
            table.contains("SIZE") && table.contains("CONTAINERS"),
            "{table}"
        );
        ctr(&s, NS, &["containers", "rm", "c1"]).expect_ok();
    } else {
        eprintln!(
            "{} missing (cargo build -p ember-cli): not checking it",
            ember.display()
        );
    }

    // A restart keeps everything, mounted again.
    d.restart();
    let after = snapshot_rows(ctr(&s, NS, &sn("erofs", &["ls"])).expect_ok());
    assert_eq!(after, ours);
    assert_eq!(merged_view(&s, "erofs", &top, &dir.path().join("m1")), b);

    // A layer with an escaping path is refused and leaves nothing.
    let mut evil = Vec::new();
    {
        let mut h = tar::Header::new_ustar();
        h.set_size(4);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        let name = b"../../escaped";
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        h.set_cksum();
        evil.extend_from_slice(h.as_bytes());
        evil.extend_from_slice(b"evil");
        evil.extend(std::iter::repeat_n(0u8, 508 + 1024));
    }
    let evil_dir = work.join("evil");
    std::fs::create_dir_all(&evil_dir).unwrap();
    let archive = {
        // docker_archive tars directories; write the raw layer by hand instead.
        let staging = work.join("evil-staging");
        std::fs::create_dir_all(staging.join("l")).unwrap();
        std::fs::write(staging.join("l/layer.tar"), &evil).unwrap();
        let config = serde_json::json!({"architecture": "amd64", "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{}", sha256_hex(&evil))]}});
        let cb = serde_json::to_vec(&config).unwrap();
        std::fs::write(staging.join("c.json"), &cb).unwrap();
        std::fs::write(
            staging.join("manifest.json"),
            serde_json::to_vec(&serde_json::json!([{"Config": "c.json",
                "RepoTags": ["docker.io/ember/evil:1"], "Layers": ["l/layer.tar"]}]))
            .unwrap(),
        )
        .unwrap();
        let out = work.join("evil.tar");
        run(Command::new("tar")
            .arg("-C")
            .arg(&staging)
            .arg("-cf")
            .arg(&out)
            .arg("."));
        out
    };
    let before = snapshot_rows(ctr(&s, NS, &sn("erofs", &["ls"])).expect_ok());
    let out = ctr(
        &s,
        NS,
        &[
            "images",
            "import",
            "--snapshotter",
            "erofs",
            archive.to_str().unwrap(),
        ],
    );
    assert!(!out.ok, "{}", out.stdout);
    assert!(
        out.stderr.contains("refusing layer entry"),
        "{}",
        out.stderr
    );
    assert_eq!(
        snapshot_rows(ctr(&s, NS, &sn("erofs", &["ls"])).expect_ok()),
        before
    );
    assert!(files_named(&erofs_root(&d), ".tmp").is_empty());
    assert!(!work.join("escaped").exists() && !dir.path().join("escaped").exists());

    // kill -9 in the middle of an unpack: no half snapshot after the restart.
    let big = work.join("big");
    std::fs::create_dir_all(&big).unwrap();
    for i in 0..4 {
        let f = std::fs::File::create(big.join(format!("r{i}"))).unwrap();
        let mut urandom = std::fs::File::open("/dev/urandom").unwrap();
        std::io::copy(
            &mut std::io::Read::take(&mut urandom, 64 << 20),
            &mut std::io::BufWriter::new(f),
        )
        .unwrap();
    }
    let big_image = docker_archive(&work, "docker.io/ember/big:1", &[big]);
    let mut import = Command::new(common::CTR)
        .arg("-a")
        .arg(&s)
        .args(["-n", NS, "images", "import", "--snapshotter", "erofs"])
        .arg(&big_image)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while files_named(&erofs_root(&d), "layer.erofs.tmp").is_empty() {
        assert!(Instant::now() < deadline, "the unpack never started");
        std::thread::sleep(Duration::from_millis(5));
    }
    d.kill9();
    let _ = import.wait();
    d.start_again();
    let rows = snapshot_rows(ctr(&s, NS, &sn("erofs", &["ls"])).expect_ok());
    let committed: Vec<_> = rows.iter().filter(|(_, (_, k))| k == "Committed").collect();
    assert_eq!(
        committed.len(),
        3,
        "only the first image's layers: {rows:?}"
    );
    assert!(files_named(&erofs_root(&d), "layer.erofs.tmp").is_empty());
    // The import works when retried.
    ctr(
        &s,
        NS,
        &[
            "images",
            "import",
            "--snapshotter",
            "erofs",
            big_image.to_str().unwrap(),
        ],
    )
    .expect_ok();
    let rows = snapshot_rows(ctr(&s, NS, &sn("erofs", &["ls"])).expect_ok());
    assert_eq!(
        rows.iter().filter(|(_, (_, k))| k == "Committed").count(),
        4
    );

    // Removing the images lets the collector take their snapshots.
    ctr(
        &s,
        NS,
        &[
            "images",
            "rm",
            "--sync",
            "docker.io/ember/layered:1",
            "docker.io/ember/big:1",
        ],
    )
    .expect_ok();
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let rows = snapshot_rows(ctr(&s, NS, &sn("erofs", &["ls"])).expect_ok());
        if rows.values().all(|(_, k)| k != "Committed") {
            break;
        }
        assert!(Instant::now() < deadline, "not collected: {rows:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    d.stop();
}

#[test]
fn erofs_proxy_on_containerd() {
    if !can_run() || ember_snapshot::erofs::tool_available().is_none() {
        eprintln!("skipping: needs root, ctr and mkfs.erofs");
        return;
    }
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let _u = Unmount(dir.path().to_path_buf());
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let image = layered_image(&work);
    let sock = dir.path().join("erofs.sock");
    let bin = Path::new(env!("CARGO_BIN_EXE_emberd"))
        .parent()
        .unwrap()
        .join("ember-snapshotter-proxy");
    assert!(
        bin.exists(),
        "{} missing: cargo build -p ember-snapshot first",
        bin.display()
    );
    let mut proxy = Command::new(&bin)
        .arg("--root")
        .arg(dir.path().join("erofs"))
        .arg("--address")
        .arg(&sock)
        .args(["--type", "erofs", "--default-size", "1G"])
        .stderr(std::fs::File::create(dir.path().join("proxy.log")).unwrap())
        .spawn()
        .unwrap();
    struct Kill<'a>(&'a mut std::process::Child);
    impl Drop for Kill<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let deadline = Instant::now() + Duration::from_secs(90);
    while std::os::unix::net::UnixStream::connect(&sock).is_err() {
        assert!(Instant::now() < deadline, "proxy did not come up");
        std::thread::sleep(Duration::from_millis(20));
    }
    let _k = Kill(&mut proxy);
    let extra = format!(
        "[proxy_plugins.erofs]\n  type = \"snapshot\"\n  address = \"{}\"\n",
        sock.display()
    );
    let Some(c) = Containerd::start_configured(&[], &extra) else {
        return;
    };
    let s = c.socket.clone();
    let img = image.to_str().unwrap();
    ctr(&s, NS, &["images", "import", "--snapshotter", "erofs", img]).expect_ok();
    ctr(&s, NS, &["images", "import", img]).expect_ok();
    let ours = snapshot_rows(ctr(&s, NS, &sn("erofs", &["ls"])).expect_ok());
    let theirs = snapshot_rows(ctr(&s, NS, &sn("overlayfs", &["ls"])).expect_ok());
    assert_eq!(ours.len(), 3, "{ours:?}");
    assert_eq!(ours, theirs);
    // containerd's own differ wrote the layers into the upper directories; Commit
    // turned each into an EROFS image.
    let root = dir.path().join("erofs");
    assert_eq!(files_named(&root, "layer.erofs").len(), 3);
    assert!(files_named(&root, "rw.ext4").is_empty());
    let top = top_chain(&s, "erofs");
    let a = merged_view(&s, "erofs", &top, &dir.path().join("m1"));
    let b = merged_view(&s, "overlayfs", &top, &dir.path().join("m2"));
    assert_eq!(a, b);
    // (containerd's collector takes snapshots ctr makes outside a lease at any
    // time, so the verb-by-verb comparison runs on emberd only.)
    let u = ctr(&s, NS, &sn("erofs", &["usage", &top]));
    assert!(u.expect_ok().contains(&top));
}
