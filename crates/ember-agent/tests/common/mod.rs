//! The harness of the host agent tests: a real `ember-agent` on the host over a
//! unix socket with a busybox rootfs (or, with `EMBER_AGENT_TEST_VM_SOCK`, the agent
//! of a booted guest).
//!
//! Needs root (namespaces, mounts, cgroups) and a static busybox at /bin/busybox;
//! tests skip with a message otherwise. The agent runs with `--cgroup-root` pointing
//! at a throw-away sub-cgroup of the host's cgroup v2 mount and uses the `path:`
//! rootfs escape hatch instead of a virtio block device.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use ember_agent_api::*;
use serde_json::json;

pub const BUSYBOX: &str = "/bin/busybox";

pub fn skip_reason() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("not root".into());
    }
    if !Path::new(BUSYBOX).exists() {
        return Some(format!("{BUSYBOX} missing"));
    }
    None
}

macro_rules! require_root {
    () => {
        if let Some(r) = $crate::common::skip_reason() {
            eprintln!("SKIPPED: {r}");
            return;
        }
    };
}

/// The host's cgroup v2 mount point, if any.
pub fn cgroup2_mount() -> Option<PathBuf> {
    let mi = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    mi.lines().find_map(|l| {
        let (pre, post) = l.split_once(" - ")?;
        if post.split(' ').next()? == "cgroup2" {
            Some(PathBuf::from(pre.split(' ').nth(4)?))
        } else {
            None
        }
    })
}

pub struct Harness {
    pub dir: PathBuf,
    pub rootfs: PathBuf,
    pub cgroup: Option<PathBuf>,
    pub agent: Option<Child>,
    pub client: AgentClient,
    /// Talking to an agent inside a VM (see `vm()`), not one started here.
    pub vm: Option<Vm>,
}

/// A booted guest to test against instead of a host agent: the QEMU chardev socket
/// of the `ember.agent` port (EMBER_AGENT_TEST_VM_SOCK) and the serial of a virtio
/// disk holding an ext4 busybox rootfs (EMBER_AGENT_TEST_VM_SERIAL). One
/// connection at a time: run with `--test-threads 1`.
#[derive(Clone)]
pub struct Vm {
    pub sock: PathBuf,
    pub serial: String,
}

pub fn vm() -> Option<Vm> {
    Some(Vm {
        sock: std::env::var_os("EMBER_AGENT_TEST_VM_SOCK")?.into(),
        serial: std::env::var("EMBER_AGENT_TEST_VM_SERIAL").unwrap_or_else(|_| "rootfs".into()),
    })
}

