//! The shim under Debian's own containerd 1.6, driven with Debian's `ctr`: a private
//! containerd (temporary root, state and socket) whose PATH finds
//! `containerd-shim-ember-v2`, a busybox image built and imported by the test, and
//! every container in a real QEMU microVM.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const IMAGE: &str = "docker.io/ember/busybox:latest";
const RUNTIME: &str = "io.containerd.ember.v2";

struct Containerd {
    dir: tempfile::TempDir,
    child: Child,
    sock: PathBuf,
    /// Container ids run in the default namespace, to check their shim sockets.
    used_ids: std::sync::Mutex<Vec<String>>,
}

/// Where the shim of container `id` in namespace "default" listens: the digest of
/// containerd's address, the namespace and the id (see the shim's `start`).
fn shim_socket(containerd: &Path, id: &str) -> PathBuf {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for p in [containerd.to_str().unwrap(), "default", id] {
        h.update(p.as_bytes());
        h.update([0]);
    }
    let hex: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    Path::new("/run/ember/s").join(&hex[..32])
}

/// Pids of processes whose command line contains all of `needles`.
fn pids_matching(needles: &[&str]) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let pid: i32 = e.file_name().to_string_lossy().parse().ok()?;
            let b = std::fs::read(e.path().join("cmdline")).ok()?;
            let s = String::from_utf8_lossy(&b).replace('\0', " ");
            needles.iter().all(|n| s.contains(n)).then_some(pid)
        })
        .collect()
}

