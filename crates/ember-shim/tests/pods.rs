//! Many containers in one microVM under Debian's containerd 1.6: containers whose
//! annotations name the same VM (`io.ember.vm.id`, `aws.firecracker.vm.id`, or a
//! CRI pod) share one shim and one QEMU; the later ones run on regions of the VM's
//! pool drive. An implicit VM goes with its last container and leaves nothing; a
//! VMM killed under them ends every container with 255.

use std::time::{Duration, Instant};

mod common;

use common::*;

const SLEEP: &[&str] = &["sleep", "1000"];

fn boot_id(c: &Containerd, id: &str, exec: &str) -> String {
    c.exec_ok(id, exec, &["cat", "/proc/sys/kernel/random/boot_id"])
        .trim()
        .to_string()
}

fn describe(c: &Containerd, vm: &str) -> ember_vm_api::ember::VmDescription {
    let sock = vm_socket(&c.sock, vm);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let client = ember_vm_api::VmClient::connect(sock.to_str().unwrap())
            .await
            .unwrap_or_else(|e| panic!("connecting to {}: {e}", sock.display()));
        client.describe(vm).await.unwrap()
    })
}

/// The pool file of the one VM of `c`.
fn pool_file(c: &Containerd) -> std::path::PathBuf {
    let pools: Vec<_> = std::fs::read_dir(c.dir.path().join("shim-state"))
        .unwrap()
        .flatten()
        .map(|e| e.path().join("pool"))
        .filter(|p| p.exists())
        .collect();
    assert_eq!(pools.len(), 1, "{pools:?}");
    pools[0].clone()
}

/// The container the one VM of `c` was booted for (its rootfs is a boot drive),
/// if any: a VM restored from a template has every rootfs in its pool.
fn booted_for(c: &Containerd) -> Option<String> {
    let dirs: Vec<String> = std::fs::read_dir(c.dir.path().join("shim-state"))
        .unwrap()
        .flatten()
        .flat_map(|e| {
            std::fs::read_dir(e.path().join("containers"))
                .into_iter()
                .flatten()
        })
        .flatten()
        .filter(|e| e.path().join("rootfs.ext4").exists())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(dirs.len() <= 1, "{dirs:?}");
    dirs.first().cloned()
}

/// Bytes a file holds on disk.
fn allocated(p: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(p).unwrap().blocks() * 512
}

#[test]
fn containers_naming_one_vm_share_it() {
    let c = Containerd::start();
    c.used_vms
        .lock()
        .unwrap()
        .extend(["vmA".to_string(), "pod1".to_string()]);
    c.run_annotated("a1", &["io.ember.vm.id=vmA"], SLEEP);
    // The second container joins the running VM, with a host directory shared
    // read-only after the VM booted.
    let host = c.dir.path().join("hostdir");
    std::fs::create_dir_all(&host).unwrap();
    std::fs::write(host.join("greeting"), "from the host\n").unwrap();
    let mount = format!(
        "type=bind,src={},dst=/host,options=rbind:ro",
        host.display()
    );
    let out = c.try_run_with("a2", &["io.ember.vm.id=vmA"], &["--mount", &mount], SLEEP);
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out.stderr),
        c.shim_logs()
    );
    // A CRI pod: the sandbox container first, then a container of the pod.
    c.run_annotated(
        "p1",
        &[
            "io.kubernetes.cri.container-type=sandbox",
            "io.kubernetes.cri.sandbox-id=pod1",
        ],
        SLEEP,
    );
    c.run_annotated(
        "p2",
        &[
            "io.kubernetes.cri.container-type=container",
            "io.kubernetes.cri.sandbox-id=pod1",
        ],
        SLEEP,
    );
    let vmms = c.vmms();
    assert_eq!(vmms.len(), 2, "one QEMU per VM: {vmms:?}");
    let a = boot_id(&c, "a1", "b1");
    assert_eq!(a, boot_id(&c, "a2", "b2"), "a1 and a2 run in different VMs");
    let p = boot_id(&c, "p1", "b3");
    assert_eq!(p, boot_id(&c, "p2", "b4"), "the pod's containers run apart");
    assert_ne!(a, p, "two VMs answered with one boot id");

    assert_eq!(
        c.exec_ok("a2", "h", &["cat", "/host/greeting"]),
        "from the host\n"
    );
    let out = c.exec("a2", "hw", &["sh", "-c", "echo x > /host/new"]);
    assert!(!out.status.success(), "a read-only share was written");
    assert!(!host.join("new").exists());

    // Each container has its own root filesystem (the second on a pool region).
    c.exec_ok("a2", "w", &["sh", "-c", "echo mine > /only-a2"]);
    let out = c.exec("a1", "r", &["cat", "/only-a2"]);
    assert!(!out.status.success(), "a1 sees a2's rootfs");
    assert_eq!(c.exec_ok("a2", "r2", &["cat", "/only-a2"]), "mine\n");

    let d = describe(&c, "vmA");
    assert_eq!(d.containers, vec!["a1".to_string(), "a2".to_string()]);
    assert_eq!(
        (d.state.as_str(), d.explicit, d.vmm.as_str()),
        ("running", false, "qemu")
    );
    assert!(vmms.contains(&(d.vmm_pid as i32)), "{d:?} vs {vmms:?}");
    assert_eq!(d.shared_fs, "virtio-9p");

    // The VM stays while a container is left.
    c.kill_and_remove("a1");
    assert_eq!(c.exec_ok("a2", "r3", &["cat", "/only-a2"]), "mine\n");
    assert_eq!(describe(&c, "vmA").containers, vec!["a2".to_string()]);
    for id in ["a2", "p1", "p2"] {
        c.kill_and_remove(id);
    }
    c.assert_clean();
}

