//! Removing containers and undoing what their creation did.

use std::io;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ember_ttrpc::Status;

use super::block::release_loop;
use super::process::Proc;
use super::rootfs::unmount_all_under;
use super::{Agent, Container, R};
use crate::cgroup::Cgroup;
use crate::reaper::Exit;
use crate::sys;

impl Agent {
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
            loop_numbers: c.rootfs_loops.clone(),
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
pub(super) struct Cleanup {
    pub(super) state_dir: Option<PathBuf>,
    pub(super) cgroup: Option<Cgroup>,
    /// The loop devices under the rootfs mounts, deleted once unmounted.
    pub(super) loop_numbers: Vec<u32>,
}

impl Cleanup {
    pub(super) fn disarm(&mut self) {
        self.state_dir = None;
        self.cgroup = None;
        self.loop_numbers.clear();
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        // Synchronous best effort for early error returns.
        if let Some(sd) = self.state_dir.take() {
            unmount_all_under(&sd);
            let _ = std::fs::remove_dir_all(&sd);
        }
        for n in std::mem::take(&mut self.loop_numbers) {
            release_loop(Some(n));
        }
        if let Some(cg) = self.cgroup.take() {
            let _ = cg.signal_all(libc::SIGKILL);
            let _ = std::fs::remove_dir(&cg.path);
        }
    }
}

pub(super) async fn cleanup_now(c: &Container, cl: &mut Cleanup) -> R<()> {
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
    let loops = std::mem::take(&mut cl.loop_numbers);
    if !loops.is_empty() {
        // The container's mount namespace is gone with its processes; the kernel
        // unbinds the devices (autoclear) once the last reference to a mount drops.
        let _ = tokio::task::spawn_blocking(move || {
            for n in loops {
                release_loop(Some(n));
            }
        })
        .await;
    }
    let _ = c;
    if errs.is_empty() {
        Ok(())
    } else {
        Err(Status::internal(errs.join("; ")))
    }
}
