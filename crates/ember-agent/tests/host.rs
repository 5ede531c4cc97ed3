//! Drives a real `ember-agent` on the host over a unix socket with a busybox rootfs.
//!
//! Needs root (namespaces, mounts, cgroups) and a static busybox at /bin/busybox;
//! skips with a message otherwise. The agent runs with `--cgroup-root` pointing at a
//! throw-away sub-cgroup of the host's cgroup v2 mount and uses the `path:` rootfs
//! escape hatch instead of a virtio block device.

#![deny(clippy::undocumented_unsafe_blocks)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use ember_agent_api::*;
use ember_ttrpc::Code;
use serde_json::json;

const BUSYBOX: &str = "/bin/busybox";

fn skip_reason() -> Option<String> {
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
        if let Some(r) = skip_reason() {
            eprintln!("SKIPPED: {r}");
            return;
        }
    };
}

/// The host's cgroup v2 mount point, if any.
fn cgroup2_mount() -> Option<PathBuf> {
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

struct Harness {
    dir: PathBuf,
    rootfs: PathBuf,
    cgroup: Option<PathBuf>,
    agent: Option<Child>,
    client: AgentClient,
    /// Talking to an agent inside a VM (see `vm()`), not one started here.
    vm: Option<Vm>,
}

/// A booted guest to test against instead of a host agent: the QEMU chardev socket
/// of the `ember.agent` port (EMBER_AGENT_TEST_VM_SOCK) and the serial of a virtio
/// disk holding an ext4 busybox rootfs (EMBER_AGENT_TEST_VM_SERIAL). One
/// connection at a time: run with `--test-threads 1`.
#[derive(Clone)]
struct Vm {
    sock: PathBuf,
    serial: String,
}

fn vm() -> Option<Vm> {
    Some(Vm {
        sock: std::env::var_os("EMBER_AGENT_TEST_VM_SOCK")?.into(),
        serial: std::env::var("EMBER_AGENT_TEST_VM_SERIAL").unwrap_or_else(|_| "rootfs".into()),
    })
}

/// Connects to the VM's agent port; the previous test's session may still be ending.
async fn connect_vm(vm: &Vm) -> AgentClient {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(s) = tokio::net::UnixStream::connect(&vm.sock).await {
            let c = AgentClient::new(s);
            if c.ping(Duration::from_secs(2)).await.is_ok() {
                return c;
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
    async fn start(name: &str) -> Harness {
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
        } else {
            Command::new(env!("CARGO_BIN_EXE_ember-agent"))
        };
        cmd.arg("--listen")
            .arg(format!("unix:{}", sock.display()))
            .arg("--state-dir")
            .arg(dir.join("state"))
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

    fn has_cgroups(&self) -> bool {
        self.cgroup.is_some() || self.vm.is_some()
    }

    fn rootfs(&self) -> BlockRootfs {
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

    async fn create(&self, id: &str, args: &[&str], stdio: StdioConfig) -> u32 {
        self.try_create(id, spec(args, stdio.terminal), stdio)
            .await
            .unwrap()
    }

    async fn try_create(
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
            })
            .await?;
        Ok(r.pid)
    }

    /// Runs a container to completion: (status, stdout, stderr).
    async fn run(&self, id: &str, args: &[&str]) -> (u32, String, String) {
        self.run_spec(id, spec(args, false)).await
    }

    async fn run_spec(&self, id: &str, spec: serde_json::Value) -> (u32, String, String) {
        let r = self.run_spec_keep(id, spec).await;
        self.client.remove_container(id).await.unwrap();
        eprintln!("[{id}] removed");
        r
    }

    /// Runs a container to completion without removing it.
    async fn run_spec_keep(&self, id: &str, spec: serde_json::Value) -> (u32, String, String) {
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

async fn read_all(c: AgentClient, id: String, exec: String, stream: OutputStream) -> Vec<u8> {
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

fn spec(args: &[&str], terminal: bool) -> serde_json::Value {
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

fn process_json(args: &[&str], terminal: bool) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "terminal": terminal,
        "user": {"uid": 0, "gid": 0},
        "args": args,
        "env": ["PATH=/bin"],
        "cwd": "/tmp"
    }))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basics_and_errors() {
    require_root!();
    let h = Harness::start("basics").await;
    let ping = h.client.ping(Duration::from_secs(5)).await.unwrap();
    let uname = if h.vm.is_some() {
        ping.kernel_release.clone()
    } else {
        String::from_utf8(Command::new("uname").arg("-r").output().unwrap().stdout).unwrap()
    };
    assert_eq!(ping.kernel_release, uname.trim());

    let (st, out, _) = h.run("uname", &["uname", "-r"]).await;
    assert_eq!((st, out.trim()), (0, uname.trim()));

    let (st, _, _) = h.run("exit3", &["sh", "-c", "exit 3"]).await;
    assert_eq!(st, 3);

    let (st, out, err) = h
        .run(
            "env",
            &["sh", "-c", "hostname; echo oops >&2; pwd; ls /dev"],
        )
        .await;
    assert_eq!(st, 0);
    assert!(out.starts_with("ctr\n/\n"), "{out}");
    for d in ["null", "zero", "urandom", "tty", "pts", "shm", "ptmx", "fd"] {
        assert!(
            out.lines().any(|l| l.split_whitespace().any(|w| w == d)),
            "/dev lacks {d}: {out}"
        );
    }
    assert_eq!(err, "oops\n");

    // Errors.
    let e = h.client.start_process("nope", "").await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e}");
    let e = h.client.wait_process("nope", "").await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e}");
    let e = h
        .client
        .create_container(&CreateContainerRequest {
            container_id: "bad".into(),
            spec_json: b"{not json".to_vec(),
            rootfs: Some(h.rootfs()),
            stdio: None,
            files: Vec::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e}");
    let e = h
        .try_create("../x", spec(&["true"], false), StdioConfig::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e}");

    h.create("twice", &["true"], StdioConfig::default()).await;
    let e = h
        .try_create("twice", spec(&["true"], false), StdioConfig::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists, "{e}");
    h.client.start_process("twice", "").await.unwrap();
    let e = h.client.start_process("twice", "").await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e}");
    assert_eq!(
        h.client
            .wait_process("twice", "")
            .await
            .unwrap()
            .exit_status,
        0
    );
    // Several waiters, also after the exit.
    assert_eq!(
        h.client
            .wait_process("twice", "")
            .await
            .unwrap()
            .exit_status,
        0
    );
    let e = h
        .client
        .read_output("twice", "zz", OutputStream::Stdout, 10)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e}");
    h.client.remove_container("twice").await.unwrap();
    let e = h.client.remove_container("twice").await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e}");

    // A missing executable fails the create (as runc's does), with a clear error,
    // and leaves no container.
    for (id, exe, says) in [
        ("noexe", "/bin/does-not-exist", "no such file or directory"),
        ("nopath", "no-such-cmd", "not found in $PATH"),
    ] {
        let e = h
            .try_create(id, spec(&[exe], false), StdioConfig::default())
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition, "{e}");
        assert!(
            e.to_string().contains(exe) && e.to_string().contains(says),
            "{e}"
        );
        let e = h.client.start_process(id, "").await.unwrap_err();
        assert_eq!(e.code(), Code::NotFound, "{e}");
    }

    // Setup failures are clear errors and leave nothing behind.
    let mut sp = spec(&["true"], false);
    sp["mounts"].as_array_mut().unwrap().push(json!({
        "destination": "/data", "type": "bind", "source": "/nonexistent/src", "options": ["rbind"]
    }));
    let e = h
        .try_create("badmount", sp, StdioConfig::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e}");
    assert!(e.to_string().contains("/nonexistent/src"), "{e}");
    if h.vm.is_none() {
        assert!(!h.dir.join("state/badmount").exists());
    }
    h.client.list_pids("badmount").await.unwrap_err();

    // Read-only root, a read-only bind mount, rlimits, a non-root user.
    // (A directory of the agent's side with a known file in it.)
    let (data, file, content) = if h.vm.is_some() {
        (PathBuf::from("/proc/sys/kernel"), "ostype", "Linux")
    } else {
        let data = h.dir.join("data");
        std::fs::create_dir_all(&data).unwrap();
        std::fs::write(data.join("hello"), "hi\n").unwrap();
        (data, "hello", "hi")
    };
    let script = format!(
        "cat /data/{file}; touch /x 2>/dev/null && echo rw || echo ro; \
         touch /data/y 2>/dev/null && echo rw || echo ro; ulimit -n; id -u; id -G; \
         cat /proc/self/status | grep -E '^(NoNewPrivs|CapEff)'"
    );
    let mut sp = spec(&["sh", "-c", &script], false);
    sp["root"]["readonly"] = json!(true);
    sp["process"]["user"] = json!({"uid": 1000, "gid": 1000, "additionalGids": [10, 20]});
    sp["mounts"].as_array_mut().unwrap().push(json!({
        "destination": "/data", "type": "bind", "source": data, "options": ["rbind", "ro"]
    }));
    let (st, out, err) = h.run_spec("ro", sp).await;
    assert_eq!(st, 0, "{err}");
    assert_eq!(
        out,
        format!("{content}\nro\nro\n1024\n1000\n1000 10 20\nCapEff:\t0000000000000000\nNoNewPrivs:\t1\n")
    );

    // A removed-before-start container goes away cleanly.
    h.create("unstarted", &["true"], StdioConfig::default())
        .await;
    h.client.remove_container("unstarted").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdin_and_big_output() {
    require_root!();
    let h = Harness::start("io").await;
    h.create(
        "cat",
        &["cat"],
        StdioConfig {
            terminal: false,
            stdin: true,
        },
    )
    .await;
    let out = tokio::spawn(read_all(
        h.client.clone(),
        "cat".into(),
        "".into(),
        OutputStream::Stdout,
    ));
    h.client.start_process("cat", "").await.unwrap();
    let payload: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    for chunk in payload.chunks(100_000) {
        assert_eq!(
            h.client
                .write_stdin("cat", "", chunk.to_vec())
                .await
                .unwrap() as usize,
            chunk.len()
        );
    }
    h.client.close_stdin("cat", "").await.unwrap();
    assert_eq!(
        h.client.wait_process("cat", "").await.unwrap().exit_status,
        0
    );
    assert!(out.await.unwrap() == payload, "stdin round trip differs");
    let e = h
        .client
        .write_stdin("cat", "", b"x".to_vec())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    h.client.remove_container("cat").await.unwrap();

    let (st, out, _) = h
        .run(
            "big",
            &["sh", "-c", "head -c 20971520 /dev/zero; echo -n END"],
        )
        .await;
    assert_eq!(st, 0);
    assert_eq!(out.len(), 20971520 + 3);
    assert!(out.ends_with("END"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_signal_pause_stats() {
    require_root!();
    let h = Harness::start("exec").await;
    let pid = h
        .create("svc", &["sleep", "1000"], StdioConfig::default())
        .await;
    assert_eq!(h.client.start_process("svc", "").await.unwrap(), pid);

    h.client
        .create_process(&CreateProcessRequest {
            container_id: "svc".into(),
            exec_id: "e1".into(),
            process_json: process_json(
                &[
                    "sh",
                    "-c",
                    "pwd; cat /proc/1/cmdline; echo; hostname; exit 5",
                ],
                false,
            ),
            stdio: None,
        })
        .await
        .unwrap();
    let e = h
        .client
        .create_process(&CreateProcessRequest {
            container_id: "svc".into(),
            exec_id: "e1".into(),
            process_json: process_json(&["true"], false),
            stdio: None,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists);
    let e = h
        .client
        .create_process(&CreateProcessRequest {
            container_id: "svc".into(),
            exec_id: "bad".into(),
            process_json: b"[1,2".to_vec(),
            stdio: None,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    // An exec created and never started can be forgotten; its id is free again.
    let idle = CreateProcessRequest {
        container_id: "svc".into(),
        exec_id: "idle".into(),
        process_json: process_json(&["true"], false),
        stdio: None,
    };
    h.client.create_process(&idle).await.unwrap();
    h.client.remove_process("svc", "idle").await.unwrap();
    let e = h.client.start_process("svc", "idle").await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e}");
    h.client.create_process(&idle).await.unwrap();
    h.client.remove_process("svc", "idle").await.unwrap();
    let out = tokio::spawn(read_all(
        h.client.clone(),
        "svc".into(),
        "e1".into(),
        OutputStream::Stdout,
    ));
    h.client.start_process("svc", "e1").await.unwrap();
    assert_eq!(
        h.client
            .wait_process("svc", "e1")
            .await
            .unwrap()
            .exit_status,
        5
    );
    let out = String::from_utf8(out.await.unwrap()).unwrap();
    assert_eq!(out, "/tmp\nsleep\u{0}1000\u{0}\nctr\n");

    // A missing executable in an exec.
    h.client
        .create_process(&CreateProcessRequest {
            container_id: "svc".into(),
            exec_id: "e2".into(),
            process_json: process_json(&["nonexistent"], false),
            stdio: None,
        })
        .await
        .unwrap();
    let e = h.client.start_process("svc", "e2").await.unwrap_err();
    assert!(e.to_string().contains("nonexistent"), "{e}");

    // A long-running exec shows in the pids.
    h.client
        .create_process(&CreateProcessRequest {
            container_id: "svc".into(),
            exec_id: "e3".into(),
            process_json: process_json(&["sleep", "1000"], false),
            stdio: None,
        })
        .await
        .unwrap();
    let e3 = h.client.start_process("svc", "e3").await.unwrap();
    if h.has_cgroups() {
        let pids = h.client.list_pids("svc").await.unwrap();
        assert!(
            pids.contains(&pid) && pids.contains(&e3),
            "{pids:?} lacks {pid} or {e3}"
        );
        h.client.pause_container("svc").await.unwrap();
        if let Some(cgroot) = &h.cgroup {
            let cg = cgroot.join("ember/svc/cgroup.events");
            assert!(std::fs::read_to_string(cg).unwrap().contains("frozen 1"));
        }
        h.client.resume_container("svc").await.unwrap();
        let e = h.client.resume_container("svc").await.unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition);
        h.client
            .update_container("svc", br#"{"pids":{"limit":100}}"#.to_vec())
            .await
            .unwrap();
        let stats = h.client.stats("svc").await.unwrap();
        println!("stats: {stats:?}");
        if h.vm.is_some() {
            // All controllers are there in the guest.
            assert_eq!(stats.pids_limit, 100);
            assert_eq!(stats.pids_current, 2);
            assert!(
                stats.memory_usage_bytes > 0 && stats.cpu_usage_usec > 0,
                "{stats:?}"
            );
        }
        let e = h
            .client
            .update_container("svc", b"nope".to_vec())
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
    } else {
        eprintln!("no cgroup v2 on this host: pause/stats not tested");
    }
    // An exec that is never started: its waiters learn at removal.
    h.client
        .create_process(&CreateProcessRequest {
            container_id: "svc".into(),
            exec_id: "never".into(),
            process_json: process_json(&["true"], false),
            stdio: None,
        })
        .await
        .unwrap();
    let never = tokio::spawn({
        let c = h.client.clone();
        async move { c.wait_process("svc", "never").await }
    });
    // SIGKILL the init: 137, and the exec dies with it.
    h.client.signal_process("svc", "", 9, false).await.unwrap();
    assert_eq!(
        h.client.wait_process("svc", "").await.unwrap().exit_status,
        137
    );
    assert_eq!(
        h.client
            .wait_process("svc", "e3")
            .await
            .unwrap()
            .exit_status,
        137
    );
    let e = h
        .client
        .signal_process("svc", "", 15, false)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let e = h.client.start_process("svc", "never").await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e}");
    h.client.remove_container("svc").await.unwrap();
    assert_eq!(never.await.unwrap().unwrap().exit_status, 255);
    if h.vm.is_none() {
        assert!(!h.dir.join("state/svc").exists());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pty_resize() {
    require_root!();
    let h = Harness::start("pty").await;
    let stdio = StdioConfig {
        terminal: true,
        stdin: true,
    };
    h.create(
        "tty",
        &[
            "sh",
            "-c",
            "stty size; read x; stty size; tty; ls -l /dev/console",
        ],
        stdio.clone(),
    )
    .await;
    h.client.resize_pty("tty", "", 100, 40).await.unwrap();
    let out = tokio::spawn(read_all(
        h.client.clone(),
        "tty".into(),
        "".into(),
        OutputStream::Stdout,
    ));
    h.client.start_process("tty", "").await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    h.client.resize_pty("tty", "", 132, 50).await.unwrap();
    h.client
        .write_stdin("tty", "", b"go\n".to_vec())
        .await
        .unwrap();
    assert_eq!(
        h.client.wait_process("tty", "").await.unwrap().exit_status,
        0
    );
    let out = String::from_utf8_lossy(&out.await.unwrap()).into_owned();
    assert!(out.contains("40 100"), "{out:?}");
    assert!(out.contains("50 132"), "{out:?}");
    // The terminal lives in the container's devpts: ttyname() works there.
    assert!(out.contains("/dev/pts/"), "{out:?}");
    // stderr of a terminal process is empty and ended.
    let r = h
        .client
        .read_output("tty", "", OutputStream::Stderr, 10)
        .await
        .unwrap();
    assert!(r.eof && r.data.is_empty());
    let e = h.client.resize_pty("tty", "x", 1, 1).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    h.client.remove_container("tty").await.unwrap();

    // Without a devpts in the container the agent's own pty serves (fallback).
    let mut sp = spec(&["sh", "-c", "stty size"], true);
    sp["mounts"]
        .as_array_mut()
        .unwrap()
        .retain(|m| m["type"] != "devpts");
    sp["process"]["consoleSize"] = json!({"height": 33, "width": 77});
    h.try_create("nopts", sp, stdio.clone()).await.unwrap();
    let out = tokio::spawn(read_all(
        h.client.clone(),
        "nopts".into(),
        "".into(),
        OutputStream::Stdout,
    ));
    h.client.start_process("nopts", "").await.unwrap();
    assert_eq!(
        h.client
            .wait_process("nopts", "")
            .await
            .unwrap()
            .exit_status,
        0
    );
    let out = String::from_utf8_lossy(&out.await.unwrap()).into_owned();
    assert!(out.contains("33 77"), "{out:?}");
    h.client.remove_container("nopts").await.unwrap();

    // An exec with a terminal.
    h.create("host", &["sleep", "1000"], StdioConfig::default())
        .await;
    h.client.start_process("host", "").await.unwrap();
    h.client
        .create_process(&CreateProcessRequest {
            container_id: "host".into(),
            exec_id: "t".into(),
            process_json: process_json(&["sh", "-c", "stty size; tty"], true),
            stdio: Some(stdio),
        })
        .await
        .unwrap();
    h.client.resize_pty("host", "t", 81, 21).await.unwrap();
    let out = tokio::spawn(read_all(
        h.client.clone(),
        "host".into(),
        "t".into(),
        OutputStream::Stdout,
    ));
    h.client.start_process("host", "t").await.unwrap();
    assert_eq!(
        h.client
            .wait_process("host", "t")
            .await
            .unwrap()
            .exit_status,
        0
    );
    let out = String::from_utf8_lossy(&out.await.unwrap()).into_owned();
    assert!(out.contains("21 81"), "{out:?}");
    assert!(out.contains("/dev/pts/"), "{out:?}");
    h.client.remove_container("host").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_does_not_kill_the_agent() {
    require_root!();
    let mut h = Harness::start("garbage").await;
    let sock = match &h.vm {
        Some(vm) => {
            // One connection at a time on a serial port: let go of ours.
            let dead = AgentClient::new(tokio::io::duplex(1).0);
            drop(std::mem::replace(&mut h.client, dead));
            tokio::time::sleep(Duration::from_millis(300)).await;
            vm.sock.clone()
        }
        None => h.dir.join("agent.sock"),
    };
    {
        use tokio::io::AsyncWriteExt;
        let mut s = tokio::net::UnixStream::connect(&sock).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\n\r\n\x00\x00\x00\xff\xff\xff\xff\xff")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        // More garbage while the agent discards input.
        let _ = s.write_all(&[0xffu8; 100_000]).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A dropped connection with a pending long poll.
    {
        let c = match &h.vm {
            Some(vm) => connect_vm(vm).await,
            None => AgentClient::new(tokio::net::UnixStream::connect(&sock).await.unwrap()),
        };
        let _ = tokio::time::timeout(Duration::from_millis(200), c.wait_oom()).await;
    }
    let c = match &h.vm {
        Some(vm) => connect_vm(vm).await,
        None => AgentClient::new(tokio::net::UnixStream::connect(&sock).await.unwrap()),
    };
    c.ping(Duration::from_secs(5)).await.unwrap();
    if h.vm.is_none() {
        h.client.ping(Duration::from_secs(5)).await.unwrap();
    }
}

/// Shutdown: the agent cleans up and exits (powers off as PID 1). In VM mode only
/// with EMBER_AGENT_TEST_VM_SHUTDOWN=1, as it ends the VM (named to run last).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zz_shutdown() {
    require_root!();
    if vm().is_some() && std::env::var_os("EMBER_AGENT_TEST_VM_SHUTDOWN").is_none() {
        eprintln!("SKIPPED: shutdown would end the VM");
        return;
    }
    let mut h = Harness::start("shutdown").await;
    h.create("left", &["sleep", "1000"], StdioConfig::default())
        .await;
    h.client.start_process("left", "").await.unwrap();
    h.client.shutdown().await.unwrap();
    let Some(agent) = &mut h.agent else {
        // The VM powers off: the connection ends.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !h.client.is_closed() {
            assert!(std::time::Instant::now() < deadline, "VM did not power off");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        return;
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(st) = agent.try_wait().unwrap() {
            // As PID 1 of a pid namespace, reboot(POWER_OFF) ends it with SIGINT.
            use std::os::unix::process::ExitStatusExt;
            assert!(st.success() || st.signal() == Some(libc::SIGINT), "{st:?}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "agent did not exit");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!h.dir.join("state/left").exists());
}

/// OOM kills reach WaitOom and Stats (needs the memory controller: VM mode).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oom() {
    require_root!();
    if vm().is_none() {
        eprintln!("SKIPPED: no memory controller on the test host; run in VM mode");
        return;
    }
    let h = Harness::start("oom").await;
    let oom = tokio::spawn({
        let c = h.client.clone();
        async move { c.wait_oom().await }
    });
    let mut sp = spec(
        &[
            "sh",
            "-c",
            "x=$(head -c 200000000 /dev/zero | tr '\\0' a); echo survived",
        ],
        false,
    );
    sp["linux"]["resources"] = json!({"memory": {"limit": 33554432, "swap": 33554432}});
    let (st, out, _) = h.run_spec_keep("hog", sp).await;
    assert!(!out.contains("survived"), "{st} {out}");
    let ev = tokio::time::timeout(Duration::from_secs(5), oom)
        .await
        .expect("no OOM event")
        .unwrap()
        .unwrap();
    assert_eq!(ev.container_id, "hog");
    let stats = h.client.stats("hog").await.unwrap();
    assert!(stats.oom_kills >= 1, "{stats:?}");
    assert_eq!(stats.memory_limit_bytes, 33554432);
    h.client.remove_container("hog").await.unwrap();
}