impl Containerd {
    fn start() -> Containerd {
        let dir = tempfile::Builder::new()
            .prefix("ember-ctrd-")
            .tempdir()
            .unwrap();
        let d = dir.path();
        let sock = d.join("containerd.sock");
        let guest = ember_guest::GuestImage::locate().unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(
            d.join("runtime.toml"),
            format!(
                "kernel = \"{}\"\ninitrd = \"{}\"\nstate_dir = \"{}\"\nmemory_mib = 256\nlog_level = \"debug\"\n",
                guest.kernel.display(),
                guest.initrd.display(),
                d.join("shim-state").display()
            ),
        )
        .unwrap();
        std::fs::write(
            d.join("config.toml"),
            format!(
                "version = 2\nroot = \"{root}\"\nstate = \"{state}\"\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n[grpc]\n  address = \"{sock}\"\n",
                root = d.join("root").display(),
                state = d.join("state").display(),
                sock = sock.display()
            ),
        )
        .unwrap();
        let child = Self::spawn(d);
        let c = Containerd {
            dir,
            child,
            sock,
            used_ids: Default::default(),
        };
        c.wait_ready();
        let archive = c.dir.path().join("busybox.tar");
        ember_guest::busybox_docker_archive(&archive, IMAGE).unwrap();
        let out = c.ctr(&["images", "import", archive.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "import: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        c
    }

    fn spawn(d: &Path) -> Child {
        let shim_dir = Path::new(env!("CARGO_BIN_EXE_containerd-shim-ember-v2"))
            .parent()
            .unwrap()
            .to_path_buf();
        let path = format!(
            "{}:{}",
            shim_dir.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(d.join("containerd.log"))
            .unwrap();
        Command::new("containerd")
            .arg("--config")
            .arg(d.join("config.toml"))
            .env("PATH", path)
            .env("EMBER_RUNTIME_CONFIG", d.join("runtime.toml"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("containerd (apt-get install containerd)")
    }

    fn wait_ready(&self) {
        let t = Instant::now();
        while !self.ctr(&["version"]).status.success() {
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "containerd did not start: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Kills containerd (shims keep running) and starts it again on the same root.
    fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = Self::spawn(self.dir.path());
        self.wait_ready();
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new("ctr");
        c.arg("-a").arg(&self.sock);
        c
    }

    fn ctr(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().unwrap()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    fn shim_logs(&self) -> String {
        let mut s = String::new();
        if let Ok(rd) = std::fs::read_dir(self.dir.path().join("shim-state")) {
            for e in rd.flatten() {
                s += &std::fs::read_to_string(e.path().join("shim.log")).unwrap_or_default();
                s += &std::fs::read_to_string(e.path().join("vm/console.log")).unwrap_or_default();
            }
        }
        s
    }

    /// `ctr run --rm` of the test image with the Ember runtime.
    fn run(&self, id: &str, args: &[&str]) -> Output {
        self.used_ids.lock().unwrap().push(id.to_string());
        let mut a = vec!["run", "--rm", "--runtime", RUNTIME, IMAGE, id];
        a.extend_from_slice(args);
        self.ctr(&a)
    }

    /// Checks that nothing of ours is left: shims, VMMs, mounts, shim state.
    fn assert_clean(&self) {
        let t = Instant::now();
        loop {
            let left = self.leftovers();
            if left.is_empty() {
                return;
            }
            assert!(
                t.elapsed() < Duration::from_secs(15),
                "left behind: {left:?}\n{}",
                self.shim_logs()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn leftovers(&self) -> Vec<String> {
        let mut left = Vec::new();
        let sock = self.sock.display().to_string();
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else {
                continue;
            };
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if cmdline.contains("containerd-shim-ember-v2") && cmdline.contains(&sock) {
                left.push(format!("shim: {cmdline}"));
            }
            if cmdline.contains("qemu-system")
                && cmdline.contains(&self.dir.path().display().to_string())
            {
                left.push(format!("vmm: {cmdline}"));
            }
        }
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
        for m in mounts
            .lines()
            .filter(|l| l.contains(&self.dir.path().join("state").display().to_string()))
        {
            left.push(format!("mount: {m}"));
        }
        if let Ok(rd) = std::fs::read_dir(self.dir.path().join("shim-state")) {
            for e in rd.flatten() {
                left.push(format!("state: {}", e.path().display()));
            }
        }
        for id in self.used_ids.lock().unwrap().iter() {
            let sock = shim_socket(&self.sock, id);
            if sock.exists() {
                left.push(format!("socket of {id}: {}", sock.display()));
            }
        }
        left
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Containerd's own mounts of its temporary root.
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        for m in mounts.lines() {
            if let Some(target) = m.split_whitespace().nth(1) {
                if target.starts_with(&self.dir.path().display().to_string()) {
                    let _ = nix::mount::umount2(target, nix::mount::MntFlags::MNT_DETACH);
                }
            }
        }
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

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
    let pty = nix::pty::openpty(None, None).unwrap();
    let slave: OwnedFd = pty.slave;
    let mut child = c
        .cmd()
        .args([
            "run",
            "--rm",
            "-t",
            "--runtime",
            RUNTIME,
            IMAGE,
            "tty1",
            "sh",
        ])
        .stdin(Stdio::from(slave.try_clone().unwrap()))
        .stdout(Stdio::from(slave.try_clone().unwrap()))
        .stderr(Stdio::from(slave))
        .spawn()
        .unwrap();
    let mut master = std::fs::File::from(pty.master);
    // Read in the background; the shell's prompt and echo come through the pty.
    let mut reader = master.try_clone().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    let wait_for = |seen: &mut Vec<u8>, needle: &str, secs: u64| {
        let t = Instant::now();
        while !text(seen).contains(needle) {
            assert!(
                t.elapsed() < Duration::from_secs(secs),
                "no {needle:?} in {:?}",
                text(seen)
            );
            if let Ok(b) = rx.recv_timeout(Duration::from_millis(200)) {
                seen.extend(b);
            }
        }
    };
    wait_for(&mut seen, "#", 90);
    master.write_all(b"tty; echo TT-$((6*7))\n").unwrap();
    wait_for(&mut seen, "TT-42", 30);
    assert!(text(&seen).contains("/dev/pts/"), "{}", text(&seen));
    master.write_all(b"exit 4\n").unwrap();
    let t = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(t.elapsed() < Duration::from_secs(60), "ctr -t did not end");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(status.code(), Some(4));
    let _ = master.as_raw_fd();
    c.assert_clean();
}

#[test]
fn detached_task_verbs_and_events() {
    let c = Containerd::start();
    let mut events = c
        .cmd()
        .arg("events")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let out = c.ctr(&[
        "run",
        "-d",
        "--runtime",
        RUNTIME,
        IMAGE,
        "det",
        "sh",
        "-c",
        "echo up; exec sleep 1000",
    ]);
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out.stderr),
        c.shim_logs()
    );

    let out = c.ctr(&[
        "task",
        "exec",
        "--exec-id",
        "e1",
        "det",
        "sh",
        "-c",
        "cat /etc/hostname; exit 6",
    ]);
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

    let out = c.ctr(&["task", "kill", "-s", "SIGKILL", "det"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let t = Instant::now();
    loop {
        let out = c.ctr(&["task", "ls"]);
        if text(&out.stdout).contains("STOPPED") {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "{}",
            text(&out.stdout)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = c.ctr(&["task", "delete", "det"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = c.ctr(&["containers", "rm", "det"]);
    assert!(out.status.success(), "{}", text(&out.stderr));

    std::thread::sleep(Duration::from_millis(500));
    let _ = events.kill();
    let mut log = String::new();
    events
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut log)
        .unwrap();
    let _ = events.wait();
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
    let mut events = c
        .cmd()
        .arg("events")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let out = c.ctr(&[
        "run",
        "-d",
        "--runtime",
        RUNTIME,
        IMAGE,
        "victim",
        "sleep",
        "1000",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let dir = c.dir.path().display().to_string();
    let vmms = pids_matching(&["qemu-system", &dir]);
    assert_eq!(vmms.len(), 1, "the VMM process: {vmms:?}");
    let pid = vmms[0];
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let t = Instant::now();
    loop {
        let out = c.ctr(&["task", "ls"]);
        let s = text(&out.stdout);
        if s.contains("STOPPED") {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(20), "{s}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = c.ctr(&["task", "delete", "victim"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let _ = c.ctr(&["containers", "rm", "victim"]);
    std::thread::sleep(Duration::from_millis(300));
    let _ = events.kill();
    let mut log = String::new();
    events
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut log)
        .unwrap();
    let _ = events.wait();
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
    let out = c.ctr(&[
        "run",
        "-d",
        "--runtime",
        RUNTIME,
        IMAGE,
        "orphan",
        "sleep",
        "1000",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
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
    let out = c.ctr(&[
        "run",
        "-d",
        "--runtime",
        RUNTIME,
        IMAGE,
        "survivor",
        "sh",
        "-c",
        "exec sleep 1000",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
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
    let out = c.ctr(&[
        "task",
        "exec",
        "--exec-id",
        "after",
        "survivor",
        "echo",
        "still-here",
    ]);
    assert_eq!(text(&out.stdout), "still-here\n", "{}", text(&out.stderr));
    let out = c.ctr(&["task", "kill", "-s", "SIGKILL", "survivor"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let t = Instant::now();
    while !text(&c.ctr(&["task", "ls"]).stdout).contains("STOPPED") {
        assert!(t.elapsed() < Duration::from_secs(30));
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(c.ctr(&["task", "delete", "survivor"]).status.success());
    assert!(c.ctr(&["containers", "rm", "survivor"]).status.success());
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
