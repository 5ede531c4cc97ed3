//! `ember run`, `ps`, `exec`, `logs`, `stop`, `kill`, `rm`, `inspect` against a real
//! emberd, with runc's shim and with the microVM shim.

mod common;

use std::io::Write;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::containers::{self as support, ok, text, Daemon};

const IMAGE: &str = "docker.io/ember/busybox:latest";

fn status_of(d: &Daemon, id: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(&ok(&d.run(&["inspect", id]))).unwrap();
    v[0]["state"]["status"].as_str().unwrap().to_string()
}

fn wait_for_output(d: &Daemon, id: &str, want: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = ok(&d.run(&["logs", id]));
        if out.contains(want) || Instant::now() > deadline {
            return out;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn runc_container_verbs() {
    if !support::can_run() {
        return;
    }
    let d = Daemon::start();
    d.import_busybox(IMAGE);

    // Foreground: output and exit status.
    let o = d.run(
        &[
            &["run", "--runtime", "runc"][..],
            &["--rm", IMAGE, "sh", "-c", "echo out; echo err >&2; exit 3"],
        ]
        .concat(),
    );
    assert_eq!(o.status.code(), Some(3), "{}", text(&o.stderr));
    assert_eq!(text(&o.stdout), "out\n");
    assert!(text(&o.stderr).contains("err"), "{}", text(&o.stderr));
    // The short name resolves like docker's.
    let o = d.run(
        &[
            &["run", "--runtime", "runc"][..],
            &[
                "--rm",
                "-e",
                "GREETING=hi there",
                "-w",
                "/tmp",
                "docker.io/ember/busybox",
                "sh",
                "-c",
                "echo $GREETING; pwd",
            ],
        ]
        .concat(),
    );
    assert_eq!(ok(&o), "hi there\n/tmp\n");

    // -i: stdin round trip.
    let mut child = d
        .ember()
        .args(
            [
                &["run", "--runtime", "runc"][..],
                &["--rm", "-i", IMAGE, "sh", "-c", "tr a-z A-Z"],
            ]
            .concat(),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"round trip\n")
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert_eq!(ok(&o), "ROUND TRIP\n");

    // Errors: missing image, command not found, unknown id.
    let o = d.run(&["run", "--rm", "--pull", "never", "nosuch/image:1", "true"]);
    assert_eq!(o.status.code(), Some(125));
    assert!(
        text(&o.stderr).contains("not found locally") && text(&o.stderr).contains("ember pull"),
        "{}",
        text(&o.stderr)
    );
    let o = d.run(
        &[
            &["run", "--runtime", "runc"][..],
            &["--rm", IMAGE, "/no/such/cmd"],
        ]
        .concat(),
    );
    assert_eq!(o.status.code(), Some(127), "{}", text(&o.stderr));
    for verb in [
        &["rm"][..],
        &["stop"],
        &["kill"],
        &["inspect"],
        &["logs"],
        &["exec", "sh"],
    ] {
        let mut args = vec![verb[0], "ghost"];
        args.extend(&verb[1..]);
        let o = d.run(&args);
        assert_ne!(o.status.code(), Some(0), "{verb:?}");
        assert!(
            text(&o.stderr).contains("no such container: ghost"),
            "{verb:?}: {}",
            text(&o.stderr)
        );
    }
    // Bind mounts with runc.
    let host = d.dir.path().join("vol");
    std::fs::create_dir_all(&host).unwrap();
    std::fs::write(host.join("f"), "from the host\n").unwrap();
    let v = format!("{}:/data:ro", host.display());
    let o = d.run(
        &[
            &["run", "--runtime", "runc"][..],
            &[
                "--rm",
                "-v",
                &v,
                IMAGE,
                "sh",
                "-c",
                "cat /data/f; touch /data/g",
            ],
        ]
        .concat(),
    );
    assert_eq!(text(&o.stdout), "from the host\n", "{}", text(&o.stderr));
    assert_ne!(
        o.status.code(),
        Some(0),
        "a read-only bind mount was written"
    );

    // Detached: ps, logs, exec, stop (SIGTERM handled), kill, rm.
    let id = ok(&d.run(
        &[
            &["run", "--runtime", "runc"][..],
            &[
                "-d",
                "--name",
                "web",
                IMAGE,
                "sh",
                "-c",
                "trap 'echo bye; exit 0' TERM; echo started; while true; do sleep 0.1; done",
            ],
        ]
        .concat(),
    ));
    assert_eq!(id.trim(), "web");
    let o = d.run(&[
        "run",
        "--runtime",
        "runc",
        "-d",
        "--name",
        "web",
        IMAGE,
        "true",
    ]);
    assert_eq!(o.status.code(), Some(125));
    assert!(
        text(&o.stderr).contains("name web is already in use"),
        "{}",
        text(&o.stderr)
    );
    let ps = ok(&d.run(&["ps"]));
    let line = ps
        .lines()
        .find(|l| l.starts_with("web "))
        .unwrap_or_else(|| panic!("{ps}"));
    assert!(
        line.contains("Up") && line.contains("io.containerd.runc.v2"),
        "{ps}"
    );
    assert!(
        ps.starts_with("ID") && ps.lines().next().unwrap().contains("PID"),
        "{ps}"
    );
    assert!(wait_for_output(&d, "web", "started").contains("started"));
    let o = d.run(&[
        "exec",
        "-e",
        "X=42",
        "web",
        "sh",
        "-c",
        "echo in $X; exit 7",
    ]);
    assert_eq!(o.status.code(), Some(7), "{}", text(&o.stderr));
    assert_eq!(text(&o.stdout), "in 42\n");
    let o = d.run(&["rm", "web"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o.stderr).contains("is running"),
        "{}",
        text(&o.stderr)
    );
    let t = Instant::now();
    ok(&d.run(&["stop", "web"]));
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "stop took {:?}",
        t.elapsed()
    );
    assert_eq!(status_of(&d, "web"), "Exited (0)");
    assert!(wait_for_output(&d, "web", "bye").contains("bye"));
    let all = ok(&d.run(&["ps", "-a"]));
    assert!(
        all.lines()
            .any(|l| l.starts_with("web ") && l.contains("Exited (0)")),
        "{all}"
    );
    assert!(!ok(&d.run(&["ps"])).contains("web "));
    ok(&d.run(&["rm", "web"]));

    // stop -t 1 on a process that ignores SIGTERM: SIGKILL after the timeout.
    ok(&d.run(
        &[
            &["run", "--runtime", "runc"][..],
            &[
                "-d",
                "--name",
                "stubborn",
                IMAGE,
                "sh",
                "-c",
                "trap '' TERM; while true; do sleep 0.1; done",
            ],
        ]
        .concat(),
    ));
    let t = Instant::now();
    ok(&d.run(&["stop", "-t", "1", "stubborn"]));
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(10),
        "{took:?}"
    );
    assert_eq!(status_of(&d, "stubborn"), "Exited (137)");

    // kill -s (PID 1 of the container only gets signals it handles), then a foreground container kept for ps -a, inspect and rm -f.
    ok(&d.run(
        &[
            &["run", "--runtime", "runc"][..],
            &[
                "-d",
                "--name",
                "victim",
                IMAGE,
                "sh",
                "-c",
                "trap 'exit 10' USR1; while true; do sleep 0.1; done",
            ],
        ]
        .concat(),
    ));
    ok(&d.run(&["kill", "-s", "USR1", "victim"]));
    let deadline = Instant::now() + Duration::from_secs(20);
    while status_of(&d, "victim") != "Exited (10)" && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(status_of(&d, "victim"), "Exited (10)");
    let o = d.run(
        &[
            &["run", "--runtime", "runc"][..],
            &["--name", "kept", IMAGE, "sh", "-c", "exit 5"],
        ]
        .concat(),
    );
    assert_eq!(o.status.code(), Some(5));
    let all = ok(&d.run(&["ps", "-a", "--json"]));
    let rows: serde_json::Value = serde_json::from_str(&all).unwrap();
    let kept = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == "kept")
        .unwrap();
    assert_eq!(kept["status"], "Exited (5)");
    ok(&d.run(
        &[
            &["run", "--runtime", "runc"][..],
            &["-d", "--name", "busy", IMAGE, "sleep", "300"],
        ]
        .concat(),
    ));
    let v: serde_json::Value = serde_json::from_str(&ok(&d.run(&["inspect", "busy"]))).unwrap();
    assert_eq!(v[0]["state"]["running"], true);
    assert!(v[0]["state"]["pid"].as_u64().unwrap() > 0);
    assert_eq!(
        v[0]["spec"]["process"]["args"],
        serde_json::json!(["sleep", "300"])
    );
    assert_eq!(v[0]["runtime"], "io.containerd.runc.v2");
    ok(&d.run(&["rm", "-f", "busy", "kept", "victim", "stubborn"]));
    assert_eq!(ok(&d.run(&["ps", "-a", "-q"])), "");
    let snaps = ok(&d.run(&["snapshots", "--snapshotter", "overlayfs", "ls"]));
    assert!(
        !snaps.contains("busy") && !snaps.contains("kept"),
        "{snaps}"
    );
    assert!(!d.dir.path().join("cli/logs/default/web").exists());

    // logs -f follows until the task exits.
    ok(&d.run(&[
        "run",
        "--runtime",
        "runc",
        "-d",
        "--name",
        "talker",
        IMAGE,
        "sh",
        "-c",
        "echo one; sleep 1; echo two",
    ]));
    let t = Instant::now();
    let o = d.run(&["logs", "-f", "talker"]);
    assert_eq!(ok(&o), "one\ntwo\n");
    assert!(t.elapsed() < Duration::from_secs(20), "{:?}", t.elapsed());
    ok(&d.run(&["rm", "talker"]));

    // SIGTERM to a foreground `ember run` reaches the container.
    let mut child = d
        .ember()
        .args([
            "run",
            "--runtime",
            "runc",
            "--rm",
            IMAGE,
            "sh",
            "-c",
            "trap 'echo caught; exit 9' TERM; echo ready; while true; do sleep 0.1; done",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let mut out = child.stdout.take().unwrap();
    let mut first = [0u8; 6];
    std::io::Read::read_exact(&mut out, &mut first).unwrap();
    assert_eq!(&first, b"ready\n");
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
    assert_eq!(rest, "caught\n");
    assert_eq!(child.wait().unwrap().code(), Some(9));

    // -t through a pty: a terminal of its own, sized like the caller's from the start.
    pty_size(&d, "runc");
}

#[test]
fn microvm_container_verbs() {
    if !support::can_run() || !support::has_guest() {
        return;
    }
    let d = Daemon::start();
    d.import_busybox(IMAGE);
    let release =
        std::fs::read_to_string(support::guest_dir().join("kernel-release")).unwrap_or_default();
    let host = text(
        &std::process::Command::new("uname")
            .arg("-r")
            .output()
            .unwrap()
            .stdout,
    );
    let o = d.run(&[
        "run",
        "--rm",
        "--cpus",
        "1",
        "--memory",
        "256m",
        IMAGE,
        "sh",
        "-c",
        "uname -r; exit 4",
    ]);
    assert_eq!(o.status.code(), Some(4), "{}\n{}", text(&o.stderr), d.log());
    let guest = text(&o.stdout);
    assert_ne!(guest.trim(), host.trim(), "ran on the host kernel");
    if !release.trim().is_empty() {
        assert_eq!(guest.trim(), release.trim());
    }
    ok(&d.run(&[
        "run",
        "-d",
        "--name",
        "vm",
        IMAGE,
        "sh",
        "-c",
        "echo hello from the vm; sleep 300",
    ]));
    assert!(wait_for_output(&d, "vm", "hello from the vm").contains("hello from the vm"));
    let ps = ok(&d.run(&["ps"]));
    assert!(
        ps.lines().any(|l| l.starts_with("vm ")
            && l.contains("Up")
            && l.contains("io.containerd.ember.v2")),
        "{ps}"
    );
    let o = d.run(&["exec", "vm", "sh", "-c", "echo exec; exit 6"]);
    assert_eq!(o.status.code(), Some(6), "{}", text(&o.stderr));
    assert_eq!(text(&o.stdout), "exec\n");
    ok(&d.run(&["rm", "-f", "vm"]));
    let o = d.run(&["run", "--rm", IMAGE, "/no/such/cmd"]);
    assert_eq!(o.status.code(), Some(127), "{}", text(&o.stderr));
    pty_size(&d, "io.containerd.ember.v2");
    assert_eq!(ok(&d.run(&["ps", "-a", "-q"])), "");
}

/// `ember run -t` under `script`: the container's stdin and stdout are a pty whose
/// size is the caller's terminal's.
fn pty_size(d: &Daemon, runtime: &str) {
    if support::which("script").is_none() {
        eprintln!("skipping the pty check: no script(1)");
        return;
    }
    let cmd = format!(
        "stty cols 91 rows 33; {} run --runtime {runtime} --rm -t {IMAGE} sh -c '[ -t 0 ] && [ -t 1 ] && tty && stty size'",
        env!("CARGO_BIN_EXE_ember"),
    );
    let o = d.ember_shell(&cmd);
    let out = text(&o.stdout);
    assert!(
        out.contains("/dev/pts/") && out.contains("33 91"),
        "{out}{}",
        text(&o.stderr)
    );
    // The caller's terminal resized while the container runs: SIGWINCH → ResizePty.
    let cmd = format!(
        "stty cols 91 rows 33; (sleep 2.5; stty cols 50 rows 20 </dev/tty) & \
         {} run --runtime {runtime} --rm -t {IMAGE} sh -c 'sleep 5; stty size'",
        env!("CARGO_BIN_EXE_ember"),
    );
    let o = d.ember_shell(&cmd);
    let out = text(&o.stdout);
    assert_eq!(out.trim(), "20 50", "{}", text(&o.stderr));
}
