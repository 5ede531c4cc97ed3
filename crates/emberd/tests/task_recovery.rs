//! A `kill -9` of emberd while `ctr run` creates a microVM task: on restart emberd
//! adopts or cleans up every shim it started, so nothing of the task is left
//! running and the same id runs again.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::tasks::*;
use common::*;

const NS: &str = "recovery";
const RUNTIME: &str = "io.containerd.ember.v2";

/// The pids of QEMU processes of the microVM named after task `id`.
fn vmm_pids(id: &str) -> Vec<i32> {
    let needle = format!("ember-{id},");
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| {
            std::fs::read(e.path().join("cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&needle))
        })
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect()
}

/// Kills, by pid, whatever of task `id` a failed run leaves.
struct Leftovers(PathBuf, String);

impl Drop for Leftovers {
    fn drop(&mut self) {
        kill_task_processes(&self.0, &self.1);
        for pid in vmm_pids(&self.1) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

#[test]
fn a_microvm_task_in_creation_when_the_daemon_is_killed_leaves_nothing_running() {
    if !can_run() || !Path::new("/bin/busybox").exists() {
        return;
    }
    let shim = Path::new(env!("CARGO_BIN_EXE_emberd")).with_file_name("containerd-shim-ember-v2");
    if !shim.exists() || ember_guest::GuestImage::locate().is_err() {
        eprintln!(
            "skipping: the ember shim is not built or the guest image is missing (guest/build.sh)"
        );
        return;
    }
    let id = format!("vmk{}", std::process::id());
    let work = tempfile::tempdir().unwrap();
    let mut d = Emberd::start(work.path());
    // Declared after the daemon and its directory: dropped before them.
    let _left = Leftovers(d.socket.clone(), id.clone());
    import_busybox(&d.socket, NS, work.path());
    let s = d.socket.clone();

    let mut run = Command::new(CTR)
        .arg("-a")
        .arg(&s)
        .args([
            "-n",
            NS,
            "run",
            "--runtime",
            RUNTIME,
            IMAGE,
            &id,
            "sleep",
            "600",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Killed once the shim serves: the microVM is booting, Create is in flight.
    let deadline = Instant::now() + Duration::from_secs(30);
    while shim_pids(&s, &id).is_empty() {
        assert!(Instant::now() < deadline, "no shim started for {id}");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(200));
    d.kill9();
    let _ = run.wait();
    assert!(
        !shim_pids(&s, &id).is_empty(),
        "the shim died with the daemon"
    );

    d.start_again();
    // Adopted (listed) or cleaned up (no shim): never a shim the daemon forgot.
    let deadline = Instant::now() + Duration::from_secs(20);
    while task_status(&s, NS, &id).is_none() && !shim_pids(&s, &id).is_empty() {
        assert!(
            Instant::now() < deadline,
            "a shim of {id} runs but emberd does not know its task:\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    if task_status(&s, NS, &id).is_some() {
        ctr(&s, NS, &["tasks", "rm", "-f", &id]).expect_ok();
    }
    ctr(&s, NS, &["containers", "rm", &id]).expect_ok();
    wait_shim_gone(&s, &id);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !vmm_pids(&id).is_empty() {
        assert!(Instant::now() < deadline, "the microVM of {id} outlived it");
        std::thread::sleep(Duration::from_millis(100));
    }

    // The same id runs again.
    let out = run_rm(&s, NS, RUNTIME, &id, &["echo", "again"]);
    assert_eq!(out.stdout, "again\n", "{}", out.stderr);
    wait_shim_gone(&s, &id);
}
