//! A private containerd (temporary root, state and socket) whose PATH finds
//! `containerd-shim-ember-v2`, with the busybox test image imported, driven with
//! `ctr`; Debian's containerd 1.6 unless another binary is named.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const IMAGE: &str = "docker.io/ember/busybox:latest";
pub const RUNTIME: &str = "io.containerd.ember.v2";
pub const RUNC: &str = "io.containerd.runc.v2";

/// A containerd release: its daemon and its `ctr`.
pub struct Release {
    pub containerd: &'static str,
    pub ctr: &'static str,
}

/// Debian's containerd 1.6.
pub const DEBIAN: Release = Release {
    containerd: "containerd",
    ctr: "ctr",
};

/// containerd 1.7 from Debian trixie, unpacked aside by scripts/trixie.sh.
pub const TRIXIE: Release = Release {
    containerd: "/opt/ember/trixie/usr/bin/containerd",
    ctr: "/opt/ember/trixie/usr/bin/ctr",
};

pub struct Containerd {
    pub dir: tempfile::TempDir,
    pub child: Child,
    pub sock: PathBuf,
    /// Container ids run in the default namespace, to check their shim sockets.
    pub used_ids: std::sync::Mutex<Vec<String>>,
    /// VM ids containers named, to check the VMs' shim sockets.
    pub used_vms: std::sync::Mutex<Vec<String>>,
    release: &'static Release,
}

/// Where the shim of container `id` in namespace "default" listens: the digest of
/// containerd's address, the namespace and the id (see the shim's `start`).
pub fn shim_socket(containerd: &Path, id: &str) -> PathBuf {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for p in [containerd.to_str().unwrap(), "default", id] {
        h.update(p.as_bytes());
        h.update([0]);
    }
    let hex: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    Path::new("/run/ember/s").join(&hex[..32])
}

/// Where the shim of VM `vm` (containers naming it) in namespace "default" listens.
pub fn vm_socket(containerd: &Path, vm: &str) -> PathBuf {
    let hex = digest(&[containerd.to_str().unwrap(), "default", "vm", vm]);
    Path::new("/run/ember/s").join(&hex[..32])
}

