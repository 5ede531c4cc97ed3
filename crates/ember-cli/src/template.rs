//! `ember vm template build|ls|rm`: the VM templates the shim starts microVMs from.
//! The settings come from the shim's runtime configuration
//! (`$EMBER_RUNTIME_CONFIG`, default `/etc/ember/runtime.toml`), read with the
//! shim's defaults, so `build` makes the template the shim's next VM of that sizing
//! restores.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use ember_sandbox::template::{obtain, shape_of, TemplateStore, DEFAULT_MAX_BYTES};
use ember_sandbox::{Pool, SandboxConfig};
use ember_vmm::{Accel, VmmKind};

use crate::client::{self, ClientOpts};

#[derive(Subcommand)]
pub enum TemplateCommand {
    /// Build the template of a VM sizing now (else the first start of it does).
    Build(BuildArgs),
    /// List the templates.
    #[command(alias = "list")]
    Ls,
    /// Remove templates: those whose key starts with KEY, or all with --all.
    Rm(RmArgs),
}

#[derive(Args)]
pub struct BuildArgs {
    /// vCPUs (default: the runtime configuration's).
    #[arg(long)]
    vcpus: Option<u8>,
    /// Guest memory in MiB (default: the runtime configuration's).
    #[arg(long)]
    memory: Option<u32>,
    /// NICs: a container with a network namespace of its own gets one VM NIC per
    /// interface there at boot, or one pre-made NIC (MTU 1500) when it is empty, as
    /// with `ctr run` and CNI; 0 for host networking.
    #[arg(long, default_value_t = 1)]
    nics: u8,
    /// MTU of each NIC.
    #[arg(long, default_value_t = 1500)]
    mtu: u32,
}

#[derive(Args)]
pub struct RmArgs {
    key: Option<String>,
    #[arg(long)]
    all: bool,
}

/// What the runtime configuration says about VMs and templates.
struct Settings {
    table: toml::Table,
    path: PathBuf,
}

