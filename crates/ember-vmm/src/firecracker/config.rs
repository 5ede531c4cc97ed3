//! Request bodies of Firecracker's REST API, built from a [`VmConfig`].
//!
//! Only the fields Ember sets are modelled; Firecracker applies its defaults to the rest.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::{Drive, VmConfig};

/// Kernel arguments Ember always passes: serial console, reboot through the keyboard
/// controller (Firecracker exits on it), panic reboots, no PCI probing.
pub(crate) const BASE_BOOT_ARGS: &str = "console=ttyS0 reboot=k panic=1 pci=off";

/// The guest's vsock context id. Each VM has its own vsock device, so all can use 3.
pub(crate) const GUEST_CID: u32 = 3;

/// `PUT /logger`
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub(crate) struct Logger {
    pub log_path: PathBuf,
    pub level: &'static str,
    pub show_level: bool,
    pub show_log_origin: bool,
}

impl Logger {
    pub fn new(log_path: &Path) -> Self {
        Self {
            log_path: log_path.to_path_buf(),
            level: "Info",
            show_level: true,
            show_log_origin: false,
        }
    }
}

/// `PUT /metrics`
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub(crate) struct Metrics {
    pub metrics_path: PathBuf,
}

/// `PUT /boot-source`
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub(crate) struct BootSource {
    pub kernel_image_path: PathBuf,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub initrd_path: Option<PathBuf>,
    pub boot_args: String,
}

impl BootSource {
    pub fn from_config(config: &VmConfig) -> Self {
        let extra = config.kernel_args.trim();
        let boot_args = if extra.is_empty() {
            BASE_BOOT_ARGS.to_owned()
        } else {
            format!("{BASE_BOOT_ARGS} {extra}")
        };
        Self {
            kernel_image_path: config.kernel.clone(),
            initrd_path: config.initrd.clone(),
            boot_args,
        }
    }
}

/// `PUT /machine-config`
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub(crate) struct MachineConfig {
    pub vcpu_count: u8,
    pub mem_size_mib: u32,
}

impl MachineConfig {
    pub fn from_config(config: &VmConfig) -> Self {
        Self {
            vcpu_count: config.vcpus,
            mem_size_mib: config.memory_mib,
        }
    }
}

/// `PUT /drives/{drive_id}`
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub(crate) struct DriveBody {
    pub drive_id: String,
    pub path_on_host: PathBuf,
    pub is_root_device: bool,
    pub is_read_only: bool,
}

impl DriveBody {
    pub fn from_drive(drive: &Drive) -> Self {
        Self {
            drive_id: drive.id.clone(),
            path_on_host: drive.path.clone(),
            is_root_device: false,
            is_read_only: drive.read_only,
        }
    }
}

/// `PATCH /drives/{drive_id}`: swaps the backing file of a drive of a running VM.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub(crate) struct DrivePatch {
    pub drive_id: String,
    pub path_on_host: PathBuf,
}

/// `PUT /vsock`
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub(crate) struct Vsock {
    pub guest_cid: u32,
    pub uds_path: PathBuf,
}

/// `PUT /network-interfaces/{iface_id}`: a virtio-net device backed by a host tap.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub(crate) struct NetworkInterface {
    pub iface_id: String,
    pub host_dev_name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub guest_mac: Option<String>,
}

/// The `PUT /network-interfaces/{iface_id}` bodies of the VM's NICs, with their
/// paths. Firecracker has no MTU setting: the guest sets it (ConfigureNetwork).
pub(crate) fn nics(config: &VmConfig) -> Vec<(String, NetworkInterface)> {
    config
        .nics
        .iter()
        .map(|n| {
            (
                format!("/network-interfaces/{}", n.id),
                NetworkInterface {
                    iface_id: n.id.clone(),
                    host_dev_name: n.tap.clone(),
                    guest_mac: Some(n.mac.clone()),
                },
            )
        })
        .collect()
}

/// `PUT /snapshot/create`: a full snapshot, device state and guest memory in two
/// files.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub(crate) struct SnapshotCreate {
    pub snapshot_type: SnapshotType,
    pub snapshot_path: PathBuf,
    pub mem_file_path: PathBuf,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub(crate) enum SnapshotType {
    Full,
}

