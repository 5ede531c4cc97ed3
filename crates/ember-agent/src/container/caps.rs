//! Capabilities: the bounding set, capset and the ambient set.

use super::err;
use std::io;

/// Capability names in kernel bit order.
const CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// A capability set from OCI names, as a 64-bit mask.
pub fn cap_mask<T: serde::Serialize>(set: Option<&T>) -> u64 {
    let Some(set) = set else { return 0 };
    let names: Vec<String> = serde_json::to_value(set)
        .ok()
        .and_then(|v| serde_json::from_value(v).ok())
        .unwrap_or_default();
    names
        .iter()
        .filter_map(|n| CAPS.iter().position(|c| c == n))
        .fold(0u64, |m, i| m | (1u64 << i))
}

fn last_cap() -> usize {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(CAPS.len() - 1)
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}
#[repr(C)]
#[derive(Default, Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

pub(super) fn drop_bounding(caps: &oci_spec::runtime::LinuxCapabilities) {
    let bounding = cap_mask(caps.bounding().as_ref());
    for c in 0..=last_cap().min(63) {
        if bounding & (1 << c) == 0 {
            // SAFETY: PR_CAPBSET_DROP takes integer arguments only (no pointers);
            // a capability the kernel does not know gives EINVAL.
            unsafe { libc::prctl(libc::PR_CAPBSET_DROP, c as libc::c_ulong, 0, 0, 0) };
        }
    }
}

pub(super) fn apply_caps(caps: &oci_spec::runtime::LinuxCapabilities) -> io::Result<()> {
    let effective = cap_mask(caps.effective().as_ref());
    let permitted = cap_mask(caps.permitted().as_ref());
    let inheritable = cap_mask(caps.inheritable().as_ref());
    let ambient = cap_mask(caps.ambient().as_ref());
    let mut hdr = CapHeader {
        version: 0x2008_0522, // _LINUX_CAPABILITY_VERSION_3
        pid: 0,
    };
    let data = [
        CapData {
            effective: effective as u32,
            permitted: permitted as u32,
            inheritable: inheritable as u32,
        },
        CapData {
            effective: (effective >> 32) as u32,
            permitted: (permitted >> 32) as u32,
            inheritable: (inheritable >> 32) as u32,
        },
    ];
    // SAFETY: capset reads a `struct __user_cap_header_struct` and, for version 3,
    // two `struct __user_cap_data_struct`s: `hdr` and `data` are live #[repr(C)]
    // copies of exactly those layouts (u32+i32; three u32 each), and capset may
    // write back only the header's version, which `hdr` allows (mutable).
    if unsafe { libc::syscall(libc::SYS_capset, &mut hdr as *mut CapHeader, data.as_ptr()) } < 0 {
        return Err(err("capset", io::Error::last_os_error()));
    }
    for c in 0..64 {
        if ambient & (1 << c) != 0 {
            // SAFETY: PR_CAP_AMBIENT_RAISE takes integer arguments only (no
            // pointers); a capability not in the permitted set gives EPERM.
            unsafe {
                libc::prctl(
                    libc::PR_CAP_AMBIENT,
                    libc::PR_CAP_AMBIENT_RAISE as libc::c_ulong,
                    c as libc::c_ulong,
                    0,
                    0,
                )
            };
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps() {
        let set: Vec<&str> = vec!["CAP_CHOWN", "CAP_KILL", "CAP_BOGUS"];
        assert_eq!(cap_mask(Some(&set)), 1 | (1 << 5));
    }
}
