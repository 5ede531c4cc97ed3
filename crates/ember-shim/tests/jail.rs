//! The VMM of a microVM task under Debian's containerd 1.6 runs jailed by default:
//! its own uid, QEMU's seccomp filter, no_new_privs, no capabilities, a root of its
//! own, a cgroup with a memory limit; its console and VMM log are capped at the
//! runtime configuration's `log_max_bytes`. A shim killed with SIGKILL leaves a jail
//! that the delete containerd runs next removes (directory, cgroup). `[jailer]
//! enabled = false` runs the VMM unconfined again.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

mod common;

use common::*;
use ember_vmm::jail::{memory_limit_of, JailRecord, RECORD_FILE};

fn status_field(pid: i32, key: &str) -> String {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}:")))
        .unwrap_or_else(|| panic!("{key} missing in /proc/{pid}/status"))
        .trim()
        .to_string()
}

/// The jail records of this containerd's VMs.
fn jail_records(c: &Containerd) -> Vec<(PathBuf, JailRecord)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(c.dir.path().join("shim-state"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let p = e.path().join("vm").join(RECORD_FILE);
        if let Ok(b) = std::fs::read(&p) {
            out.push((p, serde_json::from_slice(&b).unwrap()));
        }
    }
    out
}

fn append_runtime_config(c: &Containerd, text: &str) {
    let p = c.dir.path().join("runtime.toml");
    let mut cfg = std::fs::read_to_string(&p).unwrap();
    cfg.push_str(text);
    std::fs::write(&p, cfg).unwrap();
}

#[test]
fn the_vmm_of_a_task_is_jailed_and_a_killed_shim_leaves_no_jail() {
    let c = Containerd::start();
    // Read by each shim as it starts: a small cap, so the guest's boot messages
    // (kernel at loglevel 8) rotate the console; a booted guest, not a clone
    // (which prints no boot messages).
    append_runtime_config(
        &c,
        "log_max_bytes = 8192\nkernel_args = \"loglevel=8\"\ntemplates = false\n",
    );
    c.used_ids.lock().unwrap().push("jailed".into());
    c.run_detached("jailed", &["sleep", "1000"]);
    let vmms = c.vmms();
    assert_eq!(vmms.len(), 1, "{vmms:?}");
    let pid = vmms[0];
    let records = jail_records(&c);
    assert_eq!(records.len(), 1, "{records:?}");
    let (record_path, jail) = records[0].clone();
    assert!(jail.uid >= 200_000, "uid {}", jail.uid);
    let uids = status_field(pid, "Uid");
    assert!(
        uids.split_whitespace().all(|u| u == jail.uid.to_string()),
        "{uids}"
    );
    assert_eq!(status_field(pid, "Seccomp"), "2");
    assert_eq!(status_field(pid, "NoNewPrivs"), "1");
    assert_eq!(status_field(pid, "CapEff"), "0000000000000000");
    assert_eq!(status_field(pid, "CapBnd"), "0000000000000000");
    use std::os::unix::fs::MetadataExt;
    let id = |p: &Path| {
        let m = std::fs::metadata(p).unwrap();
        (m.dev(), m.ino())
    };
    let root = PathBuf::from(format!("/proc/{pid}/root/"));
    assert_ne!(id(&root), id(Path::new("/")), "/proc/{pid}/root is /");
    assert_eq!(id(&root), id(&jail.dir.join("root")));
    // Guest memory (256 MiB) plus the default overhead.
    let want = (256 + ember_vmm::jail::DEFAULT_MEMORY_OVERHEAD_MIB as u64) << 20;
    assert_eq!(memory_limit_of(pid as u32), Some(want));
    let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    assert!(cg.contains("/ember/"), "{cg}");
    // The console, capped at 8 KiB with one older part.
    let vm_dir = record_path.parent().unwrap().to_path_buf();
    let rotated = vm_dir.join("console.log.1");
    let t = Instant::now();
    while !rotated.exists() && t.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(rotated.exists(), "the console never reached its cap");
    for f in [vm_dir.join("console.log"), rotated] {
        let n = std::fs::metadata(&f).unwrap().len();
        assert!(n <= 8192, "{} is {n} bytes", f.display());
    }
    // The container works as it does unjailed.
    assert_eq!(
        c.exec_ok("jailed", "e1", &["echo", "inside"]).trim(),
        "inside"
    );

    // kill -9 of the shim: the VMM dies with it, containerd's delete removes the jail.
    let sock = c.sock.display().to_string();
    let shims = pids_matching(&["containerd-shim-ember-v2", &sock, "serve"]);
    assert_eq!(shims.len(), 1, "{shims:?}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(shims[0]),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let t = Instant::now();
    while c.task_status("jailed").is_some_and(|s| s != "STOPPED") {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "the task outlived its shim"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = c.ctr(&["tasks", "delete", "jailed"]);
    let out = c.ctr(&["containers", "rm", "jailed"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    c.assert_clean();
    assert!(!jail.dir.exists(), "jail {} left", jail.dir.display());
    for d in &jail.cgroup.dirs {
        assert!(!d.exists(), "cgroup {} left", d.display());
    }
}

#[test]
fn the_jailer_can_be_disabled() {
    let c = Containerd::start();
    append_runtime_config(&c, "[jailer]\nenabled = false\n");
    c.used_ids.lock().unwrap().push("free".into());
    c.run_detached("free", &["sleep", "1000"]);
    let vmms = c.vmms();
    assert_eq!(vmms.len(), 1, "{vmms:?}");
    assert_eq!(
        status_field(vmms[0], "Uid").split_whitespace().next(),
        Some("0")
    );
    assert_eq!(status_field(vmms[0], "Seccomp"), "0");
    assert!(jail_records(&c).is_empty());
    c.kill_and_remove("free");
    c.assert_clean();
}