/// `PUT /snapshot/load`: guest memory mapped privately from a file, the VM left
/// paused, its vsock socket and taps this VM's own rather than the template's.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub(crate) struct SnapshotLoad {
    pub snapshot_path: PathBuf,
    pub mem_backend: MemBackend,
    pub resume_vm: bool,
    pub vsock_override: VsockOverride,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub network_overrides: Vec<NetworkOverride>,
}

impl SnapshotLoad {
    /// The load of `state` and `memory` for a clone run by `config`, whose vsock
    /// socket Firecracker binds at `vsock`.
    pub fn for_clone(config: &VmConfig, state: &Path, memory: &Path, vsock: PathBuf) -> Self {
        Self {
            snapshot_path: state.to_path_buf(),
            mem_backend: MemBackend {
                backend_type: MemBackendType::File,
                backend_path: memory.to_path_buf(),
            },
            resume_vm: false,
            vsock_override: VsockOverride { uds_path: vsock },
            network_overrides: config
                .nics
                .iter()
                .map(|n| NetworkOverride {
                    iface_id: n.id.clone(),
                    host_dev_name: n.tap.clone(),
                })
                .collect(),
        }
    }
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub(crate) struct MemBackend {
    pub backend_type: MemBackendType,
    pub backend_path: PathBuf,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub(crate) enum MemBackendType {
    File,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub(crate) struct VsockOverride {
    pub uds_path: PathBuf,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub(crate) struct NetworkOverride {
    pub iface_id: String,
    pub host_dev_name: String,
}

/// `PUT /actions`
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub(crate) enum ActionType {
    InstanceStart,
    SendCtrlAltDel,
    FlushMetrics,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub(crate) struct Action {
    pub action_type: ActionType,
}

/// `PATCH /vm`
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub(crate) enum VmState {
    Paused,
    Resumed,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub(crate) struct VmStateBody {
    pub state: VmState,
}

/// Serialises a body; the types above cannot fail to serialise.
pub(crate) fn json<T: Serialize>(body: &T) -> serde_json::Value {
    serde_json::to_value(body).expect("API bodies serialise")
}

/// Firecracker accepts instance ids of 1..=64 alphanumerics and '-'; anything else in
/// Ember's id becomes '-'.
pub(crate) fn instance_id(id: &str) -> String {
    let mut out: String = id
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(64)
        .collect();
    if out.is_empty() {
        out.push_str("ember");
    }
    out
}

/// Firecracker's resource ids (drives, interfaces) are alphanumerics and '_', and they
/// end up in the request path, so they are checked rather than rewritten.
pub(crate) fn valid_resource_id(id: &str) -> bool {
    !id.is_empty() && id.chars().all(|c| c == '_' || c.is_ascii_alphanumeric())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Accel;
    use serde_json::json;
    use std::time::Duration;

    fn config() -> VmConfig {
        VmConfig {
            id: "vm-1".into(),
            state_dir: "/run/ember/vm-1".into(),
            vmm_binary: "/usr/bin/firecracker".into(),
            kernel: "/k/vmlinux".into(),
            initrd: Some("/k/initrd.img".into()),
            kernel_args: " quiet init=/sbin/ember-init ".into(),
            vcpus: 2,
            memory_mib: 256,
            accel: Accel::Kvm,
            drives: vec![],
            boot_timeout: Duration::from_secs(5),
            shared_dir: None,
            balloon: None,
            ..Default::default()
        }
    }

    #[test]
    fn boot_source_body() {
        assert_eq!(
            json(&BootSource::from_config(&config())),
            json!({
                "kernel_image_path": "/k/vmlinux",
                "initrd_path": "/k/initrd.img",
                "boot_args": "console=ttyS0 reboot=k panic=1 pci=off quiet init=/sbin/ember-init",
            })
        );
        let mut c = config();
        c.initrd = None;
        c.kernel_args.clear();
        assert_eq!(
            json(&BootSource::from_config(&c)),
            json!({
                "kernel_image_path": "/k/vmlinux",
                "boot_args": "console=ttyS0 reboot=k panic=1 pci=off",
            })
        );
    }

    #[test]
    fn machine_logger_metrics_vsock_bodies() {
        assert_eq!(
            json(&MachineConfig::from_config(&config())),
            json!({"vcpu_count": 2, "mem_size_mib": 256})
        );
        assert_eq!(
            json(&Logger::new(Path::new("/s/vmm.log"))),
            json!({"log_path": "/s/vmm.log", "level": "Info", "show_level": true, "show_log_origin": false})
        );
        assert_eq!(
            json(&Metrics {
                metrics_path: "/s/metrics.json".into()
            }),
            json!({"metrics_path": "/s/metrics.json"})
        );
        assert_eq!(
            json(&Vsock {
                guest_cid: GUEST_CID,
                uds_path: "/s/vsock.sock".into()
            }),
            json!({"guest_cid": 3, "uds_path": "/s/vsock.sock"})
        );
    }

    #[test]
    fn drive_bodies() {
        let d = Drive {
            id: "rootfs_1".into(),
            path: "/img/a.ext4".into(),
            read_only: true,
        };
        assert_eq!(
            json(&DriveBody::from_drive(&d)),
            json!({"drive_id": "rootfs_1", "path_on_host": "/img/a.ext4", "is_root_device": false, "is_read_only": true})
        );
        assert_eq!(
            json(&DrivePatch {
                drive_id: "rootfs_1".into(),
                path_on_host: "/img/b.ext4".into()
            }),
            json!({"drive_id": "rootfs_1", "path_on_host": "/img/b.ext4"})
        );
    }

    #[test]
    fn action_state_and_network_bodies() {
        assert_eq!(
            json(&Action {
                action_type: ActionType::InstanceStart
            }),
            json!({"action_type": "InstanceStart"})
        );
        assert_eq!(
            json(&Action {
                action_type: ActionType::SendCtrlAltDel
            }),
            json!({"action_type": "SendCtrlAltDel"})
        );
        assert_eq!(
            json(&VmStateBody {
                state: VmState::Paused
            }),
            json!({"state": "Paused"})
        );
        assert_eq!(
            json(&VmStateBody {
                state: VmState::Resumed
            }),
            json!({"state": "Resumed"})
        );
        assert_eq!(
            json(&NetworkInterface {
                iface_id: "eth0".into(),
                host_dev_name: "tap0".into(),
                guest_mac: Some("06:00:AC:10:00:02".into()),
            }),
            json!({"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "06:00:AC:10:00:02"})
        );
    }

    #[test]
    fn nic_bodies() {
        let mut c = config();
        assert!(nics(&c).is_empty());
        c.nics = vec![crate::Nic {
            id: "eth0".into(),
            tap: "tap0".into(),
            mac: "02:00:0a:58:00:02".into(),
            mtu: 1400,
        }];
        let n = nics(&c);
        assert_eq!(n.len(), 1);
        assert_eq!(n[0].0, "/network-interfaces/eth0");
        assert_eq!(
            json(&n[0].1),
            json!({"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "02:00:0a:58:00:02"})
        );
    }

    #[test]
    fn snapshot_bodies() {
        assert_eq!(
            json(&SnapshotCreate {
                snapshot_type: SnapshotType::Full,
                snapshot_path: "/t/state.partial".into(),
                mem_file_path: "/t/memory.partial".into(),
            }),
            json!({"snapshot_type": "Full", "snapshot_path": "/t/state.partial", "mem_file_path": "/t/memory.partial"})
        );
        let mut c = config();
        let load = SnapshotLoad::for_clone(
            &c,
            Path::new("/t/state"),
            Path::new("/t/memory"),
            "/run/ember/vm-1/vsock.sock".into(),
        );
        assert_eq!(
            json(&load),
            json!({
                "snapshot_path": "/t/state",
                "mem_backend": {"backend_type": "File", "backend_path": "/t/memory"},
                "resume_vm": false,
                "vsock_override": {"uds_path": "/run/ember/vm-1/vsock.sock"},
            })
        );
        c.nics = vec![crate::Nic {
            id: "n0".into(),
            tap: "tap-clone".into(),
            mac: "02:00:0a:58:00:02".into(),
            mtu: 0,
        }];
        let load = SnapshotLoad::for_clone(&c, Path::new("/s"), Path::new("/m"), "/v".into());
        assert_eq!(
            json(&load)["network_overrides"],
            json!([{"iface_id": "n0", "host_dev_name": "tap-clone"}])
        );
    }

    #[test]
    fn ids() {
        assert_eq!(instance_id("sandbox_abc.1"), "sandbox-abc-1");
        assert_eq!(instance_id(""), "ember");
        assert_eq!(instance_id(&"x".repeat(100)).len(), 64);
        assert!(valid_resource_id("rootfs_0"));
        assert!(!valid_resource_id("a/b"));
        assert!(!valid_resource_id("a-b"));
        assert!(!valid_resource_id(""));
    }
}
