//! OOM kills of containers, as events for the service.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Mutex;

use super::Agent;
use tokio::sync::Notify;

#[derive(Default)]
pub(super) struct OomQueue {
    pub(super) events: Mutex<VecDeque<String>>,
    pub(super) notify: Notify,
}

impl Agent {
    pub(super) fn poll_oom(&self) {
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
}
