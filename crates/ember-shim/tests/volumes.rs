//! Host bind mounts (`ctr run --mount type=bind`, `--net-host`'s `/etc/hosts`) under
//! Debian's containerd 1.6: the shim shares them with the microVM through its
//! virtio-9p directory, read-only where asked on both sides, and leaves no mount
//! behind.

use std::path::Path;

mod common;

use common::*;

/// Mount points under the shim's state directory in this mount namespace.
fn shim_state_mounts(c: &Containerd) -> Vec<String> {
    let state = c.dir.path().join("shim-state").display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.split(' ').nth(4).is_some_and(|p| p.starts_with(&state)))
        .map(str::to_string)
        .collect()
}

fn assert_nothing_left(c: &Containerd) {
    c.assert_clean();
    let left = shim_state_mounts(c);
    assert!(left.is_empty(), "mounts left: {left:#?}");
}

fn bind(src: &Path, dst: &str, options: &str) -> String {
    format!(
        "type=bind,src={},dst={dst},options={options}",
        src.display()
    )
}

/// `ctr tasks exec` of `sh -c script`; returns (exit code, stdout, stderr).
fn sh(c: &Containerd, id: &str, exec_id: &str, script: &str) -> (i32, String, String) {
    let out = c.exec(id, exec_id, &["sh", "-c", script]);
    (
        out.status.code().unwrap_or(-1),
        text(&out.stdout),
        text(&out.stderr),
    )
}

#[test]
fn bind_mounts_read_write_read_only_and_single_files() {
    let c = Containerd::start();
    let host = tempfile::tempdir().unwrap();
    let rw = host.path().join("rw");
    let ro = host.path().join("ro");
    std::fs::create_dir(&rw).unwrap();
    std::fs::create_dir(&ro).unwrap();
    std::fs::write(rw.join("data"), "host data\n").unwrap();
    std::fs::write(ro.join("data"), "read only\n").unwrap();
    let file = host.path().join("hosts");
    std::fs::write(&file, "10.1.2.3 volume-test\n").unwrap();
    // A source on another filesystem than the shared directory (a tmpfs).
    let tmpfs = tempfile::tempdir_in("/dev/shm").unwrap();
    std::fs::write(tmpfs.path().join("t"), "on tmpfs\n").unwrap();

    let mounts = [
        bind(tmpfs.path(), "/tmpfs", "rbind:rw"),
        bind(&rw, "/rw", "rbind:rw"),
        bind(&ro, "/ro", "rbind:ro"),
        bind(&file, "/etc/vol-hosts", "rbind:ro"),
    ];
    let mut args: Vec<&str> = vec!["run", "-d", "--runtime", RUNTIME];
    for m in &mounts {
        args.extend(["--mount", m]);
    }
    args.extend([IMAGE, "vols", "sleep", "1000"]);
    c.used_ids.lock().unwrap().push("vols".into());
    let out = c.ctr(&args);
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out.stderr),
        c.shim_logs()
    );

    // Host data read inside; a write inside seen on the host; a host write inside.
    let (code, stdout, stderr) = sh(&c, "vols", "e1", "cat /rw/data");
    assert_eq!((code, stdout.as_str()), (0, "host data\n"), "{stderr}");
    let (code, _, stderr) = sh(&c, "vols", "e2", "echo from the guest > /rw/written");
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        std::fs::read_to_string(rw.join("written")).unwrap(),
        "from the guest\n"
    );
    std::fs::write(rw.join("later"), "from the host\n").unwrap();
    let (code, stdout, stderr) = sh(&c, "vols", "e3", "cat /rw/later");
    assert_eq!((code, stdout.as_str()), (0, "from the host\n"), "{stderr}");

    // Read-only: the write fails inside and the host file is unchanged.
    let (code, _, stderr) = sh(&c, "vols", "e4", "echo changed > /ro/data");
    assert_ne!(code, 0);
    assert!(stderr.contains("Read-only file system"), "{stderr}");
    let (code, _, stderr) = sh(&c, "vols", "e5", "touch /ro/new");
    assert_ne!(code, 0);
    assert!(stderr.contains("Read-only file system"), "{stderr}");
    assert_eq!(
        std::fs::read_to_string(ro.join("data")).unwrap(),
        "read only\n"
    );
    assert!(!ro.join("new").exists());
    let (code, stdout, _) = sh(&c, "vols", "e6", "cat /ro/data");
    assert_eq!((code, stdout.as_str()), (0, "read only\n"));

    let (code, stdout, stderr) = sh(&c, "vols", "e8", "cat /tmpfs/t; echo back > /tmpfs/b");
    assert_eq!((code, stdout.as_str()), (0, "on tmpfs\n"), "{stderr}");
    assert_eq!(
        std::fs::read_to_string(tmpfs.path().join("b")).unwrap(),
        "back\n"
    );

    // A single file, as dockerd and CRI bind /etc/hosts.
    let (code, stdout, stderr) = sh(&c, "vols", "e7", "cat /etc/vol-hosts");
    assert_eq!(
        (code, stdout.as_str()),
        (0, "10.1.2.3 volume-test\n"),
        "{stderr}"
    );

    // The shares live under the shim's state while the container runs, the
    // read-only ones read-only on the host as well.
    let shares = shim_state_mounts(&c);
    assert!(shares.len() >= 5, "{shares:#?}");
    let ro_share = shares
        .iter()
        // Field 4 is the mount's root within its filesystem: the bind's source.
        .find(|l| l.split(' ').nth(3) == ro.to_str())
        .unwrap_or_else(|| panic!("no share of {}: {shares:#?}", ro.display()));
    let ro_share_opts = ro_share.split(' ').nth(5).unwrap();
    assert!(ro_share_opts.split(',').any(|o| o == "ro"), "{ro_share}");
    // Sources on several filesystems keep distinct file ids in the guest (an
    // unjailed QEMU remaps them; a jailed one's file server cannot: docs/security.md).
    for e in std::fs::read_dir(c.dir.path().join("shim-state"))
        .unwrap()
        .flatten()
    {
        if e.path()
            .join("vm")
            .join(ember_vmm::jail::RECORD_FILE)
            .exists()
        {
            continue;
        }
        let log = std::fs::read_to_string(e.path().join("vm/vmm.log")).unwrap_or_default();
        assert!(!log.contains("Multiple devices"), "{log}");
    }
    c.kill_and_remove("vols");
    assert_nothing_left(&c);
    // The host's data is all there after the container went.
    assert_eq!(
        std::fs::read_to_string(rw.join("data")).unwrap(),
        "host data\n"
    );
    assert_eq!(
        std::fs::read_to_string(rw.join("written")).unwrap(),
        "from the guest\n"
    );
    assert_eq!(
        std::fs::read_to_string(ro.join("data")).unwrap(),
        "read only\n"
    );
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        "10.1.2.3 volume-test\n"
    );
}

