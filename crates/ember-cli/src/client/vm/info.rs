//! `ember vm info ID`: one VM in full (VMs/Describe and GetVMInfo merged).

use anyhow::Result;
use ember_vm_api::ember::DescribeVmRequest;
use ember_vm_api::fc::GetVmInfoRequest;
use serde::Serialize;

use super::ls::Vm;
use super::{vm_error, VmConn};
use crate::client::{rfc3339, ClientOpts};

#[derive(clap::Args, Debug)]
#[command(about = "Show one microVM in full")]
pub struct InfoArgs {
    id: String,
}

/// What `ember vm info` shows.
#[derive(Serialize, Debug)]
pub struct Info {
    #[serde(flatten)]
    pub vm: Vm,
    pub socket_path: String,
    pub vsock_path: String,
    pub log_fifo_path: String,
    pub metrics_fifo_path: String,
    pub cgroup_path: String,
}

pub async fn info(conn: &VmConn, id: &str) -> Result<Info> {
    let d = conn
        .vms()
        .describe(conn.req(DescribeVmRequest { vm_id: id.into() }))
        .await
        .map_err(|s| vm_error(s, id))?
        .into_inner();
    let i = conn
        .fc()
        .get_vm_info(conn.req(GetVmInfoRequest { vmid: id.into() }))
        .await
        .map_err(|s| vm_error(s, id))?
        .into_inner();
    Ok(Info {
        vm: d.into(),
        socket_path: i.socket_path,
        vsock_path: i.v_sock_path,
        log_fifo_path: i.log_fifo_path,
        metrics_fifo_path: i.metrics_fifo_path,
        cgroup_path: i.cgroup_path,
    })
}

fn or_dash(s: &str) -> String {
    if s.is_empty() {
        "-".into()
    } else {
        s.into()
    }
}

/// `key: value` lines, aligned.
pub fn lines(i: &Info) -> String {
    let v = &i.vm;
    let started = v
        .started_at
        .map(|s| std::time::UNIX_EPOCH + std::time::Duration::from_secs(s as u64));
    let containers = if v.containers.is_empty() {
        "-".to_string()
    } else {
        v.containers.join(", ")
    };
    let rows: Vec<(&str, String)> = vec![
        ("ID", v.id.clone()),
        ("Namespace", or_dash(&v.namespace)),
        ("State", or_dash(&v.state)),
        (
            "Kind",
            if v.explicit {
                "explicit (stays until stopped)"
            } else {
                "implicit (gone with its last container)"
            }
            .into(),
        ),
        ("VMM", or_dash(&v.vmm)),
        ("Accelerator", or_dash(&v.accel)),
        (
            "VMM PID",
            v.vmm_pid
                .map(|p| p.to_string())
                .unwrap_or_else(|| "-".into()),
        ),
        ("vCPUs", v.vcpus.to_string()),
        ("Memory", format!("{} MiB", v.memory_mib)),
        (
            "Started",
            format!("{} (up {})", rfc3339(started), v.uptime()),
        ),
        ("Shared FS", or_dash(&v.shared_fs)),
        (
            "Containers",
            format!("{} ({containers})", v.containers.len()),
        ),
        ("Socket", or_dash(&i.socket_path)),
        ("Vsock", or_dash(&i.vsock_path)),
        ("Log FIFO", or_dash(&i.log_fifo_path)),
        ("Metrics FIFO", or_dash(&i.metrics_fifo_path)),
        ("Cgroup", or_dash(&i.cgroup_path)),
    ];
    let w = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0) + 1;
    rows.iter()
        .map(|(k, v)| format!("{:<w$} {v}\n", format!("{k}:")))
        .collect()
}

pub async fn run(opts: &ClientOpts, a: InfoArgs) -> Result<i32> {
    let conn = VmConn::new(opts).await?;
    let i = info(&conn, &a.id).await?;
    if opts.json {
        println!("{}", serde_json::to_string_pretty(&i)?);
    } else {
        print!("{}", lines(&i));
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ember_vm_api::ember::VmDescription;

    #[test]
    fn key_value_lines() {
        let i = Info {
            vm: VmDescription {
                vm_id: "web".into(),
                containers: vec!["a".into(), "b".into()],
                memory_mib: 256,
                explicit: true,
                ..Default::default()
            }
            .into(),
            socket_path: "/run/ember/s/x".into(),
            vsock_path: String::new(),
            log_fifo_path: String::new(),
            metrics_fifo_path: String::new(),
            cgroup_path: "/ember/web".into(),
        };
        let out = lines(&i);
        assert!(out.starts_with("ID:           web\n"), "{out}");
        assert!(out.contains("Containers:   2 (a, b)\n"), "{out}");
        assert!(out.contains("Socket:       /run/ember/s/x\n"), "{out}");
        assert!(out.contains("Vsock:        -\n"), "{out}");
        assert!(out.contains("Kind:         explicit"), "{out}");
        let j = serde_json::to_value(&i).unwrap();
        assert_eq!(j["id"], "web");
        assert_eq!(j["cgroup_path"], "/ember/web");
    }
}
