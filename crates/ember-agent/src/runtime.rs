//! Container and process state, and the operations the service exposes.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ember_agent_api::{
    BlockRootfs, CreateContainerRequest, CreateProcessRequest, OutputStream, StatsResponse,
    StdioConfig, WaitProcessResponse, MAX_IO_CHUNK,
};
use ember_ttrpc::Status;
use oci_spec::runtime::{LinuxResources, Process, Spec};
use tokio::sync::{watch, Notify};

use crate::cgroup::{self, Cgroup};
use crate::reaper::{Exit, Reaper};
use crate::spawn::{self, Plan, Spawned};
use crate::stdio::{self, OutputBuf, StdinWriter, OUTPUT_BUFFER};
use crate::sys;

/// `BlockRootfs.serial` prefix naming a directory instead of a block device. A
/// testing aid for running the agent on a host, where no virtio disk exists.
pub const PATH_ROOTFS_PREFIX: &str = "path:";

pub struct Config {
    /// Cgroup v2 mount (or a delegated sub-cgroup) to create `ember/<id>` under;
    /// `None` disables cgroups.
    pub cgroup_root: Option<PathBuf>,
    /// Per-container state (`<state_dir>/<id>/rootfs-dev`).
    pub state_dir: PathBuf,
    pub is_pid1: bool,
}

/// The pieces of a created process that are not running yet.
enum Pending {
    /// Container init waiting on its start pipe.
    Init(Spawned),
    /// Exec process: what to spawn at start.
    Exec {
        process: Box<Process>,
        stdio: [OwnedFd; 3],
        /// The pty setup and the process's end of the console socket.
        pty: Option<(PtySetup, OwnedFd)>,
    },
}

/// A terminal being set up. The process allocates its pty in the container's own
/// devpts (so that `ttyname()` works there) and passes the master back over
/// `console`; until then, and if that fails, it uses the `fallback` pair the agent
/// allocated in its own devpts.
struct PtySetup {
    fallback_master: OwnedFd,
    /// The agent's end of the console socket (the process's end goes to the helper).
    console: OwnedFd,
}

pub struct Proc {
    pub exec_id: String,
    terminal: bool,
    pid: AtomicI32,
    pending: tokio::sync::Mutex<Option<Pending>>,
    /// `None` when stdin was not asked for, or after CloseStdin.
    stdin: tokio::sync::Mutex<Option<StdinWriter>>,
    stdin_enabled: bool,
    stdout: Arc<OutputBuf>,
    stderr: Arc<OutputBuf>,
    /// The pty master, once known (terminal processes only).
    pty_master: Mutex<Option<OwnedFd>>,
    /// Window size asked for before the pty existed.
    pty_size: Mutex<Option<(u32, u32)>>,
    exit: watch::Sender<Option<Exit>>,
}

impl Proc {
    /// Wires the terminal of a spawned process: the master it sent, or the fallback.
    async fn attach_pty(&self, setup: PtySetup) {
        let master = match stdio::recv_fd(&setup.console) {
            Ok(Some(fd)) => fd,
            Ok(None) => setup.fallback_master,
            Err(e) => {
                tracing::warn!("receiving the pty master: {e}; using the fallback pty");
                setup.fallback_master
            }
        };
        if let Some((w, h)) = *self.pty_size.lock().unwrap() {
            let _ = stdio::resize_pty(master.as_raw_fd(), w, h);
        }
        match master.try_clone() {
            Ok(fd) => self.stdout.spawn_reader(fd),
            Err(e) => {
                tracing::warn!("pty: {e}");
                self.stdout.set_eof();
            }
        }
        if self.stdin_enabled {
            match master.try_clone().and_then(StdinWriter::new) {
                Ok(w) => *self.stdin.lock().await = Some(w),
                Err(e) => tracing::warn!("pty stdin: {e}"),
            }
        }
        *self.pty_master.lock().unwrap() = Some(master);
    }

    fn exited(&self) -> Option<Exit> {
        *self.exit.borrow()
    }

    fn pid(&self) -> i32 {
        self.pid.load(Ordering::SeqCst)
    }

    async fn wait(&self) -> Exit {
        let mut rx = self.exit.subscribe();
        loop {
            if let Some(e) = *rx.borrow_and_update() {
                return e;
            }
            if rx.changed().await.is_err() {
                // Sender gone: cannot happen while we hold &self; be safe anyway.
                return Exit {
                    status: 255,
                    at_ns: 0,
                };
            }
        }
    }
}

