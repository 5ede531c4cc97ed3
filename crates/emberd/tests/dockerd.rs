//! Debian's dockerd 20.10 on emberd, side by side with dockerd on a private
//! containerd: the same `docker` session against each, with the outcomes (exit
//! codes, outputs, states) compared. Each dockerd has its own data root, exec
//! root, pid file and socket, and runs in a network namespace the test creates;
//! containers get no network, but one on a user bridge network inside that
//! namespace.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{can_run, Containerd, Emberd};

pub const DOCKERD: &str = "/usr/sbin/dockerd";
pub const DOCKER: &str = "/usr/bin/docker";
const IMAGE: &str = "docker.io/ember/busybox:latest";
/// How `docker` names the image.
const SHORT: &str = "ember/busybox:latest";

/// A network namespace, deleted on drop.
struct Netns(String);

impl Netns {
    fn new() -> Option<Netns> {
        let name = format!("ember-dockerd-{}-{}", std::process::id(), rand_suffix());
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !ok {
            eprintln!("skipping: cannot create a network namespace (ip netns add)");
            return None;
        }
        Some(Netns(name))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let out = Command::new("ip").args(["netns", "del", &self.0]).output();
        if let Some(o) = out.ok().filter(|o| !o.status.success()) {
            eprintln!(
                "ip netns del {}: {}",
                self.0,
                String::from_utf8_lossy(&o.stderr)
            );
        }
    }
}

fn rand_suffix() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..8].to_string()
}

/// A dockerd of its own.
struct Dockerd {
    dir: PathBuf,
    socket: PathBuf,
    child: Option<Child>,
}

/// One `docker` command's outcome.
struct Out {
    code: i32,
    stdout: String,
    stderr: String,
    took: Duration,
}

