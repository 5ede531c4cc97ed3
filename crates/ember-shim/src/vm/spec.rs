//! What a VM boots with: from the first container's runtime configuration (an
//! implicit VM) or from a `CreateVM` request (an explicit one), checked at the edge.

use std::path::{Path, PathBuf};

use ember_ttrpc::{Code, Status};
use ember_vm_api::fc::CreateVmRequest;
use ember_vmm::{BalloonConfig, Drive};

use super::err;
use crate::config::RuntimeConfig;

/// Guest path where `CreateVM`'s RootDrive is mounted. Ember's guest always boots
/// its own initramfs agent; the root drive is a filesystem the guest mounts there.
pub const ROOT_DRIVE_GUEST_PATH: &str = "/run/ember/rootdrive";
/// Most vCPUs a VM may ask for.
const MAX_VCPUS: u32 = 64;
/// Smallest guest memory that boots Ember's guest.
const MIN_MEMORY_MIB: u32 = 64;

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
        }
    }

    /// An explicit VM from `CreateVM` over the runtime configuration `base`.
    pub fn from_create_vm(base: &RuntimeConfig, req: &CreateVmRequest) -> Result<Self, Status> {
        let bad = |m: String| err(Code::InvalidArgument, m);
        if !req.network_interfaces.is_empty() {
            return Err(err(
                Code::Unimplemented,
                "CreateVM.NetworkInterfaces: Ember's VMs have no network interfaces yet",
            ));
        }
        if req
            .jailer_config
            .as_ref()
            .is_some_and(|j| *j != Default::default())
        {
            return Err(err(
                Code::Unimplemented,
                "CreateVM.JailerConfig: Ember does not run VMMs under a jailer yet",
            ));
        }
        let mut config = base.clone();
        if let Some(m) = &req.machine_cfg {
            if m.vcpu_count > MAX_VCPUS {
                return Err(bad(format!(
                    "MachineCfg.VcpuCount {} is more than {MAX_VCPUS}",
                    m.vcpu_count
                )));
            }
            if m.vcpu_count > 0 {
                config.vcpus = m.vcpu_count as u8;
            }
            if m.mem_size_mib > 0 {
                let host = host_memory_mib();
                if m.mem_size_mib < MIN_MEMORY_MIB || host.is_some_and(|h| m.mem_size_mib > h) {
                    return Err(bad(format!(
                        "MachineCfg.MemSizeMib {} is outside {MIN_MEMORY_MIB}..={} MiB",
                        m.mem_size_mib,
                        host.unwrap_or(u32::MAX)
                    )));
                }
                config.memory_mib = m.mem_size_mib;
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

fn host_memory_mib() -> Option<u32> {
    let m = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kb: u64 = m
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    u32::try_from(kb / 1024).ok()
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
        let s = BootSpec::from_create_vm(&base, &ok).unwrap();
        assert!(s.explicit && s.drives.is_empty());
        assert_eq!(
            (s.config.vcpus, s.config.memory_mib),
            (base.vcpus, base.memory_mib)
        );

        let with = |f: &dyn Fn(&mut CreateVmRequest)| {
            let mut r = ok.clone();
            f(&mut r);
            BootSpec::from_create_vm(&base, &r)
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
        for m in [(1000, 0), (0, 1), (0, u32::MAX)] {
            let r = with(&|r| {
                r.machine_cfg = Some(FirecrackerMachineConfiguration {
                    vcpu_count: m.0,
                    mem_size_mib: m.1,
                    ..Default::default()
                })
            });
            assert_eq!(code(r), Code::InvalidArgument, "{m:?}");
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
            Code::Unimplemented
        );
        assert_eq!(
            code(with(&|r| r.jailer_config = Some(JailerConfig {
                uid: 1,
                ..Default::default()
            }))),
            Code::Unimplemented
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
        let s = BootSpec::from_create_vm(&RuntimeConfig::default(), &req).unwrap();
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