pub struct Container {
    pub id: String,
    cgroup: Option<Cgroup>,
    state_dir: PathBuf,
    init: Arc<Proc>,
    execs: Mutex<HashMap<String, Arc<Proc>>>,
    removing: AtomicBool,
    oom_seen: AtomicU64,
}

#[derive(Default)]
struct OomQueue {
    events: Mutex<VecDeque<String>>,
    notify: Notify,
}

pub struct Agent {
    cfg: Config,
    reaper: Reaper,
    cgroup_parent: Option<PathBuf>,
    containers: Mutex<HashMap<String, Arc<Container>>>,
    creating: Mutex<HashSet<String>>,
    oom: OomQueue,
}

type R<T> = Result<T, Status>;

fn internal(ctx: &str, e: impl std::fmt::Display) -> Status {
    Status::internal(format!("{ctx}: {e}"))
}

pub fn validate_id(kind: &str, id: &str) -> R<()> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && !id.starts_with('.')
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(Status::invalid_argument(format!(
            "invalid {kind} {id:?}: use 1-128 characters of [A-Za-z0-9_.-], not starting with '.'"
        )))
    }
}

/// Creates the stdio of a process: (the process's fds 0/1/2, the agent's Proc parts).
struct StdioParts {
    child: [OwnedFd; 3],
    stdin: Option<StdinWriter>,
    stdout: Arc<OutputBuf>,
    stderr: Arc<OutputBuf>,
    pty: Option<(PtySetup, OwnedFd)>,
}

fn make_stdio(cfg: &StdioConfig) -> io::Result<StdioParts> {
    if cfg.terminal {
        let (master, slave) = stdio::open_pty()?;
        let (console, console_child) = stdio::socketpair()?;
        Ok(StdioParts {
            child: [slave.try_clone()?, slave.try_clone()?, slave],
            stdin: None,
            stdout: OutputBuf::new(OUTPUT_BUFFER),
            stderr: OutputBuf::closed(),
            pty: Some((
                PtySetup {
                    fallback_master: master,
                    console,
                },
                console_child,
            )),
        })
    } else {
        let (in_child, stdin) = if cfg.stdin {
            let (r, w) = sys::pipe()?;
            (r, Some(StdinWriter::new(w)?))
        } else {
            (stdio::dev_null()?, None)
        };
        let (out_r, out_w) = sys::pipe()?;
        let (err_r, err_w) = sys::pipe()?;
        let stdout = OutputBuf::new(OUTPUT_BUFFER);
        stdout.spawn_reader(out_r);
        let stderr = OutputBuf::new(OUTPUT_BUFFER);
        stderr.spawn_reader(err_r);
        Ok(StdioParts {
            child: [in_child, out_w, err_w],
            stdin,
            stdout,
            stderr,
            pty: None,
        })
    }
}

/// Finds `/dev/<name>` whose `/sys/block/<name>/serial` is `serial`, polling until
/// `timeout` (devices may still be probing). virtio-blk serials are at most 20
/// bytes, so a longer wanted serial matches its first 20 bytes.
pub fn find_block_by_serial(serial: &str, timeout: Duration) -> io::Result<PathBuf> {
    let deadline = Instant::now() + timeout;
    let short: String = serial.chars().take(20).collect();
    loop {
        if let Ok(rd) = std::fs::read_dir("/sys/block") {
            for e in rd.flatten() {
                let s = std::fs::read_to_string(e.path().join("serial")).unwrap_or_default();
                let s = s.trim_end_matches(['\n', '\0']).trim();
                if !s.is_empty() && (s == serial || s == short) {
                    let dev = Path::new("/dev").join(e.file_name());
                    if dev.exists() {
                        return Ok(dev);
                    }
                }
            }
        }
        if Instant::now() > deadline {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("no block device with serial {serial:?}"),
            ));
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Mount points under `prefix` in the agent's namespace, deepest first.
fn mounts_under(prefix: &Path) -> Vec<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut v: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape_mount_path)
        .map(PathBuf::from)
        .filter(|p| p.starts_with(prefix))
        .collect();
    v.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    v.dedup();
    v
}

