//! `ember rm`: task, container, snapshot and kept output of stopped containers.

use std::time::Duration;

use anyhow::{bail, Result};
use containerd_client::services::v1 as api;
use containerd_client::services::v1::snapshots as snap;
use containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient;
use containerd_client::tonic::Code;

use super::{each, is_running, Conn, LOG_DIR_LABEL};
use crate::client::{rpc, ClientOpts};

#[derive(clap::Args, Debug)]
#[command(about = "Remove containers")]
pub struct RmArgs {
    /// Kill running ones first.
    #[arg(short, long)]
    force: bool,
    #[arg(required = true)]
    ids: Vec<String>,
}

/// Deletes the task; its exit status. A missing task is not an error (status 0).
pub async fn delete_task(conn: &Conn, id: &str) -> Result<u32> {
    match conn
        .tasks()
        .delete(conn.req(api::DeleteTaskRequest {
            container_id: id.into(),
        }))
        .await
    {
        Ok(r) => Ok(r.into_inner().exit_status),
        Err(s) if s.code() == Code::NotFound => Ok(0),
        Err(s) => Err(rpc(s)),
    }
}

/// Removes the container's snapshot, if it is there.
pub async fn remove_snapshot(conn: &Conn, snapshotter: &str, key: &str) {
    if key.is_empty() {
        return;
    }
    let mut sn = SnapshotsClient::new(conn.channel.clone());
    let _ = sn
        .remove(conn.req(snap::RemoveSnapshotRequest {
            snapshotter: snapshotter.into(),
            key: key.into(),
        }))
        .await;
}

async fn remove(conn: &Conn, id: &str, force: bool) -> Result<()> {
    let c = conn.container(id).await?;
    if let Some(p) = conn.task(id).await? {
        if is_running(&p) {
            if !force {
                bail!("container {id} is running: stop it first or use `ember rm -f`");
            }
            conn.kill(id, libc::SIGKILL, true).await?;
            let _ = tokio::time::timeout(Duration::from_secs(30), conn.wait(id, "")).await;
        }
        delete_task(conn, id).await?;
    }
    conn.containers()
        .delete(conn.req(api::DeleteContainerRequest { id: id.into() }))
        .await
        .map_err(rpc)?;
    remove_snapshot(conn, &c.snapshotter, &c.snapshot_key).await;
    if let Some(d) = c.labels.get(LOG_DIR_LABEL) {
        let _ = std::fs::remove_dir_all(d);
    }
    Ok(())
}

pub async fn run(opts: &ClientOpts, a: RmArgs) -> Result<i32> {
    let conn = Conn::new(opts).await?;
    each(a.ids, |id| {
        let conn = conn.clone();
        async move { remove(&conn, &id, a.force).await }
    })
    .await
}