/// Connects to the VM's agent port; the previous test's session may still be ending.
pub async fn connect_vm(vm: &Vm) -> AgentClient {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(mut s) = tokio::net::UnixStream::connect(&vm.sock).await {
            // A serial channel has no connections: the marker starts this one.
            use tokio::io::AsyncWriteExt;
            if s.write_all(SERIAL_SYNC).await.is_ok() {
                let c = AgentClient::new(s);
                if c.ping(Duration::from_secs(2)).await.is_ok() {
                    return c;
                }
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "agent in the VM does not answer"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

impl Harness {
    pub async fn start(name: &str) -> Harness {
        Self::start_wrapped(name, &[]).await
    }

    /// `start`, with the agent run under the command `wrap` (e.g. `ip netns exec NS`);
    /// a VM (see `vm()`) is used as is.
    pub async fn start_wrapped(name: &str, wrap: &[&str]) -> Harness {
        if let Some(vm) = vm() {
            return Harness {
                dir: PathBuf::from("/nonexistent"),
                rootfs: PathBuf::from("/nonexistent"),
                cgroup: None,
                agent: None,
                client: connect_vm(&vm).await,
                vm: Some(vm),
            };
        }
        let dir = std::env::temp_dir().join(format!("ember-agent-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let rootfs = dir.join("rootfs");
        for d in ["bin", "proc", "sys", "dev", "tmp", "etc"] {
            std::fs::create_dir_all(rootfs.join(d)).unwrap();
        }
        std::fs::copy(BUSYBOX, rootfs.join("bin/busybox")).unwrap();
        let list = Command::new(BUSYBOX).arg("--list").output().unwrap();
        for applet in String::from_utf8_lossy(&list.stdout).lines() {
            if applet != "busybox" {
                let _ = std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet));
            }
        }
        let cgroup =
            cgroup2_mount().map(|m| m.join(format!("ember-test-{name}-{}", std::process::id())));
        if let Some(cg) = &cgroup {
            std::fs::create_dir_all(cg).unwrap();
        }
        let sock = dir.join("agent.sock");
        // EMBER_AGENT_TEST_AS_PID1=1 runs the agent as PID 1 of fresh pid, mount, uts
        // and net namespaces (with TMPDIR outside /tmp, which the agent mounts over),
        // exercising its PID 1 setup and reaping.
        let as_pid1 = std::env::var_os("EMBER_AGENT_TEST_AS_PID1").is_some();
        let mut cmd = if as_pid1 {
            let mut c = Command::new("unshare");
            c.args([
                "--pid",
                "--fork",
                "--kill-child",
                "--mount",
                "--uts",
                "--net",
                "--propagation",
                "private",
                "--",
                env!("CARGO_BIN_EXE_ember-agent"),
            ]);
            c
        } else if let Some((first, rest)) = wrap.split_first() {
            let mut c = Command::new(first);
            c.args(rest).arg(env!("CARGO_BIN_EXE_ember-agent"));
            c
        } else {
            Command::new(env!("CARGO_BIN_EXE_ember-agent"))
        };
        cmd.arg("--listen")
            .arg(format!("unix:{}", sock.display()))
            .arg("--state-dir")
            .arg(dir.join("state"))
            .arg("--run-dir")
            .arg(dir.join("run"))
            .arg("--log")
            .arg("debug")
            .stdout(Stdio::piped());
        match &cgroup {
            // As PID 1 the agent mounts the cgroup2 root at /sys/fs/cgroup itself.
            Some(cg) if as_pid1 => cmd.arg("--cgroup-root").arg(
                Path::new("/sys/fs/cgroup")
                    .join(cg.strip_prefix(cgroup2_mount().unwrap()).unwrap()),
            ),
            Some(cg) => cmd.arg("--cgroup-root").arg(cg),
            None => cmd.arg("--cgroup-root").arg("none"),
        };
        let mut agent = cmd.spawn().unwrap();
        // Wait for the ready marker.
        let stdout = agent.stdout.take().unwrap();
        let line = tokio::task::spawn_blocking(move || {
            use std::io::BufRead;
            let mut l = String::new();
            std::io::BufReader::new(stdout).read_line(&mut l).unwrap();
            l
        })
        .await
        .unwrap();
        assert_eq!(line.trim(), READY_MARKER);
        let stream = tokio::net::UnixStream::connect(&sock).await.unwrap();
        let client = AgentClient::new(stream);
        Harness {
            dir,
            rootfs,
            cgroup,
            agent: Some(agent),
            client,
            vm: None,
        }
    }

    /// The agent's `files/` and `metadata/` parent: the guest's /run/ember, or a
    /// private directory for a host agent.
    pub fn run_dir(&self) -> PathBuf {
        if self.vm.is_some() {
            PathBuf::from("/run/ember")
        } else {
            self.dir.join("run")
        }
    }

    pub fn has_cgroups(&self) -> bool {
        self.cgroup.is_some() || self.vm.is_some()
    }

    pub fn rootfs(&self) -> BlockRootfs {
        if let Some(vm) = &self.vm {
            return BlockRootfs {
                serial: vm.serial.clone(),
                fstype: "ext4".into(),
                options: String::new(),
                read_only: false,
                subpath: String::new(),
                ..Default::default()
            };
        }
        BlockRootfs {
            serial: format!("path:{}", self.rootfs.display()),
            fstype: String::new(),
            options: String::new(),
            read_only: false,
            subpath: String::new(),
            ..Default::default()
        }
    }

    pub async fn create(&self, id: &str, args: &[&str], stdio: StdioConfig) -> u32 {
        self.try_create(id, spec(args, stdio.terminal), stdio)
            .await
            .unwrap()
    }

    pub async fn try_create(
        &self,
        id: &str,
        spec: serde_json::Value,
        stdio: StdioConfig,
    ) -> ember_ttrpc::Result<u32> {
        let r = self
            .client
            .create_container(&CreateContainerRequest {
                container_id: id.into(),
                spec_json: serde_json::to_vec(&spec).unwrap(),
                rootfs: Some(self.rootfs()),
                stdio: Some(stdio),
                files: Vec::new(),
                ..Default::default()
            })
            .await?;
        Ok(r.pid)
    }

    /// Runs a container to completion: (status, stdout, stderr).
    pub async fn run(&self, id: &str, args: &[&str]) -> (u32, String, String) {
        self.run_spec(id, spec(args, false)).await
    }

    pub async fn run_spec(&self, id: &str, spec: serde_json::Value) -> (u32, String, String) {
        let r = self.run_spec_keep(id, spec).await;
        self.client.remove_container(id).await.unwrap();
        eprintln!("[{id}] removed");
        r
    }

    /// Runs a container to completion without removing it.
    pub async fn run_spec_keep(&self, id: &str, spec: serde_json::Value) -> (u32, String, String) {
        self.try_create(id, spec, StdioConfig::default())
            .await
            .unwrap();
        let out = tokio::spawn(read_all(
            self.client.clone(),
            id.into(),
            "".into(),
            OutputStream::Stdout,
        ));
        let err = tokio::spawn(read_all(
            self.client.clone(),
            id.into(),
            "".into(),
            OutputStream::Stderr,
        ));
        self.client.start_process(id, "").await.unwrap();
        eprintln!("[{id}] started");
        let st = self.client.wait_process(id, "").await.unwrap().exit_status;
        eprintln!("[{id}] exited {st}");
        let out = String::from_utf8(out.await.unwrap()).unwrap();
        let err = String::from_utf8(err.await.unwrap()).unwrap();
        eprintln!("[{id}] output read");
        (st, out, err)
    }
}

impl Harness {
    /// Runs `args` in the running container `id` as exec `exec_id`: (status,
    /// stdout, stderr).
    pub async fn exec(&self, id: &str, exec_id: &str, args: &[&str]) -> (u32, String, String) {
        self.client
            .create_process(&CreateProcessRequest {
                container_id: id.into(),
                exec_id: exec_id.into(),
                process_json: process_json(args, false),
                stdio: None,
            })
            .await
            .unwrap();
        let out = tokio::spawn(read_all(
            self.client.clone(),
            id.into(),
            exec_id.into(),
            OutputStream::Stdout,
        ));
        let err = tokio::spawn(read_all(
            self.client.clone(),
            id.into(),
            exec_id.into(),
            OutputStream::Stderr,
        ));
        self.client.start_process(id, exec_id).await.unwrap();
        let st = self
            .client
            .wait_process(id, exec_id)
            .await
            .unwrap()
            .exit_status;
        let out = String::from_utf8(out.await.unwrap()).unwrap();
        let err = String::from_utf8(err.await.unwrap()).unwrap();
        self.client.remove_process(id, exec_id).await.unwrap();
        (st, out, err)
    }
}

pub async fn read_all(c: AgentClient, id: String, exec: String, stream: OutputStream) -> Vec<u8> {
    let mut v = Vec::new();
    loop {
        let r = c
            .read_output(&id, &exec, stream, MAX_IO_CHUNK)
            .await
            .unwrap();
        v.extend_from_slice(&r.data);
        if r.eof {
            return v;
        }
        assert!(!r.data.is_empty(), "empty data without eof");
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        let Some(agent) = &mut self.agent else { return };
        let _ = agent.kill();
        let _ = agent.wait();
        if let Some(cg) = &self.cgroup {
            // Children first.
            if let Ok(rd) = std::fs::read_dir(cg.join("ember")) {
                for e in rd.flatten() {
                    let _ = std::fs::write(e.path().join("cgroup.kill"), "1");
                    std::thread::sleep(Duration::from_millis(50));
                    let _ = std::fs::remove_dir(e.path());
                }
            }
            let _ = std::fs::remove_dir(cg.join("ember"));
            let _ = std::fs::remove_dir(cg);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn spec(args: &[&str], terminal: bool) -> serde_json::Value {
    json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": terminal,
            "user": {"uid": 0, "gid": 0},
            "args": args,
            "env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin", "TERM=xterm"],
            "cwd": "/",
            "capabilities": {
                "bounding": ["CAP_CHOWN", "CAP_KILL", "CAP_SETUID", "CAP_SETGID", "CAP_NET_BIND_SERVICE"],
                "effective": ["CAP_CHOWN", "CAP_KILL", "CAP_SETUID", "CAP_SETGID", "CAP_NET_BIND_SERVICE"],
                "permitted": ["CAP_CHOWN", "CAP_KILL", "CAP_SETUID", "CAP_SETGID", "CAP_NET_BIND_SERVICE"]
            },
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": true
        },
        "root": {"path": "rootfs"},
        "hostname": "ctr",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
             "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
             "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs",
             "options": ["nosuid", "noexec", "nodev", "ro"]}
        ],
        "linux": {
            "namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}],
            "maskedPaths": ["/proc/kcore", "/proc/scsi"],
            "readonlyPaths": ["/proc/sys", "/proc/bus"]
        }
    })
}

pub fn process_json(args: &[&str], terminal: bool) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "terminal": terminal,
        "user": {"uid": 0, "gid": 0},
        "args": args,
        "env": ["PATH=/bin"],
        "cwd": "/tmp"
    }))
    .unwrap()
}
