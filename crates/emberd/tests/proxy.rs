//! Proxy plugins: emberd using Ember's content store and differ through their
//! proxy servers (`ember-content-proxy`, `ember-diff-proxy`) on unix sockets, and
//! Debian's containerd using Ember's content proxy; images import and run through
//! them, and a proxy server killed with SIGKILL gives errors, not hangs.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{can_run, ctr, ctr_within, Containerd, Emberd};

const NS: &str = "proxytest";
const IMAGE: &str = "docker.io/ember/busybox:latest";

/// A proxy server process, killed on drop.
struct Server {
    child: Option<Child>,
    log: PathBuf,
}

impl Server {
    fn start(exe: &str, socket: &Path, log: PathBuf, args: &[&str]) -> Server {
        let mut child = Command::new(exe)
            .arg("--address")
            .arg(socket)
            .args(args)
            .args(["--log-level", "debug"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("starting a proxy server");
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::os::unix::net::UnixStream::connect(socket).is_err() {
            if let Ok(Some(s)) = child.try_wait() {
                panic!(
                    "{exe} exited with {s}: {}",
                    std::fs::read_to_string(&log).unwrap()
                );
            }
            assert!(Instant::now() < deadline, "{exe} did not come up");
            std::thread::sleep(Duration::from_millis(20));
        }
        Server {
            child: Some(child),
            log,
        }
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// `ember-content-proxy` keeping blobs under `dir/blobs`, logging to `dir/<log>`.
fn content_proxy(dir: &Path, socket: &Path, log: &str) -> Server {
    Server::start(
        env!("CARGO_BIN_EXE_ember-content-proxy"),
        socket,
        dir.join(log),
        &["--root", dir.join("blobs").to_str().unwrap()],
    )
}

/// Imports busybox through `socket`; returns the blobs the proxy under `dir`
/// then holds.
fn import_busybox(socket: &Path, dir: &Path) -> Vec<String> {
    let archive = dir.join("busybox.tar");
    ember_guest::busybox_docker_archive(&archive, IMAGE).unwrap();
    ctr(socket, NS, &["images", "import", archive.to_str().unwrap()]).expect_ok();
    let remote = blobs(&dir.join("blobs"));
    assert!(remote.len() >= 3, "{remote:?}");
    assert_eq!(content_ls(socket), remote);
    remote
}

fn on_path(binary: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(binary).exists()))
        .unwrap_or(false)
}

fn runc_available() -> bool {
    if !Path::new("/bin/busybox").exists()
        || !on_path("containerd-shim-runc-v2")
        || !on_path("runc")
    {
        eprintln!("skipping: busybox, runc or containerd-shim-runc-v2 missing");
        return false;
    }
    true
}

/// The blobs under a content store root.
fn blobs(root: &Path) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(root.join("blobs/sha256"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| format!("sha256:{}", e.file_name().to_string_lossy()))
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// The digests `ctr content ls` lists.
fn content_ls(socket: &Path) -> Vec<String> {
    let mut v = common::first_column(ctr(socket, NS, &["content", "ls"]).expect_ok());
    v.sort();
    v
}

/// Runs busybox with runc; returns what it printed.
fn run_echo(socket: &Path, id: &str, extra: &[&str]) -> common::Ctr {
    let mut args = vec!["run", "--rm"];
    args.extend_from_slice(extra);
    args.extend_from_slice(&[IMAGE, id, "echo", "through the proxy"]);
    ctr_within(120, socket, NS, &args)
}

/// A failure that came quickly and says what is unreachable.
#[track_caller]
fn assert_clear_failure(r: &common::Ctr, started: Instant, what: &str) {
    assert!(!r.ok, "expected a failure: {}", r.stdout);
    assert_ne!(r.code, Some(137), "ctr hung and was killed");
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "took {:?}",
        started.elapsed()
    );
    assert!(
        r.stderr.contains(what) && r.stderr.contains("unavailable"),
        "unclear error: {}",
        r.stderr
    );
}

#[test]
fn emberd_imports_and_runs_through_content_and_diff_proxies() {
    if !can_run() || !runc_available() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let id = format!("p{}", std::process::id());
    let content_sock = w.join("content.sock");
    let diff_sock = w.join("diff.sock");
    let mut content = content_proxy(w, &content_sock, "content.log");
    let config = format!(
        r#"version = 2
[proxy_plugins.blobs]
  type = "content"
  address = "{}"
[proxy_plugins.layers]
  type = "diff"
  address = "{}"
[plugins."io.containerd.service.v1.diff-service"]
  default = ["layers"]
"#,
        content_sock.display(),
        diff_sock.display()
    );
    let d = Emberd::start_with_config(w, Some(&config));
    let mut diff = Server::start(
        env!("CARGO_BIN_EXE_ember-diff-proxy"),
        &diff_sock,
        w.join("diff.log"),
        &[
            "--content",
            d.socket.to_str().unwrap(),
            "--state",
            w.join("diff-state").to_str().unwrap(),
        ],
    );

    let plugins = ctr(&d.socket, NS, &["plugins", "ls"]);
    let plugins = plugins.expect_ok();
    for row in [
        "io.containerd.content.v1 blobs",
        "io.containerd.differ.v1 layers",
    ] {
        let words: Vec<&str> = row.split(' ').collect();
        assert!(
            plugins.lines().any(|l| {
                let c: Vec<&str> = l.split_whitespace().collect();
                c.len() >= 3 && c[0] == words[0] && c[1] == words[1] && c[c.len() - 1] == "ok"
            }),
            "{row} missing or not ok:\n{plugins}"
        );
    }

    // The blobs are the proxy's; the daemon's own store holds none; the namespace
    // sees exactly them, another namespace none.
    let remote = import_busybox(&d.socket, w);
    assert!(blobs(&d.root.join("io.containerd.content.v1.content")).is_empty());
    let other = ctr(&d.socket, "elsewhere", &["content", "ls"]);
    assert!(common::first_column(other.expect_ok()).is_empty());
    // The layer was applied by the differ behind the socket.
    assert!(diff.log().contains("applied layer"), "{}", diff.log());

    let r = run_echo(&d.socket, &id, &[]);
    assert!(r.ok, "{}{}", r.stdout, r.stderr);
    assert_eq!(r.stdout.trim(), "through the proxy");

    // Without the differ, unpacking into another snapshotter fails at once and
    // says which differ is gone.
    diff.kill9();
    let started = Instant::now();
    let r = run_echo(&d.socket, &format!("{id}n"), &["--snapshotter", "native"]);
    assert_clear_failure(&r, started, "differ layers");

    // Without the content store, reading a blob fails the same way; the
    // metadata on top still answers.
    content.kill9();
    let started = Instant::now();
    let r = ctr_within(60, &d.socket, NS, &["content", "get", &remote[0]]);
    assert_clear_failure(&r, started, "content store blobs");
    assert_eq!(content_ls(&d.socket), remote);

    // A server started again on the same socket is used again.
    let _content = content_proxy(w, &content_sock, "content2.log");
    ctr_within(60, &d.socket, NS, &["content", "get", &remote[0]]).expect_ok();
}

#[test]
fn containerd_imports_and_runs_through_the_ember_content_proxy() {
    if !can_run() || !runc_available() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let id = format!("c{}", std::process::id());
    let sock = w.join("content.sock");
    let mut content = content_proxy(w, &sock, "content.log");
    // containerd 1.6 hands the metadata plugin the first content plugin of a
    // map: the built-in one is disabled so that the proxy is the one.
    let extra = format!(
        "[proxy_plugins.ember]\n  type = \"content\"\n  address = \"{}\"\n",
        sock.display()
    );
    let Some(c) = Containerd::start_configured(&["io.containerd.content.v1.content"], &extra)
    else {
        return;
    };
    let remote = import_busybox(&c.socket, w);
    assert!(blobs(&c.root().join("io.containerd.content.v1.content")).is_empty());

    let r = run_echo(&c.socket, &id, &[]);
    assert!(r.ok, "{}{}", r.stdout, r.stderr);
    assert_eq!(r.stdout.trim(), "through the proxy");

    // Labels stay containerd's: the image's garbage collection labels are there.
    let info = ctr(&c.socket, NS, &["content", "ls"]);
    assert!(
        info.expect_ok().contains("containerd.io/gc.ref"),
        "{}",
        info.stdout
    );

    content.kill9();
    let started = Instant::now();
    let r = ctr_within(60, &c.socket, NS, &["content", "get", &remote[0]]);
    assert!(!r.ok);
    assert_ne!(r.code, Some(137), "ctr hung and was killed");
    assert!(started.elapsed() < Duration::from_secs(60));
    assert!(
        r.stderr.contains("Unavailable") || r.stderr.contains("unavailable"),
        "{}",
        r.stderr
    );
}