#[test]
fn missing_source_fails_cleanly_and_net_host_gets_the_host_files() {
    let c = Containerd::start();
    let host = tempfile::tempdir().unwrap();
    let missing = host.path().join("no-such-volume");
    let m = bind(&missing, "/vol", "rbind:rw");
    c.used_ids.lock().unwrap().push("missing".into());
    let out = c.ctr(&[
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        "--mount",
        &m,
        IMAGE,
        "missing",
        "true",
    ]);
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(&missing.display().to_string()),
        "ctr's error does not name the path: {stderr}"
    );
    eprintln!("ctr with a missing source: {}", stderr.trim());
    // ctr run --rm leaves the container record of a failed task behind.
    let _ = c.ctr(&["containers", "rm", "missing"]);
    assert_nothing_left(&c);

    // --net-host binds the host's /etc/hosts and /etc/resolv.conf into the spec.
    let mut args = vec!["run", "--rm", "--net-host", "--runtime", RUNTIME, IMAGE];
    args.extend([
        "nethost",
        "sh",
        "-c",
        "cat /etc/hosts; echo ---; cat /etc/resolv.conf",
    ]);
    c.used_ids.lock().unwrap().push("nethost".into());
    let out = c.ctr(&args);
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out.stderr),
        c.shim_logs()
    );
    let host_hosts = std::fs::read_to_string("/etc/hosts").unwrap();
    let host_resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    assert_eq!(text(&out.stdout), format!("{host_hosts}---\n{host_resolv}"));
    assert_nothing_left(&c);
}

