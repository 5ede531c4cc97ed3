//! Helpers for the daemon tests: a real `emberd` on a temporary root and socket,
//! Debian's `ctr` to drive it, and a private `containerd` to compare with.

#![allow(dead_code)]

pub mod layered;
pub mod tasks;
pub mod vms;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use containerd_client::tonic::transport::Channel;
use containerd_client::tonic::Request;

pub const CTR: &str = "/usr/bin/ctr";
pub const CONTAINERD: &str = "/usr/bin/containerd";

/// Whether the tests that need root and `ctr` can run here; prints why not.
pub fn can_run() -> bool {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipping: needs root");
        return false;
    }
    if !Path::new(CTR).exists() {
        eprintln!("skipping: {CTR} missing (apt-get install containerd)");
        return false;
    }
    true
}

fn wait_for_socket(path: &Path, child: &mut Child, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "daemon exited with {status}:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        if Instant::now() > deadline {
            panic!(
                "daemon did not come up on {}:\n{}",
                path.display(),
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// An `emberd` process.
pub struct Emberd {
    pub dir: PathBuf,
    pub root: PathBuf,
    pub socket: PathBuf,
    pub config: Option<PathBuf>,
    /// Environment emberd (and so its shims) starts with, beyond the test's.
    pub env: Vec<(String, String)>,
    child: Option<Child>,
}

impl Emberd {
    /// Starts emberd with its root, state and socket under `dir`.
    pub fn start(dir: &Path) -> Emberd {
        Self::start_with_config(dir, None)
    }

    pub fn start_with_config(dir: &Path, config: Option<&str>) -> Emberd {
        Self::start_with_env(dir, config, &[])
    }

    pub fn start_with_env(dir: &Path, config: Option<&str>, env: &[(&str, &str)]) -> Emberd {
        let config = config.map(|c| {
            let p = dir.join("emberd.toml");
            std::fs::write(&p, c).unwrap();
            p
        });
        let mut d = Emberd {
            dir: dir.to_path_buf(),
            root: dir.join("root"),
            socket: dir.join("emberd.sock"),
            config,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            child: None,
        };
        d.spawn();
        d
    }

    fn spawn(&mut self) {
        let log = self.dir.join("emberd.log");
        let logf = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_emberd"));
        // Shims are found on PATH: the workspace's own (containerd-shim-ember-v2)
        // first, then Debian's.
        let bin = Path::new(env!("CARGO_BIN_EXE_emberd")).parent().unwrap();
        let path = std::env::var("PATH").unwrap_or_default();
        cmd.env("PATH", format!("{}:{path}", bin.display()));
        cmd.envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        cmd.arg("--root")
            .arg(&self.root)
            .arg("--state")
            .arg(self.dir.join("state"))
            .arg("--address")
            .arg(&self.socket)
            .arg("--log-level")
            .arg("debug");
        if let Some(c) = &self.config {
            cmd.arg("--config").arg(c);
        }
        let mut child = cmd
            .stdout(Stdio::null())
            .stderr(logf)
            .spawn()
            .expect("starting emberd");
        wait_for_socket(&self.socket, &mut child, &log);
        self.child = Some(child);
    }

    /// runc's root for this daemon's runc tasks (one directory per namespace),
    /// beside the task bundles in its state directory.
    pub fn runc_root(&self) -> PathBuf {
        self.dir.join("state").join("runc")
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// SIGTERM and wait; the socket goes away.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let status = c.wait().unwrap();
            assert!(status.success(), "emberd exited with {status}");
        }
    }

    /// SIGTERM, then waits up to `limit` for the exit; whether it exited in time
    /// (killed otherwise).
    pub fn stop_within(&mut self, limit: Duration) -> bool {
        let Some(mut c) = self.child.take() else {
            return true;
        };
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(c.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = c.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        let _ = c.wait();
        false
    }

    /// SIGKILL, no chance to clean up.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// Starts again after a kill.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none());
        self.spawn();
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("emberd.log")).unwrap_or_default()
    }

    pub async fn channel(&self) -> Channel {
        containerd_client::connect(&self.socket)
            .await
            .expect("connecting to emberd")
    }
}

