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

#[test]
fn containers_naming_one_vm_share_it() {
    let c = Containerd::start();
    c.used_vms
        .lock()
        .unwrap()
        .extend(["vmA".to_string(), "pod1".to_string()]);
    c.run_annotated("a1", &["io.ember.vm.id=vmA"], SLEEP);
    c.run_annotated("a2", &["io.ember.vm.id=vmA"], SLEEP);
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
    for i in 0..16 {
        let script = format!("echo {i} > /mark; exec sleep 1000");
        c.run_annotated(&format!("c{i}"), &ann, &["sh", "-c", &script]);
    }
    assert_eq!(c.vmms().len(), 1, "16 containers, one VM");
    let first = boot_id(&c, "c0", "b");
    for i in [1, 7, 15] {
        let id = format!("c{i}");
        assert_eq!(boot_id(&c, &id, "b"), first);
        assert_eq!(c.exec_ok(&id, "m", &["cat", "/mark"]), format!("{i}\n"));
    }
    assert_eq!(describe(&c, "vm16").containers.len(), 16);

    // Into the running VM and into a fresh one (numbers for the benchmarks).
    let time = |id: &str, annotations: &[&str]| {
        c.used_ids.lock().unwrap().push(id.to_string());
        let mut a = vec!["run", "--rm", "--runtime", RUNTIME];
        for an in annotations {
            a.extend_from_slice(&["--annotation", an]);
        }
        a.extend_from_slice(&[IMAGE, id, "true"]);
        let t = Instant::now();
        let out = c.ctr(&a);
        assert!(out.status.success(), "{id}: {}", text(&out.stderr));
        t.elapsed()
    };
    let joined: Vec<Duration> = (0..3).map(|i| time(&format!("j{i}"), &ann)).collect();
    let fresh: Vec<Duration> = (0..3).map(|i| time(&format!("f{i}"), &[])).collect();
    eprintln!("ctr run --rm true into the running VM: {joined:?}; into a fresh VM: {fresh:?}");
    assert_eq!(describe(&c, "vm16").containers.len(), 16);

    for i in 0..16 {
        c.kill_and_remove(&format!("c{i}"));
    }
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
