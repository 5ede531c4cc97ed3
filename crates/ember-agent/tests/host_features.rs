//! The agent's VM-level features against a host agent (see `common`): containers
//! and block mounts from regions of a pool file (loop devices, freed again), files
//! copied in, read-only binds and the metadata document. The same features inside
//! real guests are tested by `ember-sandbox/tests/guest_features.rs`.

#![deny(clippy::undocumented_unsafe_blocks)]

#[macro_use]
mod common;

use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use ember_agent_api::*;
use ember_ttrpc::Code;
use serde_json::json;

const MIB: u64 = 1 << 20;

/// These tests need the `path:` testing aid of a host agent.
macro_rules! host_only {
    () => {
        require_root!();
        if vm().is_some() {
            eprintln!("SKIPPED: needs a host agent");
            return;
        }
    };
}

/// An ext4 image of `size_mib` MiB holding `dir`.
fn ext4_of(dir: &Path, image: &Path, size_mib: u64) {
    let st = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-E", "root_owner=0:0", "-d"])
        .arg(dir)
        .arg(image)
        .arg(format!("{size_mib}M"))
        .status()
        .unwrap();
    assert!(st.success(), "mkfs.ext4 failed");
}

/// Copies `image` into `pool` at `offset`.
fn place(pool: &Path, offset: u64, image: &Path) {
    let data = std::fs::read(image).unwrap();
    let mut f = std::fs::OpenOptions::new().write(true).open(pool).unwrap();
    f.seek(SeekFrom::Start(offset)).unwrap();
    f.write_all(&data).unwrap();
}

/// Loop devices whose backing file is `path`.
fn loops_backed_by(path: &Path) -> Vec<String> {
    let want = path.to_string_lossy().into_owned();
    std::fs::read_dir("/sys/block")
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("loop"))
        .filter(|e| {
            std::fs::read_to_string(e.path().join("loop/backing_file"))
                .is_ok_and(|b| b.trim() == want)
        })
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

