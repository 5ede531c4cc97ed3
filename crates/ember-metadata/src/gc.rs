//! Garbage collection, in containerd's model: mark from the roots, sweep the rest.
//!
//! Roots, in every namespace:
//! * images (their target content), containers (their snapshot);
//! * leases that have not expired (everything they hold); expired leases
//!   (`containerd.io/gc.expire` in the past) are deleted first;
//! * content and snapshots labelled `containerd.io/gc.root`.
//!
//! References: labels `containerd.io/gc.ref.content` / `containerd.io/gc.ref.content.*`
//! name a digest, `containerd.io/gc.ref.snapshot.<snapshotter>` (and `.../*`) a
//! snapshot key, on any object; a snapshot references its parent. A lease labelled
//! `containerd.io/gc.flat` keeps only what it holds, not what that references.
//!
//! Marking and the removal of records happen in one write transaction, so nothing
//! can start referencing a record while it is swept. Blobs no namespace holds any
//! more are deleted inside that transaction too; snapshots are removed from their
//! snapshotters after it (through [`SnapshotStore::cleanup`], which removes every
//! backing snapshot the database no longer knows).

use std::collections::{BTreeMap, HashSet};

use crate::content::ContentStore;
use crate::db::{Reader, WriteTx, CONTAINERS, CONTENT, IMAGES, SNAPSHOTS};
use crate::snapshots::SnapshotStore;
use crate::{
    Container, ContentInfo, Db, Image, Labels, Lease, Result, Snapshot, LABEL_GC_FLAT,
    LABEL_GC_REF_CONTENT, LABEL_GC_REF_SNAPSHOT, LABEL_GC_ROOT,
};

/// What one collection removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Stats {
    pub leases: usize,
    pub content: usize,
    pub blobs: usize,
    pub snapshots: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Node {
    Content(String, String),
    Snapshot(String, String, String),
}

fn ns_of(key: &str) -> String {
    key.split('\0').next().unwrap_or_default().to_string()
}

/// The references in an object's labels.
fn label_refs(ns: &str, labels: &Labels, out: &mut Vec<Node>) {
    for (k, v) in labels {
        if k == LABEL_GC_REF_CONTENT
            || k.strip_prefix(LABEL_GC_REF_CONTENT)
                .is_some_and(|r| r.starts_with('.'))
        {
            out.push(Node::Content(ns.to_string(), v.clone()));
        } else if let Some(rest) = k.strip_prefix(LABEL_GC_REF_SNAPSHOT) {
            let snapshotter = rest.split('/').next().unwrap_or_default();
            if !snapshotter.is_empty() {
                out.push(Node::Snapshot(
                    ns.to_string(),
                    snapshotter.to_string(),
                    v.clone(),
                ));
            }
        }
    }
}

/// Marks everything reachable from the roots.
fn mark(
    tx: &WriteTx,
    expired: &dyn Fn(&Lease) -> bool,
    stats: &mut Stats,
) -> Result<HashSet<Node>> {
    let mut queue: Vec<Node> = Vec::new();
    let mut marked: HashSet<Node> = HashSet::new();
    for (k, v) in tx.scan_raw(IMAGES, "")? {
        let ns = ns_of(&k);
        let i: Image =
            serde_json::from_slice(&v).map_err(|e| crate::Error::Internal(e.to_string()))?;
        queue.push(Node::Content(ns.clone(), i.target.digest.clone()));
        label_refs(&ns, &i.labels, &mut queue);
    }
    for (k, v) in tx.scan_raw(CONTAINERS, "")? {
        let ns = ns_of(&k);
        let c: Container =
            serde_json::from_slice(&v).map_err(|e| crate::Error::Internal(e.to_string()))?;
        if !c.snapshot_key.is_empty() {
            queue.push(Node::Snapshot(
                ns.clone(),
                c.snapshotter.clone(),
                c.snapshot_key.clone(),
            ));
        }
        label_refs(&ns, &c.labels, &mut queue);
    }
    for (ns, lease) in tx.all_leases()? {
        if expired(&lease) {
            tracing::info!(namespace = %ns, lease = %lease.id, "lease expired");
            tx.delete_lease(&ns, &lease.id)?;
            stats.leases += 1;
            continue;
        }
        let flat = lease.labels.contains_key(LABEL_GC_FLAT);
        for r in tx.list_lease_resources(&ns, &lease.id)? {
            let node = if r.kind == "content" {
                Node::Content(ns.clone(), r.id.clone())
            } else if let Some(s) = r.kind.strip_prefix("snapshots/") {
                Node::Snapshot(ns.clone(), s.to_string(), r.id.clone())
            } else {
                continue;
            };
            if flat {
                marked.insert(node);
            } else {
                queue.push(node);
            }
        }
    }
    for (k, v) in tx.scan_raw(CONTENT, "")? {
        let c: ContentInfo =
            serde_json::from_slice(&v).map_err(|e| crate::Error::Internal(e.to_string()))?;
        if c.labels.contains_key(LABEL_GC_ROOT) {
            queue.push(Node::Content(ns_of(&k), c.digest));
        }
    }
    for (k, v) in tx.scan_raw(SNAPSHOTS, "")? {
        let s: Snapshot =
            serde_json::from_slice(&v).map_err(|e| crate::Error::Internal(e.to_string()))?;
        if s.labels.contains_key(LABEL_GC_ROOT) {
            queue.push(Node::Snapshot(ns_of(&k), s.snapshotter, s.name));
        }
    }
    while let Some(n) = queue.pop() {
        if !marked.insert(n.clone()) {
            continue;
        }
        match &n {
            Node::Content(ns, d) => {
                if let Ok(c) = tx.get_content(ns, d) {
                    label_refs(ns, &c.labels, &mut queue);
                }
            }
            Node::Snapshot(ns, sn, key) => {
                if let Ok(s) = tx.get_snapshot(ns, sn, key) {
                    if !s.parent.is_empty() {
                        queue.push(Node::Snapshot(ns.clone(), sn.clone(), s.parent.clone()));
                    }
                    label_refs(ns, &s.labels, &mut queue);
                }
            }
        }
    }
    Ok(marked)
}

