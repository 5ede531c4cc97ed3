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
use crate::vm::VmHost;
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

/// The VM a shim's containers share, or none (one VM for the container alone).
/// `start` and `delete` learn it from the bundle's annotations; `serve` from `-vm`.
fn key_parts<'a>(args: &'a Args, vm: Option<&'a str>) -> Vec<&'a str> {
    match vm {
        Some(v) => vec![&args.address, &args.namespace, "vm", v],
        None => vec![&args.address, &args.namespace, &args.id],
    }
}

/// The shim's private directory (the VM's, with per-container parts), derived from
/// the daemon's address, the namespace and the VM id (or the container id when the
/// container names no VM), so `delete` finds it and two daemons never share one.
pub fn state_dir(config: &RuntimeConfig, args: &Args, vm: Option<&str>) -> PathBuf {
    config.state_dir.join(&digest(&key_parts(args, vm))[..16])
}

fn socket_path(args: &Args, vm: Option<&str>) -> PathBuf {
    Path::new(SOCKET_DIR).join(&digest(&key_parts(args, vm))[..32])
}

/// Where `start` notes the VM of a grouped container, for its `delete`, which may
/// come when the bundle is gone.
fn group_record(args: &Args) -> PathBuf {
    Path::new(SOCKET_DIR)
        .join(&digest(&key_parts(args, None))[..32])
        .with_extension("vm")
}

/// The VM named by the bundle's annotations (`config.json` in `-bundle` or the
/// working directory, as containerd runs `start`).
fn bundle_vm(args: &Args) -> Option<String> {
    let dir = args.bundle.clone().unwrap_or_else(|| PathBuf::from("."));
    let spec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("config.json")).ok()?).ok()?;
    let ann = spec.get("annotations")?.as_object()?;
    ember_vm_api::annotations::vm_id(|k| ann.get(k).and_then(|v| v.as_str())).map(str::to_string)
}

/// The VM of a container that `delete` cleans up after.
fn recorded_vm(args: &Args) -> Option<String> {
    std::fs::read_to_string(group_record(args))
        .ok()
        .filter(|v| !v.is_empty())
        .or_else(|| bundle_vm(args))
}

