//! Helpers of the guest feature tests: busybox filesystems written into regions of
//! a sparse pool file, containers created from regions, execs with their output.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use ember_agent_api::{
    AgentClient, BlockRootfs, CreateContainerRequest, CreateProcessRequest, GuestFile,
    OutputStream, StdioConfig,
};
use ember_sandbox::read_all_output;

pub const MIB: u64 = 1 << 20;

/// A busybox rootfs directory whose `/marker` holds `marker`.
pub fn marked_rootfs(dir: &Path, marker: &str) -> PathBuf {
    let root = dir.join(format!("rootfs-{marker}"));
    std::fs::create_dir_all(&root).unwrap();
    ember_guest::busybox_rootfs(&root).unwrap();
    std::fs::write(root.join("marker"), marker).unwrap();
    root
}

/// A sparse file of `size` bytes.
pub fn sparse_file(path: &Path, size: u64) {
    std::fs::File::create(path).unwrap().set_len(size).unwrap();
}

/// Makes an ext4 filesystem of `size_mib` MiB holding `root` at `offset` of `pool`
/// (mkfs.ext4 -E offset: the rest of the file is left alone and stays sparse).
pub fn mkfs_region(pool: &Path, offset: u64, size_mib: u64, root: &Path) {
    let out = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-E"])
        .arg(format!("offset={offset},nodiscard,root_owner=0:0"))
        .arg("-d")
        .arg(root)
        .arg(pool)
        .arg(format!("{}k", size_mib * 1024))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "mkfs.ext4 at {offset}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A region of the device `serial`.
pub fn region(serial: &str, offset: u64, length: u64) -> BlockRootfs {
    BlockRootfs {
        serial: serial.into(),
        fstype: "ext4".into(),
        offset,
        length,
        ..Default::default()
    }
}

/// The default spec running `args`, with extra OCI mounts.
pub fn spec_with_mounts(args: &[&str], mounts: &[serde_json::Value]) -> Vec<u8> {
    let spec = ember_guest::default_spec(args, false);
    let mut v = serde_json::to_value(&spec).unwrap();
    let list = v["mounts"].as_array_mut().unwrap();
    list.extend(mounts.iter().cloned());
    serde_json::to_vec(&v).unwrap()
}

/// A bind mount of the guest path `source` at `destination`.
pub fn bind(source: &str, destination: &str, ro: bool) -> serde_json::Value {
    serde_json::json!({
        "destination": destination,
        "type": "bind",
        "source": source,
        "options": ["rbind", if ro { "ro" } else { "rw" }],
    })
}

/// Creates (not starts) a container.
pub async fn create(
    agent: &AgentClient,
    id: &str,
    rootfs: BlockRootfs,
    spec_json: Vec<u8>,
    files: Vec<GuestFile>,
) -> ember_ttrpc::Result<u32> {
    agent
        .create_container(&CreateContainerRequest {
            container_id: id.into(),
            spec_json,
            rootfs: Some(rootfs),
            stdio: Some(StdioConfig::default()),
            files,
            ..Default::default()
        })
        .await
        .map(|r| r.pid)
}

/// Creates and starts a container running `sleep 1000`.
pub async fn start_sleeper(agent: &AgentClient, id: &str, rootfs: BlockRootfs) {
    create(
        agent,
        id,
        rootfs,
        spec_with_mounts(&["sleep", "1000"], &[]),
        Vec::new(),
    )
    .await
    .unwrap_or_else(|e| panic!("create {id}: {e}"));
    agent.start_process(id, "").await.unwrap();
}

/// Output of an exec.
#[derive(Debug)]
pub struct ExecOut {
    pub status: u32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `args` in the running container `id` and collects its output.
pub async fn exec(agent: &AgentClient, id: &str, exec_id: &str, args: &[&str]) -> ExecOut {
    let process = serde_json::json!({
        "terminal": false,
        "user": {"uid": 0, "gid": 0},
        "args": args,
        "env": ["PATH=/bin:/sbin:/usr/bin"],
        "cwd": "/",
    });
    agent
        .create_process(&CreateProcessRequest {
            container_id: id.into(),
            exec_id: exec_id.into(),
            process_json: serde_json::to_vec(&process).unwrap(),
            stdio: None,
        })
        .await
        .unwrap_or_else(|e| panic!("exec {exec_id} in {id}: {e}"));
    agent.start_process(id, exec_id).await.unwrap();
    let out = read_all_output(agent, id, exec_id, OutputStream::Stdout);
    let err = read_all_output(agent, id, exec_id, OutputStream::Stderr);
    let (out, err) = tokio::join!(out, err);
    let status = agent.wait_process(id, exec_id).await.unwrap().exit_status;
    agent.remove_process(id, exec_id).await.unwrap();
    ExecOut {
        status,
        stdout: String::from_utf8_lossy(&out.unwrap()).into_owned(),
        stderr: String::from_utf8_lossy(&err.unwrap()).into_owned(),
    }
}

/// Runs a shell command in `id`; panics unless it succeeds. Returns stdout.
pub async fn sh(agent: &AgentClient, id: &str, exec_id: &str, script: &str) -> String {
    let o = exec(agent, id, exec_id, &["sh", "-c", script]).await;
    assert_eq!(o.status, 0, "{script}: {}", o.stderr);
    o.stdout
}
