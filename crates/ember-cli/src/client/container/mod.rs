//! Docker-like container verbs (`run`, `ps`, `exec`, `logs`, `stats`, `stop`, `kill`,
//! `rm`, `inspect`) over containerd's Containers, Snapshots and Tasks services.

pub mod exec;
pub mod inspect;
pub mod logger;
pub mod logs;
pub mod ps;
pub mod rm;
pub mod run;
pub mod spec;
pub mod stats;
pub mod stdio;
pub mod stdio_hold;
pub mod stop;

use std::path::PathBuf;

use anyhow::{anyhow, Result};
use containerd_client::services::v1 as api;
use containerd_client::services::v1::containers_client::ContainersClient;
use containerd_client::services::v1::leases_client::LeasesClient;
use containerd_client::services::v1::tasks_client::TasksClient;
use containerd_client::tonic::transport::Channel;
use containerd_client::tonic::Code;
use containerd_client::types::v1::{Process, Status};

use super::{rpc, ClientOpts};

/// The microVM runtime, the default.
pub const EMBER_RUNTIME: &str = "io.containerd.ember.v2";
/// runc's shim.
pub const RUNC_RUNTIME: &str = "io.containerd.runc.v2";
/// Label naming the directory that keeps a container's output.
pub const LOG_DIR_LABEL: &str = "io.ember.cli.log-dir";
/// Exit code for ember's own failures (docker's convention).
pub const EXIT_EMBER: i32 = 125;

/// The process flags `run` and `exec` share.
#[derive(clap::Args, Debug)]
pub struct ProcessFlags {
    /// Forward stdin.
    #[arg(short, long)]
    pub interactive: bool,
    /// Allocate a terminal.
    #[arg(short, long)]
    pub tty: bool,
    /// Environment KEY=VALUE.
    #[arg(short, long = "env")]
    pub env: Vec<String>,
    /// Working directory inside the container.
    #[arg(short, long)]
    pub workdir: Option<String>,
}

/// A verb's answer as its exit code: its own, or [`EXIT_EMBER`] after printing why
/// ember itself failed.
pub async fn exit_code(verb: impl std::future::Future<Output = Result<i32>>) -> Result<i32> {
    match verb.await {
        Ok(code) => Ok(code),
        Err(e) => {
            eprintln!("ember: {}", crate::client::describe(&e));
            Ok(EXIT_EMBER)
        }
    }
}

/// Full runtime names for the shorthands `ember` and `runc`.
pub fn runtime_name(r: &str) -> String {
    match r {
        "runc" => RUNC_RUNTIME.into(),
        "ember" | "microvm" => EMBER_RUNTIME.into(),
        other => other.into(),
    }
}

/// Where `ember` keeps container output: `$EMBER_STATE_DIR`, else
/// `/var/lib/ember/cli` (root) or `$XDG_STATE_HOME/ember`.
pub fn state_dir() -> PathBuf {
    if let Ok(d) = std::env::var("EMBER_STATE_DIR") {
        return PathBuf::from(d);
    }
    if nix::unistd::geteuid().is_root() {
        return PathBuf::from("/var/lib/ember/cli");
    }
    let base = std::env::var("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|_| std::env::var("HOME").map(|h| PathBuf::from(h).join(".local/state")))
        .unwrap_or_else(|_| std::env::temp_dir());
    base.join("ember")
}

/// Clients of one daemon, in one namespace.
#[derive(Clone)]
pub struct Conn {
    pub opts: ClientOpts,
    pub channel: Channel,
    /// Lease the requests are made under (keeps a new snapshot from the collector).
    pub lease: Option<String>,
}

impl Conn {
    pub async fn new(opts: &ClientOpts) -> Result<Conn> {
        Ok(Conn {
            opts: opts.clone(),
            channel: opts.channel().await?,
            lease: None,
        })
    }

    /// The same connection under a new lease `id`.
    pub async fn leased(&self, id: &str) -> Result<Conn> {
        LeasesClient::new(self.channel.clone())
            .create(self.req(api::CreateRequest {
                id: id.into(),
                labels: Default::default(),
            }))
            .await
            .map_err(rpc)?;
        Ok(Conn {
            lease: Some(id.into()),
            ..self.clone()
        })
    }

    /// Ends the lease of a [`Conn::leased`] connection.
    pub async fn release(&self) {
        if let Some(id) = &self.lease {
            let _ = LeasesClient::new(self.channel.clone())
                .delete(self.opts.req(api::DeleteRequest {
                    id: id.clone(),
                    sync: false,
                }))
                .await;
        }
    }

    pub fn tasks(&self) -> TasksClient<Channel> {
        TasksClient::new(self.channel.clone())
    }

    pub fn containers(&self) -> ContainersClient<Channel> {
        ContainersClient::new(self.channel.clone())
    }

    pub fn req<T>(&self, msg: T) -> containerd_client::tonic::Request<T> {
        let mut r = self.opts.req(msg);
        if let Some(v) = self.lease.as_ref().and_then(|l| l.parse().ok()) {
            r.metadata_mut().insert("containerd-lease", v);
        }
        r
    }

    /// The container record; a clear error naming `id` when there is none.
    pub async fn container(&self, id: &str) -> Result<api::Container> {
        match self
            .containers()
            .get(self.req(api::GetContainerRequest { id: id.into() }))
            .await
        {
            Ok(r) => r
                .into_inner()
                .container
                .ok_or_else(|| anyhow!("no such container: {id}")),
            Err(s) if s.code() == Code::NotFound => Err(anyhow!("no such container: {id}")),
            Err(s) => Err(rpc(s)),
        }
    }

    /// The task's init process, `None` when the container has no task.
    pub async fn task(&self, id: &str) -> Result<Option<Process>> {
        match self
            .tasks()
            .get(self.req(api::GetRequest {
                container_id: id.into(),
                exec_id: String::new(),
            }))
            .await
        {
            Ok(r) => Ok(r.into_inner().process),
            Err(s) if s.code() == Code::NotFound => Ok(None),
            Err(s) => Err(rpc(s)),
        }
    }

    /// Waits for a process to exit; its exit status.
    pub async fn wait(&self, id: &str, exec_id: &str) -> Result<u32> {
        let r = self
            .tasks()
            .wait(self.req(api::WaitRequest {
                container_id: id.into(),
                exec_id: exec_id.into(),
            }))
            .await
            .map_err(rpc)?;
        Ok(r.into_inner().exit_status)
    }

    pub async fn kill(&self, id: &str, signal: i32, all: bool) -> Result<()> {
        self.tasks()
            .kill(self.req(api::KillRequest {
                container_id: id.into(),
                exec_id: String::new(),
                signal: signal as u32,
                all,
            }))
            .await
            .map_err(rpc)?;
        Ok(())
    }
}

/// Whether a task's status is running (or paused: it still holds its process).
pub fn is_running(p: &Process) -> bool {
    matches!(
        Status::try_from(p.status).unwrap_or(Status::Unknown),
        Status::Running | Status::Paused | Status::Pausing
    )
}

/// Runs a verb over several ids: errors are printed per id, exit 1 if any failed.
pub async fn each<F, Fut>(ids: Vec<String>, mut f: F) -> Result<i32>
where
    F: FnMut(String) -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let mut failed = false;
    for id in ids {
        match f(id.clone()).await {
            Ok(()) => println!("{id}"),
            Err(e) => {
                eprintln!("ember: {}", crate::client::describe(&e));
                failed = true;
            }
        }
    }
    Ok(i32::from(failed))
}
