//! Helpers for task tests: shim processes, task states through `ctr`, the busybox
//! test image.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{ctr, Ctr};

pub const IMAGE: &str = "docker.io/ember/busybox:latest";

pub fn on_path(binary: &str) -> bool {
    std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .any(|d| Path::new(d).join(binary).exists())
}

/// The pids of shim processes for task `id` of the daemon at `address` (the
/// shim's `-address`), so tests of other daemons with the same id never count.
pub fn shim_pids(address: &Path, id: &str) -> Vec<i32> {
    let needle = format!("-id\0{id}\0");
    let daemon = format!("-address\0{}\0", address.display());
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| {
            std::fs::read(e.path().join("cmdline"))
                .map(|c| {
                    let c = String::from_utf8_lossy(&c);
                    c.contains("containerd-shim") && c.contains(&needle) && c.contains(&daemon)
                })
                .unwrap_or(false)
        })
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect()
}

/// Kills, by pid, the shims of task `id` of the daemon at `address` and their
/// children (a runc container's init, a microVM), for tests that fail with tasks
/// still running.
pub fn kill_task_processes(address: &Path, id: &str) {
    for shim in shim_pids(address, id) {
        let children = std::fs::read_to_string(format!("/proc/{shim}/task/{shim}/children"))
            .unwrap_or_default();
        let children = children.split_whitespace().filter_map(|p| p.parse().ok());
        for pid in children.chain([shim]) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// Kills what is left of tasks `ids` of the daemon at the address when dropped (see
/// [`kill_task_processes`]).
pub struct TaskGuard(pub PathBuf, pub Vec<String>);

impl Drop for TaskGuard {
    fn drop(&mut self) {
        for id in &self.1 {
            kill_task_processes(&self.0, id);
        }
    }
}

/// Removes, when dropped, what a failed test leaves of the runc tasks `ids` of one
/// daemon: their shims and the shims' children, by pid (see
/// [`kill_task_processes`]), then every container that the daemon's runc root
/// `root` still holds, with `runc delete -f` (which kills by the pid and cgroup
/// runc recorded). Only the daemon's own root is read, so the containers of other
/// daemons on the host, and other tests' processes, are never touched.
pub struct RuncGuard {
    pub address: PathBuf,
    pub root: PathBuf,
    pub ids: Vec<String>,
}

impl Drop for RuncGuard {
    fn drop(&mut self) {
        for id in &self.ids {
            kill_task_processes(&self.address, id);
        }
        for ns in subdirs(&self.root) {
            for container in subdirs(&ns) {
                let _ = std::process::Command::new("runc")
                    .arg("--root")
                    .arg(&ns)
                    .args(["delete", "-f"])
                    .arg(container.file_name().unwrap_or_default())
                    .stderr(std::process::Stdio::null())
                    .status();
            }
        }
    }
}

/// The directories in `dir` (none when it cannot be read).
fn subdirs(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| p.is_dir())
                .collect()
        })
        .unwrap_or_default()
}

/// Waits (up to 10 s) for the shims of task `id` to exit.
pub fn wait_shim_gone(address: &Path, id: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !shim_pids(address, id).is_empty() {
        assert!(
            Instant::now() < deadline,
            "the shim of {id} outlived its task"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The status column of task `id` in `ctr tasks ls`.
pub fn task_status(s: &Path, ns: &str, id: &str) -> Option<String> {
    let out = ctr(s, ns, &["tasks", "ls"]);
    out.stdout
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|w| w.first() == Some(&id))
        .and_then(|w| w.get(2).map(|s| s.to_string()))
}

/// Waits (up to 30 s) for task `id` to reach `want`.
pub fn wait_status(s: &Path, ns: &str, id: &str, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while task_status(s, ns, id).as_deref() != Some(want) {
        assert!(
            Instant::now() < deadline,
            "task {id} never became {want}: {:?}",
            task_status(s, ns, id)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Imports the busybox test image (built from the host's busybox) into `ns`.
pub fn import_busybox(socket: &Path, ns: &str, work: &Path) {
    let archive = work.join("busybox.tar");
    if !archive.exists() {
        ember_guest::busybox_docker_archive(&archive, IMAGE).unwrap();
    }
    ctr(socket, ns, &["images", "import", archive.to_str().unwrap()]).expect_ok();
}

/// Whether runc tasks can run here; prints why not.
pub fn can_run_runc() -> bool {
    if !super::can_run() || !Path::new("/bin/busybox").exists() {
        return false;
    }
    if !on_path("containerd-shim-runc-v2") || !on_path("runc") {
        eprintln!(
            "skipping: containerd-shim-runc-v2 or runc missing (apt-get install containerd runc)"
        );
        return false;
    }
    true
}

/// `ctr run --rm --runtime RUNTIME IMAGE id args…` in namespace `ns`.
pub fn run_rm(s: &Path, ns: &str, runtime: &str, id: &str, args: &[&str]) -> Ctr {
    let mut a = vec!["run", "--rm", "--runtime", runtime, IMAGE, id];
    a.extend_from_slice(args);
    ctr(s, ns, &a)
}

/// `ctr containers create --runtime RUNTIME IMAGE id args…` in namespace `ns`;
/// asserts it succeeded.
pub fn create_container(s: &Path, ns: &str, runtime: &str, id: &str, args: &[&str]) {
    let mut a = vec!["containers", "create", "--runtime", runtime, IMAGE, id];
    a.extend_from_slice(args);
    ctr(s, ns, &a).expect_ok();
}
