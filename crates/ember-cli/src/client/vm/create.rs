//! `ember vm create`: boots a VM that stays until `ember vm stop` (CreateVM).

use anyhow::{bail, Result};
use ember_vm_api::fc;
use serde::Serialize;

use super::{vm_error, VmConn};
use crate::client::ClientOpts;

#[derive(clap::Args, Debug)]
#[command(about = "Create a microVM that containers can join (`ember run --vm ID`)")]
pub struct CreateArgs {
    /// VM id (else the daemon makes one).
    #[arg(long)]
    id: Option<String>,
    /// vCPUs (default: the daemon's).
    #[arg(long)]
    vcpus: Option<u32>,
    /// Guest memory in MiB (default: the daemon's).
    #[arg(long)]
    memory: Option<u32>,
    /// Guest kernel (default: the installed guest image's).
    #[arg(long)]
    kernel: Option<String>,
    /// Kernel command line (default: the guest image's).
    #[arg(long)]
    kernel_args: Option<String>,
    /// A host block device or image file mounted in the guest:
    /// HOST:VMPATH[:FSTYPE[:ro|rw]] (FSTYPE defaults to ext4).
    #[arg(long = "drive-mount", value_name = "HOST:VMPATH[:FSTYPE[:ro]]")]
    drive_mounts: Vec<String>,
    /// How many containers are expected (a sizing hint, never a limit).
    #[arg(long)]
    container_count: Option<i32>,
    /// Stop the VM once its last container is deleted.
    #[arg(long)]
    exit_after_all_tasks: bool,
    /// A memory balloon of this many MiB.
    #[arg(long, value_name = "MiB")]
    balloon: Option<i64>,
    /// Let the balloon deflate when the guest runs out of memory.
    #[arg(long, requires = "balloon")]
    balloon_deflate_on_oom: bool,
    /// Seconds to wait for the VM to come up (default: the daemon's).
    #[arg(long, value_name = "SECS")]
    timeout: Option<u32>,
}

/// What CreateVM answers, as `--json` prints it.
#[derive(Serialize, Debug, PartialEq)]
pub struct Created {
    /// `id`, as in `ember vm ls --json`.
    pub id: String,
    pub socket_path: String,
    pub log_fifo_path: String,
    pub metrics_fifo_path: String,
    pub cgroup_path: String,
}

impl From<fc::CreateVmResponse> for Created {
    fn from(r: fc::CreateVmResponse) -> Self {
        Created {
            id: r.vmid,
            socket_path: r.socket_path,
            log_fifo_path: r.log_fifo_path,
            metrics_fifo_path: r.metrics_fifo_path,
            cgroup_path: r.cgroup_path,
        }
    }
}

/// `HOST:VMPATH[:FSTYPE[:ro|rw]]`.
pub fn parse_drive_mount(s: &str) -> Result<fc::FirecrackerDriveMount> {
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() < 2 || parts.len() > 4 {
        bail!("drive mount {s:?} is not HOST:VMPATH[:FSTYPE[:ro]]");
    }
    let (host, vm_path) = (parts[0], parts[1]);
    if host.is_empty() {
        bail!("drive mount {s:?}: the host path is empty");
    }
    if !vm_path.starts_with('/') {
        bail!("drive mount {s:?}: the VM path must be absolute");
    }
    let fstype = match parts.get(2) {
        None | Some(&"") => "ext4",
        Some(t) => t,
    };
    let writable = match parts.get(3) {
        None | Some(&"rw") => true,
        Some(&"ro") => false,
        Some(o) => bail!("drive mount {s:?}: {o:?} is neither ro nor rw"),
    };
    Ok(fc::FirecrackerDriveMount {
        host_path: host.into(),
        vm_path: vm_path.into(),
        filesystem_type: fstype.into(),
        options: if writable { vec![] } else { vec!["ro".into()] },
        is_writable: writable,
        ..Default::default()
    })
}