#[test]
fn sixteen_containers_in_one_vm_then_nothing_left() {
    let c = Containerd::start();
    c.used_vms.lock().unwrap().push("vm16".into());
    let ann = ["aws.firecracker.vm.id=vm16"];
    // All at once: the first boots the VM, the others wait for it and join.
    std::thread::scope(|s| {
        for i in 0..16 {
            let c = &c;
            s.spawn(move || {
                let script = format!("echo {i} > /mark; exec sleep 1000");
                c.run_annotated(&format!("c{i}"), &ann, &["sh", "-c", &script]);
            });
        }
    });
    assert_eq!(c.vmms().len(), 1, "16 containers, one VM");
    let first = boot_id(&c, "c0", "b");
    for i in [1, 7, 15] {
        let id = format!("c{i}");
        assert_eq!(boot_id(&c, &id, "b"), first);
        assert_eq!(c.exec_ok(&id, "m", &["cat", "/mark"]), format!("{i}\n"));
    }
    assert_eq!(describe(&c, "vm16").containers.len(), 16);

    // Into the running VM and into a fresh one (numbers for the benchmarks).
    let time_on = |runtime: &str, id: &str, annotations: &[&str]| {
        c.used_ids.lock().unwrap().push(id.to_string());
        let mut a = vec!["run", "--rm", "--runtime", runtime];
        for an in annotations {
            a.extend_from_slice(&["--annotation", an]);
        }
        a.extend_from_slice(&[IMAGE, id, "true"]);
        let t = Instant::now();
        let out = c.ctr(&a);
        assert!(out.status.success(), "{id}: {}", text(&out.stderr));
        t.elapsed()
    };
    let time = |id: &str, annotations: &[&str]| time_on(RUNTIME, id, annotations);
    let joined: Vec<Duration> = (0..3).map(|i| time(&format!("j{i}"), &ann)).collect();
    let fresh: Vec<Duration> = (0..3).map(|i| time(&format!("f{i}"), &[])).collect();
    eprintln!("ctr run --rm true into the running VM: {joined:?}; into a fresh VM: {fresh:?}");
    if std::path::Path::new("/usr/bin/runc").exists() {
        let runc: Vec<Duration> = (0..3)
            .map(|i| time_on(RUNC, &format!("r{i}"), &[]))
            .collect();
        eprintln!("ctr run --rm true with runc (no VM): {runc:?}");
    }
    assert_eq!(describe(&c, "vm16").containers.len(), 16);

    // The containers after the first live on pool regions: their space comes back
    // as they go (in a booted VM the first one's rootfs is a boot drive of its own).
    let first = describe(&c, "vm16");
    let pool = pool_file(&c);
    assert!(allocated(&pool) > 15 << 20, "{} bytes", allocated(&pool));
    let full = allocated(&pool);
    let booted = booted_for(&c);
    let booted_for = booted.clone().unwrap_or_else(|| "c0".into());
    for i in 0..16 {
        let id = format!("c{i}");
        if id != booted_for {
            c.kill_and_remove(&id);
        }
    }
    if booted.is_some() {
        assert_eq!(allocated(&pool), 0, "released regions still hold space");
    } else {
        // A restored VM's first container lives in the pool too: its region alone.
        let left = allocated(&pool);
        assert!(
            left > 0 && left < full / 8,
            "{left} of {full} bytes still held"
        );
    }
    assert_eq!(describe(&c, "vm16").containers, vec![booted_for.clone()]);
    assert_eq!(first.vmm_pid, describe(&c, "vm16").vmm_pid);
    c.kill_and_remove(&booted_for);
    c.assert_clean();
}

