//! `ember info`.

use anyhow::Result;
use clap::Args;
use ember_guest::GuestImage;
use ember_vmm::{qemu, Accel, VmConfig};

#[derive(Args)]
pub struct InfoArgs {
    /// Print JSON.
    #[arg(long)]
    json: bool,
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
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!("Version:        {}", env!("CARGO_PKG_VERSION"));
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
    Ok(())
}
