//! The shim under containerd 1.7 (Debian trixie's, a private instance, driven with
//! its own `ctr`): run, exec, a terminal, kill and the task events, as under 1.6.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;

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
    let events = c.events();

    let out = c.run("r17", &["sh", "-c", "echo out; echo err >&2; exit 3"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "out\n");
    assert!(text(&out.stderr).contains("err"), "{}", text(&out.stderr));

    c.used_ids.lock().unwrap().push("d17".into());
    c.run_detached("d17", &["sleep", "600"]);
    let exec = c.exec("d17", "e1", &["sh", "-c", "echo in"]);
    assert_eq!(text(&exec.stdout), "in\n", "{}", text(&exec.stderr));
    c.kill_and_remove("d17");

    c.used_ids.lock().unwrap().push("t17".into());
    interactive_terminal_session(&c, "t17");

    let seen = Containerd::events_seen(events, Duration::from_millis(500));
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
