//! The VM-level features of a real guest (QEMU microvm): containers from regions of
//! one pool drive (loop devices in the guest, freed again), many containers in one
//! VM, a host directory shared by virtio-9p with read-only binds, files copied in,
//! block mounts, the metadata document and the memory balloon. One VM carries most
//! assertions, since each boot costs seconds under TCG.

mod common;
#[path = "common/features.rs"]
mod features;

use std::time::{Duration, Instant};

use common::guest;
use ember_agent_api::{AgentClient, GuestFile, MountBlockRequest};
use ember_sandbox::{Sandbox, SandboxConfig};
use ember_ttrpc::Code;
use ember_vmm::{BalloonConfig, Drive};
use features::*;
use serde_json::json;

/// Regions of the pool: 16 MiB filesystems every 32 MiB, from 1 MiB on.
const REGION_LEN: u64 = 16 * MIB;
const REGIONS: u64 = 20;
const POOL_SIZE: u64 = 1 << 30;

fn region_offset(i: u64) -> u64 {
    MIB + i * 32 * MIB
}

/// Loop block devices the guest has (`/sys/block/loop*`), counted from inside `id`.
async fn loop_count(agent: &AgentClient, id: &str, tag: &str) -> usize {
    let out = sh(agent, id, tag, "ls -d /sys/block/loop* 2>/dev/null | wc -l").await;
    out.trim().parse().unwrap()
}

