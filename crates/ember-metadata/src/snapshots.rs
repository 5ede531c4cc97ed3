//! A snapshotter as namespaces see it.
//!
//! Each namespace has its own key space per snapshotter. A snapshot `key` of
//! namespace `ns` is known to the snapshotter as `<ns>/<seq>/<key>`, with `seq` a
//! database-wide counter, so that keys never collide across namespaces nor with
//! earlier snapshots of the same name. The metadata record holds the namespace's
//! view (name, parent, labels, times); the snapshotter holds the files.
//!
//! Changes go to the snapshotter first and to the database second; when the second
//! step fails the first is undone. Snapshots the database no longer knows (after a
//! crash between the steps) are removed by [`SnapshotStore::cleanup`].

use std::sync::Arc;
use std::time::SystemTime;

use ember_snapshot::{Mount, Snapshotter, Usage, INHERITED_LABEL_PREFIX};
use tokio::sync::RwLock;

use crate::db::{Db, Reader};
use crate::filters::Filter;
use crate::identifiers::validate_labels;
use crate::{Error, Labels, LeaseResource, Result, Snapshot, SnapshotKind};

/// One snapshotter with the namespaced view on top.
#[derive(Clone)]
pub struct SnapshotStore {
    name: String,
    db: Db,
    inner: Arc<dyn Snapshotter>,
    /// Held shared by every change, exclusively by cleanup.
    gate: Arc<RwLock<()>>,
}

fn inherited(labels: &Labels) -> Labels {
    labels
        .iter()
        .filter(|(k, _)| k.starts_with(INHERITED_LABEL_PREFIX))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

fn check_key(what: &str, key: &str) -> Result<()> {
    if key.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "snapshot {what} must not be empty"
        )));
    }
    if key.contains('\0') {
        return Err(Error::InvalidArgument(format!(
            "snapshot {what} must not contain NUL"
        )));
    }
    Ok(())
}

