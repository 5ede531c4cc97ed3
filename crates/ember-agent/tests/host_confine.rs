//! The OCI confinement the agent applies (see `common`): seccomp from the spec
//! (init and exec processes), the device cgroup (BPF) with its defaults, the spec's
//! rules and the devices no spec may open, device nodes shipped in a rootfs,
//! masked and read-only paths, rlimits, sysctls, and what is refused at Create.
//! Against a booted guest with `EMBER_AGENT_TEST_VM_SOCK` too (see `common`).

#![deny(clippy::undocumented_unsafe_blocks)]

#[macro_use]
mod common;

use common::*;
use ember_agent_api::*;
use serde_json::{json, Value};

const EPERM_MSG: &str = "Operation not permitted";

fn with_caps(mut s: Value, caps: &[&str]) -> Value {
    for set in ["bounding", "effective", "permitted"] {
        let list = s["process"]["capabilities"][set].as_array_mut().unwrap();
        for c in caps {
            list.push(json!(c));
        }
    }
    s
}

/// `sh -c script` in a fresh /tmp (the host harness shares one rootfs).
fn sh(script: &str) -> Value {
    let script = format!("rm -rf /tmp/* 2>/dev/null; {script}");
    spec(&["sh", "-c", &script], false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seccomp_profiles() {
    require_root!();
    let h = Harness::start("seccomp").await;

    // mkdir denied with the profile's errno, other calls allowed; the same filter
    // holds for exec processes.
    let mut s = sh("grep Seccomp: /proc/self/status; mkdir /tmp/a; echo rc=$?; touch /tmp/ready; exec sleep 100");
    s["linux"]["seccomp"] = json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "syscalls": [
            {"names": ["mkdir", "mkdirat", "not_a_syscall"], "action": "SCMP_ACT_ERRNO"},
            {"names": ["rmdir"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13}
        ]
    });
    h.try_create("sc1", s, StdioConfig::default())
        .await
        .unwrap();
    let out = tokio::spawn(read_all(
        h.client.clone(),
        "sc1".into(),
        "".into(),
        OutputStream::Stdout,
    ));
    let err = tokio::spawn(read_all(
        h.client.clone(),
        "sc1".into(),
        "".into(),
        OutputStream::Stderr,
    ));
    h.client.start_process("sc1", "").await.unwrap();
    let (st, eout, eerr) = h
        .exec(
            "sc1",
            "e1",
            &[
                "sh",
                "-c",
                "i=0; while [ ! -e /tmp/ready ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done; \
                 mkdir /tmp/b || rmdir /tmp || echo no",
            ],
        )
        .await;
    assert_eq!(st, 0, "{eout} {eerr}");
    assert_eq!(eout, "no\n", "{eerr}");
    assert!(eerr.contains(EPERM_MSG), "{eerr}");
    assert!(eerr.contains("Permission denied"), "errnoRet 13: {eerr}");
    h.client.signal_process("sc1", "", 9, false).await.unwrap();
    h.client.wait_process("sc1", "").await.unwrap();
    let out = String::from_utf8(out.await.unwrap()).unwrap();
    let err = String::from_utf8(err.await.unwrap()).unwrap();
    assert!(out.contains("Seccomp:\t2"), "{out}");
    assert!(out.contains("rc=1"), "{out}");
    assert!(err.contains(EPERM_MSG), "{err}");
    h.client.remove_container("sc1").await.unwrap();

    // Without no_new_privs the filter is loaded while the process still has
    // CAP_SYS_ADMIN, and a default errno applies to what no rule allows.
    let mut s = sh("mkdir /tmp/c; echo rc=$?");
    s["process"]["noNewPrivileges"] = json!(false);
    s["linux"]["seccomp"] = json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_ERRNO", "errnoRet": 30}]
    });
    let (st, out, err) = h.run_spec("sc2", s).await;
    assert_eq!(st, 0, "{err}");
    assert!(out.contains("rc=1"), "{out}");
    assert!(err.contains("Read-only file system"), "{err}");

    // A profile the guest cannot honour fails the Create, clearly.
    let mut s = sh("true");
    s["linux"]["seccomp"] = json!({"defaultAction": "SCMP_ACT_NOTIFY"});
    let e = h
        .try_create("sc3", s, StdioConfig::default())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("SCMP_ACT_NOTIFY"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_cgroup_rules() {
    require_root!();
    let h = Harness::start("devices").await;
    if !h.has_cgroups() {
        eprintln!("SKIPPED: no cgroup v2");
        return;
    }
    // A rootfs shipping device nodes: opening them is refused, whatever the mount.
    if h.vm.is_none() {
        for (name, kind, major, minor) in [
            ("kmsg", libc::S_IFCHR, 1, 11),
            ("disk", libc::S_IFBLK, 7, 0),
            ("nullcopy", libc::S_IFCHR, 1, 3),
        ] {
            nix::sys::stat::mknod(
                &h.rootfs.join(name),
                nix::sys::stat::SFlag::from_bits_retain(kind),
                nix::sys::stat::Mode::from_bits_retain(0o666),
                libc::makedev(major, minor),
            )
            .unwrap();
        }
        let (st, out, err) = h
            .run_spec(
                "dv0",
                sh("echo x > /nullcopy && echo null-ok; \
                    dd if=/kmsg of=/dev/null count=1 || echo kmsg-refused; \
                    dd if=/disk of=/dev/null count=1 || echo disk-refused"),
            )
            .await;
        assert_eq!(st, 0, "{err}");
        assert_eq!(out, "null-ok\nkmsg-refused\ndisk-refused\n", "{err}");
        assert!(err.contains(EPERM_MSG), "{err}");
    }

    // No rules in the spec: the default devices only; mknod of anything else
    // fails even with CAP_MKNOD.
    let script = "echo hi > /dev/null && head -c 4 /dev/zero | wc -c; \
        mknod /tmp/kmsg c 1 11 || echo no-kmsg; \
        mknod /tmp/ttyS0 c 4 64 || echo no-ttyS0; \
        mknod /tmp/vda b 254 0 || echo no-vda; \
        mknod /tmp/null c 1 3 && echo null-made";
    let (st, out, err) = h
        .run_spec("dv1", with_caps(sh(script), &["CAP_MKNOD"]))
        .await;
    assert_eq!(st, 0, "{err}");
    assert_eq!(out, "4\nno-kmsg\nno-ttyS0\nno-vda\nnull-made\n", "{err}");

    // containerd's rules: deny everything, allow a list.
    let mut s = with_caps(sh(script), &["CAP_MKNOD"]);
    s["linux"]["resources"] = json!({"devices": [
        {"allow": false, "access": "rwm"},
        {"allow": true, "type": "c", "major": 1, "minor": 3, "access": "rwm"},
        {"allow": true, "type": "c", "major": 1, "minor": 5, "access": "rwm"}
    ]});
    let (st, out, err) = h.run_spec("dv2", s).await;
    assert_eq!(st, 0, "{err}");
    assert_eq!(out, "4\nno-kmsg\nno-ttyS0\nno-vda\nnull-made\n", "{err}");

    // Everything allowed (a privileged spec): still never the guest's consoles,
    // nor the agent's virtio-serial port or hvc.
    let mut s = with_caps(
        sh("mknod /tmp/kmsg c 1 11 && echo kmsg-made; \
            mknod /tmp/ttyS0 c 4 64 || echo no-ttyS0; \
            mknod /tmp/console c 5 1 || echo no-console; \
            mknod /tmp/hvc c 229 0 || echo no-hvc; \
            m=$(awk '$2 == \"virtio-portsdev\" {print $1}' /proc/devices | head -n 1); \
            [ -z \"$m\" ] || mknod /tmp/port c $m 1 || echo no-port"),
        &["CAP_MKNOD"],
    );
    s["linux"]["resources"] = json!({"devices": [{"allow": true, "access": "rwm"}]});
    let (st, out, err) = h.run_spec("dv3", s).await;
    assert_eq!(st, 0, "{err}");
    assert!(
        out.starts_with("kmsg-made\nno-ttyS0\nno-console\nno-hvc\n"),
        "{out} {err}"
    );
    if h.vm.is_some() {
        assert!(out.ends_with("no-port\n"), "{out}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_rlimits_and_sysctls() {
    require_root!();
    let h = Harness::start("paths").await;
    let mut s = sh("for f in /proc/kcore /proc/keys /proc/timer_list; do \
           [ -e $f ] && echo \"$f $(wc -c < $f)\"; done; \
         for d in /proc/acpi /proc/scsi /sys/firmware; do \
           [ -e $d ] && echo \"$d $(ls $d | wc -l)\"; done; \
         echo 1 > /proc/sys/kernel/domainname || echo ro-sys; \
         ulimit -Sn; ulimit -Hn; cat /proc/sys/kernel/shmmni; \
         cat /proc/self/oom_score_adj");
    s["process"]["rlimits"] = json!([{"type": "RLIMIT_NOFILE", "soft": 123, "hard": 456}]);
    s["process"]["oomScoreAdj"] = json!(500);
    s["linux"]["sysctl"] = json!({"kernel.shmmni": "777"});
    s["linux"]["maskedPaths"] = json!([
        "/proc/acpi",
        "/proc/kcore",
        "/proc/keys",
        "/proc/latency_stats",
        "/proc/timer_list",
        "/proc/timer_stats",
        "/proc/sched_debug",
        "/sys/firmware",
        "/proc/scsi"
    ]);
    let (st, out, err) = h.run_spec("pa1", s).await;
    assert_eq!(st, 0, "{err}");
    let (masked, rest): (Vec<&str>, Vec<&str>) = out.lines().partition(|l| l.starts_with('/'));
    assert!(!masked.is_empty(), "{out}");
    for l in masked {
        assert!(l.ends_with(" 0"), "not masked: {l}");
    }
    assert_eq!(rest, ["ro-sys", "123", "456", "777", "500"], "{err}");

    // What the guest cannot honour is refused at Create.
    for (id, field, value, want) in [
        (
            "pa2",
            "sysctl",
            json!({"kernel.panic": "1"}),
            "not namespaced",
        ),
        (
            "pa3",
            "sysctl",
            json!({"net.ipv4.ip_forward": "1"}),
            "Network",
        ),
        (
            "pa4",
            "uidMappings",
            json!([{"containerID": 0, "hostID": 1000, "size": 10}]),
            "user namespaces",
        ),
    ] {
        let mut s = sh("true");
        s["linux"][field] = value;
        let e = h
            .try_create(id, s, StdioConfig::default())
            .await
            .unwrap_err();
        assert!(e.to_string().contains(want), "{id}: {e}");
    }
    let mut s = sh("true");
    s["process"]["rlimits"] = json!([{"type": "RLIMIT_NOFILE", "soft": 9, "hard": 8}]);
    let e = h
        .try_create("pa5", s, StdioConfig::default())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("above hard"), "{e}");
}
