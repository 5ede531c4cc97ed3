//! The shim under containerd 1.7 (Debian trixie's, a private instance, driven with
//! its own `ctr`): run, exec, a terminal, kill and the task events, as under 1.6.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;

fn task_status(c: &Containerd, id: &str) -> Option<String> {
    let out = text(&c.ctr(&["tasks", "ls"]).stdout);
    out.lines()
        .skip(1)
        .map(|l| l.split_whitespace().map(str::to_string).collect::<Vec<_>>())
        .find(|w| w.first().map(String::as_str) == Some(id))
        .and_then(|w| w.get(2).cloned())
}

#[test]
fn run_exec_tty_kill_and_events_under_containerd_1_7() {
    if !Path::new(TRIXIE.containerd).exists() {
        eprintln!(
            "skipping: {} missing (scripts/trixie.sh)",
            TRIXIE.containerd
        );
        return;
    }
    let c = Containerd::start_release(&TRIXIE);
    let version = text(&c.ctr(&["version"]).stdout);
    assert!(version.contains("1.7."), "{version}");
    let mut events = c
        .cmd()
        .arg("events")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();

    let out = c.run("r17", &["sh", "-c", "echo out; echo err >&2; exit 3"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "out\n");
    assert!(text(&out.stderr).contains("err"), "{}", text(&out.stderr));

    c.used_ids.lock().unwrap().push("d17".into());
    let out = c.ctr(&[
        "run",
        "-d",
        "--runtime",
        RUNTIME,
        IMAGE,
        "d17",
        "sleep",
        "600",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let exec = c.ctr(&[
        "tasks",
        "exec",
        "--exec-id",
        "e1",
        "d17",
        "sh",
        "-c",
        "echo in",
    ]);
    assert_eq!(text(&exec.stdout), "in\n", "{}", text(&exec.stderr));
    let out = c.ctr(&["tasks", "kill", "-s", "SIGKILL", "d17"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let t = Instant::now();
    while task_status(&c, "d17").as_deref() != Some("STOPPED") {
        assert!(t.elapsed() < Duration::from_secs(30), "d17 never stopped");
        std::thread::sleep(Duration::from_millis(100));
    }
    for args in [["tasks", "rm", "d17"], ["containers", "rm", "d17"]] {
        let out = c.ctr(&args);
        assert!(out.status.success(), "{}", text(&out.stderr));
    }

    c.used_ids.lock().unwrap().push("t17".into());
    interactive_terminal_session(&c, "t17");

    std::thread::sleep(Duration::from_millis(500));
    let _ = events.kill();
    let seen = text(&events.wait_with_output().unwrap().stdout);
    for topic in [
        "/tasks/create",
        "/tasks/start",
        "/tasks/exec-added",
        "/tasks/exec-started",
        "/tasks/exit",
        "/tasks/delete",
    ] {
        assert!(
            seen.lines().any(|l| l.contains(topic) && l.contains("d17")),
            "no {topic} event of d17:\n{seen}"
        );
    }
    c.assert_clean();
}
