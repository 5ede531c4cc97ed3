//! `ember vm`: microVMs on the daemon (`create`, `ls`, `info`, `stop`, `pause`, `resume`,
//! `metadata`, in `client::vm`), and `ember vm run`, a container in a fresh microVM driven
//! straight through the sandbox layer, with no daemon.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use ember_agent_api::{OutputStream, StdioConfig};
use ember_guest::{BusyboxBundle, GuestImage};
use ember_sandbox::{copy_output, copy_stdin, Sandbox, SandboxConfig};
use ember_vmm::{Accel, Drive, VmmKind};

use crate::client::{self, ClientOpts};

#[derive(Subcommand)]
pub enum VmCommand {
    Create(client::vm::create::CreateArgs),
    #[command(alias = "list")]
    Ls(client::vm::ls::LsArgs),
    Info(client::vm::info::InfoArgs),
    Stop(client::vm::stop::StopArgs),
    Pause(client::vm::pause::PauseArgs),
    Resume(client::vm::resume::ResumeArgs),
    Metadata(client::vm::metadata::MetadataArgs),
    /// The templates microVMs start from (build, ls, rm).
    #[command(subcommand)]
    Template(crate::template::TemplateCommand),
    /// Boot a microVM, run one container in it, and power it off (no daemon involved).
    Run(RunArgs),
    /// Write the busybox demo image as a docker-archive tar (for `ctr images import`).
    BusyboxImage {
        /// Output tar file.
        out: PathBuf,
        /// Image name.
        #[arg(long, default_value = "docker.io/ember/busybox:latest")]
        name: String,
    },
}

#[derive(Args)]
pub struct RunArgs {
    /// OCI bundle directory (config.json); its rootfs comes from --rootfs-image.
    /// Without a bundle, a busybox rootfs is built on the fly.
    #[arg(long)]
    bundle: Option<PathBuf>,
    /// ext4 image holding the container's root filesystem.
    #[arg(long)]
    rootfs_image: Option<PathBuf>,
    /// VMM backend.
    #[arg(long, default_value = "qemu", value_parser = parse_vmm)]
    vmm: VmmKind,
    /// Accelerator: auto (probe KVM, fall back to TCG), kvm or tcg.
    #[arg(long, default_value = "auto", value_parser = parse_accel)]
    accel: Accel,
    #[arg(long, default_value_t = 1)]
    vcpus: u8,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 256)]
    memory: u32,
    /// Allocate a terminal.
    #[arg(short = 't', long)]
    tty: bool,
    /// Keep stdin open.
    #[arg(short = 'i', long)]
    interactive: bool,
    /// Print boot timings on stderr.
    #[arg(long)]
    timings: bool,
    /// Command and arguments (default: the bundle's).
    #[arg(last = true)]
    args: Vec<String>,
}

fn parse_vmm(s: &str) -> Result<VmmKind, String> {
    match s {
        "qemu" => Ok(VmmKind::Qemu),
        "firecracker" => Ok(VmmKind::Firecracker),
        _ => Err(format!("unknown VMM {s:?} (qemu or firecracker)")),
    }
}

fn parse_accel(s: &str) -> Result<Accel, String> {
    match s {
        "auto" => Ok(Accel::Auto),
        "kvm" => Ok(Accel::Kvm),
        "tcg" => Ok(Accel::Tcg),
        _ => Err(format!("unknown accelerator {s:?} (auto, kvm or tcg)")),
    }
}

pub async fn run(opts: &ClientOpts, cmd: VmCommand) -> Result<i32> {
    match cmd {
        VmCommand::Create(a) => client::vm::create::run(opts, a).await,
        VmCommand::Ls(a) => client::vm::ls::run(opts, a).await,
        VmCommand::Info(a) => client::vm::info::run(opts, a).await,
        VmCommand::Stop(a) => client::vm::stop::run(opts, a).await,
        VmCommand::Pause(a) => client::vm::pause::run(opts, a).await,
        VmCommand::Resume(a) => client::vm::resume::run(opts, a).await,
        VmCommand::Metadata(a) => client::vm::metadata::run(opts, a).await,
        VmCommand::Template(c) => crate::template::run(opts, c).await,
        VmCommand::Run(a) => run_container(a).await,
        VmCommand::BusyboxImage { out, name } => {
            ember_guest::busybox_docker_archive(&out, &name)?;
            eprintln!("wrote {} ({name})", out.display());
            Ok(0)
        }
    }
}

