//! Helpers for VM tests: the VM control API over emberd's socket, the processes
//! of a VM (its shim, its VMM), and a guard that kills what a failed test leaves.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use containerd_client::tonic::{Code, Request};
use ember_vm_api::ember::v_ms_client::VMsClient;
use ember_vm_api::fc::firecracker_client::FirecrackerClient;
use ember_vm_api::fc::*;

use super::{Emberd, CTR};

pub type Fc = FirecrackerClient<containerd_client::tonic::transport::Channel>;
pub type VmList = VMsClient<containerd_client::tonic::transport::Channel>;

/// Whether microVM tests can run here; prints why not.
pub fn can_run_vms() -> bool {
    if !super::can_run() || !Path::new("/bin/busybox").exists() {
        return false;
    }
    let shim = Path::new(env!("CARGO_BIN_EXE_emberd")).with_file_name("containerd-shim-ember-v2");
    if !shim.exists() || ember_guest::GuestImage::locate().is_err() {
        eprintln!(
            "skipping: the ember shim is not built or the guest image is missing (guest/build.sh)"
        );
        return false;
    }
    true
}

/// A request in namespace `ns`.
pub fn ns_req<T>(ns: &str, msg: T) -> Request<T> {
    super::req(ns, msg)
}

pub async fn fc(d: &Emberd) -> Fc {
    FirecrackerClient::new(d.channel().await)
}

pub async fn vm_list(d: &Emberd) -> VmList {
    VMsClient::new(d.channel().await)
}

/// CreateVM with 1 vCPU and 256 MiB.
pub async fn create_vm(c: &mut Fc, ns: &str, id: &str, exit_after_all: bool) {
    c.create_vm(ns_req(
        ns,
        CreateVmRequest {
            vmid: id.into(),
            machine_cfg: Some(FirecrackerMachineConfiguration {
                vcpu_count: 1,
                mem_size_mib: 256,
                ..Default::default()
            }),
            exit_after_all_tasks_deleted: exit_after_all,
            ..Default::default()
        },
    ))
    .await
    .unwrap_or_else(|e| panic!("CreateVM {id}: {e}"));
}

pub async fn stop_vm(c: &mut Fc, ns: &str, id: &str) -> Result<(), Code> {
    c.stop_vm(ns_req(
        ns,
        StopVmRequest {
            vmid: id.into(),
            timeout_seconds: 10,
        },
    ))
    .await
    .map(|_| ())
    .map_err(|s| s.code())
}

/// GetVMInfo's VMID, or the status code.
pub async fn vm_info(c: &mut Fc, ns: &str, id: &str) -> Result<String, Code> {
    c.get_vm_info(ns_req(ns, GetVmInfoRequest { vmid: id.into() }))
        .await
        .map(|r| r.into_inner().vmid)
        .map_err(|s| s.code())
}

/// Waits (up to `secs`) for GetVMInfo of `id` to answer NotFound.
pub async fn wait_vm_gone(c: &mut Fc, ns: &str, id: &str, secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        match vm_info(c, ns, id).await {
            Err(Code::NotFound) => return,
            r => assert!(Instant::now() < deadline, "VM {id} is still there: {r:?}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn cmdline(pid: &str) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| String::from_utf8_lossy(&c).into_owned())
        .unwrap_or_default()
}

/// The pids of the shim serving VM `vm` for the daemon at `address`.
pub fn vm_shim_pids(address: &Path, vm: &str) -> Vec<i32> {
    let vm_arg = format!("-vm\0{vm}\0");
    let id_arg = format!("-id\0{vm}\0");
    let daemon = format!("-address\0{}\0", address.display());
    pids_where(|c| {
        c.contains("containerd-shim")
            && c.contains(&daemon)
            && (c.contains(&vm_arg) || c.contains(&id_arg))
            && c.contains("serve")
    })
}

fn pids_where(f: impl Fn(&str) -> bool) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_str()?.to_string();
            let pid: i32 = name.parse().ok()?;
            f(&cmdline(&name)).then_some(pid)
        })
        .collect()
}

/// The VMM processes that are children of `shims`.
pub fn vmm_pids(shims: &[i32]) -> Vec<i32> {
    let mut out = Vec::new();
    for shim in shims {
        let children = std::fs::read_to_string(format!("/proc/{shim}/task/{shim}/children"))
            .unwrap_or_default();
        for child in children.split_whitespace() {
            let c = cmdline(child);
            if c.contains("qemu-system") || c.contains("firecracker") {
                out.push(child.parse().unwrap());
            }
            // A jailed VMM is the child of its keeper (ember_vmm::jail).
            if c.starts_with("ember-vmm-keeper") {
                let vmm = std::fs::read_to_string(format!("/proc/{child}/task/{child}/children"))
                    .unwrap_or_default();
                out.extend(vmm.split_whitespace().filter_map(|p| p.parse::<i32>().ok()));
            }
        }
    }
    out
}

/// Waits (up to 20 s) until no shim of VM `vm` runs.
pub fn wait_vm_shim_gone(address: &Path, vm: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !vm_shim_pids(address, vm).is_empty() {
        assert!(
            Instant::now() < deadline,
            "the shim of VM {vm} is still running"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn kill(pid: i32) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    );
}

/// Kills, when dropped, the shims of VMs `vms` of the daemon at the address and
/// their VMMs, by pid.
pub struct VmGuard(pub PathBuf, pub Vec<String>);

impl Drop for VmGuard {
    fn drop(&mut self) {
        for vm in &self.1 {
            let shims = vm_shim_pids(&self.0, vm);
            for pid in vmm_pids(&shims).into_iter().chain(shims) {
                kill(pid);
            }
        }
    }
}

/// `ctr events` in the background; its output so far on [`Events::text`].
pub struct Events {
    child: Child,
    out: PathBuf,
}

impl Events {
    pub fn start(socket: &Path, ns: &str, dir: &Path) -> Events {
        let out = dir.join("events.txt");
        let child = Command::new(CTR)
            .arg("-a")
            .arg(socket)
            .args(["-n", ns, "events"])
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Subscribed before anything happens.
        std::thread::sleep(Duration::from_millis(500));
        Events { child, out }
    }

    pub fn text(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }

    /// The `/tasks/exit` lines, waiting (up to 20 s) for at least `n`.
    pub fn exits(&self, n: usize) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let lines: Vec<String> = self
                .text()
                .lines()
                .filter(|l| l.contains("/tasks/exit"))
                .map(str::to_string)
                .collect();
            if lines.len() >= n || Instant::now() > deadline {
                return lines;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
