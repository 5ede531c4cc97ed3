//! The shim binary's actions: `start` (launch the long-running shim and print its
//! address), `serve` (the shim itself) and `delete` (clean up after a dead shim).

use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context, Result};
use prost::Message;
use sha2::{Digest, Sha256};

use crate::args::Args;
use crate::config::RuntimeConfig;
use crate::events::Publisher;
use crate::socket::ShimSocket;
use crate::task::Task;
use ember_shim_api::{timestamp, DeleteResponse, TASK_SERVICE};

/// Environment variable carrying the listening socket's fd to `serve`.
const LISTEN_FD_ENV: &str = "EMBER_SHIM_LISTEN_FD";
/// Directory of shim sockets.
const SOCKET_DIR: &str = "/run/ember/s";

fn digest(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0]);
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// This shim's private directory, derived from the daemon's address, namespace and
/// id, so `delete` finds it and two daemons' tasks of the same name never share it.
pub fn state_dir(config: &RuntimeConfig, args: &Args) -> PathBuf {
    config
        .state_dir
        .join(&digest(&[&args.address, &args.namespace, &args.id])[..16])
}

fn socket_path(args: &Args) -> PathBuf {
    Path::new(SOCKET_DIR).join(&digest(&[&args.address, &args.namespace, &args.id])[..32])
}

/// Holds the task's lock: `start` and `delete` of one task never interleave, so a
/// `delete` that comes late for a previous shim never meets a half-started new one.
fn lock_task(args: &Args) -> Result<nix::fcntl::Flock<std::fs::File>> {
    std::fs::create_dir_all(SOCKET_DIR)?;
    let path = socket_path(args).with_extension("lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| anyhow::anyhow!("locking {}: {e}", path.display()))
}

/// The identity (device, inode) of the bundle in the working directory.
fn bundle_identity() -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(".").ok().map(|m| (m.dev(), m.ino()))
}