async fn run_container(a: RunArgs) -> Result<i32> {
    let t0 = Instant::now();
    let guest = GuestImage::locate()?;
    let work = tempfile::Builder::new().prefix("ember-vm-").tempdir()?;
    let (spec_path, image) = match (&a.bundle, &a.rootfs_image) {
        (Some(b), Some(img)) => (b.join("config.json"), img.clone()),
        (None, None) => {
            let b = BusyboxBundle::create(&work.path().join("bundle"), &["sh"])?;
            (b.dir.join("config.json"), b.image)
        }
        _ => bail!("--bundle and --rootfs-image go together"),
    };
    let mut spec: serde_json::Value = serde_json::from_slice(
        &std::fs::read(&spec_path).with_context(|| format!("reading {}", spec_path.display()))?,
    )
    .with_context(|| format!("parsing {}", spec_path.display()))?;
    if !a.args.is_empty() {
        spec["process"]["args"] = serde_json::json!(a.args);
    }
    spec["process"]["terminal"] = serde_json::json!(a.tty);

    let state = work.path().join("state");
    std::fs::create_dir_all(&state)?;
    let id = format!("vm{}", std::process::id());
    let mut cfg = SandboxConfig::new(&id, &guest, state);
    cfg.vmm = a.vmm;
    cfg.accel = a.accel;
    cfg.vcpus = a.vcpus;
    cfg.memory_mib = a.memory;
    cfg.drives.push(Drive {
        id: "rootfs".into(),
        path: image,
        read_only: false,
    });
    let sb = Sandbox::boot(cfg).await?;
    let t_ready = t0.elapsed();
    let code = run_in(&sb, &spec, &a).await;
    let t_done = t0.elapsed();
    let _ = sb.shutdown().await;
    if a.timings {
        eprintln!(
            "ember: agent ready {:?}, container done {:?}, total {:?}",
            t_ready,
            t_done,
            t0.elapsed()
        );
    }
    code
}

async fn run_in(sb: &Sandbox, spec: &serde_json::Value, a: &RunArgs) -> Result<i32> {
    let agent = sb.agent();
    let id = "main";
    let stdin = a.interactive || a.tty;
    sb.create_container(
        id,
        serde_json::to_vec(spec)?,
        "rootfs",
        "ext4",
        StdioConfig {
            terminal: a.tty,
            stdin,
        },
    )
    .await?;
    let raw = if a.tty && std::io::stdin().is_terminal() {
        let (cols, rows) = terminal_size();
        agent.resize_pty(id, "", cols, rows).await?;
        Some(RawMode::enable()?)
    } else {
        None
    };
    agent.start_process(id, "").await?;
    let out = async {
        let mut o = tokio::io::stdout();
        copy_output(agent, id, "", OutputStream::Stdout, &mut o).await
    };
    let err = async {
        if a.tty {
            return Ok(0);
        }
        let mut e = tokio::io::stderr();
        copy_output(agent, id, "", OutputStream::Stderr, &mut e).await
    };
    let input = async {
        if stdin {
            let mut i = tokio::io::stdin();
            let _ = copy_stdin(agent, id, "", &mut i).await;
        }
    };
    let wait = async {
        let (o, e) = tokio::join!(out, err);
        o?;
        e?;
        Ok::<_, ember_sandbox::Error>(agent.wait_process(id, "").await?)
    };
    // The terminal's new size on each SIGWINCH, for as long as the process runs.
    let resizes = async {
        if raw.is_some() {
            use tokio::signal::unix::{signal, SignalKind};
            if let Ok(mut winch) = signal(SignalKind::window_change()) {
                while winch.recv().await.is_some() {
                    let (cols, rows) = terminal_size();
                    let _ = agent.resize_pty(id, "", cols, rows).await;
                }
            }
        }
        std::future::pending::<()>().await
    };
    // stdin may never end (a terminal): the process's end decides.
    let status = tokio::select! {
        r = wait => r?,
        _ = async { input.await; std::future::pending::<()>().await } => unreachable!(),
        _ = resizes => unreachable!(),
    };
    drop(raw);
    let _ = tokio::time::timeout(Duration::from_secs(10), agent.remove_container(id)).await;
    Ok(status.exit_status as i32)
}

pub(crate) fn terminal_size() -> (u32, u32) {
    let mut ws = nix::libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes a winsize into the struct we pass; fd 0 is only read.
    let r = unsafe { nix::libc::ioctl(0, nix::libc::TIOCGWINSZ, &mut ws) };
    if r == 0 && ws.ws_col > 0 {
        (ws.ws_col as u32, ws.ws_row as u32)
    } else {
        (80, 24)
    }
}

/// The local terminal in raw mode for the duration of an interactive session.
pub(crate) struct RawMode(nix::sys::termios::Termios);

impl RawMode {
    pub(crate) fn enable() -> Result<Self> {
        use nix::sys::termios::*;
        let stdin = std::io::stdin();
        let orig = tcgetattr(&stdin)?;
        let mut raw = orig.clone();
        cfmakeraw(&mut raw);
        tcsetattr(&stdin, SetArg::TCSANOW, &raw)?;
        Ok(RawMode(orig))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = nix::sys::termios::tcsetattr(
            std::io::stdin(),
            nix::sys::termios::SetArg::TCSANOW,
            &self.0,
        );
    }
}