fn digest(parts: &[&str]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0]);
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Pids of processes whose command line contains all of `needles`.
pub fn pids_matching(needles: &[&str]) -> Vec<i32> {
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
    pub fn start() -> Containerd {
        Self::start_release(&DEBIAN)
    }

    pub fn start_release(release: &'static Release) -> Containerd {
        Self::start_configured(release, "")
    }

    /// A containerd whose config.toml ends with `extra` (e.g. proxy plugins).
    pub fn start_configured(release: &'static Release, extra: &str) -> Containerd {
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
                "version = 2\nroot = \"{root}\"\nstate = \"{state}\"\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n[grpc]\n  address = \"{sock}\"\n{extra}",
                root = d.join("root").display(),
                state = d.join("state").display(),
                sock = sock.display()
            ),
        )
        .unwrap();
        let child = Self::spawn(release, d);
        let c = Containerd {
            dir,
            child,
            sock,
            used_ids: Default::default(),
            used_vms: Default::default(),
            release,
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

    pub fn spawn(release: &Release, d: &Path) -> Child {
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
        Command::new(release.containerd)
            .arg("--config")
            .arg(d.join("config.toml"))
            .env("PATH", path)
            .env("EMBER_RUNTIME_CONFIG", d.join("runtime.toml"))
            .env("EMBER_SHIM_TIMINGS", d.join("timings.jsonl"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("containerd (apt-get install containerd)")
    }

    pub fn wait_ready(&self) {
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
    pub fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = Self::spawn(self.release, self.dir.path());
        self.wait_ready();
    }

    pub fn cmd(&self) -> Command {
        let mut c = Command::new(self.release.ctr);
        c.arg("-a").arg(&self.sock);
        c
    }

    pub fn ctr(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().unwrap()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    pub fn shim_logs(&self) -> String {
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
    pub fn run(&self, id: &str, args: &[&str]) -> Output {
        self.used_ids.lock().unwrap().push(id.to_string());
        let mut a = vec!["run", "--rm", "--runtime", RUNTIME, IMAGE, id];
        a.extend_from_slice(args);
        self.ctr(&a)
    }

    /// `ctr run -d` of the test image with the Ember runtime; asserts it started.
    pub fn run_detached(&self, id: &str, args: &[&str]) {
        let mut a = vec!["run", "-d", "--runtime", RUNTIME, IMAGE, id];
        a.extend_from_slice(args);
        let out = self.ctr(&a);
        assert!(
            out.status.success(),
            "{}\n{}",
            text(&out.stderr),
            self.shim_logs()
        );
    }

    /// `ctr run -d` of the test image with annotations (`key=value`); asserts it
    /// started.
    pub fn run_annotated(&self, id: &str, annotations: &[&str], args: &[&str]) {
        let out = self.try_run_annotated(id, annotations, args);
        assert!(
            out.status.success(),
            "{id}: {}\n{}",
            text(&out.stderr),
            self.shim_logs()
        );
    }

    /// `ctr run -d` with annotations, as it went.
    pub fn try_run_annotated(&self, id: &str, annotations: &[&str], args: &[&str]) -> Output {
        self.try_run_with(id, annotations, &[], args)
    }

    /// `ctr run -d` with annotations and more `ctr run` flags, as it went.
    pub fn try_run_with(
        &self,
        id: &str,
        annotations: &[&str],
        flags: &[&str],
        args: &[&str],
    ) -> Output {
        self.used_ids.lock().unwrap().push(id.to_string());
        let mut a = vec!["run", "-d", "--runtime", RUNTIME];
        for an in annotations {
            a.extend_from_slice(&["--annotation", an]);
        }
        a.extend_from_slice(flags);
        a.extend_from_slice(&[IMAGE, id]);
        a.extend_from_slice(args);
        self.ctr(&a)
    }

    /// Output of `args` run as exec `exec_id` in `id`; asserts it succeeded.
    pub fn exec_ok(&self, id: &str, exec_id: &str, args: &[&str]) -> String {
        let out = self.exec(id, exec_id, args);
        assert!(
            out.status.success(),
            "exec in {id}: {}\n{}",
            text(&out.stderr),
            self.shim_logs()
        );
        text(&out.stdout)
    }

    /// The VMM processes of this containerd's shims.
    pub fn vmms(&self) -> Vec<i32> {
        pids_matching(&["qemu-system", &self.dir.path().display().to_string()])
    }

    /// `ctr tasks exec --exec-id exec_id id args…`.
    pub fn exec(&self, id: &str, exec_id: &str, args: &[&str]) -> Output {
        let mut a = vec!["tasks", "exec", "--exec-id", exec_id, id];
        a.extend_from_slice(args);
        self.ctr(&a)
    }

    /// Kills task `id`, waits up to 30 seconds for it to stop, deletes it and its
    /// container.
    pub fn kill_and_remove(&self, id: &str) {
        self.kill(id);
        self.wait_stopped(id, 30);
        self.remove(id);
    }

    /// `ctr tasks kill -s SIGKILL`; asserts it was sent.
    pub fn kill(&self, id: &str) {
        let out = self.ctr(&["tasks", "kill", "-s", "SIGKILL", id]);
        assert!(out.status.success(), "{}", text(&out.stderr));
    }

    /// The status column of task `id` in `ctr tasks ls`.
    pub fn task_status(&self, id: &str) -> Option<String> {
        let out = text(&self.ctr(&["tasks", "ls"]).stdout);
        out.lines()
            .skip(1)
            .map(|l| l.split_whitespace().map(str::to_string).collect::<Vec<_>>())
            .find(|w| w.first().map(String::as_str) == Some(id))
            .and_then(|w| w.get(2).cloned())
    }

    /// Waits up to `secs` seconds for task `id` to be STOPPED.
    pub fn wait_stopped(&self, id: &str, secs: u64) {
        let t = Instant::now();
        while self.task_status(id).as_deref() != Some("STOPPED") {
            assert!(
                t.elapsed() < Duration::from_secs(secs),
                "{id} never stopped: {}",
                text(&self.ctr(&["tasks", "ls"]).stdout)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Deletes the stopped task `id` and its container; asserts both succeed.
    pub fn remove(&self, id: &str) {
        for args in [["tasks", "delete", id], ["containers", "rm", id]] {
            let out = self.ctr(&args);
            assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
        }
    }

    /// `ctr events`, its output collected by [`Containerd::events_seen`].
    pub fn events(&self) -> Child {
        self.cmd()
            .arg("events")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// Lets the last events arrive, stops `ctr events` and returns what it printed.
    pub fn events_seen(events: Child, settle: Duration) -> String {
        std::thread::sleep(settle);
        let mut events = events;
        let _ = events.kill();
        text(&events.wait_with_output().unwrap().stdout)
    }

    /// Checks that nothing of ours is left: shims, VMMs, mounts, shim state.
    pub fn assert_clean(&self) {
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

    pub fn leftovers(&self) -> Vec<String> {
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
            let record = sock.with_extension("vm");
            if record.exists() {
                left.push(format!("VM record of {id}: {}", record.display()));
            }
        }
        for vm in self.used_vms.lock().unwrap().iter() {
            let sock = vm_socket(&self.sock, vm);
            if sock.exists() {
                left.push(format!("socket of VM {vm}: {}", sock.display()));
            }
        }
        left
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Shims a failed test left (their VMMs die with them).
        let sock = self.sock.display().to_string();
        for pid in pids_matching(&["containerd-shim", &sock]) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
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

/// The exit statuses `ctr events` printed for `/tasks/exit` of container `id`'s
/// init.
pub fn exit_statuses(events: &str, id: &str) -> Vec<u32> {
    events
        .lines()
        .filter(|l| l.contains("/tasks/exit"))
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(&l[l.find('{')?..]).ok())
        .filter(|v| v["container_id"] == id && v["id"] == id)
        .map(|v| v["exit_status"].as_u64().unwrap_or(0) as u32)
        .collect()
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `ctr run -t` of a shell on a pseudo-terminal of 40 rows and 100 columns: the
/// shell sees a tty of that size (ctr resizes the task's console to its own), runs a
/// command, and its exit code comes back through ctr.
pub fn interactive_terminal_session(c: &Containerd, id: &str) {
    let size = nix::pty::Winsize {
        ws_row: 40,
        ws_col: 100,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let pty = nix::pty::openpty(Some(&size), None).unwrap();
    let slave: OwnedFd = pty.slave;
    let mut child = c
        .cmd()
        .args(["run", "--rm", "-t", "--runtime", RUNTIME, IMAGE, id, "sh"])
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
    master
        .write_all(b"tty; echo SZ-$(stty size | tr ' ' x); echo TT-$((6*7))\n")
        .unwrap();
    wait_for(&mut seen, "TT-42", 30);
    assert!(text(&seen).contains("/dev/pts/"), "{}", text(&seen));
    assert!(text(&seen).contains("SZ-40x100"), "{}", text(&seen));
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
}