/// Undoes the octal escapes (`\040`) of /proc/self/mountinfo.
pub fn unescape_mount_path(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn unmount_all_under(prefix: &Path) {
    for m in mounts_under(prefix) {
        if let Err(e) = sys::umount(&m, libc::MNT_DETACH) {
            tracing::warn!("unmounting {}: {e}", m.display());
        }
    }
}

impl Agent {
    pub fn new(cfg: Config, reaper: Reaper) -> Arc<Agent> {
        let cgroup_parent =
            cfg.cgroup_root
                .as_ref()
                .and_then(|root| match cgroup::init_parent(root) {
                    Ok(p) => Some(p),
                    Err(e) => {
                        tracing::warn!("cgroups disabled: {}: {e}", root.display());
                        None
                    }
                });
        let agent = Arc::new(Agent {
            cfg,
            reaper,
            cgroup_parent,
            containers: Mutex::new(HashMap::new()),
            creating: Mutex::new(HashSet::new()),
            oom: OomQueue::default(),
        });
        let weak = Arc::downgrade(&agent);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                let Some(a) = weak.upgrade() else { break };
                a.poll_oom();
            }
        });
        agent
    }

    fn container(&self, id: &str) -> R<Arc<Container>> {
        self.containers
            .lock()
            .unwrap()
            .get(id)
            .cloned()
            .ok_or_else(|| Status::not_found(format!("container {id:?} not found")))
    }

    fn process(&self, id: &str, exec_id: &str) -> R<(Arc<Container>, Arc<Proc>)> {
        let c = self.container(id)?;
        if exec_id.is_empty() {
            let p = c.init.clone();
            return Ok((c, p));
        }
        let p = c
            .execs
            .lock()
            .unwrap()
            .get(exec_id)
            .cloned()
            .ok_or_else(|| {
                Status::not_found(format!("process {exec_id:?} not found in container {id:?}"))
            })?;
        Ok((c, p))
    }

    fn poll_oom(&self) {
        let containers: Vec<_> = self.containers.lock().unwrap().values().cloned().collect();
        for c in containers {
            let Some(cg) = &c.cgroup else { continue };
            let n = cg.oom_kills();
            let seen = c.oom_seen.swap(n, Ordering::SeqCst);
            if n > seen {
                tracing::info!(container = %c.id, "OOM kill");
                let mut q = self.oom.events.lock().unwrap();
                if q.len() < 1024 {
                    q.push_back(c.id.clone());
                }
                drop(q);
                self.oom.notify.notify_waiters();
            }
        }
    }

    pub async fn wait_oom(&self) -> String {
        loop {
            let notified = self.oom.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(id) = self.oom.events.lock().unwrap().pop_front() {
                return id;
            }
            notified.await;
        }
    }

    /// Registers `proc`'s pid with the reaper and publishes its exit.
    fn watch_exit(self: &Arc<Self>, c: &Arc<Container>, p: &Arc<Proc>, pid: i32) {
        p.pid.store(pid, Ordering::SeqCst);
        let rx = self.reaper.register(pid);
        let p = p.clone();
        let c = c.clone();
        tokio::spawn(async move {
            let exit = rx.await.unwrap_or(Exit {
                status: 255,
                at_ns: crate::reaper::now_ns(),
            });
            tracing::info!(container = %c.id, exec = %p.exec_id, pid, status = exit.status, "process exited");
            if p.exec_id.is_empty() {
                // As with a pid namespace's init: the rest of the container dies too.
                if let Some(cg) = &c.cgroup {
                    let _ = cg.signal_all(libc::SIGKILL);
                }
            }
            let _ = p.exit.send_replace(Some(exit));
        });
    }

    pub async fn create_container(self: &Arc<Self>, req: CreateContainerRequest) -> R<u32> {
        let id = req.container_id.clone();
        validate_id("container id", &id)?;
        {
            let containers = self.containers.lock().unwrap();
            let mut creating = self.creating.lock().unwrap();
            if containers.contains_key(&id) || !creating.insert(id.clone()) {
                return Err(Status::already_exists(format!(
                    "container {id:?} already exists"
                )));
            }
        }
        let res = self.create_inner(req).await;
        self.creating.lock().unwrap().remove(&id);
        res
    }

    async fn create_inner(self: &Arc<Self>, req: CreateContainerRequest) -> R<u32> {
        let id = req.container_id.clone();
        let spec: Spec = serde_json::from_slice(&req.spec_json)
            .map_err(|e| Status::invalid_argument(format!("bad OCI spec JSON: {e}")))?;
        let process = spec
            .process()
            .clone()
            .ok_or_else(|| Status::invalid_argument("spec has no process"))?;
        if process.args().as_ref().is_none_or(|a| a.is_empty()) {
            return Err(Status::invalid_argument("spec process.args is empty"));
        }
        let rootfs_cfg = req
            .rootfs
            .clone()
            .ok_or_else(|| Status::invalid_argument("rootfs is required"))?;
        let stdio_cfg = req.stdio.clone().unwrap_or_default();
        let state_dir = self.cfg.state_dir.join(&id);
        std::fs::create_dir_all(&state_dir).map_err(|e| internal("creating state dir", e))?;

        let mut cleanup = Cleanup {
            state_dir: Some(state_dir.clone()),
            cgroup: None,
        };
        let rootfs = {
            let sd = state_dir.clone();
            tokio::task::spawn_blocking(move || prepare_rootfs(&rootfs_cfg, &sd))
                .await
                .map_err(|e| internal("rootfs", e))??
        };
        let cg = match &self.cgroup_parent {
            Some(parent) => {
                let cg = Cgroup::create(parent, &id).map_err(|e| internal("creating cgroup", e))?;
                cleanup.cgroup = Some(cg.clone());
                if let Some(res) = spec.linux().as_ref().and_then(|l| l.resources().as_ref()) {
                    cg.apply(res).map_err(|e| {
                        Status::invalid_argument(format!("applying resources: {e}"))
                    })?;
                }
                Some(cg)
            }
            None => None,
        };
        let console = process
            .console_size()
            .map(|b| (b.width() as u32, b.height() as u32));
        let terminal = stdio_cfg.terminal;
        let mut parts = make_stdio(&stdio_cfg).map_err(|e| internal("creating stdio", e))?;
        let pty = parts.pty.take();
        let plan = Plan::Init {
            spec: Box::new(spec.clone()),
            rootfs,
            cgroup: cg.as_ref().map(|c| c.path.clone()),
            terminal,
        };
        let (pty, console_child) = pty.unzip();
        let (spawned, outcome) = spawn::spawn(&plan, parts.child, console_child)
            .await
            .map_err(|e| internal("spawning container init", e))?;
        self.reaper.register(spawned.helper_pid);
        let init = Arc::new(Proc {
            exec_id: String::new(),
            terminal,
            pid: AtomicI32::new(0),
            pending: tokio::sync::Mutex::new(None),
            stdin: tokio::sync::Mutex::new(parts.stdin),
            stdin_enabled: stdio_cfg.stdin,
            stdout: parts.stdout,
            stderr: parts.stderr,
            pty_master: Mutex::new(None),
            pty_size: Mutex::new(console),
            exit: watch::channel(None).0,
        });
        if let Some(setup) = pty {
            init.attach_pty(setup).await;
        }
        let container = Arc::new(Container {
            id: id.clone(),
            cgroup: cg,
            state_dir,
            init: init.clone(),
            execs: Mutex::new(HashMap::new()),
            removing: AtomicBool::new(false),
            oom_seen: AtomicU64::new(0),
        });
        if let Some(pid) = outcome.pid {
            self.watch_exit(&container, &init, pid);
        }
        if !outcome.ready || outcome.error.is_some() {
            if let Some(pid) = outcome.pid {
                let _ = sys::kill(pid, libc::SIGKILL);
                let _ = tokio::time::timeout(Duration::from_secs(5), init.wait()).await;
            }
            drop(cleanup_now(&container, &mut cleanup).await);
            let msg = outcome
                .error
                .unwrap_or_else(|| "container init exited during setup".into());
            return Err(Status::failed_precondition(format!(
                "creating container {id:?}: {msg}"
            )));
        }
        *init.pending.lock().await = Some(Pending::Init(spawned));
        cleanup.disarm();
        self.containers.lock().unwrap().insert(id, container);
        Ok(outcome.pid.unwrap_or(0) as u32)
    }

    pub async fn create_process(self: &Arc<Self>, req: CreateProcessRequest) -> R<()> {
        let c = self.container(&req.container_id)?;
        if req.exec_id.is_empty() {
            return Err(Status::invalid_argument(
                "exec_id must not be empty (it names the init process)",
            ));
        }
        validate_id("exec id", &req.exec_id)?;
        let process: Process = serde_json::from_slice(&req.process_json)
            .map_err(|e| Status::invalid_argument(format!("bad OCI process JSON: {e}")))?;
        if process.args().as_ref().is_none_or(|a| a.is_empty()) {
            return Err(Status::invalid_argument("process.args is empty"));
        }
        if c.removing.load(Ordering::SeqCst) {
            return Err(Status::failed_precondition("container is being removed"));
        }
        if c.init.exited().is_some() {
            return Err(Status::failed_precondition(format!(
                "container {:?} is not running",
                c.id
            )));
        }
        let cfg = req.stdio.clone().unwrap_or_default();
        let console = process
            .console_size()
            .map(|b| (b.width() as u32, b.height() as u32));
        let mut execs = c.execs.lock().unwrap();
        if execs.contains_key(&req.exec_id) {
            return Err(Status::already_exists(format!(
                "process {:?} already exists in container {:?}",
                req.exec_id, c.id
            )));
        }
        let mut parts = make_stdio(&cfg).map_err(|e| internal("creating stdio", e))?;
        let p = Arc::new(Proc {
            exec_id: req.exec_id.clone(),
            terminal: cfg.terminal,
            pid: AtomicI32::new(0),
            pending: tokio::sync::Mutex::new(Some(Pending::Exec {
                process: Box::new(process),
                stdio: parts.child,
                pty: parts.pty.take(),
            })),
            stdin: tokio::sync::Mutex::new(parts.stdin),
            stdin_enabled: cfg.stdin,
            stdout: parts.stdout,
            stderr: parts.stderr,
            pty_master: Mutex::new(None),
            pty_size: Mutex::new(console),
            exit: watch::channel(None).0,
        });
        execs.insert(req.exec_id, p);
        Ok(())
    }

    pub async fn start_process(self: &Arc<Self>, id: &str, exec_id: &str) -> R<u32> {
        let (c, p) = self.process(id, exec_id)?;
        tracing::debug!(container = %id, exec = %exec_id, "start");
        let mut pending = p.pending.lock().await;
        let Some(pend) = pending.take() else {
            return Err(Status::failed_precondition(format!(
                "process {exec_id:?} of container {id:?} was already started"
            )));
        };
        match pend {
            Pending::Init(spawned) => {
                if let Some(e) = p.exited() {
                    return Err(Status::failed_precondition(format!(
                        "container init already exited with status {}",
                        e.status
                    )));
                }
                let Spawned {
                    mut report, start, ..
                } = spawned;
                if let Some(start) = start {
                    sys::write_all(start.as_raw_fd(), b"1")
                        .map_err(|e| internal("signalling the container init to start", e))?;
                }
                tracing::debug!(container = %id, "start byte sent");
                let outcome =
                    tokio::task::spawn_blocking(move || spawn::read_report(&mut report, false))
                        .await
                        .map_err(|e| internal("start", e))?;
                tracing::debug!(container = %id, ?outcome, "started");
                if let Some(err) = outcome.error {
                    // The process exits right after reporting; let its status settle.
                    let _ = tokio::time::timeout(Duration::from_secs(2), p.wait()).await;
                    return Err(Status::failed_precondition(format!(
                        "starting container {id:?}: {err}"
                    )));
                }
                Ok(p.pid() as u32)
            }
            Pending::Exec {
                process,
                stdio,
                pty,
            } => {
                let init_pid = c.init.pid();
                if c.init.exited().is_some() || init_pid <= 0 || c.removing.load(Ordering::SeqCst) {
                    let _ = p.exit.send_replace(Some(Exit {
                        status: 255,
                        at_ns: crate::reaper::now_ns(),
                    }));
                    return Err(Status::failed_precondition(format!(
                        "container {id:?} is not running"
                    )));
                }
                let plan = Plan::Exec {
                    process,
                    init_pid,
                    cgroup: c.cgroup.as_ref().map(|cg| cg.path.clone()),
                    terminal: p.terminal,
                    winsize: *p.pty_size.lock().unwrap(),
                };
                let (pty, console_child) = pty.unzip();
                let (spawned, outcome) = spawn::spawn(&plan, stdio, console_child)
                    .await
                    .map_err(|e| internal("spawning exec process", e))?;
                if let Some(setup) = pty {
                    p.attach_pty(setup).await;
                }
                self.reaper.register(spawned.helper_pid);
                match outcome.pid {
                    Some(pid) => self.watch_exit(&c, &p, pid),
                    None => {
                        let _ = p.exit.send_replace(Some(Exit {
                            status: 255,
                            at_ns: crate::reaper::now_ns(),
                        }));
                    }
                }
                if let Some(err) = outcome.error {
                    let _ = tokio::time::timeout(Duration::from_secs(2), p.wait()).await;
                    return Err(Status::failed_precondition(format!(
                        "starting process {exec_id:?} in container {id:?}: {err}"
                    )));
                }
                Ok(outcome.pid.unwrap_or(0) as u32)
            }
        }
    }

    /// Forgets an exec process: one that exited, or one created and never started
    /// (its stdio and plan go with it). A running one stays.
    pub async fn remove_process(&self, id: &str, exec_id: &str) -> R<()> {
        if exec_id.is_empty() {
            return Err(Status::invalid_argument(
                "the init process goes with its container",
            ));
        }
        let (c, p) = self.process(id, exec_id)?;
        let never_started = p.pending.lock().await.take().is_some();
        if !never_started && p.exited().is_none() {
            return Err(Status::failed_precondition(format!(
                "process {exec_id:?} of container {id:?} is running"
            )));
        }
        if never_started {
            // Its waiters return.
            let _ = p.exit.send_replace(Some(Exit {
                status: 0,
                at_ns: crate::reaper::now_ns(),
            }));
        }
        c.execs.lock().unwrap().remove(exec_id);
        Ok(())
    }

    pub async fn wait_process(&self, id: &str, exec_id: &str) -> R<WaitProcessResponse> {
        let (_c, p) = self.process(id, exec_id)?;
        let e = p.wait().await;
        Ok(WaitProcessResponse {
            exit_status: e.status,
            exited_at_ns: e.at_ns,
        })
    }

    pub async fn signal_process(&self, id: &str, exec_id: &str, sig: u32, all: bool) -> R<()> {
        if sig == 0 || sig > 64 {
            return Err(Status::invalid_argument(format!("invalid signal {sig}")));
        }
        let sig = sig as i32;
        let (c, p) = self.process(id, exec_id)?;
        if all {
            if !exec_id.is_empty() {
                return Err(Status::invalid_argument(
                    "`all` applies to the init process only",
                ));
            }
            if let Some(cg) = &c.cgroup {
                cg.signal_all(sig)
                    .map_err(|e| internal("signalling the cgroup", e))?;
                return Ok(());
            }
            // Without cgroups: every process we know of.
            let execs: Vec<_> = c.execs.lock().unwrap().values().cloned().collect();
            for q in execs {
                if q.exited().is_none() && q.pid() > 0 {
                    let _ = sys::kill(q.pid(), sig);
                }
            }
        }
        if p.exited().is_some() {
            return Err(Status::not_found(format!(
                "process {exec_id:?} of container {id:?} already exited"
            )));
        }
        let pid = p.pid();
        if pid <= 0 {
            return Err(Status::failed_precondition(format!(
                "process {exec_id:?} was not started"
            )));
        }
        match sys::kill(pid, sig) {
            Ok(()) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Err(Status::not_found(format!(
                "process {exec_id:?} already exited"
            ))),
            Err(e) => Err(internal("kill", e)),
        }
    }

    pub async fn write_stdin(&self, id: &str, exec_id: &str, data: &[u8]) -> R<u32> {
        let (_c, p) = self.process(id, exec_id)?;
        if data.len() > MAX_IO_CHUNK as usize {
            return Err(Status::invalid_argument(format!(
                "chunk larger than {MAX_IO_CHUNK} bytes"
            )));
        }
        let w = p.stdin.lock().await;
        let Some(w) = w.as_ref() else {
            return Err(Status::failed_precondition(if p.stdin_enabled {
                "stdin was closed"
            } else {
                "process was created without stdin"
            }));
        };
        match w.write_all(data).await {
            Ok(()) => Ok(data.len() as u32),
            Err(e)
                if e.raw_os_error() == Some(libc::EPIPE) || e.raw_os_error() == Some(libc::EIO) =>
            {
                Err(Status::failed_precondition(format!(
                    "stdin is closed by the process: {e}"
                )))
            }
            Err(e) => Err(internal("writing stdin", e)),
        }
    }

    /// Closes stdin (EOF for the process). With a pty the master stays open (it
    /// carries the output too): a terminal has no EOF but ^D, which the caller may
    /// send itself; further writes are refused.
    pub async fn close_stdin(&self, id: &str, exec_id: &str) -> R<()> {
        let (_c, p) = self.process(id, exec_id)?;
        p.stdin.lock().await.take();
        Ok(())
    }

    pub async fn read_output(
        &self,
        id: &str,
        exec_id: &str,
        stream: i32,
        max_len: u32,
    ) -> R<(Vec<u8>, bool)> {
        let (_c, p) = self.process(id, exec_id)?;
        let buf = match OutputStream::try_from(stream) {
            Ok(OutputStream::Stdout) => p.stdout.clone(),
            Ok(OutputStream::Stderr) => p.stderr.clone(),
            Err(_) => return Err(Status::invalid_argument(format!("unknown stream {stream}"))),
        };
        let max = if max_len == 0 {
            MAX_IO_CHUNK
        } else {
            max_len.min(MAX_IO_CHUNK)
        };
        Ok(buf.read(max as usize).await)
    }

    pub fn resize_pty(&self, id: &str, exec_id: &str, w: u32, h: u32) -> R<()> {
        let (_c, p) = self.process(id, exec_id)?;
        if !p.terminal {
            return Err(Status::failed_precondition("process has no terminal"));
        }
        *p.pty_size.lock().unwrap() = Some((w, h));
        let master = p.pty_master.lock().unwrap();
        match master.as_ref() {
            Some(m) => {
                stdio::resize_pty(m.as_raw_fd(), w, h).map_err(|e| internal("TIOCSWINSZ", e))
            }
            // Not started yet: applied once the pty exists.
            None => Ok(()),
        }
    }

    fn cgroup_of(&self, id: &str) -> R<(Arc<Container>, Cgroup)> {
        let c = self.container(id)?;
        let cg = c
            .cgroup
            .clone()
            .ok_or_else(|| Status::failed_precondition("cgroups are not available"))?;
        Ok((c, cg))
    }

    pub async fn pause(&self, id: &str) -> R<()> {
        let (c, cg) = self.cgroup_of(id)?;
        if c.init.exited().is_some() {
            return Err(Status::failed_precondition(format!(
                "container {id:?} is not running"
            )));
        }
        cg.freeze(true).await.map_err(|e| internal("freezing", e))
    }

    pub async fn resume(&self, id: &str) -> R<()> {
        let (_c, cg) = self.cgroup_of(id)?;
        if !cg.is_frozen() {
            return Err(Status::failed_precondition(format!(
                "container {id:?} is not paused"
            )));
        }
        cg.freeze(false).await.map_err(|e| internal("thawing", e))
    }

    pub fn list_pids(&self, id: &str) -> R<Vec<u32>> {
        let c = self.container(id)?;
        match &c.cgroup {
            Some(cg) => cg.procs().map_err(|e| internal("reading cgroup.procs", e)),
            None => {
                let mut v = vec![];
                if c.init.exited().is_none() && c.init.pid() > 0 {
                    v.push(c.init.pid() as u32);
                }
                for p in c.execs.lock().unwrap().values() {
                    if p.exited().is_none() && p.pid() > 0 {
                        v.push(p.pid() as u32);
                    }
                }
                Ok(v)
            }
        }
    }

    pub fn stats(&self, id: &str) -> R<StatsResponse> {
        let (_c, cg) = self.cgroup_of(id)?;
        Ok(cg.stats())
    }

    pub fn update(&self, id: &str, resources_json: &[u8]) -> R<()> {
        let res: LinuxResources = serde_json::from_slice(resources_json)
            .map_err(|e| Status::invalid_argument(format!("bad OCI resources JSON: {e}")))?;
        let (_c, cg) = self.cgroup_of(id)?;
        cg.apply(&res)
            .map_err(|e| Status::invalid_argument(format!("applying resources: {e}")))
    }

    pub async fn remove(&self, id: &str) -> R<()> {
        let c = self.container(id)?;
        if c.removing.swap(true, Ordering::SeqCst) {
            // Someone else is removing it; wait for them.
            let deadline = Instant::now() + Duration::from_secs(60);
            while self.containers.lock().unwrap().contains_key(id) && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            return Ok(());
        }
        tracing::debug!(container = %id, "removing");
        kill_container(&c);
        // An init still waiting for its start pipe exits once the pipe closes.
        c.init.pending.lock().await.take();
        let procs: Vec<Arc<Proc>> = std::iter::once(c.init.clone())
            .chain(c.execs.lock().unwrap().values().cloned())
            .collect();
        for p in &procs {
            if p.pending.lock().await.take().is_some() && p.pid() <= 0 {
                // Never started: its waiters learn that it never ran.
                p.exit.send_replace(Some(Exit {
                    status: 255,
                    at_ns: crate::reaper::now_ns(),
                }));
            }
            if p.pid() > 0
                && tokio::time::timeout(Duration::from_secs(10), p.wait())
                    .await
                    .is_err()
            {
                tracing::warn!(container = %id, exec = %p.exec_id, "process did not exit after SIGKILL");
            }
            p.stdin.lock().await.take();
            tracing::debug!(container = %id, exec = %p.exec_id, "process gone");
        }
        let mut cleanup = Cleanup {
            state_dir: Some(c.state_dir.clone()),
            cgroup: c.cgroup.clone(),
        };
        let res = cleanup_now(&c, &mut cleanup).await;
        self.containers.lock().unwrap().remove(id);
        tracing::debug!(container = %id, ?res, "removed");
        res
    }

    /// Kills every container and cleans up; for Shutdown.
    pub async fn remove_all(&self) {
        let ids: Vec<String> = self.containers.lock().unwrap().keys().cloned().collect();
        for id in ids {
            if let Err(e) = self.remove(&id).await {
                tracing::warn!("removing {id}: {e}");
            }
        }
    }

    pub fn is_pid1(&self) -> bool {
        self.cfg.is_pid1
    }
}

