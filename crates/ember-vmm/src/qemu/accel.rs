//! Choosing the accelerator: hardware KVM only when it really boots the guest.
//!
//! `/dev/kvm` existing is not enough: under some nested or paravirtual KVMs an ordinary
//! Linux guest boots a hundred times slower than under QEMU's own emulation (TCG). So a
//! short probe boot of the real guest kernel under KVM decides; the guest's agent
//! prints a marker and powers off at once when the kernel command line says
//! `ember.probe=...`. The verdict is cached per host, QEMU binary and guest kernel.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio::process::Command;

use super::cmdline::{build_args, QemuPaths};
use crate::process::{file_tail, spawn_supervised};
use crate::{Accel, VmConfig};

/// Outcome of resolving `Accel::Auto`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AccelVerdict {
    pub accel: Accel,
    /// Why this accelerator was chosen, for logs and `ember info`.
    pub reason: String,
}

/// How long a KVM probe boot may take before KVM is judged unusable.
pub fn probe_timeout() -> Duration {
    std::env::var("EMBER_KVM_PROBE_TIMEOUT_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map(Duration::from_millis)
        .unwrap_or(Duration::from_secs(4))
}

fn cache_dir() -> PathBuf {
    std::env::var_os("EMBER_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/ember"))
}

fn file_identity(p: &Path) -> String {
    match std::fs::metadata(p) {
        Ok(m) => {
            use std::os::unix::fs::MetadataExt;
            format!("{}:{}:{}", p.display(), m.size(), m.mtime())
        }
        Err(_) => format!("{}:missing", p.display()),
    }
}

fn cache_key(config: &VmConfig) -> String {
    let mut h = Sha256::new();
    let host = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    h.update(host.as_bytes());
    h.update(file_identity(&config.vmm_binary).as_bytes());
    h.update(file_identity(&config.kernel).as_bytes());
    let d = h.finalize();
    d.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// Whether /dev/kvm can be opened for reading and writing.
pub fn kvm_device_usable() -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}

/// The host's TSC rate in kHz, for `tsc_early_khz` under TCG.
pub fn host_tsc_khz() -> Option<u64> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let mhz: f64 = cpuinfo
        .lines()
        .find(|l| l.starts_with("cpu MHz"))?
        .split(':')
        .nth(1)?
        .trim()
        .parse()
        .ok()?;
    Some((mhz * 1000.0) as u64)
}

/// Resolves the accelerator for `config`, probing KVM once per cache key.
pub async fn resolve(config: &VmConfig) -> AccelVerdict {
    match config.accel {
        Accel::Tcg => {
            return AccelVerdict {
                accel: Accel::Tcg,
                reason: "TCG requested".into(),
            }
        }
        Accel::Kvm => {
            return AccelVerdict {
                accel: Accel::Kvm,
                reason: "KVM requested".into(),
            }
        }
        Accel::Auto => {}
    }
    if !kvm_device_usable() {
        return AccelVerdict {
            accel: Accel::Tcg,
            reason: "/dev/kvm is missing or not accessible: using TCG".into(),
        };
    }
    let cache = cache_dir().join(format!("accel-{}.json", cache_key(config)));
    if let Ok(text) = std::fs::read_to_string(&cache) {
        if let Ok(v) = serde_json::from_str::<AccelVerdict>(&text) {
            return v;
        }
    }
    let (verdict, settled) = probe_kvm(config).await;
    // A QEMU that could not run at all says nothing about KVM: probe again next time.
    if settled && std::fs::create_dir_all(cache_dir()).is_ok() {
        let tmp = cache.with_extension("tmp");
        if std::fs::write(&tmp, serde_json::to_vec(&verdict).unwrap_or_default()).is_ok() {
            let _ = std::fs::rename(&tmp, &cache);
        }
    }
    verdict
}

