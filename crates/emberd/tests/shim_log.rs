//! Shims in emberd's log: every start (runtime, id, shim pid, address), a start
//! that fails (with the shim's own words, which also reach the client: a broken
//! runtime configuration names its file, key and cause under `ctr run`), an
//! expected exit after a delete and an unexpected one (kill -9).

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::tasks::*;
use common::*;

const NS: &str = "ember-shimlog";

/// Waits until emberd's log has a line with every one of `parts`; returns it.
fn log_line(d: &Emberd, parts: &[&str]) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let log = d.log();
        if let Some(l) = log.lines().find(|l| parts.iter().all(|p| l.contains(p))) {
            return l.to_string();
        }
        assert!(
            Instant::now() < deadline,
            "no line with {parts:?} in\n{log}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn remove(s: &Path, id: &str) {
    let _ = ctr(s, NS, &["tasks", "rm", "-f", id]);
    let _ = ctr(s, NS, &["containers", "rm", id]);
}

#[test]
fn shim_starts_and_exits_are_logged() {
    if !can_run_runc() {
        return;
    }
    let pid = std::process::id();
    let (a, k) = (format!("la{pid}"), format!("lk{pid}"));
    let work = tempfile::tempdir().unwrap();
    let d = Emberd::start(work.path());
    let s = d.socket.clone();
    import_busybox(&s, NS, work.path());

    ctr(&s, NS, &["run", "--rm", IMAGE, &a, "true"]).expect_ok();
    let id = format!("id={a}");
    let started = log_line(&d, &["shim started", &id]);
    assert!(
        started.contains("runtime=io.containerd.runc.v2"),
        "{started}"
    );
    assert!(started.contains("address=unix://"), "{started}");
    let shim_pid: u32 = started
        .split("shim_pid=")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    assert!(shim_pid > 1, "{started}");
    log_line(&d, &["shim exited (expected: its task was deleted)", &id]);

    ctr(&s, NS, &["run", "-d", IMAGE, &k, "sleep", "600"]).expect_ok();
    wait_status(&s, NS, &k, "RUNNING");
    let shims = shim_pids(&s, &k);
    assert_eq!(shims.len(), 1, "{shims:?}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(shims[0]),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let line = log_line(&d, &["shim unexpected exit", &format!("id={k}")]);
    assert!(line.contains(&format!("shim_pid={}", shims[0])), "{line}");
    assert!(line.contains("exit_status=unknown"), "{line}");
    assert!(!d.log().contains(&format!("shim unexpected exit{}", a)));
    kill_task_processes(&s, &k);
    remove(&s, &k);
}

#[test]
fn a_broken_runtime_config_reaches_ctr_run() {
    if !common::vms::can_run_vms() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let cfg = work.path().join("runtime.toml");
    std::fs::write(&cfg, "vcpu = 2\n").unwrap();
    let cfg_s = cfg.display().to_string();
    let d = Emberd::start_with_env(
        work.path(),
        None,
        &[("EMBER_RUNTIME_CONFIG", cfg_s.as_str())],
    );
    let s = d.socket.clone();
    import_busybox(&s, NS, work.path());
    let run = |id: &str| {
        let out = run_rm(&s, NS, "io.containerd.ember.v2", id, &["true"]);
        assert_ne!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
        assert!(!out.stderr.contains("connection closed"), "{}", out.stderr);
        assert!(out.stderr.contains(&cfg_s), "{}", out.stderr);
        let _ = ctr(&s, NS, &["containers", "rm", id]);
        out.stderr
    };
    let pid = std::process::id();
    // A misspelt key, a wrong type, not TOML: file, key and cause each time.
    let e = run(&format!("c1{pid}"));
    assert!(e.contains("vcpu"), "{e}");
    std::fs::write(&cfg, "memory_mib = \"lots\"\n").unwrap();
    let e = run(&format!("c2{pid}"));
    assert!(e.contains("memory_mib"), "{e}");
    std::fs::write(&cfg, "vcpus = [\n").unwrap();
    let e = run(&format!("c3{pid}"));
    eprintln!("ctr run printed: {e}");
    // And emberd's log has the failed start with the shim's message.
    let line = log_line(&d, &["shim start failed", "containerd-shim-ember-v2"]);
    assert!(line.contains(&cfg_s), "{line}");
}
