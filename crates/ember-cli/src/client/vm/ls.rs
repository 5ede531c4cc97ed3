//! `ember vm ls`: the VMs of the namespace (VMs/List).

use std::time::{Duration, UNIX_EPOCH};

use anyhow::Result;
use ember_vm_api::ember::{ListVMsRequest, VmDescription};
use serde::Serialize;

use super::VmConn;
use crate::client::{age, output, ClientOpts};

#[derive(clap::Args, Debug)]
#[command(about = "List microVMs")]
pub struct LsArgs {
    /// Only ids.
    #[arg(short, long)]
    quiet: bool,
}

/// One VM as `ember vm ls` and `ember vm info` show it.
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct Vm {
    pub id: String,
    pub state: String,
    pub vcpus: u32,
    pub memory_mib: u32,
    pub containers: Vec<String>,
    pub vmm: String,
    pub vmm_pid: Option<u32>,
    pub accel: String,
    /// Unix seconds of the guest's boot.
    pub started_at: Option<i64>,
    /// Made by `ember vm create` (stays until stopped), not for a container.
    pub explicit: bool,
    pub shared_fs: String,
    pub namespace: String,
}

impl From<VmDescription> for Vm {
    fn from(d: VmDescription) -> Self {
        Vm {
            id: d.vm_id,
            state: d.state,
            vcpus: d.vcpus,
            memory_mib: d.memory_mib,
            containers: d.containers,
            vmm: d.vmm,
            vmm_pid: (d.vmm_pid != 0).then_some(d.vmm_pid),
            accel: d.accel,
            started_at: (d.started_at > 0).then_some(d.started_at),
            explicit: d.explicit,
            shared_fs: d.shared_fs,
            namespace: d.namespace,
        }
    }
}

impl Vm {
    /// `5s`, `3m`, `2h`; `-` before the boot.
    pub fn uptime(&self) -> String {
        age(self
            .started_at
            .map(|s| UNIX_EPOCH + Duration::from_secs(s as u64)))
    }

    pub fn row(&self) -> Vec<String> {
        vec![
            self.id.clone(),
            self.state.clone(),
            self.vcpus.to_string(),
            format!("{} MiB", self.memory_mib),
            self.containers.len().to_string(),
            self.vmm_pid
                .map(|p| p.to_string())
                .unwrap_or_else(|| "-".into()),
            self.uptime(),
        ]
    }
}

pub const HEADER: &[&str] = &[
    "ID",
    "STATE",
    "VCPUS",
    "MEMORY",
    "CONTAINERS",
    "VMM PID",
    "UPTIME",
];

/// The VMs of the namespace, sorted by id.
pub async fn list(conn: &VmConn) -> Result<Vec<Vm>> {
    let r = conn
        .vms()
        .list(conn.req(ListVMsRequest {}))
        .await
        .map_err(|s| super::vm_error(s, "-"))?;
    let mut vms: Vec<Vm> = r.into_inner().vms.into_iter().map(Vm::from).collect();
    vms.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(vms)
}

pub async fn run(opts: &ClientOpts, a: LsArgs) -> Result<i32> {
    let conn = VmConn::new(opts).await?;
    let vms = list(&conn).await?;
    if a.quiet && !opts.json {
        for v in &vms {
            println!("{}", v.id);
        }
        return Ok(0);
    }
    output(opts, &vms, HEADER, Vm::row)?;
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows() {
        let now = std::time::SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let v = Vm::from(VmDescription {
            vm_id: "web".into(),
            state: "running".into(),
            vcpus: 2,
            memory_mib: 512,
            containers: vec!["a".into(), "b".into()],
            vmm_pid: 42,
            started_at: now - 190,
            ..Default::default()
        });
        assert_eq!(
            v.row(),
            ["web", "running", "2", "512 MiB", "2", "42", "3m"].map(String::from)
        );
        let v = Vm::from(VmDescription::default());
        assert_eq!(v.vmm_pid, None);
        assert_eq!(v.uptime(), "-");
    }
}