/// The CreateVM request of the flags; bad flags fail before anything is sent.
pub fn request(a: &CreateArgs) -> Result<fc::CreateVmRequest> {
    if a.vcpus == Some(0) {
        bail!("--vcpus must be at least 1");
    }
    if matches!(a.memory, Some(m) if m < 64) {
        bail!("--memory is in MiB and the microVM needs at least 64");
    }
    if matches!(a.balloon, Some(b) if b < 0) {
        bail!("--balloon must not be negative");
    }
    if matches!(a.container_count, Some(c) if c < 0) {
        bail!("--container-count must not be negative");
    }
    if let Some(id) = &a.id {
        if id.is_empty() || id.contains('/') || id.len() > 64 {
            bail!("VM id {id:?}: 1 to 64 characters, no '/'");
        }
    }
    let machine_cfg =
        (a.vcpus.is_some() || a.memory.is_some()).then(|| fc::FirecrackerMachineConfiguration {
            vcpu_count: a.vcpus.unwrap_or(0),
            mem_size_mib: a.memory.unwrap_or(0),
            ..Default::default()
        });
    Ok(fc::CreateVmRequest {
        vmid: a.id.clone().unwrap_or_default(),
        machine_cfg,
        kernel_image_path: a.kernel.clone().unwrap_or_default(),
        kernel_args: a.kernel_args.clone().unwrap_or_default(),
        drive_mounts: a
            .drive_mounts
            .iter()
            .map(|d| parse_drive_mount(d))
            .collect::<Result<_>>()?,
        container_count: a.container_count.unwrap_or(0),
        exit_after_all_tasks_deleted: a.exit_after_all_tasks,
        timeout_seconds: a.timeout.unwrap_or(0),
        balloon_device: a.balloon.map(|mib| fc::FirecrackerBalloonDevice {
            amount_mib: mib,
            deflate_on_oom: a.balloon_deflate_on_oom,
            stats_polling_intervals: 0,
        }),
        ..Default::default()
    })
}

pub async fn run(opts: &ClientOpts, a: CreateArgs) -> Result<i32> {
    let req = request(&a)?;
    let conn = VmConn::new(opts).await?;
    let shown = if req.vmid.is_empty() {
        "(new)".to_string()
    } else {
        req.vmid.clone()
    };
    let created: Created = conn
        .fc()
        .create_vm(conn.req(req))
        .await
        .map_err(|s| vm_error(s, &shown))?
        .into_inner()
        .into();
    if opts.json {
        println!("{}", serde_json::to_string_pretty(&created)?);
    } else {
        println!("{}", created.id);
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        a: CreateArgs,
    }

    fn req(args: &[&str]) -> Result<fc::CreateVmRequest> {
        let t = T::try_parse_from([&["create"][..], args].concat())?;
        request(&t.a)
    }

    #[test]
    fn drive_mounts() {
        let d = parse_drive_mount("/img:/data").unwrap();
        assert_eq!(
            (
                d.host_path.as_str(),
                d.vm_path.as_str(),
                d.filesystem_type.as_str()
            ),
            ("/img", "/data", "ext4")
        );
        assert!(d.is_writable);
        let d = parse_drive_mount("/img:/data:xfs:ro").unwrap();
        assert_eq!(d.filesystem_type, "xfs");
        assert!(!d.is_writable);
        assert_eq!(d.options, vec!["ro".to_string()]);
        for bad in [
            "/img",
            ":/data",
            "/img:data",
            "/img:/d:ext4:rx",
            "a:/b:c:ro:x",
        ] {
            assert!(parse_drive_mount(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn flags_to_request() {
        let r = req(&[]).unwrap();
        assert_eq!(r.vmid, "");
        assert!(r.machine_cfg.is_none() && r.balloon_device.is_none());
        let r = req(&[
            "--id",
            "web",
            "--vcpus",
            "2",
            "--memory",
            "512",
            "--drive-mount",
            "/a:/b",
            "--exit-after-all-tasks",
            "--balloon",
            "64",
            "--timeout",
            "20",
        ])
        .unwrap();
        assert_eq!(r.vmid, "web");
        let m = r.machine_cfg.unwrap();
        assert_eq!((m.vcpu_count, m.mem_size_mib), (2, 512));
        assert_eq!(r.drive_mounts.len(), 1);
        assert!(r.exit_after_all_tasks_deleted);
        assert_eq!(r.balloon_device.unwrap().amount_mib, 64);
        assert_eq!(r.timeout_seconds, 20);
        for bad in [
            &["--vcpus", "0"][..],
            &["--memory", "12"],
            &["--id", "a/b"],
            &["--drive-mount", "nope"],
            &["--balloon", "-1"],
        ] {
            assert!(req(bad).is_err(), "{bad:?}");
        }
    }
}