fn kill_container(c: &Container) {
    if let Some(cg) = &c.cgroup {
        let _ = cg.signal_all(libc::SIGKILL);
    }
    let init_pid = c.init.pid();
    if init_pid > 0 && c.init.exited().is_none() {
        let _ = sys::kill(init_pid, libc::SIGKILL);
    }
    for p in c.execs.lock().unwrap().values() {
        if p.pid() > 0 && p.exited().is_none() {
            let _ = sys::kill(p.pid(), libc::SIGKILL);
        }
    }
}

/// What to undo when creation fails or the container is removed.
struct Cleanup {
    state_dir: Option<PathBuf>,
    cgroup: Option<Cgroup>,
}

impl Cleanup {
    fn disarm(&mut self) {
        self.state_dir = None;
        self.cgroup = None;
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        // Synchronous best effort for early error returns.
        if let Some(sd) = self.state_dir.take() {
            unmount_all_under(&sd);
            let _ = std::fs::remove_dir_all(&sd);
        }
        if let Some(cg) = self.cgroup.take() {
            let _ = cg.signal_all(libc::SIGKILL);
            let _ = std::fs::remove_dir(&cg.path);
        }
    }
}

async fn cleanup_now(c: &Container, cl: &mut Cleanup) -> R<()> {
    let mut errs = Vec::new();
    if let Some(cg) = cl.cgroup.take() {
        if let Err(e) = cg.remove(Duration::from_secs(10)).await {
            errs.push(format!("removing cgroup {}: {e}", cg.path.display()));
        }
    }
    if let Some(sd) = cl.state_dir.take() {
        unmount_all_under(&sd);
        if let Err(e) = std::fs::remove_dir_all(&sd) {
            if e.kind() != io::ErrorKind::NotFound {
                errs.push(format!("removing {}: {e}", sd.display()));
            }
        }
    }
    let _ = c;
    if errs.is_empty() {
        Ok(())
    } else {
        Err(Status::internal(errs.join("; ")))
    }
}