/// Holds the lock of the task, or of its VM: `start` and `delete` of one VM never
/// interleave, so a `delete` that comes late for a previous shim never meets a
/// half-started new one.
fn lock_task(args: &Args, vm: Option<&str>) -> Result<nix::fcntl::Flock<std::fs::File>> {
    std::fs::create_dir_all(SOCKET_DIR)?;
    let path = socket_path(args, vm).with_extension("lock");
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
/// A runtime configuration that does not load fails it first, its message on
/// stderr (containerd hands a failed start's output to its client).
pub fn start(args: &Args) -> Result<()> {
    let config = RuntimeConfig::load()?;
    let vm = bundle_vm(args);
    let vm = vm.as_deref();
    let socket = socket_path(args, vm);
    let address = format!("unix://{}", socket.display());
    let _lock = lock_task(args, vm)?;
    if let Some(v) = vm {
        std::fs::write(group_record(args), v).context("recording the container's VM")?;
    }
    if std::os::unix::net::UnixStream::connect(&socket).is_ok() {
        // A shim for this id is already serving (containerd retried), or the shim
        // of the VM the container names.
        write_address(&address)?;
        print!("{address}");
        return Ok(());
    }
    let dir = state_dir(&config, args, vm);
    await_previous_shim(&dir, args, vm);
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
    if let Some(v) = vm {
        cmd.args(["-vm", v]);
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
            "vm": vm,
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
    // `start` loaded it a moment ago; should it have broken since, the shim still
    // serves (with the defaults) and answers every boot with the error, which then
    // reaches the client instead of a closed connection.
    let loaded = RuntimeConfig::load().map_err(|e| e.to_string());
    let config = loaded.clone().unwrap_or_default();
    let vm = args.vm.as_deref();
    let dir = state_dir(&config, args, vm);
    std::fs::create_dir_all(&dir)?;
    init_logging(
        &dir,
        if args.debug {
            "debug"
        } else {
            &config.log_level
        },
    );
    if let Err(e) = &loaded {
        tracing::error!("runtime configuration: {e}");
    }
    let fd: i32 = std::env::var(LISTEN_FD_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
        .context("serve is started by the shim's start action")?;
    // SAFETY: `start` passed us this listening socket as fd 3 and nothing else owns it.
    let std_listener = unsafe { std::os::unix::net::UnixListener::from_raw_fd(fd) };
    // `start` bound it there and holds it while the socket answers.
    let socket = Arc::new(ShimSocket::bound(&socket_path(args, vm))?);
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
        let vm_id = args.vm.clone().unwrap_or_else(|| args.id.clone());
        let host = VmHost::new(
            vm_id,
            args.vm.is_some(),
            args.namespace.clone(),
            loaded,
            task_dir,
        );
        let task = Task::new(host.clone(), publisher);
        let server = ember_ttrpc::Server::new()
            .register(
                TASK_SERVICE,
                crate::service::task_service(task.clone(), served.clone()),
            )
            .register(
                ember_vm_api::FC_SERVICE,
                crate::vm_service::firecracker_service(task.clone()),
            )
            .register(
                ember_vm_api::VMS_SERVICE,
                crate::vm_service::vms_service(host.clone()),
            );
        tracing::info!(namespace = %args.namespace, id = %args.id, vm = ?args.vm, "shim serving");
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
                _ = host.shutdown.notified() => break,
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
    remove_state(&dir);
    // A shim started for a VM by its id (CreateVM's callers) has no container
    // whose `delete` would remove the record `start` made for that id.
    if vm == Some(args.id.as_str()) {
        let _ = std::fs::remove_file(group_record(args));
    }
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

/// `delete`: containerd lost the shim, or is done with one container of a VM;
/// cleans up what belongs to the container, and the VM's leftovers when no shim
/// serves the VM any more.
pub fn delete(args: &Args) -> Result<()> {
    if args.id.is_empty() {
        bail!("-id is required");
    }
    // A configuration broken since the shim started must not keep its leftovers.
    let config = RuntimeConfig::load().unwrap_or_else(|e| {
        eprintln!("containerd-shim-ember-v2: {e}");
        RuntimeConfig {
            state_dir: RuntimeConfig::state_dir_of_broken(&crate::config::path()),
            ..Default::default()
        }
    });
    let vm = recorded_vm(args);
    let vm = vm.as_deref();
    let dir = state_dir(&config, args, vm);
    let _lock = lock_task(args, vm)?;
    let bundle = args
        .bundle
        .clone()
        .or_else(|| std::env::current_dir().ok())
        .unwrap_or_default();
    if vm.is_some() {
        let _ = nix::mount::umount2(&bundle.join("rootfs"), nix::mount::MntFlags::MNT_DETACH);
        let _ = std::fs::remove_dir_all(crate::vm::container_dir(&dir, &args.id));
        let _ = std::fs::remove_file(group_record(args));
        // The VM's shim serves other containers (or waits for CreateVM's callers):
        // it stays, with its VM.
        if let Some(shim) = serving_shim(&dir, args, vm) {
            tracing::info!(pid = shim.pid.as_raw(), "the VM's shim still serves");
            return write_delete_response();
        }
    } else if let Some(shim) =
        serving_shim(&dir, args, vm).filter(|s| s.bundle.is_some() && s.bundle != bundle_identity())
    {
        // containerd runs this after every shim's exit, also when a new task of the id
        // already has its own shim: that one, serving another bundle, is left alone.
        tracing::info!(
            pid = shim.pid.as_raw(),
            "the task's shim serves a newer bundle"
        );
        return write_delete_response();
    }
    // The daemon may have lost a shim that still runs (it died while the task was
    // being created): that shim goes too, or the next task of this id would meet it.
    if vm.is_none() {
        kill_serving_shim(&dir, args, vm);
    }
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
    // Taps, redirects and the namespace Ember made, from the VM's record.
    crate::net::release_recorded(&dir);
    let _ = nix::mount::umount2(&bundle.join("rootfs"), nix::mount::MntFlags::MNT_DETACH);
    // A CNI network of a VM whose shim died: CNI DEL, its namespace.
    crate::vm_network::release(&dir);
    remove_state(&dir);
    let _ = std::fs::remove_file(socket_path(args, vm));
    write_delete_response()
}

/// Removes a VM's state directory. Host directories shared with the VM are
/// bind-mounted under it: they go first, and while any is left the directory stays
/// (removing it would delete the host's data through the mount).
fn remove_state(dir: &Path) {
    // The VMM's jail (directory and cgroup) of a VM whose shim was killed.
    ember_vmm::jail::cleanup(&dir.join("vm"));
    let shared = dir.join("vm").join(ember_sandbox::share::DIR_NAME);
    match ember_sandbox::share::cleanup(&shared) {
        Ok(()) => {
            let _ = std::fs::remove_dir_all(dir);
        }
        Err(e) => tracing::warn!(
            "cleaning up {}: {e}; {} left in place",
            shared.display(),
            dir.display()
        ),
    }
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
fn serving_shim(dir: &Path, args: &Args, vm: Option<&str>) -> Option<ServingShim> {
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
    is_serving(pid, args, vm).then_some(ServingShim {
        pid: nix::unistd::Pid::from_raw(pid),
        bundle,
    })
}

/// Whether `pid` is the `serve` process of this task (or of VM `vm`).
fn is_serving(pid: i32, args: &Args, vm: Option<&str>) -> bool {
    let needle = vm.unwrap_or(&args.id);
    std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
        let argv: Vec<&[u8]> = c.split(|b| *b == 0).collect();
        argv.contains(&b"serve".as_slice()) && argv.contains(&needle.as_bytes())
    })
}

/// Waits up to `limit` for `pid` to stop being this task's shim (it is not our child).
fn wait_gone(pid: nix::unistd::Pid, args: &Args, vm: Option<&str>, limit: Duration) -> bool {
    let t = std::time::Instant::now();
    loop {
        if nix::sys::signal::kill(pid, None).is_err() || !is_serving(pid.as_raw(), args, vm) {
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
fn kill_serving_shim(dir: &Path, args: &Args, vm: Option<&str>) {
    let Some(ServingShim { pid, .. }) = serving_shim(dir, args, vm) else {
        return;
    };
    tracing::info!(pid = pid.as_raw(), "killing the shim left serving");
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
    wait_gone(pid, args, vm, Duration::from_secs(2));
}

/// A previous shim of this task that no longer answers at its address is on its way
/// out (it stopped listening when it acknowledged Shutdown); its last step removes
/// the task's state directory, so the new shim starts only once it is gone. One that
/// takes too long is killed.
fn await_previous_shim(dir: &Path, args: &Args, vm: Option<&str>) {
    if let Some(ServingShim { pid, .. }) = serving_shim(dir, args, vm) {
        tracing::debug!(pid = pid.as_raw(), "waiting for the previous shim to exit");
        if !wait_gone(pid, args, vm, Duration::from_secs(5)) {
            kill_serving_shim(dir, args, vm);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(id: &str, bundle: &Path) -> Args {
        Args {
            namespace: "default".into(),
            id: id.into(),
            address: "/run/containerd/containerd.sock".into(),
            bundle: Some(bundle.to_path_buf()),
            ..Default::default()
        }
    }

    fn bundle(annotations: serde_json::Value) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        let spec = serde_json::json!({"ociVersion": "1.0.2", "annotations": annotations});
        std::fs::write(d.path().join("config.json"), spec.to_string()).unwrap();
        d
    }

    #[test]
    fn containers_naming_a_vm_share_its_socket_and_state() {
        let cfg = RuntimeConfig::default();
        let a = bundle(serde_json::json!({"io.ember.vm.id": "vm1"}));
        let b = bundle(serde_json::json!({"aws.firecracker.vm.id": "vm1"}));
        let solo = bundle(serde_json::json!({}));
        let (a, b, solo) = (
            args("a", a.path()),
            args("b", b.path()),
            args("a", solo.path()),
        );
        let (va, vb, vs) = (bundle_vm(&a), bundle_vm(&b), bundle_vm(&solo));
        assert_eq!(
            (va.as_deref(), vb.as_deref(), vs.as_deref()),
            (Some("vm1"), Some("vm1"), None)
        );
        assert_eq!(
            socket_path(&a, va.as_deref()),
            socket_path(&b, vb.as_deref())
        );
        assert_eq!(
            state_dir(&cfg, &a, va.as_deref()),
            state_dir(&cfg, &b, vb.as_deref())
        );
        // The same id without a VM is a shim (and VM) of its own.
        assert_ne!(socket_path(&a, va.as_deref()), socket_path(&solo, None));
        assert_ne!(group_record(&a), group_record(&b));
        // A CRI pod names its VM too; a VM id that is a container id stays apart.
        let pod = bundle(serde_json::json!({
            "io.kubernetes.cri.container-type": "container",
            "io.kubernetes.cri.sandbox-id": "pod1"
        }));
        let p = args("c", pod.path());
        assert_eq!(bundle_vm(&p).as_deref(), Some("pod1"));
        assert_ne!(
            socket_path(&p, Some("pod1")),
            socket_path(&args("pod1", pod.path()), None)
        );
    }
}