impl Settings {
    fn load() -> Result<Settings> {
        let path = std::env::var_os("EMBER_RUNTIME_CONFIG")
            .map(PathBuf::from)
            .unwrap_or_else(|| "/etc/ember/runtime.toml".into());
        let table = match std::fs::read_to_string(&path) {
            Ok(t) => t
                .parse::<toml::Table>()
                .with_context(|| format!("parsing {}", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => toml::Table::new(),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        Ok(Settings { table, path })
    }

    fn str(&self, key: &str) -> Option<&str> {
        self.table.get(key).and_then(|v| v.as_str())
    }

    fn int(&self, key: &str) -> Option<i64> {
        self.table.get(key).and_then(|v| v.as_integer())
    }

    fn store(&self) -> TemplateStore {
        let dir = self
            .str("template_dir")
            .unwrap_or(ember_sandbox::template::DEFAULT_DIR);
        let max = self
            .int("template_max_mib")
            .map(|m| (m.max(64) as u64) << 20)
            .unwrap_or(DEFAULT_MAX_BYTES);
        TemplateStore::new(dir, max)
    }

    /// The sandbox the shim would start for a container with no sizing of its own.
    fn sandbox(&self, dir: &Path, a: &BuildArgs) -> Result<SandboxConfig> {
        let (vcpus, memory) = (a.vcpus, a.memory);
        if self.str("vmm").is_some_and(|v| v != "qemu") {
            bail!(
                "{}: templates are made for QEMU VMs only",
                self.path.display()
            );
        }
        if self.table.get("templates").and_then(|v| v.as_bool()) == Some(false) {
            eprintln!(
                "note: {} turns templates off (templates = false)",
                self.path.display()
            );
        }
        let guest = ember_guest::default_dir();
        let mut c = SandboxConfig::new(
            "template",
            &ember_guest::GuestImage::locate()?,
            dir.join("vm"),
        );
        c.kernel = self
            .str("kernel")
            .map(PathBuf::from)
            .unwrap_or(guest.join("vmlinux"));
        c.initrd = self
            .str("initrd")
            .map(PathBuf::from)
            .unwrap_or(guest.join("initramfs.cpio"));
        c.vmm_binary = self.str("vmm_binary").map(PathBuf::from);
        c.kernel_args = self.str("kernel_args").unwrap_or("").to_string();
        c.vcpus = vcpus.unwrap_or(self.int("vcpus").unwrap_or(1) as u8);
        c.memory_mib = memory.unwrap_or(self.int("memory_mib").unwrap_or(256) as u32);
        c.accel = match self.str("accel").unwrap_or("auto") {
            "kvm" => Accel::Kvm,
            "tcg" => Accel::Tcg,
            _ => Accel::Auto,
        };
        c.vmm = VmmKind::Qemu;
        let jailed = self
            .table
            .get("jailer")
            .and_then(|j| j.get("enabled"))
            .and_then(|v| v.as_bool())
            .unwrap_or(true);
        c.jail = jailed.then(ember_vmm::jail::JailConfig::default);
        std::fs::create_dir_all(dir.join("vm"))?;
        let pool = Pool::create(&dir.join("pool"))?;
        c.drives = vec![pool.drive()];
        let shared = dir.join("shared");
        std::fs::create_dir_all(&shared)?;
        c.shared_dir = Some(shared);
        c.nics = (0..a.nics)
            .map(|i| ember_vmm::Nic {
                id: format!("n{i}"),
                tap: format!("tap{i}"),
                mac: ember_sandbox::template::guest_mac(i.into()),
                mtu: a.mtu,
            })
            .collect();
        c.boot_timeout = std::time::Duration::from_secs(
            self.int("boot_timeout_secs").unwrap_or(60).max(1) as u64,
        );
        Ok(c)
    }
}

pub async fn run(opts: &ClientOpts, cmd: TemplateCommand) -> Result<i32> {
    let settings = Settings::load()?;
    let store = settings.store();
    match cmd {
        TemplateCommand::Build(a) => {
            let tmp = tempfile::tempdir()?;
            let cfg = settings.sandbox(tmp.path(), &a)?;
            let shape = shape_of(&cfg).await?;
            let t0 = Instant::now();
            let t = obtain(&store, &cfg, &shape).await?;
            if opts.json {
                println!(
                    "{}",
                    serde_json::json!({"key": t.key, "dir": t.dir, "build_ms": t.manifest.build_ms,
                        "elapsed_ms": t0.elapsed().as_millis() as u64})
                );
            } else {
                println!("{}", t.key);
                eprintln!(
                    "template {} ready in {} ({} vCPUs, {} MiB) after {:.2}s",
                    t.key,
                    t.dir.display(),
                    shape.vcpus,
                    shape.memory_mib,
                    t0.elapsed().as_secs_f64()
                );
            }
        }
        TemplateCommand::Ls => {
            let list = store.list();
            client::output(
                opts,
                &list,
                &[
                    "KEY",
                    "VCPUS",
                    "MEMORY",
                    "SIZE",
                    "JAILED",
                    "LAST USED",
                    "STATUS",
                ],
                |t| {
                    vec![
                        t.key.clone(),
                        t.vcpus.to_string(),
                        format!("{} MiB", t.memory_mib),
                        client::human_size(t.bytes as i64),
                        if t.jailed { "yes" } else { "no" }.into(),
                        client::age((t.last_used_unix > 0).then(|| {
                            std::time::UNIX_EPOCH + std::time::Duration::from_secs(t.last_used_unix)
                        })),
                        if t.problem.is_empty() {
                            "ready".into()
                        } else {
                            t.problem.clone()
                        },
                    ]
                },
            )?;
        }
        TemplateCommand::Rm(a) => {
            let prefix = match (a.key, a.all) {
                (Some(k), false) if !k.is_empty() => k,
                (None, true) => String::new(),
                _ => bail!("name a template key (or a prefix of one), or --all"),
            };
            let gone = store.remove(&prefix).await?;
            if gone.is_empty() && !prefix.is_empty() {
                bail!("no template key starts with {prefix:?}");
            }
            for k in gone {
                println!("{k}");
            }
        }
    }
    Ok(0)
}
