//! Container and process state, and the operations the service exposes.

mod block;
mod create;
mod files;
mod layers;
mod lifecycle;
mod metadata;
mod mounts;
mod oom;
mod process;
mod remove;
mod resources;
mod rootfs;
mod streams;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ember_ttrpc::Status;

use crate::cgroup::{self, Cgroup};
use crate::reaper::{Exit, Reaper};

use oom::OomQueue;
use process::Proc;

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
    /// Where `GuestFile`s (guest paths under `FILES_GUEST_DIR`) are written.
    pub files_dir: PathBuf,
    /// Where the metadata document lives; bind-mounted read-only into every
    /// container at the directory of `METADATA_GUEST_PATH`.
    pub metadata_dir: PathBuf,
    /// Where `ConfigureNetwork` writes the name-service files bound into containers.
    pub network_dir: PathBuf,
}

impl Config {
    /// The guest's own directories (as PID 1).
    pub fn guest_dirs(cgroup_root: Option<PathBuf>, state_dir: PathBuf, is_pid1: bool) -> Self {
        Config {
            cgroup_root,
            state_dir,
            is_pid1,
            files_dir: ember_agent_api::FILES_GUEST_DIR.into(),
            metadata_dir: metadata::guest_dir(),
            network_dir: crate::network::GUEST_DIR.into(),
        }
    }
}

pub struct Container {
    pub id: String,
    cgroup: Option<Cgroup>,
    state_dir: PathBuf,
    /// The loop devices under the rootfs (a pool-drive region, image files, layers).
    rootfs_loops: Vec<u32>,
    init: Arc<Proc>,
    execs: Mutex<HashMap<String, Arc<Proc>>>,
    removing: AtomicBool,
    oom_seen: AtomicU64,
    /// The spec's seccomp filter, for exec processes.
    seccomp: Option<crate::container::seccomp::Filter>,
}

pub struct Agent {
    cfg: Config,
    reaper: Reaper,
    cgroup_parent: Option<PathBuf>,
    containers: Mutex<HashMap<String, Arc<Container>>>,
    creating: Mutex<HashSet<String>>,
    oom: OomQueue,
    /// Filesystems mounted by `MountBlock`, by target.
    block_mounts: tokio::sync::Mutex<HashMap<PathBuf, block::BlockMount>>,
    /// Serialises metadata updates.
    metadata_lock: tokio::sync::Mutex<()>,
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

impl Agent {
    pub fn network_dir(&self) -> &std::path::Path {
        &self.cfg.network_dir
    }

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
            block_mounts: tokio::sync::Mutex::new(HashMap::new()),
            metadata_lock: tokio::sync::Mutex::new(()),
        });
        if let Err(e) = std::fs::create_dir_all(&agent.cfg.metadata_dir) {
            tracing::warn!("creating {}: {e}", agent.cfg.metadata_dir.display());
        }
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

    pub fn is_pid1(&self) -> bool {
        self.cfg.is_pid1
    }
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
}
