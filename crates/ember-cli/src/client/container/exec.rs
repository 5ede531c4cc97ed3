//! `ember exec`: another process in a running container.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use containerd_client::services::v1 as api;

use super::spec::merge_env;
use super::stdio::{self, Fifos};
use super::{exit_code, is_running, Conn, ProcessFlags};
use crate::client::ClientOpts;

#[derive(clap::Args, Debug)]
#[command(about = "Run a command in a running container")]
pub struct ExecArgs {
    #[command(flatten)]
    process: ProcessFlags,
    id: String,
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    cmd: Vec<String>,
}

pub async fn run(opts: &ClientOpts, a: ExecArgs) -> Result<i32> {
    exit_code(exec(opts, a)).await
}

async fn exec(opts: &ClientOpts, a: ExecArgs) -> Result<i32> {
    let conn = Conn::new(opts).await?;
    let c = conn.container(&a.id).await?;
    if !matches!(conn.task(&a.id).await?, Some(p) if is_running(&p)) {
        bail!("container {} is not running", a.id);
    }
    let spec: serde_json::Value = c
        .spec
        .as_ref()
        .and_then(|s| serde_json::from_slice(&s.value).ok())
        .context("the container has no runtime spec")?;
    let mut process = spec["process"].clone();
    let base: Vec<String> = process["env"]
        .as_array()
        .map(|e| {
            e.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    process["env"] = serde_json::json!(merge_env(&base, &a.process.env));
    process["args"] = serde_json::json!(a.cmd);
    process["terminal"] = serde_json::json!(a.process.tty);
    if let Some(w) = &a.process.workdir {
        process["cwd"] = serde_json::json!(w);
    }
    let exec_id = format!("exec-{}", std::process::id());
    let fifos = Fifos::new(a.process.interactive, a.process.tty)?;
    let (stdin, stdout, stderr) = fifos.uris();
    let attached = stdio::attach(&conn, &fifos, &a.id, &exec_id, None);
    if let Err(s) = conn
        .tasks()
        .exec(conn.req(api::ExecProcessRequest {
            container_id: a.id.clone(),
            stdin,
            stdout,
            stderr,
            terminal: a.process.tty,
            spec: Some(prost_types::Any {
                type_url: "types.containerd.io/opencontainers/runtime-spec/1/Process".into(),
                value: serde_json::to_vec(&process)?,
            }),
            exec_id: exec_id.clone(),
        }))
        .await
    {
        eprintln!("ember: exec in {}: {}", a.id, s.message());
        return Ok(stdio::start_failure_code(s.message()));
    }
    attached.created();
    let waiter = {
        let (conn, id, e) = (conn.clone(), a.id.clone(), exec_id.clone());
        tokio::spawn(async move { conn.wait(&id, &e).await })
    };
    if a.process.tty {
        stdio::resize(&conn, &a.id, &exec_id).await;
    }
    let raw = stdio::raw_mode(a.process.tty)?;
    let fwd = stdio::forward(&conn, &a.id, &exec_id, a.process.tty)?;
    let started = conn
        .tasks()
        .start(conn.req(api::StartRequest {
            container_id: a.id.clone(),
            exec_id: exec_id.clone(),
        }))
        .await;
    let code = match started {
        Err(s) => {
            drop(raw);
            eprintln!("ember: exec in {}: {}", a.id, s.message());
            stdio::start_failure_code(s.message())
        }
        Ok(_) => {
            let status = waiter.await.context("waiting for the process")??;
            attached.finish(Duration::from_secs(2)).await;
            drop(raw);
            status as i32
        }
    };
    fwd.abort();
    let _ = conn
        .tasks()
        .delete_process(conn.req(api::DeleteProcessRequest {
            container_id: a.id.clone(),
            exec_id,
        }))
        .await;
    Ok(code)
}
