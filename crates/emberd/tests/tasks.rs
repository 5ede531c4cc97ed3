//! Tasks with Debian's `ctr` against `emberd`: containers run by Debian's runc shim
//! and by Ember's microVM shim, task events forwarded by the shims, and running
//! tasks that survive a restart and a `kill -9` of the daemon.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::tasks::*;
use common::*;

// Not "tasks": on cgroup v1 hosts that name collides with the cgroup tasks file.
const NS: &str = "ember-tasks";

#[test]
fn runc_tasks_run_stream_exit_and_survive_daemon_restarts() {
    if !can_run_runc() {
        return;
    }
    let (r1, d1, k1) = (
        format!("r{}", std::process::id()),
        format!("d{}", std::process::id()),
        format!("k{}", std::process::id()),
    );
    let work = tempfile::tempdir().unwrap();
    let mut d = Emberd::start(work.path());
    // Declared after the daemon and its directory: dropped before them.
    let _leftovers = RuncGuard {
        address: d.socket.clone(),
        root: d.runc_root(),
        ids: vec![r1.clone(), d1.clone(), k1.clone()],
    };
    let (r1, d1) = (r1.as_str(), d1.as_str());
    import_busybox(&d.socket, NS, work.path());
    let s = d.socket.clone();

    // Output and the exit code come back through ctr.
    let out = ctr(
        &s,
        NS,
        &[
            "run",
            "--rm",
            IMAGE,
            r1,
            "sh",
            "-c",
            "echo out; echo err >&2; exit 3",
        ],
    );
    assert_eq!(out.code, Some(3), "{}{}", out.stdout, out.stderr);
    assert_eq!(out.stdout, "out\n");
    assert!(out.stderr.contains("err"), "{}", out.stderr);
    wait_shim_gone(&s, r1);

    // A detached task, listed, exec'd into, and still there after a restart and a
    // kill -9 of the daemon.
    ctr(&s, NS, &["run", "-d", IMAGE, d1, "sleep", "600"]).expect_ok();
    wait_status(&s, NS, d1, "RUNNING");
    let pid = ctr(&s, NS, &["tasks", "ls"]).stdout;
    let exec = ctr(
        &s,
        NS,
        &[
            "tasks",
            "exec",
            "--exec-id",
            "e1",
            d1,
            "sh",
            "-c",
            "echo in-container",
        ],
    );
    assert_eq!(exec.stdout, "in-container\n", "{}", exec.stderr);
    d.restart();
    wait_status(&s, NS, d1, "RUNNING");
    assert_eq!(
        ctr(&s, NS, &["tasks", "ls"]).stdout,
        pid,
        "the task changed across a restart"
    );
    d.kill9();
    assert!(
        !shim_pids(&s, d1).is_empty(),
        "the shim died with the daemon"
    );
    d.start_again();
    wait_status(&s, NS, d1, "RUNNING");
    let ps = ctr(&s, NS, &["tasks", "ps", d1]).expect_ok().to_string();
    assert!(ps.lines().count() >= 2, "{ps}");

    ctr(&s, NS, &["tasks", "kill", "-s", "SIGKILL", d1]).expect_ok();
    wait_status(&s, NS, d1, "STOPPED");
    ctr(&s, NS, &["tasks", "rm", d1]).expect_ok();
    ctr(&s, NS, &["containers", "rm", d1]).expect_ok();
    assert!(task_status(&s, NS, d1).is_none());
    wait_shim_gone(&s, d1);
    // A shim killed with SIGKILL.
    ctr(&s, NS, &["run", "-d", IMAGE, &k1, "sleep", "600"]).expect_ok();
    wait_status(&s, NS, &k1, "RUNNING");
    let shim = shim_pids(&s, &k1);
    assert!(!shim.is_empty());
    for p in shim {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(p),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    // The daemon notices and cleans the task up; the container can then go.
    let deadline = Instant::now() + Duration::from_secs(10);
    while task_status(&s, NS, &k1).is_some() {
        assert!(
            Instant::now() < deadline,
            "a task whose shim died is still listed"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    ctr(&s, NS, &["containers", "rm", &k1]).expect_ok();
    // Unknown tasks are NotFound.
    assert_eq!(ctr(&s, NS, &["tasks", "kill", "nope"]).class(), "not found");
}

#[test]
fn microvm_tasks_run_through_the_ember_shim_with_events() {
    if !can_run() || !Path::new("/bin/busybox").exists() {
        return;
    }
    let shim = Path::new(env!("CARGO_BIN_EXE_emberd")).with_file_name("containerd-shim-ember-v2");
    let guest = ember_guest::GuestImage::locate();
    let (true, Ok(guest)) = (shim.exists(), guest) else {
        eprintln!(
            "skipping: the ember shim is not built or the guest image is missing (guest/build.sh)"
        );
        return;
    };
    let release = std::fs::read_to_string(guest.kernel.with_file_name("kernel-release"))
        .unwrap_or_default()
        .trim()
        .to_string();
    let work = tempfile::tempdir().unwrap();
    let d = Emberd::start(work.path());
    import_busybox(&d.socket, NS, work.path());
    let s = d.socket.clone();
    let vm1 = format!("vm{}", std::process::id());
    let _left = TaskGuard(s.clone(), vec![vm1.clone()]);

    let mut events = std::process::Command::new(CTR)
        .args(["-a", s.to_str().unwrap(), "events"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let out = run_rm(
        &s,
        NS,
        "io.containerd.ember.v2",
        &vm1,
        &["sh", "-c", "uname -r; exit 4"],
    );
    assert_eq!(out.code, Some(4), "{}{}", out.stdout, out.stderr);
    let guest_release = out.stdout.trim();
    assert!(!guest_release.is_empty());
    if !release.is_empty() {
        assert_eq!(guest_release, release, "not the guest kernel");
    }
    let host = nix::sys::utsname::uname().unwrap();
    assert_ne!(
        guest_release,
        host.release().to_string_lossy(),
        "ran on the host kernel"
    );
    wait_shim_gone(&s, &vm1);
    tasks_follow_one_another(&s, &vm1);

    std::thread::sleep(Duration::from_millis(500));
    let _ = events.kill();
    let out = events.wait_with_output().unwrap();
    let events = String::from_utf8_lossy(&out.stdout);
    for topic in [
        "/tasks/create",
        "/tasks/start",
        "/tasks/exit",
        "/tasks/delete",
    ] {
        assert!(
            events
                .lines()
                .any(|l| l.contains(topic) && l.contains(&vm1)),
            "no {topic} event:\n{events}"
        );
    }
}

/// Rounds of a task of one container `id`, each created right after the previous
/// one was deleted: every one gets its own shim, never the previous one's address.
fn tasks_follow_one_another(s: &Path, id: &str) {
    let runtime = "io.containerd.ember.v2";
    create_container(s, NS, runtime, id, &["false"]);
    for round in 0..3 {
        let out = ctr(s, NS, &["tasks", "start", "-d", id]);
        assert_eq!(out.code, Some(0), "round {round}: {}", out.stderr);
        wait_status(s, NS, id, "STOPPED");
        ctr(s, NS, &["tasks", "rm", id]).expect_ok();
    }
    ctr(s, NS, &["containers", "rm", id]).expect_ok();
    wait_shim_gone(s, id);
}
