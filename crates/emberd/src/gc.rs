//! When garbage collection runs: shortly after deletions of images, containers,
//! leases and content (several deletions in a row make one run), when a request
//! asks for it (`sync`), and when leases expire. Runs never overlap.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ember_metadata::content::ContentStore;
use ember_metadata::gc::{collect, Stats};
use ember_metadata::snapshots::SnapshotStore;
use ember_metadata::{Db, Lease, LABEL_GC_EXPIRE};
use tokio::sync::{Mutex, Notify};

/// How long after a deletion a collection starts.
const DEBOUNCE: Duration = Duration::from_millis(100);

#[derive(Clone)]
pub struct Gc {
    inner: Arc<Inner>,
}

struct Inner {
    db: Db,
    content: ContentStore,
    snapshotters: BTreeMap<String, SnapshotStore>,
    running: Mutex<()>,
    wake: Notify,
}

fn expired(l: &Lease) -> bool {
    l.labels
        .get(LABEL_GC_EXPIRE)
        .and_then(|v| crate::services::leases::parse_rfc3339(v))
        .is_some_and(|t| t <= SystemTime::now())
}

impl Gc {
    /// Starts the scheduler (needs a tokio runtime).
    pub fn start(
        db: Db,
        content: ContentStore,
        snapshotters: BTreeMap<String, SnapshotStore>,
    ) -> Gc {
        let gc = Gc {
            inner: Arc::new(Inner {
                db,
                content,
                snapshotters,
                running: Mutex::new(()),
                wake: Notify::new(),
            }),
        };
        let this = gc.clone();
        tokio::spawn(async move {
            loop {
                this.inner.wake.notified().await;
                tokio::time::sleep(DEBOUNCE).await;
                if let Err(e) = this.run().await {
                    tracing::warn!(error = %e, "garbage collection");
                }
            }
        });
        gc
    }

    /// Asks for a collection soon.
    pub fn schedule(&self) {
        self.inner.wake.notify_one();
    }

    /// Collects now (after a running collection ends).
    pub async fn run(&self) -> ember_metadata::Result<Stats> {
        let _one = self.inner.running.lock().await;
        let started = std::time::Instant::now();
        let stats = collect(
            &self.inner.db,
            &self.inner.content,
            &self.inner.snapshotters,
            expired,
        )
        .await?;
        tracing::debug!(?stats, elapsed = ?started.elapsed(), "garbage collected");
        Ok(stats)
    }
}
