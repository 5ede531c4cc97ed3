//! `ember snapshots [ls]`: a snapshotter's snapshots with their kind, parent, the
//! disk they really use (allocated blocks, as the snapshotter counts them) and the
//! containers built on them (a container's own snapshot and every layer below it).

use std::collections::{BTreeMap, BTreeSet};

use anyhow::Result;
use containerd_client::services::v1::containers_client::ContainersClient;
use containerd_client::services::v1::snapshots as api;
use containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient;
use containerd_client::services::v1::ListContainersRequest;
use serde::Serialize;

use super::{human_size, labels_cell, output, rpc, ClientOpts};

#[derive(Serialize)]
struct Row {
    name: String,
    parent: String,
    kind: String,
    /// Allocated bytes of the snapshot's own layer (or writable image).
    size: i64,
    inodes: i64,
    /// Containers whose root filesystem is this snapshot or stands on it.
    containers: Vec<String>,
    labels: BTreeMap<String, String>,
}

fn kind(k: i32) -> String {
    match api::Kind::try_from(k) {
        Ok(api::Kind::View) => "View",
        Ok(api::Kind::Active) => "Active",
        Ok(api::Kind::Committed) => "Committed",
        _ => "Unknown",
    }
    .into()
}

/// Containers by the snapshot they stand on, directly or through descendants.
fn users(
    parents: &BTreeMap<String, String>,
    containers: &[(String, String)],
) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (id, key) in containers {
        let mut cur = key.clone();
        let mut steps = 0;
        while !cur.is_empty() && steps < 4096 {
            out.entry(cur.clone()).or_default().insert(id.clone());
            cur = parents.get(&cur).cloned().unwrap_or_default();
            steps += 1;
        }
    }
    out
}

pub async fn ls(opts: &ClientOpts, snapshotter: &str, filters: Vec<String>) -> Result<()> {
    let channel = opts.channel().await?;
    let mut sc = SnapshotsClient::new(channel.clone());
    let mut stream = sc
        .list(opts.req(api::ListSnapshotsRequest {
            snapshotter: snapshotter.into(),
            filters: filters.clone(),
        }))
        .await
        .map_err(rpc)?
        .into_inner();
    let mut infos = Vec::new();
    while let Some(batch) = stream.message().await.map_err(rpc)? {
        infos.extend(batch.info);
    }
    infos.sort_by(|a, b| a.name.cmp(&b.name));
    // Parents of every snapshot (not only the filtered ones) for the users.
    let mut parents: BTreeMap<String, String> = infos
        .iter()
        .map(|i| (i.name.clone(), i.parent.clone()))
        .collect();
    if !filters.is_empty() {
        let mut all = sc
            .list(opts.req(api::ListSnapshotsRequest {
                snapshotter: snapshotter.into(),
                filters: vec![],
            }))
            .await
            .map_err(rpc)?
            .into_inner();
        while let Some(batch) = all.message().await.map_err(rpc)? {
            parents.extend(batch.info.into_iter().map(|i| (i.name, i.parent)));
        }
    }
    let containers = ContainersClient::new(channel)
        .list(opts.req(ListContainersRequest { filters: vec![] }))
        .await
        .map_err(rpc)?
        .into_inner()
        .containers;
    let on_this: Vec<(String, String)> = containers
        .into_iter()
        .filter(|c| {
            let sn = if c.snapshotter.is_empty() {
                "overlayfs"
            } else {
                c.snapshotter.as_str()
            };
            sn == snapshotter && !c.snapshot_key.is_empty()
        })
        .map(|c| (c.id, c.snapshot_key))
        .collect();
    let used = users(&parents, &on_this);
    let mut rows = Vec::new();
    for i in infos {
        // A snapshot removed between the list and here has no usage: show 0.
        let u = sc
            .usage(opts.req(api::UsageRequest {
                snapshotter: snapshotter.into(),
                key: i.name.clone(),
            }))
            .await
            .map(|r| r.into_inner())
            .unwrap_or_default();
        rows.push(Row {
            containers: used
                .get(&i.name)
                .map(|s| s.iter().cloned().collect())
                .unwrap_or_default(),
            name: i.name,
            parent: i.parent,
            kind: kind(i.kind),
            size: u.size,
            inodes: u.inodes,
            labels: i.labels.into_iter().collect(),
        });
    }
    output(
        opts,
        &rows,
        &["KEY", "PARENT", "KIND", "SIZE", "CONTAINERS", "LABELS"],
        |r| {
            let parent = if r.parent.is_empty() { "-" } else { &r.parent };
            let containers = if r.containers.is_empty() {
                "-".to_string()
            } else {
                r.containers.join(",")
            };
            vec![
                r.name.clone(),
                parent.into(),
                r.kind.clone(),
                human_size(r.size),
                containers,
                labels_cell(&r.labels),
            ]
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn containers_count_for_every_layer_below_them() {
        let parents: BTreeMap<String, String> = [
            ("l1", ""),
            ("l2", "l1"),
            ("c1-snap", "l2"),
            ("c2-snap", "l1"),
        ]
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
        let u = users(
            &parents,
            &[
                ("c1".into(), "c1-snap".into()),
                ("c2".into(), "c2-snap".into()),
            ],
        );
        assert_eq!(u["l1"].len(), 2);
        assert_eq!(u["l2"].iter().collect::<Vec<_>>(), ["c1"]);
        assert_eq!(u["c2-snap"].iter().collect::<Vec<_>>(), ["c2"]);
    }
}