fn wait_no_loops(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = loops_backed_by(path);
        if left.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "loop devices still bound to {}: {left:?}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A 64 MiB sparse pool with two busybox filesystems (16 MiB each) at 1 MiB and
/// 20 MiB whose `/marker` reads `A` and `B`.
fn make_pool(h: &Harness) -> PathBuf {
    let pool = h.dir.join("pool.img");
    std::fs::File::create(&pool)
        .unwrap()
        .set_len(64 * MIB)
        .unwrap();
    for (marker, offset) in [("A", MIB), ("B", 20 * MIB)] {
        std::fs::write(h.rootfs.join("marker"), marker).unwrap();
        let img = h.dir.join(format!("{marker}.ext4"));
        ext4_of(&h.rootfs, &img, 16);
        place(&pool, offset, &img);
        std::fs::remove_file(&img).unwrap();
    }
    std::fs::remove_file(h.rootfs.join("marker")).unwrap();
    pool
}

fn region(pool: &Path, offset: u64, length: u64) -> BlockRootfs {
    BlockRootfs {
        serial: format!("path:{}", pool.display()),
        fstype: "ext4".into(),
        offset,
        length,
        ..Default::default()
    }
}

async fn create_from(
    h: &Harness,
    id: &str,
    rootfs: BlockRootfs,
    args: &[&str],
) -> ember_ttrpc::Result<u32> {
    h.client
        .create_container(&CreateContainerRequest {
            container_id: id.into(),
            spec_json: serde_json::to_vec(&spec(args, false)).unwrap(),
            rootfs: Some(rootfs),
            stdio: Some(StdioConfig::default()),
            files: Vec::new(),
            ..Default::default()
        })
        .await
        .map(|r| r.pid)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_and_mounts_from_pool_regions() {
    host_only!();
    let h = Harness::start("regions").await;
    let pool = make_pool(&h);

    // Two containers, one per region, running at once, each seeing its own files.
    for (id, off) in [("ra", MIB), ("rb", 20 * MIB)] {
        create_from(&h, id, region(&pool, off, 16 * MIB), &["sleep", "100"])
            .await
            .unwrap();
        h.client.start_process(id, "").await.unwrap();
    }
    assert_eq!(loops_backed_by(&pool).len(), 2);
    assert_eq!(h.exec("ra", "m", &["cat", "/marker"]).await.1, "A");
    assert_eq!(h.exec("rb", "m", &["cat", "/marker"]).await.1, "B");
    let (st, _, _) = h
        .exec("ra", "w", &["sh", "-c", "echo written > /new"])
        .await;
    assert_eq!(st, 0);
    for id in ["ra", "rb"] {
        h.client.remove_container(id).await.unwrap();
    }
    wait_no_loops(&pool);

    // A region mounted read-only at a path, outside any container.
    let target = h.dir.join("mnt/data");
    let mut dev = region(&pool, MIB, 16 * MIB);
    dev.read_only = true;
    dev.options = "nosuid,nodev".into();
    let req = MountBlockRequest {
        device: Some(dev.clone()),
        target: target.display().to_string(),
    };
    h.client.mount_block(&req).await.unwrap();
    // Seen through a container that binds it (the agent's mounts may live in a mount
    // namespace of its own).
    let mut sp = spec(&["sleep", "100"], false);
    sp["mounts"].as_array_mut().unwrap().push(
        json!({"destination": "/data", "type": "bind", "source": target, "options": ["rbind"]}),
    );
    h.try_create("reader", sp, StdioConfig::default())
        .await
        .unwrap();
    h.client.start_process("reader", "").await.unwrap();
    assert_eq!(
        h.exec("reader", "r", &["cat", "/data/marker", "/data/new"])
            .await
            .1,
        "Awritten\n",
        "a write of the container did not reach its region"
    );
    let (st, _, err) = h.exec("reader", "w", &["touch", "/data/x"]).await;
    assert_ne!(st, 0);
    assert!(err.contains("Read-only file system"), "{err}");
    h.client.remove_container("reader").await.unwrap();
    let e = h.client.mount_block(&req).await.unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists, "{e}");
    h.client
        .unmount(&target.display().to_string())
        .await
        .unwrap();
    wait_no_loops(&pool);
    let e = h
        .client
        .unmount(&target.display().to_string())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e}");

    // Bad inputs: clear errors, no loop device left behind.
    let bad = |device: BlockRootfs, target: &str| MountBlockRequest {
        device: Some(device),
        target: target.into(),
    };
    let t = h.dir.join("mnt/bad").display().to_string();
    let cases = [
        (
            bad(region(&pool, 60 * MIB, 16 * MIB), &t),
            Code::InvalidArgument,
            "beyond the end",
        ),
        (
            bad(region(&pool, 1000, MIB), &t),
            Code::InvalidArgument,
            "512",
        ),
        (
            bad(
                BlockRootfs {
                    fstype: "nosuchfs".into(),
                    ..region(&pool, MIB, 16 * MIB)
                },
                &t,
            ),
            Code::InvalidArgument,
            "No such device",
        ),
        // Zeroes are no filesystem.
        (
            bad(region(&pool, 40 * MIB, 16 * MIB), &t),
            Code::InvalidArgument,
            "ext4",
        ),
        (
            bad(region(&pool, MIB, 16 * MIB), "/proc/x"),
            Code::InvalidArgument,
            "/proc",
        ),
        (
            bad(region(&pool, MIB, 16 * MIB), "rel/x"),
            Code::InvalidArgument,
            "absolute",
        ),
        (
            bad(
                BlockRootfs {
                    serial: "no-such-disk".into(),
                    ..region(&pool, MIB, 16 * MIB)
                },
                &t,
            ),
            Code::NotFound,
            "no-such-disk",
        ),
    ];
    for (req, code, text) in cases {
        let e = h.client.mount_block(&req).await.unwrap_err();
        assert_eq!(e.code(), code, "{req:?}: {e}");
        assert!(e.to_string().contains(text), "{req:?}: {e}");
    }
    let e = create_from(&h, "beyond", region(&pool, 60 * MIB, 16 * MIB), &["true"])
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e}");
    wait_no_loops(&pool);

    // Many containers created and removed leave no loop device behind.
    for i in 0..6 {
        let id = format!("many{i}");
        create_from(&h, &id, region(&pool, 20 * MIB, 16 * MIB), &["true"])
            .await
            .unwrap();
        h.client.remove_container(&id).await.unwrap();
    }
    wait_no_loops(&pool);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_read_only_binds_and_metadata() {
    host_only!();
    let h = Harness::start("files").await;
    let files = h.run_dir().join("files");
    let shared = h.dir.join("shared");
    std::fs::create_dir_all(&shared).unwrap();
    std::fs::write(shared.join("in"), "from host").unwrap();
    h.client
        .set_metadata(&json!({"vm": "one", "n": 1}).to_string())
        .await
        .unwrap();

    let mut sp = spec(&["sleep", "100"], false);
    let mounts = sp["mounts"].as_array_mut().unwrap();
    mounts.push(json!({"destination": "/etc/greeting", "type": "bind",
        "source": files.join("c1/etc/greeting"), "options": ["rbind", "ro"]}));
    mounts.push(json!({"destination": "/ro", "type": "bind",
        "source": shared, "options": ["rbind", "ro"]}));
    mounts.push(json!({"destination": "/rw", "type": "bind",
        "source": shared, "options": ["rbind", "rw"]}));
    let file = |path: &str, mode| GuestFile {
        path: path.into(),
        content: b"hello\n".to_vec(),
        mode,
    };
    let req = |files: Vec<GuestFile>| CreateContainerRequest {
        container_id: "c1".into(),
        spec_json: serde_json::to_vec(&sp).unwrap(),
        rootfs: Some(h.rootfs()),
        stdio: Some(StdioConfig::default()),
        files,
        ..Default::default()
    };
    for bad in ["/etc/passwd", "/run/ember/files/../x", "/run/ember/files"] {
        let e = h
            .client
            .create_container(&req(vec![
                file("/run/ember/files/c1/ok", 0o644),
                file(bad, 0o644),
            ]))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{bad}: {e}");
        assert!(
            !files.join("c1/ok").exists(),
            "written before {bad} was refused"
        );
    }
    h.client
        .create_container(&req(vec![file("/run/ember/files/c1/etc/greeting", 0o640)]))
        .await
        .unwrap();
    h.client.start_process("c1", "").await.unwrap();

    let (st, out, err) = h
        .exec(
            "c1",
            "f",
            &["sh", "-c", "cat /etc/greeting; stat -c %a /etc/greeting"],
        )
        .await;
    assert_eq!((st, out.as_str()), (0, "hello\n640\n"), "{err}");
    let (st, _, err) = h
        .exec("c1", "fw", &["sh", "-c", "echo x > /etc/greeting"])
        .await;
    assert_ne!(st, 0);
    assert!(err.contains("Read-only file system"), "{err}");

    assert_eq!(h.exec("c1", "r", &["cat", "/ro/in"]).await.1, "from host");
    let (st, _, err) = h.exec("c1", "rw1", &["touch", "/ro/new"]).await;
    assert_ne!(st, 0);
    assert!(err.contains("Read-only file system"), "{err}");
    let (st, _, err) = h
        .exec("c1", "rw2", &["sh", "-c", "echo from guest > /rw/out"])
        .await;
    assert_eq!(st, 0, "{err}");
    assert_eq!(
        std::fs::read_to_string(h.dir.join("shared/out")).unwrap(),
        "from guest\n"
    );

    // The metadata document, read-only, updated live.
    let md = "/run/ember/metadata/metadata.json";
    let (_, out, err) = h.exec("c1", "m1", &["cat", md]).await;
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {err}"));
    assert_eq!(v, json!({"vm": "one", "n": 1}));
    h.client
        .set_metadata(&json!({"vm": "one", "n": 2}).to_string())
        .await
        .unwrap();
    let (_, out, _) = h.exec("c1", "m2", &["cat", md]).await;
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&out).unwrap(),
        json!({"vm": "one", "n": 2})
    );
    let (st, _, err) = h
        .exec("c1", "m3", &["sh", "-c", &format!("echo {{}} > {md}")])
        .await;
    assert_ne!(st, 0);
    assert!(err.contains("Read-only file system"), "{err}");
    let e = h.client.set_metadata("{not json").await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e}");
    let (_, out, _) = h.exec("c1", "m4", &["cat", md]).await;
    assert!(
        out.contains("\"n\":2"),
        "a refused document replaced the old: {out}"
    );
    h.client.remove_container("c1").await.unwrap();
}
