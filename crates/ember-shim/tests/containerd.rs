//! The shim under Debian's own containerd 1.6, driven with Debian's `ctr`: a private
//! containerd (temporary root, state and socket) whose PATH finds
//! `containerd-shim-ember-v2`, a busybox image built and imported by the test, and
//! every container in a real QEMU microVM.

use std::time::{Duration, Instant};

mod common;

use common::*;

#[test]
fn run_exit_codes_and_cleanup() {
    let c = Containerd::start();
    let out = c.run("uname", &["uname", "-r"]);
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out.stderr),
        c.shim_logs()
    );
    let release = text(&out.stdout).trim().to_string();
    let host = nix::sys::utsname::uname().unwrap();
    assert_ne!(release, host.release().to_string_lossy());
    if let Some(r) = ember_guest::GuestImage::locate().unwrap().kernel_release() {
        assert_eq!(release, r);
    }
    let out = c.run("exit3", &["sh", "-c", "echo out; echo err >&2; exit 3"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "out\n");
    assert!(text(&out.stderr).contains("err"));
    c.assert_clean();
}

#[test]
fn interactive_terminal() {
    let c = Containerd::start();
    interactive_terminal_session(&c, "tty1");
    c.assert_clean();
}

#[test]
fn detached_task_verbs_and_events() {
    let c = Containerd::start();
    let events = c.events();
    c.run_detached("det", &["sh", "-c", "echo up; exec sleep 1000"]);

    let out = c.exec("det", "e1", &["sh", "-c", "cat /etc/hostname; exit 6"]);
    assert_eq!(out.status.code(), Some(6), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "ember\n");

    let out = c.ctr(&["task", "ps", "det"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("PID"), "{}", text(&out.stdout));

    for verb in ["pause", "resume"] {
        let out = c.ctr(&["task", verb, "det"]);
        assert!(out.status.success(), "{verb}: {}", text(&out.stderr));
    }
    let out = c.ctr(&["task", "ls"]);
    assert!(
        text(&out.stdout).contains("RUNNING"),
        "{}",
        text(&out.stdout)
    );

    let out = c.ctr(&["task", "metrics", "det"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let usage: u64 = text(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("memory.usage "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no memory.usage in {}", text(&out.stdout)));
    assert!(usage > 0, "{}", text(&out.stdout));

    c.kill_and_remove("det");

    let log = Containerd::events_seen(events, Duration::from_millis(500));
    for topic in [
        "/tasks/create",
        "/tasks/start",
        "/tasks/exec-added",
        "/tasks/exec-started",
        "/tasks/paused",
        "/tasks/resumed",
        "/tasks/exit",
        "/tasks/delete",
    ] {
        assert!(log.contains(topic), "no {topic} in ctr events:\n{log}");
    }
    c.assert_clean();
}

#[test]
fn killing_the_vmm_fails_the_task() {
    let c = Containerd::start();
    let events = c.events();
    c.run_detached("victim", &["sleep", "1000"]);
    let dir = c.dir.path().display().to_string();
    let vmms = pids_matching(&["qemu-system", &dir]);
    assert_eq!(vmms.len(), 1, "the VMM process: {vmms:?}");
    let pid = vmms[0];
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    c.wait_stopped("victim", 20);
    let out = c.ctr(&["task", "delete", "victim"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let _ = c.ctr(&["containers", "rm", "victim"]);
    let log = Containerd::events_seen(events, Duration::from_millis(300));
    let exit = log
        .lines()
        .find(|l| l.contains("/tasks/exit"))
        .unwrap_or_else(|| panic!("no /tasks/exit event:\n{log}"));
    assert!(
        !exit.contains("\"exit_status\":0") && exit.contains("exit_status"),
        "{exit}"
    );
    c.assert_clean();
}

#[test]
fn sequential_and_concurrent_runs_leave_nothing() {
    let c = Containerd::start();
    for i in 0..10 {
        let out = c.run(&format!("seq{i}"), &["true"]);
        assert!(
            out.status.success(),
            "run {i}: {}\n{}",
            text(&out.stderr),
            c.shim_logs()
        );
    }
    let handles: Vec<_> = (0..4)
        .map(|i| {
            let mut cmd = c.cmd();
            c.used_ids.lock().unwrap().push(format!("par{i}"));
            cmd.args([
                "run",
                "--rm",
                "--runtime",
                RUNTIME,
                IMAGE,
                &format!("par{i}"),
                "sh",
                "-c",
                &format!("echo {i}"),
            ]);
            std::thread::spawn(move || cmd.output().unwrap())
        })
        .collect();
    for (i, h) in handles.into_iter().enumerate() {
        let out = h.join().unwrap();
        assert!(out.status.success(), "par{i}: {}", text(&out.stderr));
        assert_eq!(text(&out.stdout), format!("{i}\n"));
    }
    c.assert_clean();
}

#[test]
fn killed_shim_takes_its_vmm_along() {
    let c = Containerd::start();
    c.run_detached("orphan", &["sleep", "1000"]);
    let sock = c.sock.display().to_string();
    let dir = c.dir.path().display().to_string();
    let shims = pids_matching(&["containerd-shim-ember-v2", &sock, "serve"]);
    assert_eq!(shims.len(), 1, "{shims:?}");
    assert_eq!(pids_matching(&["qemu-system", &dir]).len(), 1);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(shims[0]),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let t = Instant::now();
    while !pids_matching(&["qemu-system", &dir]).is_empty() {
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "the VMM outlived its shim by over a second"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // containerd notices the dead shim; the task is cleaned up through `shim delete`.
    let t = Instant::now();
    loop {
        let _ = c.ctr(&["task", "delete", "-f", "orphan"]);
        let _ = c.ctr(&["containers", "rm", "orphan"]);
        if !text(&c.ctr(&["containers", "ls", "-q"]).stdout).contains("orphan") {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(20), "container stayed");
        std::thread::sleep(Duration::from_millis(200));
    }
    c.assert_clean();
}

#[test]
fn containerd_restart_reconnects_to_the_running_shim() {
    let mut c = Containerd::start();
    c.run_detached("survivor", &["sh", "-c", "exec sleep 1000"]);
    let dir = c.dir.path().display().to_string();
    let vmm = pids_matching(&["qemu-system", &dir]);
    assert_eq!(vmm.len(), 1);
    c.restart();
    let out = c.ctr(&["task", "ls"]);
    assert!(
        text(&out.stdout).contains("RUNNING"),
        "after restart: {}",
        text(&out.stdout)
    );
    assert_eq!(
        pids_matching(&["qemu-system", &dir]),
        vmm,
        "the VM was replaced"
    );
    let out = c.exec("survivor", "after", &["echo", "still-here"]);
    assert_eq!(text(&out.stdout), "still-here\n", "{}", text(&out.stderr));
    c.kill_and_remove("survivor");
    c.assert_clean();
}

#[test]
fn log_uris_file_and_binary() {
    let c = Containerd::start();
    let d = c.dir.path();
    let file_log = d.join("logs/file.log");
    let uri = format!("file://{}", file_log.display());
    let out = c.ctr(&[
        "run",
        "--rm",
        "--log-uri",
        &uri,
        "--runtime",
        RUNTIME,
        IMAGE,
        "flog",
        "sh",
        "-c",
        "echo to-file; echo err-to-file >&2",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let logged = std::fs::read_to_string(&file_log).unwrap();
    assert!(
        logged.contains("to-file") && logged.contains("err-to-file"),
        "{logged:?}"
    );

    // A logging binary gets stdout on fd 3, stderr on fd 4 and closes fd 5 when ready.
    let logger = d.join("logger.sh");
    let bin_log = d.join("binary.log");
    std::fs::write(
        &logger,
        format!(
            "#!/bin/sh\nexec 5>&-\ncat <&3 >> {0}.out &\ncat <&4 >> {0}.err &\nwait\n",
            bin_log.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&logger, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let uri = format!("binary://{}", logger.display());
    let out = c.ctr(&[
        "run",
        "--rm",
        "--log-uri",
        &uri,
        "--runtime",
        RUNTIME,
        IMAGE,
        "blog",
        "sh",
        "-c",
        "echo to-binary; echo err-to-binary >&2",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let t = Instant::now();
    loop {
        let o = std::fs::read_to_string(format!("{}.out", bin_log.display())).unwrap_or_default();
        let e = std::fs::read_to_string(format!("{}.err", bin_log.display())).unwrap_or_default();
        if o.contains("to-binary") && e.contains("err-to-binary") {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "logger got {o:?} / {e:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    c.assert_clean();
}

/// A task created for a container right after its previous task was deleted gets a
/// new shim, never the address of the previous one on its way out.
#[test]
fn a_new_task_right_after_delete_gets_a_new_shim() {
    let c = Containerd::start();
    let id = "again";
    c.used_ids.lock().unwrap().push(id.to_string());
    let out = c.ctr(&[
        "container",
        "create",
        "--runtime",
        RUNTIME,
        IMAGE,
        id,
        "false",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let t = Instant::now();
    for round in 0..4 {
        assert!(
            t.elapsed() < Duration::from_secs(240),
            "round {round}: out of time"
        );
        let out = c.ctr(&["task", "start", "-d", id]);
        assert!(
            out.status.success(),
            "round {round}: {}\n{}\n{}",
            text(&out.stderr),
            c.log(),
            c.shim_logs()
        );
        loop {
            let ls = text(&c.ctr(&["task", "ls"]).stdout);
            if ls
                .lines()
                .any(|l| l.starts_with(id) && l.contains("STOPPED"))
            {
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(240),
                "round {round}: the task never stopped: {ls}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let out = c.ctr(&["task", "delete", id]);
        assert!(
            out.status.success(),
            "round {round}: {}\n{}",
            text(&out.stderr),
            c.shim_logs()
        );
    }
    let out = c.ctr(&["container", "delete", id]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    c.assert_clean();
}
