//! `ember stats`, `events`, `tag`, `logs` of foreground containers, `run -d -i`,
//! `images ls NAME`, `-` for import/export, signals, and the errors people meet,
//! against a real emberd (runc's shim where a VM is not the point, and the microVM).

mod common;

use std::io::{BufRead, Read, Write};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::containers::{self as support, ok, text, Daemon};

const IMAGE: &str = "docker.io/ember/busybox:latest";

fn runc<'a>(args: &[&'a str]) -> Vec<&'a str> {
    [&["run", "--runtime", "runc"][..], args].concat()
}

fn stats_of(d: &Daemon, id: &str) -> serde_json::Value {
    let o = d.run(&["stats", "--no-stream", "--json", id]);
    let v: serde_json::Value = serde_json::from_str(&ok(&o)).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 1, "{v}");
    v[0].clone()
}

fn wait_status(d: &Daemon, id: &str, want: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v: serde_json::Value = serde_json::from_str(&ok(&d.run(&["inspect", id]))).unwrap();
        let s = v[0]["state"]["status"].as_str().unwrap().to_string();
        if s == want || Instant::now() > deadline {
            return s;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn no_daemon_says_how_to_start_it() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("none.sock");
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_ember"))
        .arg("--address")
        .arg(&sock)
        .arg("ps")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let e = text(&o.stderr);
    assert!(
        e.contains("emberd is not running") && e.contains("start it with `emberd`"),
        "{e}"
    );
    assert!(e.contains("--address"), "{e}");
    // A socket nobody listens on.
    let _l = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    drop(_l);
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_ember"))
        .arg("--address")
        .arg(&sock)
        .arg("images")
        .output()
        .unwrap();
    assert!(
        text(&o.stderr).contains("nothing listens on"),
        "{}",
        text(&o.stderr)
    );
}

#[test]
fn runc_verbs() {
    if !support::can_run() {
        return;
    }
    let d = Daemon::start();
    d.import_busybox(IMAGE);

    // EPIPE: a reader that has gone ends ember quietly (no panic), deterministically
    // with a pipe whose read end is closed, and under `head -1`.
    let (r, w) = nix::unistd::pipe().unwrap();
    drop(r);
    let o = d
        .ember()
        .args(["plugins", "--json"])
        .stdout(Stdio::from(w))
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(o.status.signal(), Some(libc::SIGPIPE), "{:?}", o.status);
    assert_eq!(text(&o.stderr), "");
    let o = std::process::Command::new("bash")
        .args([
            "-c",
            &format!(
                "set -o pipefail; for i in 1 2 3; do {0} plugins --json; {0} images; done | head -1; echo \"status ${{PIPESTATUS[0]}}\"",
                env!("CARGO_BIN_EXE_ember")
            ),
        ])
        .env("EMBER_ADDRESS", &d.socket)
        .output()
        .unwrap();
    assert!(!text(&o.stderr).contains("panicked"), "{}", text(&o.stderr));
    assert!(text(&o.stdout).contains("status "), "{}", text(&o.stdout));

    // tag, images ls NAME, unknown filter fields, `-` for export and import.
    assert_eq!(
        ok(&d.run(&["tag", IMAGE, "example.com/x/y:1"])),
        "example.com/x/y:1\n"
    );
    let o = d.run(&["tag", IMAGE, "example.com/x/y:1"]);
    assert!(text(&o.stderr).contains("--force"), "{}", text(&o.stderr));
    ok(&d.run(&["tag", "--force", IMAGE, "example.com/x/y:1"]));
    let o = d.run(&["tag", "nosuch:1", "a:1"]);
    assert_eq!(text(&o.stderr).trim(), "ember: no such image: nosuch:1");
    assert_eq!(
        ok(&d.run(&["images", "ls", "-q", "example.com/x/y"])),
        "example.com/x/y:1\n"
    );
    assert_eq!(
        ok(&d.run(&["images", "ls", "-q", IMAGE])),
        format!("{IMAGE}\n")
    );
    assert_eq!(
        ok(&d.run(&["images", "ls", "-q", "ember/busybox"])),
        format!("{IMAGE}\n")
    );
    let o = d.run(&["images", "ls", "nmae==x"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o.stderr).contains("unknown filter field \"nmae\""),
        "{}",
        text(&o.stderr)
    );
    let tar = d.dir.path().join("out.tar");
    let o = d
        .ember()
        .args(["images", "export", "-", "example.com/x/y:1"])
        .stdout(std::fs::File::create(&tar).unwrap())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o.stderr));
    ok(&d.run(&["images", "rm", "example.com/x/y:1"]));
    let o = d
        .ember()
        .args(["images", "import", "-q", "-"])
        .stdin(std::fs::File::open(&tar).unwrap())
        .output()
        .unwrap();
    assert!(
        ok(&o).starts_with("example.com/x/y:1 sha256:"),
        "{}",
        text(&o.stdout)
    );

    // No error repeats its own cause.
    let o = d.run(&["images", "import", "/no/such.tar"]);
    let e = text(&o.stderr);
    assert_eq!(e.matches("No such file").count(), 1, "{e}");
    assert_eq!(e.matches("/no/such.tar").count(), 1, "{e}");
    let o = d.run(&["images", "rm", "nosuch:1"]);
    let e = text(&o.stderr);
    assert_eq!(e.matches("nosuch:1").count(), 1, "{e}");

    // events: the daemon's stream, human lines and JSON, filters passed on.
    let mut ev = d
        .ember()
        .args(["events", "--json", "--filter", "topic~=\"^/tasks/\""])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut human = d
        .ember()
        .args(["events", "--filter", "topic==\"/tasks/exit\""])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    // Foreground output is kept for `ember logs` too.
    let o = d.run(&runc(&[
        "--name",
        "fg",
        IMAGE,
        "sh",
        "-c",
        "echo one; echo two >&2; exit 3",
    ]));
    assert_eq!(o.status.code(), Some(3));
    assert_eq!(text(&o.stdout), "one\n");
    let logs = ok(&d.run(&["logs", "fg"]));
    assert!(logs.contains("one\n") && logs.contains("two\n"), "{logs}");
    let mut lines = std::io::BufReader::new(ev.stdout.take().unwrap()).lines();
    let mut topics = Vec::new();
    for l in lines.by_ref() {
        let v: serde_json::Value = serde_json::from_str(&l.unwrap()).unwrap();
        let topic = v["topic"].as_str().unwrap().to_string();
        assert!(topic.starts_with("/tasks/"), "{v}");
        topics.push(topic.clone());
        if topic == "/tasks/exit" {
            assert_eq!(v["event"]["container_id"], "fg");
            assert_eq!(v["event"]["exit_status"], 3);
            break;
        }
    }
    assert!(topics.contains(&"/tasks/start".to_string()), "{topics:?}");
    let mut first = String::new();
    std::io::BufReader::new(human.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(
        first.contains(" default /tasks/exit container_id=fg exit_status=3"),
        "{first}"
    );
    let _ = ev.kill();
    let _ = human.kill();
    let _ = ev.wait();
    let _ = human.wait();
    let o = d.run(&["events", "--filter", "topic=="]);
    assert_ne!(o.status.code(), Some(0));

    // run -d -i: stdin stays open (sh reads on), and what is written later reaches it.
    ok(&d.run(&runc(&["-d", "-i", "--name", "in", IMAGE, "sh"])));
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(wait_status(&d, "in", "Up"), "Up");
    let fifo = d.dir.path().join("cli/logs/default/in/stdin");
    std::fs::write(&fifo, "echo via-stdin\n").unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ok(&d.run(&["logs", "in"])).contains("via-stdin") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(ok(&d.run(&["logs", "in"])), "via-stdin\n");
    std::fs::write(&fifo, "exit 4\n").unwrap();
    assert_eq!(wait_status(&d, "in", "Exited (4)"), "Exited (4)");
    // Without -i, sh meets the end of its input at once.
    ok(&d.run(&runc(&["-d", "--name", "noin", IMAGE, "sh"])));
    assert_eq!(wait_status(&d, "noin", "Exited (0)"), "Exited (0)");

    // stats: a busy and an idle container, one-shot and streaming.
    ok(&d.run(&runc(&[
        "-d",
        "--name",
        "busy",
        IMAGE,
        "sh",
        "-c",
        "while :; do :; done",
    ])));
    ok(&d.run(&runc(&["-d", "--name", "idle", IMAGE, "sleep", "300"])));
    let b = stats_of(&d, "busy");
    assert!(b["cpu_percent"].as_f64().unwrap() > 20.0, "{b}");
    assert!(b["memory_bytes"].as_u64().unwrap() > 0, "{b}");
    assert!(b["pids"].as_u64().unwrap() >= 1, "{b}");
    let i = stats_of(&d, "idle");
    assert!(i["cpu_percent"].as_f64().unwrap() < 10.0, "{i}");
    let table = ok(&d.run(&["stats", "--no-stream"]));
    let head = table.lines().next().unwrap();
    assert!(
        head.starts_with("ID")
            && head.contains("CPU %")
            && head.contains("MEM USAGE / LIMIT")
            && head.contains("PIDS"),
        "{table}"
    );
    assert!(
        table.lines().any(|l| l.starts_with("busy "))
            && table.lines().any(|l| l.starts_with("idle ")),
        "{table}"
    );
    let mut stream = d
        .ember()
        .args(["stats", "--json", "busy"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut rows = std::io::BufReader::new(stream.stdout.take().unwrap()).lines();
    for _ in 0..2 {
        let v: serde_json::Value = serde_json::from_str(&rows.next().unwrap().unwrap()).unwrap();
        assert_eq!(v["id"], "busy");
    }
    let _ = stream.kill();
    let _ = stream.wait();
    let o = d.run(&["stats", "--no-stream", "fg"]);
    assert!(
        text(&o.stderr).contains("container fg is not running"),
        "{}",
        text(&o.stderr)
    );
    let o = d.run(&["stats", "--no-stream", "ghost"]);
    assert!(
        text(&o.stderr).contains("no such container: ghost"),
        "{}",
        text(&o.stderr)
    );
    ok(&d.run(&["rm", "-f", "busy", "idle", "in", "noin", "fg"]));

    // Ctrl-C: SIGINT to `ember run` reaches the container; with -t the pty makes it.
    let mut child = d
        .ember()
        .args(runc(&[
            "--rm",
            IMAGE,
            "sh",
            "-c",
            "trap 'echo interrupted; exit 8' INT; echo ready; while true; do sleep 0.1; done",
        ]))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut first = [0u8; 6];
    out.read_exact(&mut first).unwrap();
    assert_eq!(&first, b"ready\n");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let mut rest = String::new();
    out.read_to_string(&mut rest).unwrap();
    assert_eq!(rest, "interrupted\n");
    assert_eq!(child.wait().unwrap().code(), Some(8));
    if support::which("script").is_some() {
        let line = format!(
            "{} run --runtime runc --rm -it {IMAGE} sh -c \"trap 'echo got-int; exit 8' INT; echo ready; while true; do sleep 0.1; done\"",
            env!("CARGO_BIN_EXE_ember")
        );
        let mut s = std::process::Command::new("script")
            .args(["-qec", &line, "/dev/null"])
            .env("EMBER_ADDRESS", &d.socket)
            .env("EMBER_STATE_DIR", d.dir.path().join("cli"))
            .env("PATH", support::path_env())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut so = s.stdout.take().unwrap();
        let mut seen = Vec::new();
        let mut buf = [0u8; 256];
        while !String::from_utf8_lossy(&seen).contains("ready") {
            let n = so.read(&mut buf).unwrap();
            assert!(n > 0, "{}", String::from_utf8_lossy(&seen));
            seen.extend_from_slice(&buf[..n]);
        }
        let mut si = s.stdin.take().unwrap();
        si.write_all(b"\x03").unwrap();
        si.flush().unwrap();
        let mut rest = Vec::new();
        so.read_to_end(&mut rest).unwrap();
        let status = s.wait().unwrap();
        assert!(
            String::from_utf8_lossy(&rest).contains("got-int"),
            "{}",
            String::from_utf8_lossy(&rest)
        );
        assert_eq!(status.code(), Some(8));
    }
    assert_eq!(ok(&d.run(&["ps", "-a", "-q"])), "");
}

#[test]
fn microvm_stats_and_logs() {
    if !support::can_run() || !support::has_guest() {
        return;
    }
    let d = Daemon::start();
    d.import_busybox(IMAGE);
    let o = d.run(&[
        "run",
        "--name",
        "fg",
        IMAGE,
        "sh",
        "-c",
        "echo in the vm; exit 2",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}\n{}", text(&o.stderr), d.log());
    assert_eq!(ok(&d.run(&["logs", "fg"])), "in the vm\n");
    ok(&d.run(&[
        "run",
        "-d",
        "--name",
        "busy",
        "--memory",
        "256m",
        IMAGE,
        "sh",
        "-c",
        "while :; do :; done",
    ]));
    let s = stats_of(&d, "busy");
    assert!(s["cpu_percent"].as_f64().unwrap() > 20.0, "{s}");
    assert!(s["memory_bytes"].as_u64().unwrap() > 0, "{s}");
    assert!(s["pids"].as_u64().unwrap() >= 1, "{s}");
    let limit = s["memory_limit_bytes"].as_u64().unwrap();
    assert!(limit == 0 || limit <= 256 << 20, "{s}");
    // run -d -i in a microVM: stdin stays open and takes what is written later.
    ok(&d.run(&["run", "-d", "-i", "--name", "in", IMAGE, "sh"]));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(wait_status(&d, "in", "Up"), "Up");
    let fifo = d.dir.path().join("cli/logs/default/in/stdin");
    std::fs::write(&fifo, "echo via-vm-stdin; exit 6\n").unwrap();
    assert_eq!(wait_status(&d, "in", "Exited (6)"), "Exited (6)");
    assert_eq!(ok(&d.run(&["logs", "in"])), "via-vm-stdin\n");
    ok(&d.run(&["rm", "-f", "busy", "fg", "in"]));
}

/// `ember vm run -t`: the caller's terminal resized while the container runs
/// reaches its pty (SIGWINCH → ResizePty).
#[test]
fn vm_run_tty_forwards_resizes() {
    if !nix::unistd::geteuid().is_root()
        || !support::has_guest()
        || support::which("script").is_none()
    {
        return;
    }
    // The resize comes once the first size is out, however slow the boot.
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("out");
    let cmd = format!(
        "stty cols 91 rows 33; : >{log}; \
         (until grep -q '33 91' {log}; do sleep 0.1; done; stty cols 50 rows 20 </dev/tty) & \
         {} vm run -t -- sh -c 'stty size; sleep 4; stty size' | tee {log}",
        env!("CARGO_BIN_EXE_ember"),
        log = log.display(),
    );
    let o = std::process::Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let out = text(&o.stdout);
    // The terminal may echo a control character before the first line.
    let sizes: Vec<String> = out
        .lines()
        .map(|l| l.trim_start_matches(|c: char| c == '^' || c == '@' || c.is_control()))
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect();
    assert_eq!(sizes, ["33 91", "20 50"], "{out}{}", text(&o.stderr));
}

/// `ember info`: the KVM verdict in one line, the reasons under `--verbose`.
#[test]
fn info_states_kvm_in_one_line() {
    let info = |args: &[&str]| {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_ember"))
            .arg("info")
            .args(args)
            .output()
            .unwrap();
        ok(&o)
    };
    let short = info(&[]);
    let kvm: Vec<&str> = short.lines().filter(|l| l.starts_with("KVM:")).collect();
    assert_eq!(kvm.len(), 1, "{short}");
    let verdict = kvm[0].trim_start_matches("KVM:").trim();
    assert!(
        verdict.starts_with("yes") || verdict.starts_with("no") || verdict.starts_with("unknown"),
        "{short}"
    );
    assert!(!short.contains("why:"), "{short}");
    assert!(short.contains("Host volumes:"), "{short}");
    let long = info(&["--verbose"]);
    assert!(
        long.contains("KVM:") && long.contains("why:") && long.contains("/dev/kvm:"),
        "{long}"
    );
}
