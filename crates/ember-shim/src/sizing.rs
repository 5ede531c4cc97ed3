//! How big a VM is, and whether the host can give it.
//!
//! A VM booted for a container is sized, key by key, from (last wins):
//! 1. the runtime configuration (`vcpus`, `memory_mib`);
//! 2. the container's OCI resources: vCPUs = ⌈cpu.quota / cpu.period⌉ (at least 1),
//!    or the number of CPUs in cpu.cpus when there is no quota; memory =
//!    memory.limit rounded up to a MiB + `guest_overhead_mib` (the guest kernel and
//!    the agent), at least [`MIN_MEMORY_MIB`];
//! 3. the `io.ember.vm.vcpus` / `io.ember.vm.memory_mib` annotations.
//!
//! A container joining a VM that runs already leaves the VM as it is: its limits
//! apply to its own cgroup in the guest only.
//!
//! Every size is checked before anything boots: no vCPUs, more vCPUs than the host
//! has CPUs, less memory than the guest boots with, or more than the host has, is
//! refused up front (instead of a VM that never comes up).

use std::collections::HashMap;

use crate::config::{annotation, ConfigError, RuntimeConfig};

/// The least memory Ember's guest boots with and runs a container in (measured
/// under QEMU: with 40 MiB the kernel panics out of memory while unpacking its
/// initramfs; with 48 MiB it boots, MemTotal 30 MiB, and runs a busybox container).
pub const MIN_MEMORY_MIB: u32 = 48;
/// Default memory added to a container's memory limit for the guest itself.
pub const DEFAULT_GUEST_OVERHEAD_MIB: u32 = 64;
const MIB: u64 = 1024 * 1024;

/// What the host has to give.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Host {
    /// Online CPUs.
    pub cpus: u64,
    /// MemTotal, in MiB.
    pub memory_mib: u64,
}

impl Host {
    pub fn probe() -> Host {
        // SAFETY: sysconf only reads a system value.
        let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
        let cpus = if n > 0 {
            n as u64
        } else {
            std::thread::available_parallelism().map_or(1, |n| n.get() as u64)
        };
        Host {
            cpus,
            memory_mib: host_memory_mib().unwrap_or(u64::MAX),
        }
    }
}

fn host_memory_mib() -> Option<u64> {
    let m = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kb: u64 = m
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb / 1024)
}

/// A VM size the host cannot give.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    #[error("a VM needs at least 1 vCPU")]
    NoVcpus,
    #[error("{asked} vCPUs is more than the host's {host} CPUs")]
    TooManyVcpus { asked: u64, host: u64 },
    #[error("{asked} MiB is below the {MIN_MEMORY_MIB} MiB the guest needs to boot")]
    TooLittleMemory { asked: u64 },
    #[error("{asked} MiB is more than the host's {host} MiB of memory")]
    TooMuchMemory { asked: u64, host: u64 },
}

/// Checks a vCPU count: from 1 to the host's CPUs (and at most 255).
pub fn check_vcpus(n: u64, host: &Host) -> Result<u8, SizeError> {
    if n == 0 {
        return Err(SizeError::NoVcpus);
    }
    let limit = host.cpus.min(u8::MAX.into());
    if n > limit {
        return Err(SizeError::TooManyVcpus {
            asked: n,
            host: limit,
        });
    }
    Ok(n as u8)
}

/// Checks a memory size in MiB: from [`MIN_MEMORY_MIB`] to the host's memory.
pub fn check_memory(mib: u64, host: &Host) -> Result<u32, SizeError> {
    if mib < MIN_MEMORY_MIB.into() {
        return Err(SizeError::TooLittleMemory { asked: mib });
    }
    let limit = host.memory_mib.min(u32::MAX.into());
    if mib > limit {
        return Err(SizeError::TooMuchMemory {
            asked: mib,
            host: limit,
        });
    }
    Ok(mib as u32)
}

/// The VM size a container's OCI resources ask for, each with where it came from.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SpecSize {
    pub vcpus: Option<(u64, String)>,
    pub memory_mib: Option<(u64, String)>,
}

/// Reads `linux.resources` of an OCI spec (as JSON).
pub fn from_spec(spec: &serde_json::Value, overhead_mib: u32) -> SpecSize {
    let res = &spec["linux"]["resources"];
    let cpu = &res["cpu"];
    let quota = cpu["quota"].as_i64().filter(|q| *q > 0);
    let period = cpu["period"].as_u64().filter(|p| *p > 0).unwrap_or(100_000);
    let vcpus = match quota {
        Some(q) => Some((
            (q as u64).div_ceil(period).max(1),
            format!("the container's CPU limit (cpu.quota {q} / cpu.period {period})"),
        )),
        None => cpu["cpus"]
            .as_str()
            .and_then(cpuset_count)
            .map(|n| (n, format!("the container's cpuset {:?}", cpu["cpus"]))),
    };
    let memory_mib = res["memory"]["limit"].as_i64().filter(|l| *l > 0).map(|l| {
        let mib = (l as u64).div_ceil(MIB) + u64::from(overhead_mib);
        (
            mib.max(MIN_MEMORY_MIB.into()),
            format!("the container's memory limit ({l} bytes) + {overhead_mib} MiB for the guest"),
        )
    });
    SpecSize { vcpus, memory_mib }
}

/// The number of CPUs in a cpuset list ("0-3,6").
fn cpuset_count(s: &str) -> Option<u64> {
    let mut n = 0;
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        n += match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (u64, u64) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
                b.checked_sub(a)? + 1
            }
            None => {
                part.parse::<u64>().ok()?;
                1
            }
        };
    }
    (n > 0).then_some(n)
}

/// The configuration a VM booted for a container starts from: `base`, then the
/// container's resources, then its annotations; every size checked against `host`.
pub fn for_boot(
    base: &RuntimeConfig,
    spec: &serde_json::Value,
    ann: &HashMap<String, String>,
    host: &Host,
) -> Result<RuntimeConfig, ConfigError> {
    let mut cfg = base.clone();
    let from = from_spec(spec, base.guest_overhead_mib);
    let spec_err = |what: String, e: SizeError, key: &str| ConfigError::Spec {
        what,
        why: format!("{e} (annotation {key} sizes the VM instead)"),
    };
    if !ann.contains_key(annotation::VCPUS) {
        if let Some((n, what)) = from.vcpus {
            cfg.vcpus = check_vcpus(n, host).map_err(|e| spec_err(what, e, annotation::VCPUS))?;
        }
    }
    if !ann.contains_key(annotation::MEMORY_MIB) {
        if let Some((n, what)) = from.memory_mib {
            cfg.memory_mib =
                check_memory(n, host).map_err(|e| spec_err(what, e, annotation::MEMORY_MIB))?;
        }
    }
    cfg.with_annotations(ann, host)
}

/// The `io.ember.*` annotations Ember does not know.
pub fn unknown_annotations(ann: &HashMap<String, String>) -> Vec<&str> {
    let mut v: Vec<&str> = ann
        .keys()
        .map(String::as_str)
        .filter(|k| k.starts_with("io.ember.") && !annotation::KNOWN.contains(k))
        .collect();
    v.sort_unstable();
    v
}

#[cfg(test)]
mod tests;
