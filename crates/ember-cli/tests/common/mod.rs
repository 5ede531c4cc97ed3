//! Helpers for the command line's tests: a real `emberd` (built next to `ember`)
//! or a private containerd on temporary roots, and `ember` run against them.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The `ember` binary under test.
pub fn ember_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ember"))
}

/// `emberd`, built beside `ember` by the workspace build.
pub fn emberd_bin() -> PathBuf {
    ember_bin().with_file_name("emberd")
}

/// A daemon process with its files under a directory of the caller's.
pub struct Daemon {
    pub socket: PathBuf,
    pub log: PathBuf,
    child: Child,
}

fn wait_for_socket(path: &Path, child: &mut Child, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::os::unix::net::UnixStream::connect(path).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "daemon exited with {status}:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        assert!(
            Instant::now() < deadline,
            "daemon did not come up on {}:\n{}",
            path.display(),
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Daemon {
    /// emberd with root, state and socket under `dir`.
    pub fn emberd(dir: &Path) -> Daemon {
        std::fs::create_dir_all(dir).unwrap();
        let log = dir.join("emberd.log");
        let socket = dir.join("emberd.sock");
        let mut child = Command::new(emberd_bin())
            .arg("--root")
            .arg(dir.join("root"))
            .arg("--state")
            .arg(dir.join("state"))
            .arg("--address")
            .arg(&socket)
            .args(["--log-level", "debug"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("starting emberd");
        wait_for_socket(&socket, &mut child, &log);
        Daemon { socket, log, child }
    }

    /// The containerd binary `bin` with a private root, state and sockets under
    /// `dir`, and extra environment `env`.
    pub fn containerd(bin: &str, dir: &Path, env: &[(&str, &str)]) -> Daemon {
        std::fs::create_dir_all(dir).unwrap();
        let d = dir.display();
        let config = format!(
            "version = 2\nroot = \"{d}/root\"\nstate = \"{d}/state\"\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n[grpc]\n  address = \"{d}/c.sock\"\n[ttrpc]\n  address = \"{d}/c.ttrpc.sock\"\n[debug]\n  address = \"{d}/debug.sock\"\n"
        );
        std::fs::write(dir.join("config.toml"), config).unwrap();
        let log = dir.join("containerd.log");
        let socket = dir.join("c.sock");
        let mut child = Command::new(bin)
            .envs(env.iter().copied())
            .arg("--config")
            .arg(dir.join("config.toml"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("starting containerd");
        wait_for_socket(&socket, &mut child, &log);
        Daemon { socket, log, child }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One `ember` run.
pub struct Run {
    pub ok: bool,
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn expect_ok(&self) -> &str {
        assert!(self.ok, "ember failed:\n{}\n{}", self.stdout, self.stderr);
        &self.stdout
    }
}

/// Runs `ember` against `socket` in namespace `ns`, with `docker_config` as
/// its credentials directory and `stdin` as its input.
pub fn ember(socket: &Path, ns: &str, docker_config: &Path, args: &[&str], stdin: &str) -> Run {
    use std::io::Write;
    // Bounded: a run that hangs fails the test.
    let mut child = Command::new("timeout")
        .arg("180")
        .arg(ember_bin())
        .env("DOCKER_CONFIG", docker_config)
        .arg("--address")
        .arg(socket)
        .args(["-n", ns])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running ember");
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.as_bytes()).unwrap();
    drop(input);
    let out = child.wait_with_output().unwrap();
    Run {
        ok: out.status.success(),
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

pub mod containers;
