//! Containers verbs' helpers: a real `emberd` (from this workspace's target directory,
//! its shim on PATH) on a temporary root and socket, and the `ember` CLI pointed at it.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The guest image the shims boot: `$EMBER_GUEST_DIR`, else the installed one.
pub fn guest_dir() -> PathBuf {
    ember_guest::default_dir()
}

/// The directory of the workspace's binaries (`ember`, `emberd`, the shim).
pub fn bin_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_ember"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Whether emberd can run here; prints why not.
pub fn can_run() -> bool {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipping: needs root");
        return false;
    }
    for b in ["emberd", "containerd-shim-ember-v2"] {
        if !bin_dir().join(b).exists() {
            eprintln!("skipping: {b} not built (cargo build --workspace)");
            return false;
        }
    }
    if which("runc").is_none() || which("containerd-shim-runc-v2").is_none() {
        eprintln!("skipping: runc or containerd-shim-runc-v2 missing");
        return false;
    }
    true
}

pub fn which(b: &str) -> Option<PathBuf> {
    std::env::var("PATH")
        .ok()?
        .split(':')
        .map(|d| Path::new(d).join(b))
        .find(|p| p.exists())
}

/// Whether the microVM guest is installed; prints why not.
pub fn has_guest() -> bool {
    let dir = guest_dir();
    let ok = dir.join("vmlinux").exists() && which("qemu-system-x86_64").is_some();
    if !ok {
        eprintln!(
            "skipping the microVM part: no guest in {} or no qemu-system-x86_64",
            dir.display()
        );
    }
    ok
}

pub fn path_env() -> String {
    format!(
        "{}:{}",
        bin_dir().display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

pub struct Daemon {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    child: Child,
}

impl Daemon {
    pub fn start() -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("emberd.sock");
        let log = std::fs::File::create(dir.path().join("emberd.log")).unwrap();
        let mut child = Command::new(bin_dir().join("emberd"))
            .env("PATH", path_env())
            .arg("--root")
            .arg(dir.path().join("root"))
            .arg("--state")
            .arg(dir.path().join("state"))
            .arg("--address")
            .arg(&socket)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting emberd");
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::os::unix::net::UnixStream::connect(&socket).is_err() {
            if let Ok(Some(s)) = child.try_wait() {
                panic!("emberd exited with {s}: {}", Daemon::log_of(dir.path()));
            }
            assert!(Instant::now() < deadline, "emberd did not come up");
            std::thread::sleep(Duration::from_millis(20));
        }
        Daemon { dir, socket, child }
    }

    fn log_of(dir: &Path) -> String {
        std::fs::read_to_string(dir.join("emberd.log")).unwrap_or_default()
    }

    pub fn log(&self) -> String {
        Daemon::log_of(self.dir.path())
    }

    /// `ember` against this daemon, its state under the daemon's directory.
    pub fn ember(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_ember"));
        c.env("EMBER_ADDRESS", &self.socket)
            .env("EMBER_STATE_DIR", self.dir.path().join("cli"))
            .env("PATH", path_env())
            .stdin(Stdio::null());
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.ember().args(args).output().expect("running ember")
    }

    /// Imports the busybox image as `name`.
    pub fn import_busybox(&self, name: &str) {
        let tar = self.dir.path().join("busybox.tar");
        ember_guest::busybox_docker_archive(&tar, name).unwrap();
        let o = self.run(&["images", "import", "-q", tar.to_str().unwrap()]);
        assert!(o.status.success(), "import: {}", text(&o.stderr));
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // Containers a failed assertion left behind go first, shims and all.
        if let Ok(o) = self.ember().args(["ps", "-a", "-q"]).output() {
            let ids: Vec<String> = text(&o.stdout).lines().map(String::from).collect();
            if !ids.is_empty() {
                let _ = self.ember().arg("rm").arg("-f").args(&ids).output();
            }
        }
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// stdout, asserting success.
pub fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        text(&o.stdout),
        text(&o.stderr)
    );
    text(&o.stdout)
}

impl Daemon {
    /// A shell line run under `script` (a pty), with ember's environment.
    pub fn ember_shell(&self, line: &str) -> Output {
        Command::new("script")
            .args(["-qec", line, "/dev/null"])
            .env("EMBER_ADDRESS", &self.socket)
            .env("EMBER_STATE_DIR", self.dir.path().join("cli"))
            .env("PATH", path_env())
            .stdin(Stdio::null())
            .output()
            .expect("running script")
    }
}