/// `start`: binds the socket, launches `serve` in its own session, prints the address.
pub fn start(args: &Args) -> Result<()> {
    let socket = socket_path(args);
    let address = format!("unix://{}", socket.display());
    let _lock = lock_task(args)?;
    if std::os::unix::net::UnixStream::connect(&socket).is_ok() {
        // A shim for this id is already serving (containerd retried).
        write_address(&address)?;
        print!("{address}");
        return Ok(());
    }
    let config = RuntimeConfig::load()?;
    let dir = state_dir(&config, args);
    await_previous_shim(&dir, args);
    let _ = std::fs::remove_file(&socket);
    let listener = std::os::unix::net::UnixListener::bind(&socket)
        .with_context(|| format!("binding {}", socket.display()))?;
    let fd = listener.as_raw_fd();
    let exe = std::env::current_exe()?;
    let mut cmd = std::process::Command::new(exe);
    cmd.args([
        "-namespace",
        &args.namespace,
        "-id",
        &args.id,
        "-address",
        &args.address,
    ]);
    if !args.publish_binary.is_empty() {
        cmd.args(["-publish-binary", &args.publish_binary]);
    }
    if args.debug {
        cmd.arg("-debug");
    }
    cmd.arg("serve")
        .env(LISTEN_FD_ENV, "3")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    // SAFETY: only async-signal-safe calls (setsid, dup2, fcntl) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            libc::setsid();
            if fd == 3 {
                let flags = libc::fcntl(3, libc::F_GETFD);
                libc::fcntl(3, libc::F_SETFD, flags & !libc::FD_CLOEXEC);
            } else if libc::dup2(fd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().context("launching the shim")?;
    drop(listener);
    // Recorded before the address is handed out: a later `delete` tells this shim
    // (serving this bundle) from a previous one of the same task.
    std::fs::create_dir_all(&dir)?;
    std::fs::write(
        dir.join("meta.json"),
        serde_json::json!({
            "namespace": args.namespace,
            "id": args.id,
            "pid": child.id(),
            "bundle": bundle_identity(),
        })
        .to_string(),
    )?;
    write_address(&address)?;
    tracing::debug!(pid = child.id(), "shim launched");
    print!("{address}");
    Ok(())
}

fn write_address(address: &str) -> Result<()> {
    std::fs::write("address", address).context("writing the address file in the bundle")
}

/// `serve`: the long-running shim.
pub fn serve(args: &Args) -> Result<()> {
    let config = RuntimeConfig::load()?;
    let dir = state_dir(&config, args);
    std::fs::create_dir_all(&dir)?;
    init_logging(
        &dir,
        if args.debug {
            "debug"
        } else {
            &config.log_level
        },
    );
    let fd: i32 = std::env::var(LISTEN_FD_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
        .context("serve is started by the shim's start action")?;
    // SAFETY: `start` passed us this listening socket as fd 3 and nothing else owns it.
    let std_listener = unsafe { std::os::unix::net::UnixListener::from_raw_fd(fd) };
    // `start` bound it there and holds it while the socket answers.
    let socket = Arc::new(ShimSocket::bound(&socket_path(args))?);
    std_listener.set_nonblocking(true)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let task_dir = dir.clone();
    let served = socket.clone();
    rt.block_on(async move {
        let listener = tokio::net::UnixListener::from_std(std_listener)?;
        let ttrpc = std::env::var("TTRPC_ADDRESS").ok();
        let publisher = Publisher::start(ttrpc, args.namespace.clone());
        let task = Task::new(args.namespace.clone(), config, task_dir, publisher);
        let server = ember_ttrpc::Server::new().register(
            TASK_SERVICE,
            crate::service::task_service(task.clone(), served.clone()),
        );
        tracing::info!(namespace = %args.namespace, id = %args.id, "shim serving");
        loop {
            tokio::select! {
                conn = listener.accept() => {
                    let (stream, _) = conn?;
                    let server = server.clone();
                    tokio::spawn(async move {
                        if let Err(e) = server.serve_connection(stream).await {
                            tracing::warn!("containerd connection: {e}");
                        }
                    });
                }
                _ = task.shutdown.notified() => break,
            }
        }
        drop(listener);
        served.release();
        task.teardown().await;
        // Let the Shutdown reply and the last events go out.
        tokio::time::sleep(Duration::from_millis(100)).await;
        Ok::<_, anyhow::Error>(())
    })?;
    socket.release();
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

fn init_logging(dir: &Path, level: &str) {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("shim.log"));
    let filter = tracing_subscriber::EnvFilter::new(level);
    match file {
        Ok(f) => {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_ansi(false)
                .with_writer(std::sync::Mutex::new(f))
                .try_init();
        }
        Err(_) => {
            let _ = tracing_subscriber::fmt().with_env_filter(filter).try_init();
        }
    }
}

/// `delete`: containerd lost the shim; kill its VM, unmount, clean up, report.
pub fn delete(args: &Args) -> Result<()> {
    if args.id.is_empty() {
        bail!("-id is required");
    }
    let config = RuntimeConfig::load()?;
    let dir = state_dir(&config, args);
    let _lock = lock_task(args)?;
    // containerd runs this after every shim's exit, also when a new task of the id
    // already has its own shim: that one, serving another bundle, is left alone.
    if let Some(shim) =
        serving_shim(&dir, args).filter(|s| s.bundle.is_some() && s.bundle != bundle_identity())
    {
        tracing::info!(
            pid = shim.pid.as_raw(),
            "the task's shim serves a newer bundle"
        );
        return write_delete_response();
    }
    // The daemon may have lost a shim that still runs (it died while the task was
    // being created): that shim goes too, or the next task of this id would meet it.
    kill_serving_shim(&dir, args);
    for name in ["vmm.pid", "vm/qemu.pid"] {
        if let Ok(pid) = std::fs::read_to_string(dir.join(name)) {
            if let Ok(pid) = pid.trim().parse::<i32>() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
    let bundle = args
        .bundle
        .clone()
        .or_else(|| std::env::current_dir().ok())
        .unwrap_or_default();
    let _ = nix::mount::umount2(&bundle.join("rootfs"), nix::mount::MntFlags::MNT_DETACH);
    // Host directories shared with the VM are bind-mounted under the state
    // directory: they go first, and while any is left the directory stays (removing
    // it would delete the host's data through the mount).
    let shared = dir.join("vm").join(ember_sandbox::share::DIR_NAME);
    match ember_sandbox::share::cleanup(&shared) {
        Ok(()) => {
            let _ = std::fs::remove_dir_all(&dir);
        }
        Err(e) => tracing::warn!(
            "cleaning up {}: {e}; {} left in place",
            shared.display(),
            dir.display()
        ),
    }
    let _ = std::fs::remove_file(socket_path(args));
    write_delete_response()
}

fn write_delete_response() -> Result<()> {
    let resp = DeleteResponse {
        pid: 0,
        exit_status: 137,
        exited_at: Some(timestamp(SystemTime::now())),
    };
    use std::io::Write;
    std::io::stdout().write_all(&resp.encode_to_vec())?;
    Ok(())
}

/// A `serve` process recorded in a task's state directory.
struct ServingShim {
    pid: nix::unistd::Pid,
    /// The bundle it was started in; `None` when not recorded.
    bundle: Option<(u64, u64)>,
}

/// The `serve` process recorded in `dir/meta.json` while it is still this task's
/// shim (its command line names the action and the id).
fn serving_shim(dir: &Path, args: &Args) -> Option<ServingShim> {
    let meta = std::fs::read(dir.join("meta.json"))
        .ok()
        .and_then(|m| serde_json::from_slice::<serde_json::Value>(&m).ok())?;
    let pid = meta
        .get("pid")
        .and_then(|p| p.as_i64())
        .and_then(|p| i32::try_from(p).ok())
        .filter(|p| *p > 1 && *p as u32 != std::process::id())?;
    let bundle = meta
        .get("bundle")
        .and_then(|b| serde_json::from_value(b.clone()).ok());
    is_serving(pid, args).then_some(ServingShim {
        pid: nix::unistd::Pid::from_raw(pid),
        bundle,
    })
}

fn is_serving(pid: i32, args: &Args) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
        let argv: Vec<&[u8]> = c.split(|b| *b == 0).collect();
        argv.contains(&b"serve".as_slice()) && argv.contains(&args.id.as_bytes())
    })
}

/// Waits up to `limit` for `pid` to stop being this task's shim (it is not our child).
fn wait_gone(pid: nix::unistd::Pid, args: &Args, limit: Duration) -> bool {
    let t = std::time::Instant::now();
    loop {
        if nix::sys::signal::kill(pid, None).is_err() || !is_serving(pid.as_raw(), args) {
            return true;
        }
        if t.elapsed() >= limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Kills this task's `serve` process recorded in `dir`, if any, and waits until it is
/// gone.
fn kill_serving_shim(dir: &Path, args: &Args) {
    let Some(ServingShim { pid, .. }) = serving_shim(dir, args) else {
        return;
    };
    tracing::info!(pid = pid.as_raw(), "killing the shim left serving");
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
    wait_gone(pid, args, Duration::from_secs(2));
}

/// A previous shim of this task that no longer answers at its address is on its way
/// out (it stopped listening when it acknowledged Shutdown); its last step removes
/// the task's state directory, so the new shim starts only once it is gone. One that
/// takes too long is killed.
fn await_previous_shim(dir: &Path, args: &Args) {
    if let Some(ServingShim { pid, .. }) = serving_shim(dir, args) {
        tracing::debug!(pid = pid.as_raw(), "waiting for the previous shim to exit");
        if !wait_gone(pid, args, Duration::from_secs(5)) {
            kill_serving_shim(dir, args);
        }
    }
}