/// Seconds in busybox `time`'s "real\t0m 1.23s" line.
fn real_seconds(stderr: &str) -> f64 {
    let line = stderr
        .lines()
        .find(|l| l.starts_with("real"))
        .unwrap_or_else(|| panic!("no time in {stderr:?}"));
    let mut parts = line.split_whitespace().skip(1);
    let min: f64 = parts
        .next()
        .and_then(|m| m.strip_suffix('m'))
        .and_then(|m| m.parse().ok())
        .unwrap_or_else(|| panic!("{line:?}"));
    let sec: f64 = parts
        .next()
        .and_then(|s| s.strip_suffix('s'))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{line:?}"));
    min * 60.0 + sec
}

/// Throughput of 64 MiB reads and writes: through the VM's 9p share, on the
/// container's own rootfs (reads past the guest's page cache with O_DIRECT, and
/// from it), and with runc on the host. Each timing moves the 64 MiB `PASSES` times
/// in a row (busybox `time` counts in hundredths of a second); writes end each pass
/// with an fsync. Run by scripts/bench-volumes.sh; prints `BENCH` lines.
#[test]
#[ignore = "benchmark: scripts/bench-volumes.sh"]
fn bench_volume_throughput() {
    const PASSES: usize = 8;
    const MIB: f64 = 64.0 * PASSES as f64;
    let runs = 3;
    let c = Containerd::start();
    let host = tempfile::tempdir().unwrap();
    let data: Vec<u8> = (0..64u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    std::fs::write(host.path().join("big"), &data).unwrap();
    let m = bind(host.path(), "/vol", "rbind:rw");
    let report = |what: &str, secs: &[f64]| {
        let best = secs.iter().cloned().fold(f64::INFINITY, f64::min);
        let mut sorted = secs.to_vec();
        sorted.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let median = sorted[sorted.len() / 2];
        println!(
            "BENCH {what:<36} median {:>6.0} MiB/s  best {:>6.0} MiB/s  ({} runs of {PASSES}x64 MiB: {secs:?} s)",
            MIB / median,
            MIB / best,
            secs.len()
        );
    };
    // PASSES runs of dd, each checked to have moved all 64 MiB.
    let timed = |dd_args: &str| {
        format!(
            "/bin/busybox time sh -c 'for i in $(seq {PASSES}); do \
             dd {dd_args} bs=1M 2>&1 | grep -q \"^64+0 records out\" || exit 1; done'"
        )
    };
    let read_share = timed("if=/vol/big of=/dev/null");
    let write_share = timed("if=/dev/zero of=/vol/w count=64 conv=fsync");

    // runc: the host's own reads and writes of the same directory.
    for (what, script) in [
        ("runc, read host bind mount", &read_share),
        ("runc, write host bind mount", &write_share),
    ] {
        let mut secs = Vec::new();
        for i in 0..runs {
            let id = format!("runc{i}");
            let out = c.ctr(&[
                "run",
                "--rm",
                "--runtime",
                RUNC,
                "--mount",
                &m,
                IMAGE,
                &id,
                "sh",
                "-c",
                script,
            ]);
            assert!(out.status.success(), "{}", text(&out.stderr));
            secs.push(real_seconds(&text(&out.stderr)));
        }
        report(what, &secs);
    }

    c.used_ids.lock().unwrap().push("bench".into());
    let out = c.ctr(&[
        "run",
        "-d",
        "--runtime",
        RUNTIME,
        "--mount",
        &m,
        IMAGE,
        "bench",
        "sleep",
        "1000",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let (code, stdout, stderr) = sh(&c, "bench", "sum", "sha256sum /vol/big");
    assert_eq!(code, 0, "{stderr}");
    let want = {
        use sha2::{Digest, Sha256};
        let d = Sha256::digest(&data);
        d.iter().map(|b| format!("{b:02x}")).collect::<String>()
    };
    assert!(stdout.starts_with(&want), "{stdout} != {want}");
    let (code, _, stderr) = sh(&c, "bench", "copy", "cp /vol/big /big && sync");
    assert_eq!(code, 0, "{stderr}");

    let cases = [
        ("ember TCG, read 9p share", read_share.clone()),
        (
            "ember TCG, read rootfs O_DIRECT",
            timed("if=/big of=/dev/null iflag=direct"),
        ),
        (
            "ember TCG, read rootfs page cache",
            timed("if=/big of=/dev/null"),
        ),
        ("ember TCG, write 9p share", write_share.clone()),
        (
            "ember TCG, write rootfs",
            timed("if=/dev/zero of=/w count=64 conv=fsync"),
        ),
    ];
    for (n, (what, script)) in cases.iter().enumerate() {
        let mut secs = Vec::new();
        for i in 0..runs {
            let (code, _, stderr) = sh(&c, "bench", &format!("b{n}-{i}"), script);
            assert_eq!(code, 0, "{stderr}");
            secs.push(real_seconds(&stderr));
        }
        report(what, &secs);
    }
    c.kill_and_remove("bench");
    assert_nothing_left(&c);
}

#[test]
fn a_killed_shim_leaves_no_mounts_and_the_host_data() {
    let c = Containerd::start();
    let host = tempfile::tempdir().unwrap();
    std::fs::write(host.path().join("data"), "keep me\n").unwrap();
    let m = bind(host.path(), "/vol", "rbind:rw");
    c.used_ids.lock().unwrap().push("victim".into());
    let out = c.ctr(&[
        "run",
        "-d",
        "--runtime",
        RUNTIME,
        "--mount",
        &m,
        IMAGE,
        "victim",
        "sleep",
        "1000",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(!shim_state_mounts(&c).is_empty());
    let sock = c.sock.display().to_string();
    let shims = pids_matching(&["containerd-shim-ember-v2", &sock, "serve"]);
    assert_eq!(shims.len(), 1, "{shims:?}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(shims[0]),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    // containerd sees its shim gone and runs the shim's delete action, which takes
    // the shares down before it removes the state directory.
    let t = std::time::Instant::now();
    while c.task_status("victim").is_some_and(|s| s != "STOPPED") {
        assert!(
            t.elapsed() < std::time::Duration::from_secs(30),
            "the task outlived its shim"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let _ = c.ctr(&["tasks", "delete", "victim"]);
    let out = c.ctr(&["containers", "rm", "victim"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // Removing the state directory through a live share would delete this.
    assert_eq!(
        std::fs::read_to_string(host.path().join("data"))
            .ok()
            .as_deref(),
        Some("keep me\n")
    );
    assert_nothing_left(&c);
}

/// Mount points under the shim's state whose root (the bind's source) is `src`.
fn shares_of(c: &Containerd, src: &Path) -> usize {
    shim_state_mounts(c)
        .iter()
        .filter(|l| l.split(' ').nth(3) == src.to_str())
        .count()
}

#[test]
fn containers_of_one_vm_release_their_own_shares() {
    let c = Containerd::start();
    let host = tempfile::tempdir().unwrap();
    let (a, b) = (host.path().join("a"), host.path().join("b"));
    for (d, s) in [(&a, "A\n"), (&b, "B\n")] {
        std::fs::create_dir(d).unwrap();
        std::fs::write(d.join("data"), s).unwrap();
    }
    let run = |id: &str, src: &Path| {
        c.used_ids.lock().unwrap().push(id.into());
        let m = bind(src, "/vol", "rbind:rw");
        let out = c.ctr(&[
            "run",
            "-d",
            "--runtime",
            RUNTIME,
            "--annotation",
            "io.ember.vm.id=volvm",
            "--mount",
            &m,
            IMAGE,
            id,
            "sleep",
            "1000",
        ]);
        assert!(
            out.status.success(),
            "{id}: {}\n{}",
            text(&out.stderr),
            c.shim_logs()
        );
    };
    run("first", &a);
    run("second", &b);
    assert_eq!(
        pids_matching(&["qemu-system", &c.dir.path().display().to_string()]).len(),
        1,
        "both containers in one VM"
    );
    assert_eq!((shares_of(&c, &a), shares_of(&c, &b)), (1, 1));
    let (code, stdout, _) = sh(&c, "second", "e1", "cat /vol/data");
    assert_eq!((code, stdout.as_str()), (0, "B\n"));

    c.kill_and_remove("first");
    // The first container's share went with it; the second's still serves.
    assert_eq!((shares_of(&c, &a), shares_of(&c, &b)), (0, 1));
    let (code, stdout, stderr) = sh(&c, "second", "e2", "cat /vol/data; echo more > /vol/more");
    assert_eq!((code, stdout.as_str()), (0, "B\n"), "{stderr}");
    assert_eq!(std::fs::read_to_string(b.join("more")).unwrap(), "more\n");

    c.kill_and_remove("second");
    assert_nothing_left(&c);
    assert_eq!(std::fs::read_to_string(a.join("data")).unwrap(), "A\n");
}
