//! What a VM boots with: from the first container's runtime configuration (an
//! implicit VM) or from a `CreateVM` request (an explicit one), checked at the edge.

use std::path::{Path, PathBuf};

use ember_ttrpc::{Code, Status};
use ember_vm_api::fc::CreateVmRequest;
use ember_vmm::{BalloonConfig, Drive};

use super::err;
use crate::config::RuntimeConfig;
use crate::sizing::{self, Host};

/// Guest path where `CreateVM`'s RootDrive is mounted. Ember's guest always boots
/// its own initramfs agent; the root drive is a filesystem the guest mounts there.
pub const ROOT_DRIVE_GUEST_PATH: &str = "/run/ember/rootdrive";

/// A boot drive the agent mounts at a guest path once the VM is up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockMount {
    pub drive: String,
    pub target: String,
    pub fstype: String,
    pub options: String,
    pub read_only: bool,
}

/// Everything a boot needs.
#[derive(Debug, Clone)]
pub struct BootSpec {
    pub config: RuntimeConfig,
    /// Boot drives besides the pool drive.
    pub drives: Vec<Drive>,
    pub mounts: Vec<BlockMount>,
    pub balloon: Option<BalloonConfig>,
    pub explicit: bool,
    pub exit_after_all: bool,
    pub log_fifo: Option<PathBuf>,
    pub metrics_fifo: Option<PathBuf>,
    /// The network namespace the VMM runs in and the NICs made there.
    pub network: crate::net::NetRequest,
    /// CreateVM's NetworkInterfaces, checked; made into `fc_network` before boot.
    pub network_interfaces: Vec<crate::vm_network::Planned>,
    /// NICs, the VMM's network namespace and the guest's configuration from them.
    pub fc_network: Option<crate::vm_network::FcNetwork>,
    /// CreateVM's JailerConfig, when it had one.
    pub jail: Option<super::jail::JailRequest>,
}

impl BootSpec {
    /// An implicit VM sized by its first container, whose rootfs may be a boot drive.
    pub fn implicit(config: RuntimeConfig, drives: Vec<Drive>) -> Self {
        BootSpec {
            config,
            drives,
            mounts: Vec::new(),
            balloon: None,
            explicit: false,
            exit_after_all: false,
            log_fifo: None,
            metrics_fifo: None,
            network: Default::default(),
            network_interfaces: Vec::new(),
            fc_network: None,
            jail: None,
        }
    }