impl SnapshotStore {
    pub fn new(name: impl Into<String>, db: Db, inner: Arc<dyn Snapshotter>) -> Self {
        SnapshotStore {
            name: name.into(),
            db,
            inner,
            gate: Arc::new(RwLock::new(())),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Holds off every change of this snapshotter while the guard lives (garbage
    /// collection removes records under it).
    pub async fn exclusive(&self) -> tokio::sync::OwnedRwLockWriteGuard<()> {
        self.gate.clone().write_owned().await
    }

    pub fn backing(&self) -> &Arc<dyn Snapshotter> {
        &self.inner
    }

    fn lease_resource(&self, key: &str) -> LeaseResource {
        LeaseResource {
            id: key.to_string(),
            kind: format!("snapshots/{}", self.name),
        }
    }

    async fn create(
        &self,
        ns: &str,
        key: &str,
        parent: &str,
        labels: Labels,
        kind: SnapshotKind,
        lease: Option<&str>,
    ) -> Result<Vec<Mount>> {
        check_key("key", key)?;
        validate_labels(&labels)?;
        let _gate = self.gate.read().await;
        let (seq, parent_backing) = self.db.update(|tx| {
            if let Some(lease) = lease {
                tx.get_lease(ns, lease)?;
            }
            if tx.get_snapshot(ns, &self.name, key).is_ok() {
                return Err(Error::AlreadyExists(format!("snapshot {key:?}")));
            }
            let parent_backing = if parent.is_empty() {
                String::new()
            } else {
                let p = tx.get_snapshot(ns, &self.name, parent).map_err(|_| {
                    Error::NotFound(format!("parent snapshot {parent:?} does not exist"))
                })?;
                if p.kind != SnapshotKind::Committed {
                    return Err(Error::InvalidArgument(format!(
                        "parent {parent:?} is not a committed snapshot"
                    )));
                }
                p.backing
            };
            Ok((tx.next_seq("snapshot")?, parent_backing))
        })?;
        let backing = format!("{ns}/{seq}/{key}");
        let inherited = inherited(&labels);
        let mounts = match kind {
            SnapshotKind::View => {
                self.inner
                    .view(&backing, &parent_backing, inherited)
                    .await?
            }
            _ => {
                self.inner
                    .prepare(&backing, &parent_backing, inherited)
                    .await?
            }
        };
        let now = SystemTime::now();
        let record = Snapshot {
            snapshotter: self.name.clone(),
            name: key.to_string(),
            backing: backing.clone(),
            parent: parent.to_string(),
            kind,
            labels,
            created_at: now,
            updated_at: now,
        };
        let stored = self.db.update(|tx| {
            if tx.get_snapshot(ns, &self.name, key).is_ok() {
                return Err(Error::AlreadyExists(format!("snapshot {key:?}")));
            }
            // A lease deleted since the first check no longer holds anything.
            if let Some(lease) = lease.filter(|l| tx.get_lease(ns, l).is_ok()) {
                tx.add_lease_resource(ns, lease, &self.lease_resource(key))?;
            }
            tx.put_snapshot(ns, &record)
        });
        if let Err(e) = stored {
            if let Err(e) = self.inner.remove(&backing).await {
                tracing::warn!(%backing, error = %e, "undoing a snapshot");
            }
            return Err(e);
        }
        Ok(mounts)
    }

    pub async fn prepare(
        &self,
        ns: &str,
        key: &str,
        parent: &str,
        labels: Labels,
        lease: Option<&str>,
    ) -> Result<Vec<Mount>> {
        self.create(ns, key, parent, labels, SnapshotKind::Active, lease)
            .await
    }

    pub async fn view(
        &self,
        ns: &str,
        key: &str,
        parent: &str,
        labels: Labels,
        lease: Option<&str>,
    ) -> Result<Vec<Mount>> {
        self.create(ns, key, parent, labels, SnapshotKind::View, lease)
            .await
    }

    pub async fn mounts(&self, ns: &str, key: &str) -> Result<Vec<Mount>> {
        check_key("key", key)?;
        let s = self.db.view(|tx| tx.get_snapshot(ns, &self.name, key))?;
        Ok(self.inner.mounts(&s.backing).await?)
    }

    pub async fn commit(
        &self,
        ns: &str,
        name: &str,
        key: &str,
        labels: Labels,
        lease: Option<&str>,
    ) -> Result<()> {
        check_key("name", name)?;
        check_key("key", key)?;
        validate_labels(&labels)?;
        let _gate = self.gate.read().await;
        let (active, seq) = self.db.update(|tx| {
            if let Some(lease) = lease {
                tx.get_lease(ns, lease)?;
            }
            if tx.get_snapshot(ns, &self.name, name).is_ok() {
                return Err(Error::AlreadyExists(format!("snapshot {name:?}")));
            }
            let s = tx.get_snapshot(ns, &self.name, key)?;
            if s.kind != SnapshotKind::Active {
                return Err(Error::FailedPrecondition(format!(
                    "snapshot {key:?} is not active"
                )));
            }
            Ok((s, tx.next_seq("snapshot")?))
        })?;
        let backing = format!("{ns}/{seq}/{name}");
        self.inner
            .commit(&backing, &active.backing, inherited(&labels))
            .await?;
        let now = SystemTime::now();
        let record = Snapshot {
            snapshotter: self.name.clone(),
            name: name.to_string(),
            backing: backing.clone(),
            parent: active.parent.clone(),
            kind: SnapshotKind::Committed,
            labels,
            created_at: now,
            updated_at: now,
        };
        self.db.update(|tx| {
            if tx.get_snapshot(ns, &self.name, name).is_ok() {
                return Err(Error::AlreadyExists(format!("snapshot {name:?}")));
            }
            tx.delete_snapshot(ns, &self.name, key)?;
            // A lease deleted since the first check no longer holds anything.
            if let Some(lease) = lease.filter(|l| tx.get_lease(ns, l).is_ok()) {
                tx.add_lease_resource(ns, lease, &self.lease_resource(name))?;
            }
            tx.put_snapshot(ns, &record)
        })
        .inspect_err(|e| {
            tracing::error!(%backing, error = %e, "snapshot committed but not recorded; cleanup removes it");
        })
    }

    pub async fn remove(&self, ns: &str, key: &str) -> Result<()> {
        check_key("key", key)?;
        let _gate = self.gate.read().await;
        let s = self.db.update(|tx| {
            let s = tx.get_snapshot(ns, &self.name, key)?;
            if tx.snapshot_has_children(ns, &self.name, key)? {
                return Err(Error::FailedPrecondition(format!(
                    "cannot remove snapshot {key:?} with a child"
                )));
            }
            tx.delete_snapshot(ns, &self.name, key)?;
            Ok(s)
        })?;
        if let Err(e) = self.inner.remove(&s.backing).await {
            tracing::warn!(backing = %s.backing, error = %e, "removing a snapshot; cleanup retries");
        }
        Ok(())
    }

    pub async fn stat(&self, ns: &str, key: &str) -> Result<Snapshot> {
        check_key("key", key)?;
        self.db.view(|tx| tx.get_snapshot(ns, &self.name, key))
    }

    /// Updates labels (`labels`, `labels.KEY`; no paths: replace all).
    pub async fn update(
        &self,
        ns: &str,
        name: &str,
        labels: &Labels,
        fieldpaths: &[String],
    ) -> Result<Snapshot> {
        check_key("key", name)?;
        self.db.update(|tx| {
            let mut s = tx.get_snapshot(ns, &self.name, name)?;
            crate::db::update_labels(
                &mut s.labels,
                labels,
                fieldpaths,
                &format!("snapshot {name:?}"),
            )?;
            s.updated_at = SystemTime::now();
            tx.put_snapshot(ns, &s)?;
            Ok(s)
        })
    }

    pub async fn list(&self, ns: &str, filter: &Filter) -> Result<Vec<Snapshot>> {
        self.db.view(|tx| tx.list_snapshots(ns, &self.name, filter))
    }

    pub async fn usage(&self, ns: &str, key: &str) -> Result<Usage> {
        check_key("key", key)?;
        let s = self.db.view(|tx| tx.get_snapshot(ns, &self.name, key))?;
        Ok(self.inner.usage(&s.backing).await?)
    }

    /// Removes snapshots the snapshotter holds that no namespace refers to
    /// (children before parents), then lets the snapshotter clean up its own
    /// leftovers.
    pub async fn cleanup(&self) -> Result<usize> {
        let _gate = self.gate.write().await;
        let known: std::collections::HashSet<String> = self
            .db
            .view(|tx| tx.all_snapshots(&self.name))?
            .into_iter()
            .map(|s| s.backing)
            .collect();
        let mut removed = 0;
        loop {
            let all = self.inner.walk().await?;
            let parents: std::collections::HashSet<&str> =
                all.iter().map(|i| i.parent.as_str()).collect();
            let orphans: Vec<&str> = all
                .iter()
                .map(|i| i.name.as_str())
                .filter(|n| !known.contains(*n) && !parents.contains(n))
                .collect();
            if orphans.is_empty() {
                break;
            }
            for o in orphans {
                tracing::info!(snapshotter = %self.name, backing = %o, "removing unreferenced snapshot");
                self.inner.remove(o).await?;
                removed += 1;
            }
        }
        match self.inner.cleanup().await {
            Ok(()) | Err(ember_snapshot::Error::Unimplemented(_)) => {}
            Err(e) => return Err(e.into()),
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ember_snapshot::local::{Driver, LocalSnapshotter};

    #[tokio::test]
    async fn namespaced_snapshots() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path().join("meta.redb")).unwrap();
        let backing = LocalSnapshotter::open(dir.path().join("native"), Driver::Native).unwrap();
        let s = SnapshotStore::new("native", db.clone(), Arc::new(backing.clone()));
        s.prepare("a", "k", "", Labels::new(), None).await.unwrap();
        s.prepare("b", "k", "", Labels::new(), None).await.unwrap();
        assert!(matches!(
            s.prepare("a", "k", "", Labels::new(), None).await,
            Err(Error::AlreadyExists(_))
        ));
        s.commit("a", "base", "k", Labels::new(), None)
            .await
            .unwrap();
        assert!(matches!(s.stat("a", "k").await, Err(Error::NotFound(_))));
        assert_eq!(s.stat("b", "k").await.unwrap().kind, SnapshotKind::Active);
        s.prepare("a", "child", "base", Labels::new(), None)
            .await
            .unwrap();
        assert!(matches!(
            s.prepare("b", "x", "base", Labels::new(), None).await,
            Err(Error::NotFound(_))
        ));
        assert!(matches!(
            s.remove("a", "base").await,
            Err(Error::FailedPrecondition(_))
        ));
        let f = Filter::parse_all(&["kind==Committed"]).unwrap();
        assert_eq!(s.list("a", &f).await.unwrap().len(), 1);
        let mut l = Labels::new();
        l.insert("x".into(), "y".into());
        let u = s
            .update("a", "base", &l, &["labels.x".into()])
            .await
            .unwrap();
        assert_eq!(u.labels, l);
        assert!(s.update("a", "base", &l, &["kind".into()]).await.is_err());
        assert!(matches!(
            db.update(|tx| tx.delete_namespace("a")),
            Err(Error::FailedPrecondition(_))
        ));
        // An orphan in the backing snapshotter goes at cleanup.
        backing
            .prepare("a/999/orphan", "", Labels::new())
            .await
            .unwrap();
        assert_eq!(s.cleanup().await.unwrap(), 1);
        assert_eq!(backing.walk().await.unwrap().len(), 3);
        s.remove("a", "child").await.unwrap();
        s.remove("a", "base").await.unwrap();
        s.remove("b", "k").await.unwrap();
        assert!(backing.walk().await.unwrap().is_empty());
    }
}