impl Drop for Emberd {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A private containerd (root/state/socket under a temporary directory), for
/// comparing outputs. `None` when containerd is not installed.
pub struct Containerd {
    pub socket: PathBuf,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Containerd {
    pub fn start() -> Option<Containerd> {
        Self::launch(CONTAINERD, &[], &[], "")
    }

    /// Starts the containerd binary `bin` with extra environment `env`.
    pub fn start_with(bin: &str, env: &[(&str, &str)]) -> Option<Containerd> {
        Self::launch(bin, env, &[], "")
    }

    /// Starts containerd with more `disabled_plugins` and `extra` appended to its
    /// configuration.
    pub fn start_configured(disabled: &[&str], extra: &str) -> Option<Containerd> {
        Self::launch(CONTAINERD, &[], disabled, extra)
    }

    fn launch(
        bin: &str,
        env: &[(&str, &str)],
        disabled: &[&str],
        extra: &str,
    ) -> Option<Containerd> {
        if !Path::new(bin).exists() {
            eprintln!("{bin} missing: not comparing");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let config = format!(
            r#"version = 2
root = "{root}"
state = "{state}"
disabled_plugins = ["io.containerd.grpc.v1.cri"{disabled}]
[grpc]
  address = "{d}/c.sock"
[ttrpc]
  address = "{d}/c.ttrpc.sock"
[debug]
  address = "{d}/debug.sock"
{extra}
"#,
            disabled = disabled
                .iter()
                .map(|p| format!(", {p:?}"))
                .collect::<String>(),
            root = d.join("root").display(),
            state = d.join("state").display(),
            d = d.display()
        );
        std::fs::write(d.join("config.toml"), config).unwrap();
        let log = d.join("containerd.log");
        let mut child = Command::new(bin)
            .envs(env.iter().copied())
            .arg("--config")
            .arg(d.join("config.toml"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("starting containerd");
        let socket = d.join("c.sock");
        wait_for_socket(&socket, &mut child, &log);
        Some(Containerd {
            socket,
            child,
            _dir: dir,
        })
    }
}

impl Containerd {
    /// The daemon's root directory.
    pub fn root(&self) -> PathBuf {
        self._dir.path().join("root")
    }
}

impl Drop for Containerd {
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

/// The result of one `ctr` run.
pub struct Ctr {
    /// The exit code (`ctr run` exits with the task's).
    pub code: Option<i32>,
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

impl Ctr {
    /// The error class at the end of ctr's message (`not found`, `already
    /// exists`, ...), or `ok`.
    pub fn class(&self) -> String {
        if self.ok {
            return "ok".into();
        }
        let last = self
            .stderr
            .trim()
            .lines()
            .last()
            .unwrap_or_default()
            .to_string();
        for class in [
            "not found",
            "already exists",
            "invalid argument",
            "failed precondition",
            "unavailable",
            "not implemented",
        ] {
            if last.contains(class) {
                return class.into();
            }
        }
        format!("other: {last}")
    }

    #[track_caller]
    pub fn expect_ok(&self) -> &str {
        assert!(self.ok, "ctr failed: {}{}", self.stdout, self.stderr);
        &self.stdout
    }
}

/// Runs `ctr -a SOCKET -n NS ARGS...`.
pub fn ctr(socket: &Path, ns: &str, args: &[&str]) -> Ctr {
    ctr_with(CTR, socket, ns, args)
}

/// Runs the `ctr` binary `bin` (`-a SOCKET -n NS ARGS...`).
pub fn ctr_with(bin: &str, socket: &Path, ns: &str, args: &[&str]) -> Ctr {
    run_ctr(Command::new(bin), socket, ns, args)
}

/// Like [`ctr`], killed after `secs` seconds (exit code 124 then).
pub fn ctr_within(secs: u32, socket: &Path, ns: &str, args: &[&str]) -> Ctr {
    let mut cmd = Command::new("timeout");
    cmd.args(["-s", "KILL", &secs.to_string(), CTR]);
    run_ctr(cmd, socket, ns, args)
}

fn run_ctr(mut cmd: Command, socket: &Path, ns: &str, args: &[&str]) -> Ctr {
    let out: Output = cmd
        .arg("-a")
        .arg(socket)
        .arg("-n")
        .arg(ns)
        .args(args)
        .output()
        .expect("running ctr");
    Ctr {
        ok: out.status.success(),
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The first line of a table, as words.
pub fn header(table: &str) -> Vec<String> {
    table
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

/// The first column of a table's rows.
pub fn first_column(table: &str) -> Vec<String> {
    table
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

/// A request carrying a namespace.
pub fn req<T>(ns: &str, msg: T) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut()
        .insert("containerd-namespace", ns.parse().unwrap());
    r
}

/// A mounted directory, unmounted on drop.
pub struct Mounted(pub PathBuf);

impl Mounted {
    /// Runs the `mount ...` line `ctr snapshots mounts` printed.
    pub fn run(line: &str, target: &Path) -> Mounted {
        let line = line.trim();
        assert!(line.starts_with("mount "), "not a mount command: {line}");
        assert!(line.contains(&target.display().to_string()), "{line}");
        let out = Command::new("sh").arg("-c").arg(line).output().unwrap();
        assert!(
            out.status.success(),
            "{line}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Mounted(target.to_path_buf())
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}