    /// An explicit VM from `CreateVM` over the runtime configuration `base`; its
    /// MachineCfg is checked against what `host` can give, as annotations are.
    pub fn from_create_vm(
        base: &RuntimeConfig,
        req: &CreateVmRequest,
        host: &Host,
    ) -> Result<Self, Status> {
        let bad = |m: String| err(Code::InvalidArgument, m);
        let network_interfaces = crate::vm_network::check(&req.network_interfaces)?;
        let jail = req
            .jailer_config
            .as_ref()
            .map(super::jail::JailRequest::from_wire)
            .transpose()?;
        let mut config = base.clone();
        // Zero is Firecracker's "not set": the runtime configuration's size.
        if let Some(m) = &req.machine_cfg {
            if m.vcpu_count > 0 {
                config.vcpus = sizing::check_vcpus(m.vcpu_count.into(), host)
                    .map_err(|e| bad(format!("MachineCfg.VcpuCount {}: {e}", m.vcpu_count)))?;
            }
            if m.mem_size_mib > 0 {
                config.memory_mib = sizing::check_memory(m.mem_size_mib.into(), host)
                    .map_err(|e| bad(format!("MachineCfg.MemSizeMib {}: {e}", m.mem_size_mib)))?;
            }
        }
        if !req.kernel_image_path.is_empty() {
            let p = PathBuf::from(&req.kernel_image_path);
            if !p.is_file() {
                return Err(bad(format!(
                    "KernelImagePath {}: no such file",
                    p.display()
                )));
            }
            config.kernel = p;
        }
        if !req.kernel_args.is_empty() {
            config.kernel_args = req.kernel_args.clone();
        }
        if req.timeout_seconds > 0 {
            config.boot_timeout_secs = req.timeout_seconds.into();
        }
        let mut drives = Vec::new();
        let mut mounts = Vec::new();
        if let Some(root) = req.root_drive.as_ref().filter(|r| !r.host_path.is_empty()) {
            let path = existing(&root.host_path, "RootDrive.HostPath")?;
            mounts.push(BlockMount {
                drive: "rootdrive".into(),
                target: ROOT_DRIVE_GUEST_PATH.into(),
                fstype: detect_fstype(&path),
                options: String::new(),
                read_only: !root.is_writable,
            });
            drives.push(Drive {
                id: "rootdrive".into(),
                path,
                read_only: !root.is_writable,
            });
        }
        for (i, m) in req.drive_mounts.iter().enumerate() {
            let path = existing(&m.host_path, &format!("DriveMounts[{i}].HostPath"))?;
            if !m.vm_path.starts_with('/') {
                return Err(bad(format!(
                    "DriveMounts[{i}].VMPath {:?} is not an absolute path",
                    m.vm_path
                )));
            }
            let id = format!("drive{i}");
            mounts.push(BlockMount {
                drive: id.clone(),
                target: m.vm_path.clone(),
                fstype: if m.filesystem_type.is_empty() {
                    detect_fstype(&path)
                } else {
                    m.filesystem_type.clone()
                },
                options: m.options.join(","),
                read_only: !m.is_writable,
            });
            drives.push(Drive {
                id,
                path,
                read_only: !m.is_writable,
            });
        }
        let balloon = match &req.balloon_device {
            None => None,
            Some(b) => Some(BalloonConfig {
                amount_mib: u32::try_from(b.amount_mib).map_err(|_| {
                    bad(format!(
                        "BalloonDevice.AmountMib {} is out of range",
                        b.amount_mib
                    ))
                })?,
                deflate_on_oom: b.deflate_on_oom,
                stats_interval_s: u32::try_from(b.stats_polling_intervals).map_err(|_| {
                    bad(format!(
                        "BalloonDevice.StatsPollingIntervals {} is out of range",
                        b.stats_polling_intervals
                    ))
                })?,
            }),
        };
        let fifo = |p: &str| (!p.is_empty()).then(|| PathBuf::from(p));
        Ok(BootSpec {
            config,
            drives,
            mounts,
            balloon,
            explicit: true,
            exit_after_all: req.exit_after_all_tasks_deleted,
            log_fifo: fifo(&req.log_fifo_path),
            metrics_fifo: fifo(&req.metrics_fifo_path),
            network: Default::default(),
            network_interfaces,
            fc_network: None,
            jail,
        })
    }
}

fn existing(p: &str, what: &str) -> Result<PathBuf, Status> {
    if p.is_empty() {
        return Err(err(Code::InvalidArgument, format!("{what} is empty")));
    }
    let path = PathBuf::from(p);
    if !path.exists() {
        return Err(err(
            Code::InvalidArgument,
            format!("{what} {p}: no such file"),
        ));
    }
    Ok(path)
}