/// Runs one collection over the whole database.
pub async fn collect(
    db: &Db,
    content: &ContentStore,
    snapshotters: &BTreeMap<String, SnapshotStore>,
    expired: impl Fn(&Lease) -> bool + Send + 'static,
) -> Result<Stats> {
    let mut removed_from: Vec<SnapshotStore> = Vec::new();
    let stats = {
        // No snapshot is half created while records go.
        let mut gates = Vec::new();
        for s in snapshotters.values() {
            gates.push(s.exclusive().await);
        }
        let db = db.clone();
        let store = content.backing().clone();
        let gate = content.gate();
        let (stats, touched) = tokio::task::spawn_blocking(move || {
            // No blob is between its file and its record while blobs go.
            let _gate = gate.write().unwrap_or_else(|e| e.into_inner());
            db.update(|tx| {
                let mut stats = Stats::default();
                let marked = mark(tx, &expired, &mut stats)?;
                let mut candidates = Vec::new();
                for (k, v) in tx.scan_raw(CONTENT, "")? {
                    let ns = ns_of(&k);
                    let c: ContentInfo = serde_json::from_slice(&v)
                        .map_err(|e| crate::Error::Internal(e.to_string()))?;
                    if !marked.contains(&Node::Content(ns.clone(), c.digest.clone())) {
                        tx.delete_content(&ns, &c.digest)?;
                        stats.content += 1;
                        candidates.push(c.digest);
                    }
                }
                let mut touched = HashSet::new();
                for (k, v) in tx.scan_raw(SNAPSHOTS, "")? {
                    let ns = ns_of(&k);
                    let s: Snapshot = serde_json::from_slice(&v)
                        .map_err(|e| crate::Error::Internal(e.to_string()))?;
                    if !marked.contains(&Node::Snapshot(ns.clone(), s.snapshotter.clone(), s.name.clone())) {
                        tracing::debug!(namespace = %ns, snapshotter = %s.snapshotter, key = %s.name, "collecting snapshot");
                        tx.delete_snapshot(&ns, &s.snapshotter, &s.name)?;
                        stats.snapshots += 1;
                        touched.insert(s.snapshotter);
                    }
                }
                // Blobs nobody holds, including ones left by a crash.
                let mut held: HashSet<String> = HashSet::new();
                for (k, _) in tx.scan_raw(crate::db::BLOB_REFS, "")? {
                    held.insert(ns_of(&k));
                }
                let mut all: Vec<String> = candidates;
                if let Ok(infos) = store.walk() {
                    all.extend(infos.into_iter().map(|i| i.digest));
                }
                all.sort();
                all.dedup();
                for d in all {
                    if !held.contains(&d) {
                        match store.delete(&d) {
                            Ok(()) => stats.blobs += 1,
                            Err(ember_content::Error::NotFound(_)) => {}
                            Err(e) => tracing::warn!(digest = %d, error = %e, "removing blob"),
                        }
                    }
                }
                Ok((stats, touched))
            })
        })
        .await
        .map_err(|e| crate::Error::Internal(format!("gc task: {e}")))??;
        drop(gates);
        for t in touched {
            if let Some(s) = snapshotters.get(&t) {
                removed_from.push(s.clone());
            }
        }
        stats
    };
    for s in removed_from {
        if let Err(e) = s.cleanup().await {
            tracing::warn!(snapshotter = %s.name(), error = %e, "removing collected snapshots");
        }
    }
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Descriptor, Error, LeaseResource};
    use ember_content::{Algorithm, Digest, Store};
    use ember_snapshot::local::{Driver, LocalSnapshotter};
    use ember_snapshot::Snapshotter;
    use std::sync::Arc;
    use std::time::SystemTime;

    fn put(cs: &ContentStore, ns: &str, data: &[u8], labels: &[(&str, &str)]) -> String {
        let d = Digest::of(Algorithm::Sha256, data).to_string();
        let mut w = cs.writer(ns, &d, 0, "", None).unwrap();
        w.write(data).unwrap();
        let l = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        w.commit(0, "", l).unwrap();
        d
    }

    #[tokio::test]
    async fn collects_what_nothing_references() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path().join("meta.redb")).unwrap();
        let cs = ContentStore::new(db.clone(), Store::open(dir.path().join("content")).unwrap());
        let native = LocalSnapshotter::open(dir.path().join("native"), Driver::Native).unwrap();
        let sn = SnapshotStore::new("native", db.clone(), Arc::new(native.clone()));
        let mut sns = BTreeMap::new();
        sns.insert("native".to_string(), sn.clone());

        sn.prepare("ns", "k1", "", Labels::new(), None)
            .await
            .unwrap();
        sn.commit("ns", "layer1", "k1", Labels::new(), None)
            .await
            .unwrap();
        sn.prepare("ns", "k2", "layer1", Labels::new(), None)
            .await
            .unwrap();
        sn.commit("ns", "layer2", "k2", Labels::new(), None)
            .await
            .unwrap();
        sn.prepare("ns", "loose", "", Labels::new(), None)
            .await
            .unwrap();

        let layer = put(&cs, "ns", b"layer", &[]);
        let config = put(
            &cs,
            "ns",
            b"config",
            &[("containerd.io/gc.ref.snapshot.native", "layer2")],
        );
        let manifest = put(
            &cs,
            "ns",
            b"manifest",
            &[
                ("containerd.io/gc.ref.content.config", &config),
                ("containerd.io/gc.ref.content.l.0", &layer),
            ],
        );
        let loose = put(&cs, "ns", b"loose", &[]);
        let rooted = put(&cs, "ns", b"rooted", &[(LABEL_GC_ROOT, "x")]);
        let leased = put(&cs, "ns", b"leased", &[]);
        db.update(|tx| {
            tx.create_image(
                "ns",
                &Image {
                    name: "img".into(),
                    labels: Labels::new(),
                    target: Descriptor {
                        media_type: "application/vnd.oci.image.manifest.v1+json".into(),
                        digest: manifest.clone(),
                        size: 8,
                        annotations: Default::default(),
                    },
                    created_at: SystemTime::now(),
                    updated_at: SystemTime::now(),
                },
            )?;
            tx.create_lease(
                "ns",
                &Lease {
                    id: "l".into(),
                    labels: Labels::new(),
                    created_at: SystemTime::now(),
                },
            )?;
            tx.add_lease_resource(
                "ns",
                "l",
                &LeaseResource {
                    id: leased.clone(),
                    kind: "content".into(),
                },
            )
        })
        .unwrap();
        let never = |_: &Lease| false;
        let s = collect(&db, &cs, &sns, never).await.unwrap();
        assert_eq!((s.content, s.snapshots, s.blobs), (1, 1, 1));
        assert!(!cs.backing().exists(&loose));
        for d in [&layer, &config, &manifest, &rooted, &leased] {
            assert!(cs.backing().exists(d));
        }
        assert_eq!(native.walk().await.unwrap().len(), 2);

        // Without the image and the lease, everything unrooted goes.
        db.update(|tx| {
            tx.delete_image("ns", "img")?;
            tx.delete_lease("ns", "l")
        })
        .unwrap();
        let s = collect(&db, &cs, &sns, never).await.unwrap();
        assert_eq!((s.content, s.snapshots), (4, 2));
        assert!(cs.backing().exists(&rooted));
        assert!(!cs.backing().exists(&manifest));
        assert!(native.walk().await.unwrap().is_empty());
    }

    /// Writing a blob the namespace still holds (unreferenced, as after an image's
    /// removal) under a lease answers `AlreadyExists` and leaves the blob in the
    /// lease, so collection keeps it.
    #[tokio::test]
    async fn a_blob_committed_again_stays_in_the_lease() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path().join("meta.redb")).unwrap();
        let cs = ContentStore::new(db.clone(), Store::open(dir.path().join("content")).unwrap());
        let sns = BTreeMap::new();
        let data = b"layer again";
        let d = put(&cs, "ns", data, &[]);
        db.update(|tx| {
            tx.create_lease(
                "ns",
                &Lease {
                    id: "import".into(),
                    labels: Labels::new(),
                    created_at: SystemTime::now(),
                },
            )
        })
        .unwrap();
        // Unannounced write (the digest is known only at commit).
        let mut w = cs.writer("ns", "again", 0, "", Some("import")).unwrap();
        w.write(data).unwrap();
        assert!(matches!(
            w.commit(0, "", Labels::new()),
            Err(Error::AlreadyExists(_))
        ));
        // Announced write of the same blob.
        assert!(matches!(
            cs.writer("ns", "again2", 0, &d, Some("import")),
            Err(Error::AlreadyExists(_))
        ));
        let held = db
            .view(|tx| tx.list_lease_resources("ns", "import"))
            .unwrap();
        assert!(
            held.iter().any(|r| r.kind == "content" && r.id == d),
            "{held:?}"
        );
        assert!(!held.iter().any(|r| r.kind == "ingests"), "{held:?}");
        let never = |_: &Lease| false;
        collect(&db, &cs, &sns, never).await.unwrap();
        assert!(cs.backing().exists(&d));
        assert!(cs.info("ns", &d).is_ok());
    }
}