#[test]
fn killing_the_vmm_ends_every_container_with_255() {
    let c = Containerd::start();
    c.used_vms.lock().unwrap().push("doomed".into());
    let events = c.events();
    for id in ["k1", "k2", "k3"] {
        c.run_annotated(id, &["io.ember.vm.id=doomed"], SLEEP);
    }
    let vmms = c.vmms();
    assert_eq!(vmms.len(), 1, "{vmms:?}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(vmms[0]),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    for id in ["k1", "k2", "k3"] {
        c.wait_stopped(id, 20);
    }
    // A container naming the dead VM is refused, and nothing of it stays.
    let out = c.try_run_annotated("late", &["io.ember.vm.id=doomed"], SLEEP);
    assert!(!out.status.success(), "a container joined a dead VM");
    assert!(
        text(&out.stderr).contains("doomed"),
        "{}",
        text(&out.stderr)
    );
    let _ = c.ctr(&["containers", "rm", "late"]);
    for id in ["k1", "k2", "k3"] {
        c.remove(id);
    }
    let log = Containerd::events_seen(events, Duration::from_millis(300));
    for id in ["k1", "k2", "k3"] {
        assert_eq!(exit_statuses(&log, id), vec![255], "{id}:\n{log}");
    }
    c.assert_clean();
}

#[test]
fn a_killed_vm_shim_takes_its_vmm_and_every_container_along() {
    let c = Containerd::start();
    c.used_vms.lock().unwrap().push("orphans".into());
    for id in ["o1", "o2"] {
        c.run_annotated(id, &["io.ember.vm.id=orphans"], SLEEP);
    }
    let sock = c.sock.display().to_string();
    let shims = pids_matching(&["containerd-shim-ember-v2", &sock, "serve"]);
    assert_eq!(shims.len(), 1, "one shim for the VM: {shims:?}");
    assert_eq!(c.vmms().len(), 1);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(shims[0]),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let t = Instant::now();
    while !c.vmms().is_empty() {
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "the VMM outlived its shim"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // containerd runs `shim delete` for each container of the dead shim.
    let t = Instant::now();
    loop {
        for id in ["o1", "o2"] {
            let _ = c.ctr(&["task", "delete", "-f", id]);
            let _ = c.ctr(&["containers", "rm", id]);
        }
        let left = text(&c.ctr(&["containers", "ls", "-q"]).stdout);
        if !left.contains("o1") && !left.contains("o2") {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "containers stayed: {left}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    c.assert_clean();
}

#[test]
fn back_to_back_runs_naming_one_vm() {
    // Each run's VM goes with it; the next run's `start` may still find the shim
    // lingering (it boots the VM again) or a new one: both work, nothing is left.
    let c = Containerd::start();
    c.used_vms.lock().unwrap().push("again".into());
    for i in 0..4 {
        let id = format!("r{i}");
        c.used_ids.lock().unwrap().push(id.clone());
        let out = c.ctr(&[
            "run",
            "--rm",
            "--runtime",
            RUNTIME,
            "--annotation",
            "io.ember.vm.id=again",
            IMAGE,
            &id,
            "sh",
            "-c",
            &format!("echo {i}"),
        ]);
        assert!(
            out.status.success(),
            "{id}: {}\n{}",
            text(&out.stderr),
            c.shim_logs()
        );
        assert_eq!(text(&out.stdout), format!("{i}\n"));
    }
    c.assert_clean();
}
