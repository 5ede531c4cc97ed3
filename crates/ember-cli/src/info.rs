//! `ember info`.

use anyhow::Result;
use clap::Args;
use ember_guest::GuestImage;
use ember_vmm::{qemu, Accel, VmConfig, VmmKind};

#[derive(Args)]
pub struct InfoArgs {
    /// Print JSON.
    #[arg(long)]
    json: bool,
    /// Say why the accelerator is what it is.
    #[arg(short, long)]
    verbose: bool,
}

/// The KVM verdict in one line.
fn kvm_verdict(accel: &str, reason: &str) -> String {
    match accel {
        "kvm" => "yes: microVMs run with KVM".to_string(),
        "tcg" => {
            let why = reason.trim().trim_end_matches(": using TCG");
            let why = why.lines().next().unwrap_or("").trim();
            let why = if why.chars().count() > 100 {
                format!(
                    "{}…; see --verbose",
                    why.chars().take(100).collect::<String>()
                )
            } else {
                why.to_string()
            };
            if why.is_empty() {
                "no: microVMs run under TCG emulation (slower)".to_string()
            } else {
                format!("no ({why}): microVMs run under TCG emulation (slower)")
            }
        }
        _ => format!("unknown: {reason}"),
    }
}

pub async fn run(args: InfoArgs) -> Result<()> {
    let guest = GuestImage::locate();
    let (accel, reason) = match &guest {
        Ok(g) => {
            let state = std::env::temp_dir();
            let cfg = VmConfig {
                id: "info".into(),
                state_dir: state,
                vmm_binary: qemu::find_binary("qemu-system-x86_64".as_ref())
                    .unwrap_or_else(|| "qemu-system-x86_64".into()),
                kernel: g.kernel.clone(),
                initrd: Some(g.initrd.clone()),
                kernel_args: String::new(),
                vcpus: 1,
                memory_mib: 128,
                accel: Accel::Auto,
                drives: vec![],
                boot_timeout: std::time::Duration::from_secs(10),
                shared_dir: None,
                balloon: None,
                ..Default::default()
            };
            let v = qemu::resolve_accel(&cfg).await;
            (format!("{:?}", v.accel).to_lowercase(), v.reason)
        }
        Err(e) => (
            "unknown".to_string(),
            format!("no guest image to probe with: {e}"),
        ),
    };
    let firecracker = std::env::var("FIRECRACKER_BIN").ok();
    let volumes = host_volumes();
    let jail = crate::info_jail::jail_info(&runtime_config_path());
    if args.json {
        let v = serde_json::json!({
            "version": env!("CARGO_PKG_VERSION"),
            "accelerator": accel,
            "accelerator_reason": reason,
            "kvm_device": qemu::kvm_device_usable(),
            "guest": guest.as_ref().ok().map(|g| serde_json::json!({
                "kernel": g.kernel, "initrd": g.initrd, "kernel_release": g.kernel_release(),
            })),
            "qemu": qemu::find_binary("qemu-system-x86_64".as_ref()),
            "firecracker": firecracker,
            "host_volumes": volumes,
            "jailer": jail,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!("Version:        {}", env!("CARGO_PKG_VERSION"));
    println!("KVM:            {}", kvm_verdict(&accel, &reason));
    if args.verbose {
        println!("Accelerator:    {accel}");
        println!("  why:          {reason}");
        println!(
            "/dev/kvm:       {}",
            if qemu::kvm_device_usable() {
                "usable"
            } else {
                "absent or not accessible"
            }
        );
    }
    match &guest {
        Ok(g) => {
            println!(
                "Guest kernel:   {} ({})",
                g.kernel.display(),
                g.kernel_release().unwrap_or_default()
            );
            println!("Guest initrd:   {}", g.initrd.display());
        }
        Err(e) => println!("Guest image:    {e}"),
    }
    println!(
        "QEMU:           {}",
        qemu::find_binary("qemu-system-x86_64".as_ref())
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "not installed (apt-get install qemu-system-x86)".into())
    );
    println!(
        "Firecracker:    {}",
        firecracker.unwrap_or_else(|| "not configured (set FIRECRACKER_BIN)".into())
    );
    println!("Host volumes:   {volumes}");
    println!("Jailer:         {}", jail.line());
    if args.verbose {
        println!("  seccomp:      {}", jail.seccomp);
    }
    Ok(())
}

/// How host directories reach the guest with the VMM the shim's runtime
/// configuration names (`$EMBER_RUNTIME_CONFIG`, default `/etc/ember/runtime.toml`;
/// QEMU when it names none).
fn host_volumes() -> String {
    host_volumes_with(&runtime_config_path())
}

/// The shim's runtime configuration file.
fn runtime_config_path() -> std::path::PathBuf {
    std::env::var_os("EMBER_RUNTIME_CONFIG")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| "/etc/ember/runtime.toml".into())
}

fn host_volumes_with(path: &std::path::Path) -> String {
    let vmm = match std::fs::read_to_string(path) {
        Ok(text) => match text.parse::<toml::Table>() {
            Ok(t) => t.get("vmm").and_then(|v| v.as_str()).map(str::to_string),
            Err(e) => return format!("unknown: parsing {}: {e}", path.display()),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return format!("unknown: reading {}: {e}", path.display()),
    };
    match vmm.as_deref() {
        None | Some("qemu") => {
            let Some(q) = qemu::find_binary("qemu-system-x86_64".as_ref()) else {
                return "none: QEMU is not installed".to_string();
            };
            let has_9p = std::process::Command::new(q)
                .args(["-device", "help"])
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("virtio-9p-device"));
            if has_9p {
                ember_sandbox::share::transport(VmmKind::Qemu).to_string()
            } else {
                "none: this QEMU has no virtio-9p-device".to_string()
            }
        }
        Some("firecracker") => ember_sandbox::share::transport(VmmKind::Firecracker).to_string(),
        Some(other) => format!("unknown: {} names the VMM {other:?}", path.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_kvm_verdict() {
        assert_eq!(kvm_verdict("kvm", "x"), "yes: microVMs run with KVM");
        let v = kvm_verdict("tcg", "/dev/kvm is missing or not accessible: using TCG");
        assert_eq!(
            v,
            "no (/dev/kvm is missing or not accessible): microVMs run under TCG emulation (slower)"
        );
        assert!(!v.contains('\n'));
        let long = format!(
            "KVM probe: QEMU exited (1) before the guest init: {}\nmore: using TCG",
            "x".repeat(200)
        );
        let v = kvm_verdict("tcg", &long);
        assert!(
            !v.contains('\n') && v.contains("see --verbose") && v.len() < 200,
            "{v}"
        );
        assert!(kvm_verdict("unknown", "no guest").starts_with("unknown: no guest"));
    }

    #[test]
    fn host_volumes_follow_the_configured_vmm() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("runtime.toml");
        // No file, or no vmm in it: the shim's default VMM, QEMU.
        let qemu = if qemu::find_binary("qemu-system-x86_64".as_ref()).is_some() {
            "virtio-9p (QEMU)"
        } else {
            "none: QEMU is not installed"
        };
        assert_eq!(host_volumes_with(&p), qemu);
        std::fs::write(&p, "vcpus = 2\n").unwrap();
        assert_eq!(host_volumes_with(&p), qemu);
        std::fs::write(&p, "vmm = \"firecracker\"\n").unwrap();
        assert_eq!(host_volumes_with(&p), "none: files copied in (Firecracker)");
        std::fs::write(&p, "vmm = \"xen\"\n").unwrap();
        assert!(host_volumes_with(&p).starts_with("unknown:"));
        std::fs::write(&p, "vmm = \n").unwrap();
        assert!(host_volumes_with(&p).starts_with("unknown: parsing"));
    }
}