/// Polls until the guest has `want` loop devices (unbinding follows the unmount).
async fn wait_loops(sb: &Sandbox, id: &str, want: usize) {
    let agent = sb.agent();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut n = 0;
    loop {
        let got = loop_count(agent, id, &format!("loops{n}")).await;
        if got == want {
            return;
        }
        if Instant::now() > deadline {
            let list = sh(
                agent,
                id,
                "loopdiag",
                "for l in /sys/block/loop*; do echo $l $(cat $l/loop/offset $l/size 2>&1); done",
            )
            .await;
            panic!(
                "the guest has {got} loop devices, want {want}:\n{list}\n--- console ---\n{}",
                sb.vm().console_tail(6000)
            );
        }
        n += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_regions_shared_dir_files_metadata_balloon() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // The pool: region 0 says A, every other region B<i>.
    let pool = d.join("pool.img");
    sparse_file(&pool, POOL_SIZE);
    let root_a = marked_rootfs(d, "A");
    mkfs_region(&pool, region_offset(0), 16, &root_a);
    for i in 1..REGIONS {
        let root = d.join("rootfs-A");
        std::fs::write(root.join("marker"), format!("B{i}")).unwrap();
        mkfs_region(&pool, region_offset(i), 16, &root);
    }
    let used = std::fs::metadata(&pool).unwrap();
    assert!(
        std::os::unix::fs::MetadataExt::blocks(&used) * 512 < POOL_SIZE / 4,
        "the pool is not sparse"
    );
    // A whole-disk ext4 drive for MountBlock.
    let root_d = marked_rootfs(d, "D");
    let data = d.join("data.ext4");
    ember_guest::make_ext4(&root_d, &data, 16).unwrap();
    let shared = d.join("shared");
    std::fs::create_dir_all(shared.join("vol")).unwrap();
    std::fs::write(shared.join("vol/in.txt"), "from host\n").unwrap();

    let state = d.join("state");
    std::fs::create_dir_all(&state).unwrap();
    let mut cfg = SandboxConfig::new("gf-main", &guest(), state);
    cfg.boot_timeout = Duration::from_secs(90);
    cfg.memory_mib = 256;
    cfg.drives = vec![
        Drive {
            id: "pool".into(),
            path: pool.clone(),
            read_only: false,
        },
        Drive {
            id: "data".into(),
            path: data,
            read_only: false,
        },
    ];
    cfg.shared_dir = Some(shared.clone());
    // Without deflate-on-OOM the driver takes inflated pages off MemTotal.
    cfg.balloon = Some(BalloonConfig {
        amount_mib: 16,
        deflate_on_oom: false,
        stats_interval_s: 1,
    });
    let sb = Sandbox::boot(cfg).await.unwrap_or_else(|e| panic!("{e}"));
    let a = sb.agent();
    let pool_serial = sb.guest_serial("pool").unwrap();
    let data_serial = sb.guest_serial("data").unwrap();
    let reg = |i: u64| region(&pool_serial, region_offset(i), REGION_LEN);

    // Metadata set before any container exists is there for the first one.
    a.set_metadata(&json!({"vm": "gf-main", "n": 1}).to_string())
        .await
        .unwrap();

    // Two containers from two regions, both running, each with its own files.
    start_sleeper(a, "ra", reg(0)).await;
    start_sleeper(a, "rb", reg(1)).await;
    assert_eq!(sh(a, "ra", "m", "cat /marker").await, "A");
    assert_eq!(sh(a, "rb", "m", "cat /marker").await, "B1");
    sh(a, "ra", "w", "echo kept > /kept").await;
    assert_eq!(
        exec(a, "rb", "w", &["cat", "/kept"]).await.status,
        1,
        "rb sees ra's filesystem"
    );
    let base = loop_count(a, "ra", "l0").await;
    assert_eq!(base, 2, "one loop device per region container");
    // virtio-blk under a 1 MiB-aligned region takes direct I/O (no second page cache).
    assert_eq!(
        sh(a, "ra", "dio", "cat /sys/block/loop*/loop/dio").await,
        "1\n1\n"
    );

    // 16 containers from 16 regions in one VM, all running at once.
    let ids: Vec<String> = (2..18).map(|i| format!("many{i}")).collect();
    for (i, id) in (2..18).zip(&ids) {
        start_sleeper(a, id, reg(i)).await;
    }
    let boot_id = sh(a, "ra", "b", "cat /proc/sys/kernel/random/boot_id").await;
    for (i, id) in (2..18).zip(&ids) {
        assert_eq!(sh(a, id, "m", "cat /marker").await, format!("B{i}"));
        assert_eq!(
            sh(a, id, "b", "cat /proc/sys/kernel/random/boot_id").await,
            boot_id,
            "{id} runs in another guest"
        );
    }
    assert_eq!(loop_count(a, "ra", "l1").await, 18);
    for id in &ids {
        a.remove_container(id).await.unwrap();
    }
    wait_loops(&sb, "ra", 2).await;

    // 20 containers created and removed one after another leave no loop device.
    let t = Instant::now();
    for n in 0..20 {
        let id = format!("churn{n}");
        start_sleeper(a, &id, reg(18 + n % 2)).await;
        a.remove_container(&id).await.unwrap();
    }
    eprintln!(
        "20 region containers created and removed in {:?}",
        t.elapsed()
    );
    wait_loops(&sb, "ra", 2).await;

    // The shared directory, a read-only bind of it, and files copied in.
    let files = vec![GuestFile {
        path: "/run/ember/files/csh/greeting".into(),
        content: b"copied in\n".to_vec(),
        mode: 0o640,
    }];
    let spec = spec_with_mounts(
        &["sleep", "1000"],
        &[
            bind("/run/ember/shared/vol", "/data", false),
            bind("/run/ember/shared/vol", "/ro", true),
            bind("/run/ember/files/csh/greeting", "/etc/greeting", true),
        ],
    );
    create(a, "csh", reg(19), spec, files).await.unwrap();
    a.start_process("csh", "").await.unwrap();
    assert_eq!(sh(a, "csh", "r", "cat /data/in.txt").await, "from host\n");
    sh(a, "csh", "w", "echo from guest > /data/out.txt").await;
    assert_eq!(
        std::fs::read_to_string(shared.join("vol/out.txt")).unwrap(),
        "from guest\n"
    );
    std::fs::write(shared.join("vol/late.txt"), "written later\n").unwrap();
    assert_eq!(
        sh(a, "csh", "l", "cat /data/late.txt /ro/late.txt").await,
        "written later\nwritten later\n"
    );
    let o = exec(a, "csh", "ro", &["touch", "/ro/nope"]).await;
    assert_ne!(o.status, 0);
    assert!(o.stderr.contains("Read-only file system"), "{}", o.stderr);
    assert!(!shared.join("vol/nope").exists());
    assert_eq!(
        sh(a, "csh", "f", "cat /etc/greeting; stat -c %a /etc/greeting").await,
        "copied in\n640\n"
    );

    // Metadata: in every container, read-only, updated live.
    let md = "cat /run/ember/metadata/metadata.json";
    for id in ["ra", "csh"] {
        let v: serde_json::Value = serde_json::from_str(&sh(a, id, "md1", md).await).unwrap();
        assert_eq!(v, json!({"vm": "gf-main", "n": 1}), "{id}");
    }
    a.set_metadata(&json!({"vm": "gf-main", "n": 2}).to_string())
        .await
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&sh(a, "ra", "md2", md).await).unwrap();
    assert_eq!(v["n"], 2, "the update did not reach a running container");
    let o = exec(
        a,
        "ra",
        "md3",
        &["sh", "-c", "echo {} > /run/ember/metadata/metadata.json"],
    )
    .await;
    assert!(o.stderr.contains("Read-only file system"), "{o:?}");

    // MountBlock: a whole ext4 drive and a region, readable, then unmounted.
    let mb = |serial: &str, offset, length, target: &str| MountBlockRequest {
        device: Some(ember_agent_api::BlockRootfs {
            serial: serial.into(),
            fstype: "ext4".into(),
            offset,
            length,
            read_only: true,
            ..Default::default()
        }),
        target: target.into(),
    };
    a.mount_block(&mb(&data_serial, 0, 0, "/mnt/data"))
        .await
        .unwrap();
    // A region no container uses (two mounts of one filesystem would corrupt it).
    a.mount_block(&mb(
        &pool_serial,
        region_offset(10),
        REGION_LEN,
        "/mnt/region",
    ))
    .await
    .unwrap();
    // ra, rb, csh and the region at /mnt/region (the whole drive needs none), the
    // last one a read-only loop device.
    wait_loops(&sb, "ra", 4).await;
    assert_eq!(
        sh(a, "ra", "ro", "grep -l 1 /sys/block/loop*/ro | wc -l")
            .await
            .trim(),
        "1"
    );
    let spec = spec_with_mounts(
        &["sleep", "1000"],
        &[
            bind("/mnt/data", "/disk", true),
            bind("/mnt/region", "/region", true),
        ],
    );
    create(a, "cmb", reg(18), spec, Vec::new()).await.unwrap();
    a.start_process("cmb", "").await.unwrap();
    assert_eq!(
        sh(a, "cmb", "r", "cat /disk/marker /region/marker").await,
        "DB10"
    );
    a.remove_container("cmb").await.unwrap();
    a.unmount("/mnt/data").await.unwrap();
    a.unmount("/mnt/region").await.unwrap();
    wait_loops(&sb, "ra", 3).await;
    // Unmounted while a container still binds it: the container keeps its view,
    // and the loop device goes once the container is gone.
    a.mount_block(&mb(
        &pool_serial,
        region_offset(11),
        REGION_LEN,
        "/mnt/late",
    ))
    .await
    .unwrap();
    let spec = spec_with_mounts(&["sleep", "1000"], &[bind("/mnt/late", "/late", true)]);
    create(a, "held", reg(18), spec, Vec::new()).await.unwrap();
    a.start_process("held", "").await.unwrap();
    a.unmount("/mnt/late").await.unwrap();
    assert_eq!(sh(a, "held", "r", "cat /late/marker").await, "B11");
    a.remove_container("held").await.unwrap();
    wait_loops(&sb, "ra", 3).await;

    // The balloon: a 64 MiB target reaches the guest driver; statistics flow.
    let vm = sb.vm();
    // The boot target (16 MiB) was taken up by the driver long ago.
    assert_eq!(vm.balloon_config().await.unwrap().amount_mib, 16);
    assert_eq!(vm.balloon_stats().await.unwrap().actual_mib, 16);
    vm.balloon_update(64).await.unwrap();
    assert_eq!(vm.balloon_config().await.unwrap().amount_mib, 64);
    let deadline = Instant::now() + Duration::from_secs(30);
    let stats = loop {
        let s = vm.balloon_stats().await.unwrap();
        if s.actual_mib == 64 && s.total_memory > 0 {
            break s;
        }
        assert!(Instant::now() < deadline, "balloon never got there: {s:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    eprintln!("balloon: {stats:?}");
    assert_eq!((stats.target_mib, stats.target_pages), (64, 64 * 256));
    assert!(stats.free_memory > 0 && stats.free_memory < stats.total_memory);
    assert_eq!(stats.hugetlb_failures, 0, "an unknown statistic is 0");
    let mem_total_kib: u64 = sh(a, "ra", "mem", "grep MemTotal /proc/meminfo")
        .await
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        mem_total_kib < (256 - 48) * 1024,
        "the guest still has {mem_total_kib} KiB"
    );
    vm.balloon_update(0).await.unwrap();
    let e = vm.balloon_update(256).await.unwrap_err();
    assert!(e.to_string().contains("256 MiB"), "{e}");

    // Bad inputs.
    let e = create(
        a,
        "beyond",
        region(&pool_serial, POOL_SIZE - MIB, REGION_LEN),
        spec_with_mounts(&["true"], &[]),
        Vec::new(),
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e}");
    assert!(e.to_string().contains("beyond the end"), "{e}");
    let e = create(
        a,
        "noserial",
        region("no-such-disk", 0, REGION_LEN),
        spec_with_mounts(&["true"], &[]),
        Vec::new(),
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e}");
    let e = a
        .mount_block(&mb("no-such-disk", 0, 0, "/mnt/x"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e}");
    for bad in ["/etc/passwd", "/run/ember/files/../../etc/passwd"] {
        let e = create(
            a,
            "badfile",
            reg(18),
            spec_with_mounts(&["true"], &[]),
            vec![GuestFile {
                path: bad.into(),
                content: b"x".to_vec(),
                mode: 0o644,
            }],
        )
        .await
        .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{bad}: {e}");
    }
    wait_loops(&sb, "ra", 3).await;

    for id in ["ra", "rb", "csh"] {
        a.remove_container(id).await.unwrap();
    }
    common::shutdown(sb).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_shared_dir_or_balloon() {
    let dir = tempfile::tempdir().unwrap();
    let sb = common::boot(dir.path(), "gf-plain", &["c1"]).await;
    let e = sb.vm().balloon_update(16).await.unwrap_err();
    assert!(matches!(e, ember_vmm::Error::NoBalloon), "{e}");
    assert!(sb.vm().balloon_stats().await.is_err());
    // No 9p device: nothing is mounted at the shared directory, so a bind of it fails.
    let a = sb.agent();
    let serial = sb.guest_serial("c1").unwrap();
    let e = create(
        a,
        "nosh",
        ember_agent_api::BlockRootfs {
            serial,
            fstype: "ext4".into(),
            ..Default::default()
        },
        spec_with_mounts(&["true"], &[bind("/run/ember/shared/vol", "/data", false)]),
        Vec::new(),
    )
    .await
    .unwrap_err();
    assert!(e.to_string().contains("/run/ember/shared/vol"), "{e}");
    // The guest's cgroup hierarchy favours dynamic changes: a container start moves
    // processes and enables controllers without waiting for RCU grace periods.
    let serial = sb.guest_serial("c1").unwrap();
    let cgroup = serde_json::json!({
        "destination": "/sys/fs/cgroup",
        "type": "cgroup2",
        "source": "cgroup2",
        "options": ["ro", "nosuid", "noexec", "nodev"],
    });
    create(
        a,
        "cg",
        ember_agent_api::BlockRootfs {
            serial,
            fstype: "ext4".into(),
            ..Default::default()
        },
        spec_with_mounts(&["sleep", "1000"], &[cgroup]),
        Vec::new(),
    )
    .await
    .unwrap_or_else(|e| panic!("create cg: {e}"));
    a.start_process("cg", "").await.unwrap();
    let mounts = sh(a, "cg", "m", "grep cgroup2 /proc/mounts").await;
    assert!(mounts.contains("favordynmods"), "{mounts}");
    common::shutdown(sb).await;
}

/// Throughput of 9p options the agent could mount the shared directory with (a
/// measurement, not a check: `cargo test ... -- --ignored measure_9p`). Each
/// boots a VM with `ember.shared_opts=`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn measure_9p_options() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let root = marked_rootfs(d, "M");
    let img = d.join("m.ext4");
    ember_guest::make_ext4(&root, &img, 16).unwrap();
    let shared = d.join("shared");
    std::fs::create_dir_all(&shared).unwrap();
    for (n, opts) in [
        "trans=virtio,version=9p2000.L,msize=8192,cache=none",
        "trans=virtio,version=9p2000.L,msize=131072,cache=none",
        "trans=virtio,version=9p2000.L,msize=512000,cache=none",
        "trans=virtio,version=9p2000.L,msize=512000,cache=mmap",
    ]
    .iter()
    .enumerate()
    {
        let state = d.join(format!("state{n}"));
        std::fs::create_dir_all(&state).unwrap();
        let mut cfg = SandboxConfig::new(&format!("gf-9p{n}"), &guest(), state);
        cfg.drives = vec![Drive {
            id: "m".into(),
            path: img.clone(),
            read_only: false,
        }];
        cfg.shared_dir = Some(shared.clone());
        cfg.kernel_args = format!("ember.shared_opts={opts}");
        let sb = Sandbox::boot(cfg).await.unwrap_or_else(|e| panic!("{e}"));
        let a = sb.agent();
        let rootfs = ember_agent_api::BlockRootfs {
            serial: sb.guest_serial("m").unwrap(),
            fstype: "ext4".into(),
            ..Default::default()
        };
        let spec = spec_with_mounts(&["sleep", "1000"], &[bind(SHARED, "/s", false)]);
        create(a, "m", rootfs, spec, Vec::new()).await.unwrap();
        a.start_process("m", "").await.unwrap();
        // Milliseconds each step takes, from the guest's uptime.
        let script = "t() { awk '{print int($1*1000)}' /proc/uptime; }; \
             a=$(t); dd if=/dev/zero of=/s/f bs=1M count=64 2>/dev/null; b=$(t); \
             dd if=/s/f of=/dev/null bs=1M 2>/dev/null; c=$(t); \
             dd if=/s/f of=/dev/null bs=4k 2>/dev/null; e=$(t); rm -f /s/f; \
             echo write-1M $((b-a))ms read-1M $((c-b))ms read-4k $((e-c))ms";
        let out = sh(a, "m", "t", script).await;
        let console = sb.vm().console_tail(1 << 16);
        assert!(console.contains(opts), "options not taken:\n{console}");
        eprintln!("{opts}:\n{out}");
        a.remove_container("m").await.unwrap();
        common::shutdown(sb).await;
    }
}

const SHARED: &str = ember_agent_api::SHARED_GUEST_DIR;