/// The filesystem in an image, from its magic numbers (ext4 when unknown).
pub fn detect_fstype(path: &Path) -> String {
    use std::os::unix::fs::FileExt;
    let Ok(f) = std::fs::File::open(path) else {
        return "ext4".into();
    };
    let mut b = [0u8; 4];
    let at = |off: u64, b: &mut [u8]| f.read_exact_at(b, off).is_ok();
    if at(0, &mut b) && &b == b"hsqs" {
        return "squashfs".into();
    }
    if at(1024, &mut b) && u32::from_le_bytes(b) == 0xE0F5_E1E2 {
        return "erofs".into();
    }
    if at(0, &mut b) && &b == b"XFSB" {
        return "xfs".into();
    }
    "ext4".into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ember_vm_api::fc::*;

    const HOST: Host = Host {
        cpus: 4,
        memory_mib: 2048,
    };

    fn code(r: Result<BootSpec, Status>) -> Code {
        r.err().map(|s| s.code()).unwrap_or(Code::Ok)
    }

    #[test]
    fn create_vm_requests_are_checked() {
        let base = RuntimeConfig::default();
        let ok = CreateVmRequest {
            vmid: "vm1".into(),
            ..Default::default()
        };
        let s = BootSpec::from_create_vm(&base, &ok, &HOST).unwrap();
        assert!(s.explicit && s.drives.is_empty());
        assert_eq!(
            (s.config.vcpus, s.config.memory_mib),
            (base.vcpus, base.memory_mib)
        );

        let with = |f: &dyn Fn(&mut CreateVmRequest)| {
            let mut r = ok.clone();
            f(&mut r);
            BootSpec::from_create_vm(&base, &r, &HOST)
        };
        let sized = with(&|r| {
            r.machine_cfg = Some(FirecrackerMachineConfiguration {
                vcpu_count: 2,
                mem_size_mib: 128,
                ..Default::default()
            })
        })
        .unwrap();
        assert_eq!((sized.config.vcpus, sized.config.memory_mib), (2, 128));
        for (m, why) in [
            (
                (5, 0),
                "MachineCfg.VcpuCount 5: 5 vCPUs is more than the host's 4 CPUs",
            ),
            (
                (1000, 0),
                "MachineCfg.VcpuCount 1000: 1000 vCPUs is more than the host's 4 CPUs",
            ),
            ((0, 1), "MachineCfg.MemSizeMib 1: 1 MiB is below the"),
            (
                (0, 4096),
                "MachineCfg.MemSizeMib 4096: 4096 MiB is more than the host's 2048 MiB",
            ),
            ((0, u32::MAX), "is more than the host's 2048 MiB"),
        ] {
            let r = with(&|r| {
                r.machine_cfg = Some(FirecrackerMachineConfiguration {
                    vcpu_count: m.0,
                    mem_size_mib: m.1,
                    ..Default::default()
                })
            });
            let e = r.err().unwrap_or_else(|| panic!("{m:?} accepted"));
            assert_eq!(e.code(), Code::InvalidArgument, "{m:?}");
            assert!(e.message().contains(why), "{m:?}: {}", e.message());
        }
        assert_eq!(
            code(with(
                &|r| r.kernel_image_path = "/nonexistent/vmlinux".into()
            )),
            Code::InvalidArgument
        );
        assert_eq!(
            code(with(&|r| r.drive_mounts = vec![FirecrackerDriveMount {
                host_path: "/nonexistent.img".into(),
                vm_path: "/data".into(),
                ..Default::default()
            }])),
            Code::InvalidArgument
        );
        assert_eq!(
            code(with(&|r| r.network_interfaces = vec![Default::default()])),
            Code::InvalidArgument
        );
        assert_eq!(
            code(with(&|r| r.jailer_config = Some(JailerConfig {
                cp_us: "every".into(),
                ..Default::default()
            }))),
            Code::InvalidArgument
        );
        assert_eq!(
            code(with(&|r| r.balloon_device =
                Some(FirecrackerBalloonDevice {
                    amount_mib: -1,
                    ..Default::default()
                }))),
            Code::InvalidArgument
        );
    }

    #[test]
    fn drive_mounts_become_boot_drives_mounted_by_the_agent() {
        let d = tempfile::tempdir().unwrap();
        let img = d.path().join("data.img");
        std::fs::write(&img, vec![0u8; 4096]).unwrap();
        let req = CreateVmRequest {
            vmid: "vm1".into(),
            root_drive: Some(FirecrackerRootDrive {
                host_path: img.display().to_string(),
                ..Default::default()
            }),
            drive_mounts: vec![FirecrackerDriveMount {
                host_path: img.display().to_string(),
                vm_path: "/data".into(),
                filesystem_type: "ext4".into(),
                options: vec!["noatime".into(), "nodev".into()],
                is_writable: true,
                ..Default::default()
            }],
            ..Default::default()
        };
        let s = BootSpec::from_create_vm(&RuntimeConfig::default(), &req, &HOST).unwrap();
        assert_eq!(s.drives.len(), 2);
        assert!(s.drives[0].read_only && !s.drives[1].read_only);
        assert_eq!(s.mounts[0].target, ROOT_DRIVE_GUEST_PATH);
        assert_eq!(
            s.mounts[1],
            BlockMount {
                drive: "drive0".into(),
                target: "/data".into(),
                fstype: "ext4".into(),
                options: "noatime,nodev".into(),
                read_only: false,
            }
        );
    }
}