/// Resolves (and for block devices, mounts) the rootfs. Blocking.
fn prepare_rootfs(r: &BlockRootfs, state_dir: &Path) -> R<PathBuf> {
    let base = if let Some(p) = r.serial.strip_prefix(PATH_ROOTFS_PREFIX) {
        PathBuf::from(p)
    } else {
        if r.serial.is_empty() {
            return Err(Status::invalid_argument("rootfs.serial is empty"));
        }
        let dev = find_block_by_serial(&r.serial, Duration::from_secs(5))
            .map_err(|e| Status::not_found(e.to_string()))?;
        let mnt = state_dir.join("rootfs-dev");
        std::fs::create_dir_all(&mnt).map_err(|e| internal("creating mount point", e))?;
        let fstype = if r.fstype.is_empty() {
            "ext4"
        } else {
            r.fstype.as_str()
        };
        let mut flags = 0;
        if r.read_only {
            flags |= libc::MS_RDONLY;
        }
        sys::mount(dev.to_str(), &mnt, Some(fstype), flags, Some(&r.options)).map_err(|e| {
            Status::failed_precondition(format!("mounting {} ({fstype}): {e}", dev.display()))
        })?;
        mnt
    };
    let root = if r.subpath.is_empty() {
        base
    } else {
        crate::container::secure_join(&base, Path::new(&r.subpath))
            .map_err(|e| internal("rootfs subpath", e))?
    };
    if !root.is_dir() {
        return Err(Status::invalid_argument(format!(
            "rootfs {} is not a directory",
            root.display()
        )));
    }
    Ok(root)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        assert!(validate_id("id", "abc-1_2.3").is_ok());
        assert!(validate_id("id", "").is_err());
        assert!(validate_id("id", "../x").is_err());
        assert!(validate_id("id", "a/b").is_err());
        assert!(validate_id("id", ".hidden").is_err());
        assert!(validate_id("id", &"x".repeat(129)).is_err());
    }

    #[test]
    fn mountinfo_unescape() {
        assert_eq!(unescape_mount_path("/a\\040b"), "/a b");
        assert_eq!(unescape_mount_path("/plain"), "/plain");
        assert_eq!(unescape_mount_path("/end\\04"), "/end\\04");
    }
}
