//! `ember inspect`: a container's record, spec and task state as JSON.

use anyhow::Result;
use serde_json::json;

use super::ps::{command, status};
use super::Conn;
use crate::client::{rfc3339, time_of, ClientOpts};

#[derive(clap::Args, Debug)]
#[command(about = "Show containers as JSON")]
pub struct InspectArgs {
    #[arg(required = true)]
    ids: Vec<String>,
}

async fn one(conn: &Conn, id: &str) -> Result<serde_json::Value> {
    let c = conn.container(id).await?;
    let task = conn.task(id).await?;
    let (state, running, exit_code) = status(&c, task.as_ref());
    let spec = c
        .spec
        .as_ref()
        .and_then(|s| serde_json::from_slice::<serde_json::Value>(&s.value).ok());
    Ok(json!({
        "id": c.id,
        "image": c.image,
        "command": command(&c),
        "runtime": c.runtime.as_ref().map(|r| r.name.clone()).unwrap_or_default(),
        "snapshotter": c.snapshotter,
        "snapshot_key": c.snapshot_key,
        "labels": c.labels,
        "created_at": rfc3339(time_of(&c.created_at)),
        "updated_at": rfc3339(time_of(&c.updated_at)),
        "spec": spec,
        "state": {
            "status": state,
            "running": running,
            "pid": task.as_ref().map(|t| t.pid).filter(|p| *p != 0),
            "exit_code": exit_code,
            "exited_at": task.as_ref().and_then(|t| time_of(&t.exited_at)).map(|t| rfc3339(Some(t))),
        }
    }))
}

pub async fn run(opts: &ClientOpts, a: InspectArgs) -> Result<i32> {
    let conn = Conn::new(opts).await?;
    let mut out = Vec::new();
    let mut failed = false;
    for id in a.ids {
        match one(&conn, &id).await {
            Ok(v) => out.push(v),
            Err(e) => {
                eprintln!("ember: {}", crate::client::describe(&e));
                failed = true;
            }
        }
    }
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(i32::from(failed))
}