/// Boots the guest under KVM with `ember.probe=kvm` and waits for the marker;
/// also says whether the verdict is about KVM (and may be cached).
async fn probe_kvm(config: &VmConfig) -> (AccelVerdict, bool) {
    let timeout = probe_timeout();
    let dir = match tempfile_dir() {
        Ok(d) => d,
        Err(e) => {
            return (
                AccelVerdict {
                    accel: Accel::Tcg,
                    reason: format!("KVM probe could not run ({e}): using TCG"),
                },
                false,
            )
        }
    };
    let paths = QemuPaths::new(&dir);
    let mut probe = config.clone();
    probe.id = format!("{}-kvmprobe", config.id);
    probe.drives.clear();
    // The probe runs in the caller's network namespace, where the taps are not.
    probe.nics.clear();
    probe.vcpus = 1;
    probe.memory_mib = 128;
    probe.kernel_args = "ember.probe=kvm".into();
    let mut cmd = Command::new(&config.vmm_binary);
    cmd.args(build_args(&probe, Accel::Kvm, &paths, None));
    let started = Instant::now();
    let stderr = std::fs::File::create(&paths.log)
        .map(Stdio::from)
        .unwrap_or_else(|_| Stdio::null());
    let verdict = match spawn_supervised(cmd, Stdio::null(), stderr) {
        Err(e) => (
            AccelVerdict {
                accel: Accel::Tcg,
                reason: format!("KVM probe could not start QEMU ({e}): using TCG"),
            },
            false,
        ),
        Ok(mut child) => {
            let marker = "ember-probe: kvm";
            let mut seen = false;
            let mut exited = None;
            while started.elapsed() < timeout {
                if file_tail(&paths.console, 4096).contains(marker) {
                    seen = true;
                    break;
                }
                if let Ok(Some(status)) = child.try_wait() {
                    seen = file_tail(&paths.console, 4096).contains(marker);
                    exited = Some(status);
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let _ = child.kill().await;
            match (seen, exited) {
                (true, _) => (
                    AccelVerdict {
                        accel: Accel::Kvm,
                        reason: format!(
                            "KVM probe boot reached the guest init in {} ms: using KVM",
                            started.elapsed().as_millis()
                        ),
                    },
                    true,
                ),
                (false, Some(status)) => {
                    let log = file_tail(&paths.log, 400);
                    let settled = exit_is_about_kvm(&status, &log);
                    (
                        AccelVerdict {
                            accel: Accel::Tcg,
                            reason: format!(
                                "KVM probe: QEMU exited ({status}) before the guest init: {}: using TCG",
                                log.trim()
                            ),
                        },
                        settled,
                    )
                }
                (false, None) => (
                    AccelVerdict {
                        accel: Accel::Tcg,
                        reason: format!(
                            "KVM probe boot did not reach the guest init within {} ms (slow or nested KVM): using TCG",
                            timeout.as_millis()
                        ),
                    },
                    true,
                ),
            }
        }
    };
    let _ = std::fs::remove_dir_all(&dir);
    verdict
}

/// Whether a probe QEMU that exited before the guest's init failed at KVM itself
/// (its log names KVM, or it died of a signal, as QEMU's assertions on KVM errors
/// make it), a verdict that holds until the host, QEMU or the kernel change, rather
/// than failing to run at all (bad arguments, a missing file), which says nothing
/// about KVM and is probed again next time.
fn exit_is_about_kvm(status: &std::process::ExitStatus, log: &str) -> bool {
    use std::os::unix::process::ExitStatusExt;
    status.signal().is_some() || log.to_ascii_lowercase().contains("kvm")
}

fn tempfile_dir() -> std::io::Result<PathBuf> {
    let base = std::env::temp_dir().join(format!(
        "ember-kvmprobe-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    ));
    std::fs::create_dir_all(&base)?;
    Ok(base)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A nested host's KVM that fails at its MSRs ends the probe QEMU with an
    /// assertion: that verdict is kept (probing again cost every VM start a QEMU
    /// run); QEMU failing on its own arguments is not.
    #[test]
    fn kvm_failures_settle_the_verdict_and_others_do_not() {
        use std::os::unix::process::ExitStatusExt;
        let aborted = std::process::ExitStatus::from_raw(libc::SIGABRT);
        let failed = std::process::ExitStatus::from_raw(1 << 8);
        let msr = "qemu-system-x86_64: error: failed to set MSR 0x10a to 0x69\n\
                   ../../target/i386/kvm/kvm.c:3183: kvm_buf_set_msrs: Assertion failed.";
        assert!(exit_is_about_kvm(&aborted, msr));
        assert!(exit_is_about_kvm(&aborted, ""));
        assert!(exit_is_about_kvm(
            &failed,
            "qemu-system-x86_64: -accel kvm: failed to initialize kvm: Permission denied"
        ));
        assert!(!exit_is_about_kvm(
            &failed,
            "qemu-system-x86_64: -kernel /nope: No such file or directory"
        ));
    }

    #[test]
    fn tsc_rate_is_read() {
        let khz = host_tsc_khz().expect("cpu MHz in /proc/cpuinfo");
        assert!(khz > 100_000, "{khz}");
    }
}
