//! Unpacking an imported image from the client: each layer applied by the diff
//! service onto a snapshot prepared on its parent, committed under its chain id.

use std::collections::HashMap;

use anyhow::{anyhow, bail, Result};
use containerd_client::services::v1 as api;
use containerd_client::services::v1::diff_client::DiffClient;
use containerd_client::services::v1::snapshots as snap;
use containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient;
use containerd_client::tonic::Code;
use ember_images::Descriptor;

use super::images::{platform_manifest, uuid_like, wire_desc, Ctx};
use super::rpc;

pub(super) async fn unpack(
    ctx: &Ctx,
    target: &Descriptor,
    snapshotter: &str,
    bar: &indicatif::ProgressBar,
) -> Result<()> {
    let (_, manifest) = platform_manifest(ctx, target).await?;
    let config = ember_images::parse_config(&ctx.read_blob(&manifest.config.digest).await?)?;
    let diff_ids = &config.rootfs.diff_ids;
    if diff_ids.len() != manifest.layers.len() {
        bail!(
            "the config lists {} layers, the manifest {}",
            diff_ids.len(),
            manifest.layers.len()
        );
    }
    let chain = ember_images::chain_ids(diff_ids);
    let mut sn = SnapshotsClient::new(ctx.channel.clone());
    let mut diff = DiffClient::new(ctx.channel.clone());
    for (i, layer) in manifest.layers.iter().enumerate() {
        let chain_id = &chain[i];
        let exists = sn
            .stat(ctx.req(snap::StatSnapshotRequest {
                snapshotter: snapshotter.into(),
                key: chain_id.clone(),
            }))
            .await
            .is_ok();
        if exists {
            continue;
        }
        bar.set_message(format!("unpacking {}", layer.digest));
        let key = format!("extract-{} {chain_id}", uuid_like());
        let parent = if i == 0 {
            String::new()
        } else {
            chain[i - 1].clone()
        };
        let labels: HashMap<String, String> =
            [("containerd.io/snapshot.ref".to_string(), chain_id.clone())].into();
        let mounts = sn
            .prepare(ctx.req(snap::PrepareSnapshotRequest {
                snapshotter: snapshotter.into(),
                key: key.clone(),
                parent,
                labels: labels.clone(),
            }))
            .await
            .map_err(rpc)?
            .into_inner()
            .mounts;
        let applied = diff
            .apply(ctx.req(api::ApplyRequest {
                diff: Some(wire_desc(layer)),
                mounts,
                ..Default::default()
            }))
            .await;
        let result = match applied {
            Ok(r) => {
                let got = r.into_inner().applied.map(|d| d.digest).unwrap_or_default();
                if got != diff_ids[i] {
                    Err(anyhow!(
                        "layer {} has diff id {got}, the config says {}",
                        layer.digest,
                        diff_ids[i]
                    ))
                } else {
                    sn.commit(ctx.req(snap::CommitSnapshotRequest {
                        snapshotter: snapshotter.into(),
                        name: chain_id.clone(),
                        key: key.clone(),
                        labels,
                    }))
                    .await
                    .map(|_| ())
                    .or_else(|s| {
                        if s.code() == Code::AlreadyExists {
                            Ok(())
                        } else {
                            Err(rpc(s))
                        }
                    })
                }
            }
            Err(s) => Err(anyhow!("applying layer {}: {}", layer.digest, s.message())),
        };
        if let Err(e) = result {
            let _ = sn
                .remove(ctx.req(snap::RemoveSnapshotRequest {
                    snapshotter: snapshotter.into(),
                    key,
                }))
                .await;
            return Err(e);
        }
        ctx.label(
            &layer.digest,
            [(
                "containerd.io/uncompressed".to_string(),
                diff_ids[i].clone(),
            )]
            .into(),
        )
        .await?;
    }
    if let Some(top) = chain.last() {
        ctx.label(
            &manifest.config.digest,
            [(
                format!("containerd.io/gc.ref.snapshot.{snapshotter}"),
                top.clone(),
            )]
            .into(),
        )
        .await?;
    }
    Ok(())
}
