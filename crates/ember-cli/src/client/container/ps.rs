//! `ember ps`: containers with their task's state.

use anyhow::Result;
use containerd_client::services::v1 as api;
use containerd_client::types::v1::{Process, Status};
use serde::Serialize;

use super::{is_running, Conn};
use crate::client::{output, rpc, ClientOpts};

/// Label holding the exit status of a task `ember run` has deleted.
pub const EXIT_LABEL: &str = "io.ember.cli.exit-code";

#[derive(clap::Args, Debug)]
#[command(about = "List containers")]
pub struct PsArgs {
    /// Show all containers (default: running ones).
    #[arg(short, long)]
    all: bool,
    /// Only ids.
    #[arg(short, long)]
    quiet: bool,
}

#[derive(Serialize)]
pub struct Row {
    pub id: String,
    pub image: String,
    pub command: String,
    pub status: String,
    pub running: bool,
    pub exit_code: Option<u32>,
    pub runtime: String,
    pub pid: Option<u32>,
}

/// Remembers the exit status of a task about to be forgotten.
pub async fn record_exit(conn: &Conn, id: &str, code: u32) {
    let mut labels = std::collections::HashMap::new();
    labels.insert(EXIT_LABEL.to_string(), code.to_string());
    let _ = conn
        .containers()
        .update(conn.req(api::UpdateContainerRequest {
            container: Some(api::Container {
                id: id.into(),
                labels,
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec![format!("labels.{EXIT_LABEL}")],
            }),
        }))
        .await;
}

/// `Up`, `Exited (N)` or `Created`, and the exit code when there is one.
pub fn status(c: &api::Container, task: Option<&Process>) -> (String, bool, Option<u32>) {
    match task {
        Some(p) if is_running(p) => {
            let paused = p.status == Status::Paused as i32;
            (if paused { "Paused" } else { "Up" }.into(), true, None)
        }
        Some(p) if p.status == Status::Stopped as i32 => (
            format!("Exited ({})", p.exit_status),
            false,
            Some(p.exit_status),
        ),
        Some(_) => ("Created".into(), false, None),
        None => match c.labels.get(EXIT_LABEL).and_then(|v| v.parse().ok()) {
            Some(code) => (format!("Exited ({code})"), false, Some(code)),
            None => ("Created".into(), false, None),
        },
    }
}

/// The command line of a container's spec.
pub fn command(c: &api::Container) -> String {
    c.spec
        .as_ref()
        .and_then(|s| serde_json::from_slice::<serde_json::Value>(&s.value).ok())
        .and_then(|v| {
            v["process"]["args"].as_array().map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str())
                    .collect::<Vec<_>>()
                    .join(" ")
            })
        })
        .unwrap_or_default()
}

pub async fn run(opts: &ClientOpts, a: PsArgs) -> Result<i32> {
    let conn = Conn::new(opts).await?;
    let containers = conn
        .containers()
        .list(conn.req(api::ListContainersRequest { filters: vec![] }))
        .await
        .map_err(rpc)?
        .into_inner()
        .containers;
    let tasks = conn
        .tasks()
        .list(conn.req(api::ListTasksRequest {
            filter: String::new(),
        }))
        .await
        .map_err(rpc)?
        .into_inner()
        .tasks;
    let mut rows = Vec::new();
    for c in &containers {
        let task = tasks.iter().find(|t| t.id == c.id);
        let (status, running, exit_code) = status(c, task);
        if !a.all && !running {
            continue;
        }
        rows.push(Row {
            id: c.id.clone(),
            image: c.image.clone(),
            command: command(c),
            status,
            running,
            exit_code,
            runtime: c
                .runtime
                .as_ref()
                .map(|r| r.name.clone())
                .unwrap_or_default(),
            pid: task.map(|t| t.pid).filter(|p| *p != 0),
        });
    }
    if a.quiet && !opts.json {
        for r in &rows {
            println!("{}", r.id);
        }
        return Ok(0);
    }
    output(
        opts,
        &rows,
        &["ID", "IMAGE", "COMMAND", "STATUS", "RUNTIME", "PID"],
        |r| {
            let mut cmd: String = r.command.chars().take(30).collect();
            if r.command.chars().count() > 30 {
                cmd.push('…');
            }
            vec![
                r.id.chars().take(12).collect(),
                r.image.clone(),
                format!("\"{cmd}\""),
                r.status.clone(),
                r.runtime.clone(),
                r.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
            ]
        },
    )?;
    Ok(0)
}