impl Dockerd {
    /// Starts dockerd on `containerd` inside `netns`. `ip netns exec` would also
    /// mount a fresh /sys, hiding the cgroup mounts dockerd needs, so only the
    /// network namespace is entered (nsenter on the namespace `ip netns add` made).
    fn start(dir: &Path, containerd: &Path, netns: &Netns) -> Dockerd {
        std::fs::create_dir_all(dir).unwrap();
        let socket = dir.join("docker.sock");
        let log = dir.join("dockerd.log");
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", netns.0))
            .arg(DOCKERD)
            .arg(format!("--containerd={}", containerd.display()))
            .arg("--data-root")
            .arg(dir.join("data"))
            .arg("--exec-root")
            .arg(dir.join("exec"))
            .arg("--pidfile")
            .arg(dir.join("docker.pid"))
            .arg("-H")
            .arg(format!("unix://{}", socket.display()))
            .args([
                "--bridge=none",
                "--iptables=false",
                "--ip-masq=false",
                "--ip6tables=false",
            ])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("starting dockerd");
        let mut d = Dockerd {
            dir: dir.to_path_buf(),
            socket,
            child: Some(child),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while d
            .docker(&["version", "--format", "{{.Server.Version}}"], None)
            .code
            != 0
        {
            if let Some(Ok(Some(status))) = d.child.as_mut().map(|c| c.try_wait()) {
                panic!("dockerd exited with {status}:\n{}", d.log());
            }
            assert!(
                Instant::now() < deadline,
                "dockerd did not come up:\n{}",
                d.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        d
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("dockerd.log")).unwrap_or_default()
    }

    /// Runs `docker ARGS`, killed after two minutes (a daemon that misses an
    /// event would leave it waiting for good).
    fn docker(&self, args: &[&str], stdin: Option<&str>) -> Out {
        let started = Instant::now();
        let out_path = self.dir.join("docker.out");
        let err_path = self.dir.join("docker.err");
        let mut child = Command::new(DOCKER)
            .env("DOCKER_CONFIG", self.dir.join("client"))
            .arg("-H")
            .arg(format!("unix://{}", self.socket.display()))
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(std::fs::File::create(&out_path).unwrap())
            .stderr(std::fs::File::create(&err_path).unwrap())
            .spawn()
            .expect("running docker");
        if let Some(input) = stdin {
            let mut pipe = child.stdin.take().unwrap();
            pipe.write_all(input.as_bytes()).unwrap();
        }
        let deadline = started + Duration::from_secs(120);
        let code = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status.code().unwrap_or(-1);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                break -1;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let mut stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
        if code == -1 {
            stderr.push_str("\n(timed out)");
        }
        Out {
            code,
            stdout: std::fs::read_to_string(&out_path).unwrap_or_default(),
            stderr,
            took: started.elapsed(),
        }
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        let Some(mut c) = self.child.take() else {
            return;
        };
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(c.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = c.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// What one step of the session gave: compared between the two daemons.
#[derive(Debug, PartialEq)]
struct Step {
    what: &'static str,
    code: i32,
    output: String,
}

/// Runs the session, checking what must hold on either daemon, and returns the
/// outcomes to compare.
struct Session<'a> {
    label: &'a str,
    d: &'a Dockerd,
    steps: Vec<Step>,
}

impl Session<'_> {
    fn step(&mut self, what: &'static str, args: &[&str], stdin: Option<&str>) -> Out {
        let out = self.d.docker(args, stdin);
        eprintln!(
            "{}: docker {} -> {} in {:?}: {}{}",
            self.label,
            args.join(" "),
            out.code,
            out.took,
            out.stdout.trim(),
            out.stderr.trim()
        );
        self.steps.push(Step {
            what,
            code: out.code,
            output: out.stdout.trim().to_string(),
        });
        out
    }
}

fn session(label: &str, d: &Dockerd, archive: &Path) -> Vec<Step> {
    let mut s = Session {
        label,
        d,
        steps: Vec::new(),
    };
    let mut step =
        |what: &'static str, args: &[&str], stdin: Option<&str>| s.step(what, args, stdin);
    let archive = archive.to_str().unwrap();
    let out = step("load", &["load", "-i", archive], None);
    assert_eq!(
        out.stdout.trim(),
        format!("Loaded image: {SHORT}"),
        "{label}"
    );

    let out = step(
        "run --rm",
        &["run", "--rm", "--network", "none", SHORT, "echo", "hello"],
        None,
    );
    assert_eq!((out.code, out.stdout.as_str()), (0, "hello\n"), "{label}");
    let out = step(
        "exit code",
        &[
            "run",
            "--rm",
            "--network",
            "none",
            SHORT,
            "sh",
            "-c",
            "exit 3",
        ],
        None,
    );
    assert_eq!(out.code, 3, "{label}: {}", out.stderr);
    let out = step(
        "run -i",
        &[
            "run",
            "--rm",
            "-i",
            "--network",
            "none",
            SHORT,
            "tr",
            "a-z",
            "A-Z",
        ],
        Some("ember\n"),
    );
    assert_eq!(out.stdout, "EMBER\n", "{label}: {}", out.stderr);

    // A user bridge network: libnetwork's prestart hook moves the container's veth
    // into its network namespace (the VM's); the container gets its address and
    // reaches the bridge.
    let out = step(
        "network create",
        &[
            "network",
            "create",
            "--subnet",
            "10.77.0.0/24",
            "--gateway",
            "10.77.0.1",
            "embernet",
        ],
        None,
    );
    assert_eq!(out.code, 0, "{label}: {}", out.stderr);
    let network_id = out.stdout.trim().to_string();
    let out = step(
        "run --network",
        &[
            "run",
            "--rm",
            "--network",
            "embernet",
            SHORT,
            "sh",
            "-c",
            "ip -4 addr show eth0 | grep -o 'inet [0-9./]*'; \
             ping -c 1 -W 10 10.77.0.1 >/dev/null && echo reached",
        ],
        None,
    );
    assert_eq!(
        out.stdout, "inet 10.77.0.2/24\nreached\n",
        "{label}: {}",
        out.stderr
    );
    let out = step("network rm", &["network", "rm", "embernet"], None);
    assert_eq!(out.code, 0, "{label}: {}", out.stderr);

    // A container that stops at once on SIGTERM.
    let script = r#"trap "exit 0" TERM; echo started; while true; do sleep 0.1; done"#;
    let out = step(
        "run -d",
        &[
            "run",
            "-d",
            "--name",
            "long",
            "--network",
            "none",
            SHORT,
            "sh",
            "-c",
            script,
        ],
        None,
    );
    assert_eq!(out.code, 0, "{label}: {}", out.stderr);
    assert_eq!(out.stdout.trim().len(), 64, "{label}: {}", out.stdout);
    let id = out.stdout.trim().to_string();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !d.docker(&["logs", "long"], None).stdout.contains("started") {
        assert!(
            Instant::now() < deadline,
            "{label}: no log from the container"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = step("logs", &["logs", "long"], None);
    assert_eq!(out.stdout, "started\n", "{label}");
    let out = step("exec", &["exec", "long", "echo", "in-exec"], None);
    assert_eq!(out.stdout, "in-exec\n", "{label}: {}", out.stderr);
    let out = step(
        "exec exit code",
        &["exec", "long", "sh", "-c", "exit 5"],
        None,
    );
    assert_eq!(out.code, 5, "{label}: {}", out.stderr);
    let out = step("exec -i", &["exec", "-i", "long", "cat"], Some("piped\n"));
    assert_eq!(out.stdout, "piped\n", "{label}: {}", out.stderr);

    let status = ["inspect", "-f", "{{.State.Status}}", "long"];
    step("pause", &["pause", "long"], None);
    let out = step("paused", &status, None);
    assert_eq!(out.stdout.trim(), "paused", "{label}");
    step("unpause", &["unpause", "long"], None);
    let out = step("unpaused", &status, None);
    assert_eq!(out.stdout.trim(), "running", "{label}");
    let out = step(
        "stats",
        &["stats", "--no-stream", "--format", "{{.Name}}", "long"],
        None,
    );
    assert_eq!(
        (out.code, out.stdout.trim()),
        (0, "long"),
        "{label}: {}",
        out.stderr
    );

    // dockerd learns of the exit from the task events: no 10 s wait and SIGKILL.
    let out = step("stop", &["stop", "-t", "10", "long"], None);
    assert_eq!(out.code, 0, "{label}: {}", out.stderr);
    assert!(
        out.took < Duration::from_secs(5),
        "{label}: docker stop took {:?}",
        out.took
    );
    let exited = [
        "inspect",
        "-f",
        "{{.State.Status}} {{.State.ExitCode}}",
        "long",
    ];
    let out = step("stopped", &exited, None);
    assert_eq!(out.stdout.trim(), "exited 0", "{label}");

    step("start", &["start", "long"], None);
    let out = step("started", &status, None);
    assert_eq!(out.stdout.trim(), "running", "{label}");
    let out = step("restart", &["restart", "-t", "10", "long"], None);
    assert!(out.took < Duration::from_secs(5), "{label}: {:?}", out.took);
    let out = step("restarted", &status, None);
    assert_eq!(out.stdout.trim(), "running", "{label}");

    step("kill", &["kill", "long"], None);
    let deadline = Instant::now() + Duration::from_secs(20);
    while d.docker(&status, None).stdout.trim() != "exited" {
        assert!(
            Instant::now() < deadline,
            "{label}: still running after kill"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = step(
        "inspect",
        &[
            "inspect",
            "-f",
            "{{.State.Status}} {{.State.ExitCode}} {{json .Config.Cmd}} {{.Config.Image}}",
            "long",
        ],
        None,
    );
    assert!(
        out.stdout.starts_with("exited 137 "),
        "{label}: {}",
        out.stdout
    );
    let out = step("rm", &["rm", "long"], None);
    assert_eq!(out.stdout.trim(), "long", "{label}");
    let out = step("ps -a", &["ps", "-aq"], None);
    assert_eq!(out.stdout.trim(), "", "{label}");
    // The container's and the network's ids differ between daemons.
    for st in &mut s.steps {
        st.output = st
            .output
            .replace(&id, "<id>")
            .replace(&network_id, "<network id>");
    }
    s.steps
}

#[test]
fn dockerd_on_emberd_behaves_as_on_containerd() {
    if !can_run() {
        return;
    }
    for bin in [
        DOCKERD,
        DOCKER,
        "/usr/bin/nsenter",
        "/usr/bin/containerd-shim-runc-v2",
    ] {
        if !Path::new(bin).exists() {
            eprintln!("skipping: {bin} missing");
            return;
        }
    }
    let Some(netns) = Netns::new() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("busybox.tar");
    ember_guest::busybox_docker_archive(&archive, IMAGE).unwrap();

    std::fs::create_dir_all(dir.path().join("emberd")).unwrap();
    let emberd = Emberd::start(&dir.path().join("emberd"));
    let on_ember = {
        let d = Dockerd::start(&dir.path().join("docker-ember"), &emberd.socket, &netns);
        let steps = session("emberd", &d, &archive);
        // dockerd found containerd's API ready through the health service.
        assert!(
            !d.log()
                .contains("Error while testing if containerd API is ready"),
            "{}",
            d.log()
        );
        steps
    };
    let Some(containerd) = Containerd::start() else {
        return;
    };
    let on_containerd = {
        let d = Dockerd::start(
            &dir.path().join("docker-containerd"),
            &containerd.socket,
            &netns,
        );
        session("containerd", &d, &archive)
    };
    assert_eq!(on_ember, on_containerd);
}
