//! Shared helpers of the sandbox integration tests: they boot the real guest image
//! under QEMU (KVM when a probe boot works, else TCG), so `guest/build.sh` must
//! have run. `EMBER_TEST_VMM=firecracker` runs them under Firecracker instead
//! (`FIRECRACKER_BIN`, and a KVM that boots Linux guests).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use ember_agent_api::{OutputStream, StdioConfig};
use ember_guest::{BusyboxBundle, GuestImage};
use ember_sandbox::{read_all_output, Sandbox, SandboxConfig};
use ember_vmm::{Drive, VmmKind};

pub fn guest() -> GuestImage {
    GuestImage::locate().unwrap_or_else(|e| panic!("{e}"))
}

/// A busybox bundle built once per test binary.
pub fn bundle() -> &'static BusyboxBundle {
    static B: OnceLock<(tempfile::TempDir, BusyboxBundle)> = OnceLock::new();
    &B.get_or_init(|| {
        let d = tempfile::tempdir().unwrap();
        let b = BusyboxBundle::create(d.path(), &["sh"]).unwrap();
        (d, b)
    })
    .1
}

/// A writable copy of the busybox ext4 image in `dir`.
pub fn rootfs_copy(dir: &Path, name: &str) -> PathBuf {
    let p = dir.join(format!("{name}.ext4"));
    std::fs::copy(&bundle().image, &p).unwrap();
    p
}

/// The backend the tests use.
pub fn vmm() -> VmmKind {
    match std::env::var("EMBER_TEST_VMM").as_deref() {
        Ok("firecracker") => VmmKind::Firecracker,
        Ok("qemu") | Err(_) => VmmKind::Qemu,
        Ok(other) => panic!("EMBER_TEST_VMM={other}: expected qemu or firecracker"),
    }
}

/// Boots a sandbox with one rootfs drive per entry of `drives`.
pub async fn boot(dir: &Path, id: &str, drives: &[&str]) -> Sandbox {
    let state = dir.join("state");
    std::fs::create_dir_all(&state).unwrap();
    let mut cfg = SandboxConfig::new(id, &guest(), state);
    cfg.vmm = vmm();
    cfg.boot_timeout = Duration::from_secs(90);
    for d in drives {
        cfg.drives.push(Drive {
            id: d.to_string(),
            path: rootfs_copy(dir, d),
            read_only: false,
        });
    }
    Sandbox::boot(cfg)
        .await
        .unwrap_or_else(|e| panic!("boot failed: {e}"))
}

/// The bundle's spec with `args` as the process.
pub fn spec(args: &[&str], terminal: bool) -> Vec<u8> {
    let spec = ember_guest::default_spec(args, terminal);
    serde_json::to_vec(&spec).unwrap()
}

pub struct Output {
    pub status: u32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl Output {
    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
}

/// Runs `args` as a container on `drive`, feeding `stdin`, and collects its output.
pub async fn run(
    sb: &Sandbox,
    id: &str,
    drive: &str,
    args: &[&str],
    stdin: Option<&[u8]>,
) -> Output {
    let agent = sb.agent();
    sb.create_container(
        id,
        spec(args, false),
        drive,
        "ext4",
        StdioConfig {
            terminal: false,
            stdin: stdin.is_some(),
        },
    )
    .await
    .unwrap_or_else(|e| panic!("create {id}: {e}"));
    agent.start_process(id, "").await.unwrap();
    let out = read_all_output(agent, id, "", OutputStream::Stdout);
    let err = read_all_output(agent, id, "", OutputStream::Stderr);
    let feed = async {
        if let Some(data) = stdin {
            let mut r: &[u8] = data;
            ember_sandbox::copy_stdin(agent, id, "", &mut r)
                .await
                .unwrap();
        }
    };
    let (out, err, _) = tokio::join!(out, err, feed);
    let status = agent.wait_process(id, "").await.unwrap().exit_status;
    agent.remove_container(id).await.unwrap();
    Output {
        status,
        stdout: out.unwrap(),
        stderr: err.unwrap(),
    }
}

/// Whether a QEMU process of the sandbox `id` is running.
pub fn vmm_running(id: &str) -> bool {
    // QEMU's `-name ember-ID,...` or Firecracker's `--id ID`.
    let needle = match vmm() {
        VmmKind::Qemu => format!("ember-{id},"),
        VmmKind::Firecracker => format!("--id\0{id}\0"),
    };
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok())
        .any(|e| {
            std::fs::read(e.path().join("cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(&needle))
                .unwrap_or(false)
        })
}

/// Shuts the sandbox down and checks the VMM process is gone.
pub async fn shutdown(sb: Sandbox) {
    let pid = sb.vm().pid().unwrap();
    let exit = sb.shutdown().await.unwrap();
    assert!(exit.success(), "guest did not power off cleanly: {exit:?}");
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "VMM process {pid} is still there"
    );
}
