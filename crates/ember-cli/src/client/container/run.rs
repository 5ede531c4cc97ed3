//! `ember run`: a container from an image, its task started, attached or detached.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use containerd_client::services::v1 as api;
use containerd_client::services::v1::snapshots as snap;
use containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient;

use super::spec::{self, ProcessOpts, SPEC_TYPE};
use super::stdio::{self, Fifos};
use super::{exit_code, logger, runtime_name, Conn, ProcessFlags, EMBER_RUNTIME, LOG_DIR_LABEL};
use crate::client::{rpc, ClientOpts};

#[derive(clap::Args, Debug)]
#[command(about = "Run a command in a new container")]
pub struct RunArgs {
    /// Container id (else a generated one).
    #[arg(long)]
    name: Option<String>,
    /// Run in the background and print the id (output is kept for `ember logs`,
    /// as it is in the foreground).
    #[arg(short, long)]
    detach: bool,
    /// Remove the container when it exits.
    #[arg(long)]
    rm: bool,
    #[command(flatten)]
    process: ProcessFlags,
    /// User (uid[:gid]).
    #[arg(short, long)]
    user: Option<String>,
    /// Override the image's entrypoint.
    #[arg(long)]
    entrypoint: Option<String>,
    /// Runtime: io.containerd.ember.v2 (microVM), `runc`, or any shim name.
    #[arg(long, default_value = EMBER_RUNTIME)]
    runtime: String,
    #[arg(long, default_value = "overlayfs")]
    snapshotter: String,
    /// Run in this microVM (see `ember vm create`) beside its other containers; a VM
    /// no `ember vm create` made is booted for its first container and goes with its last.
    #[arg(long, value_name = "VM_ID")]
    vm: Option<String>,
    /// vCPUs of the microVM.
    #[arg(long)]
    cpus: Option<u32>,
    /// Memory of the microVM (e.g. 512m, 1g).
    #[arg(short, long)]
    memory: Option<String>,
    /// Bind mount HOST:CONTAINER[:ro].
    #[arg(short, long = "volume")]
    volumes: Vec<String>,
    /// Bind mount type=bind,source=HOST,target=CONTAINER[,readonly].
    #[arg(long = "mount")]
    mounts: Vec<String>,
    /// When to pull the image: `missing` (default) or `never`.
    #[arg(long, value_enum, default_value = "missing")]
    pull: Pull,
    /// Speak plain HTTP to the registry when pulling (as `ember pull --plain-http`).
    #[arg(long)]
    plain_http: bool,
    image: String,
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<String>,
}

/// `ember run --pull`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pull {
    Missing,
    Never,
}

/// `512m`, `1g`, `1048576k`; a plain number is bytes. The result is in MiB.
pub fn parse_memory(s: &str) -> Result<u64> {
    let t = s.trim().to_ascii_lowercase();
    let t = t.strip_suffix('b').unwrap_or(&t);
    let (num, mul): (&str, u64) = match t.chars().last() {
        Some('k') => (&t[..t.len() - 1], 1 << 10),
        Some('m') => (&t[..t.len() - 1], 1 << 20),
        Some('g') => (&t[..t.len() - 1], 1 << 30),
        _ => (t, 1),
    };
    let n: u64 = num
        .parse()
        .with_context(|| format!("memory {s:?} is not a size like 512m or 1g"))?;
    let mib = n.saturating_mul(mul) >> 20;
    if mib < 64 {
        bail!("memory {s:?}: the microVM needs at least 64 MiB");
    }
    Ok(mib)
}

/// The annotation that places the container in the VM `--vm` names.
fn vm_annotations(runtime: &str, a: &RunArgs) -> Result<Vec<(String, String)>> {
    let Some(vm) = &a.vm else {
        return Ok(vec![]);
    };
    if vm.is_empty() || vm.contains('/') {
        bail!("--vm {vm:?} is not a VM id");
    }
    if runtime != EMBER_RUNTIME {
        bail!("--vm needs the microVM runtime ({EMBER_RUNTIME}), not {runtime}");
    }
    if a.cpus.is_some() || a.memory.is_some() {
        bail!("--cpus and --memory size a VM of its own; with --vm the VM's size applies (ember vm create --vcpus/--memory)");
    }
    Ok(vec![(
        ember_vm_api::annotations::EMBER_VM_ID.to_string(),
        vm.clone(),
    )])
}

/// 64 hex digits (two random UUIDs), as long as docker's container ids.
fn generated_id() -> String {
    let (a, b) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    format!("{}{}", a.simple(), b.simple())
}

/// Everything prepared before the task exists; removed again on failure.
struct Prepared {
    id: String,
    snapshotter: String,
    log_dir: Option<std::path::PathBuf>,
}

impl Prepared {
    async fn remove(&self, conn: &Conn) {
        let _ = conn
            .containers()
            .delete(conn.req(api::DeleteContainerRequest {
                id: self.id.clone(),
            }))
            .await;
        super::rm::remove_snapshot(conn, &self.snapshotter, &self.id).await;
        if let Some(d) = &self.log_dir {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

pub async fn run(opts: &ClientOpts, a: RunArgs) -> Result<i32> {
    exit_code(run_inner(opts, a)).await
}

async fn run_inner(opts: &ClientOpts, a: RunArgs) -> Result<i32> {
    // Flags that cannot work fail before the daemon is asked anything.
    vm_annotations(&runtime_name(&a.runtime), &a)?;
    let conn = Conn::new(opts).await?;
    let id = a.name.clone().unwrap_or_else(generated_id);
    // Snapshot and container are made under a lease, as containerd's clients do, so
    // that the collector cannot take the snapshot before the container holds it.
    let leased = conn.leased(&format!("ember-run-{id}")).await?;
    let result = run_leased(&leased, opts, a, id).await;
    leased.release().await;
    result
}

async fn run_leased(conn: &Conn, opts: &ClientOpts, a: RunArgs, id: String) -> Result<i32> {
    let runtime = runtime_name(&a.runtime);
    let mut binds = Vec::new();
    for v in &a.volumes {
        binds.push(spec::volume(v)?);
    }
    for m in &a.mounts {
        binds.push(spec::mount_flag(m)?);
    }
    let mut annotations = vm_annotations(&runtime, &a)?;
    if let Some(c) = a.cpus {
        if c == 0 {
            bail!("--cpus must be at least 1");
        }
        annotations.push(("io.ember.vm.vcpus".to_string(), c.to_string()));
    }
    if let Some(m) = &a.memory {
        annotations.push((
            "io.ember.vm.memory_mib".to_string(),
            parse_memory(m)?.to_string(),
        ));
    }
    if conn.container(&id).await.is_ok() {
        bail!("the container name {id} is already in use");
    }
    let image = match spec::image(conn, &a.image).await {
        Err(e) if e.downcast_ref::<spec::MissingImage>().is_some() && a.pull != Pull::Never => {
            // As docker does: a missing image is pulled, with progress on stderr's
            // side of things, then looked up again.
            eprintln!("Unable to find image {} locally: pulling it", a.image);
            crate::client::transfer::pull_for_run(opts, &a.image, &a.snapshotter, a.plain_http)
                .await?;
            spec::image(conn, &a.image).await?
        }
        r => r?,
    };
    let process = spec::process(
        &image.config,
        &ProcessOpts {
            args: a.args.clone(),
            entrypoint: a.entrypoint.clone(),
            env: a.process.env.clone(),
            workdir: a.process.workdir.clone(),
            user: a.user.clone(),
            terminal: a.process.tty,
        },
    )?;
    let spec = spec::spec(&id, process, binds, &annotations);

    let mut sn = SnapshotsClient::new(conn.channel.clone());
    let mounts = sn
        .prepare(conn.req(snap::PrepareSnapshotRequest {
            snapshotter: a.snapshotter.clone(),
            key: id.clone(),
            parent: image.top.clone(),
            labels: Default::default(),
        }))
        .await
        .map_err(rpc)
        .with_context(|| format!("preparing the snapshot of {id}"))?
        .into_inner()
        .mounts;
    // Output is kept for `ember logs` either way: the shim's logger writes it when
    // detached, the copy to this terminal otherwise.
    let log_dir = Some(logger::dir(&opts.namespace, &id));
    let prepared = Prepared {
        id: id.clone(),
        snapshotter: a.snapshotter.clone(),
        log_dir: log_dir.clone(),
    };
    let mut labels = std::collections::HashMap::new();
    if let Some(d) = &log_dir {
        labels.insert(LOG_DIR_LABEL.to_string(), d.display().to_string());
    }
    let created = conn
        .containers()
        .create(conn.req(api::CreateContainerRequest {
            container: Some(api::Container {
                id: id.clone(),
                labels,
                image: image.name.clone(),
                runtime: Some(api::container::Runtime {
                    name: runtime.clone(),
                    options: None,
                }),
                spec: Some(prost_types::Any {
                    type_url: SPEC_TYPE.into(),
                    value: serde_json::to_vec(&spec)?,
                }),
                snapshotter: a.snapshotter.clone(),
                snapshot_key: id.clone(),
                ..Default::default()
            }),
        }))
        .await;
    if let Err(s) = created {
        super::rm::remove_snapshot(conn, &a.snapshotter, &id).await;
        return Err(rpc(s)).with_context(|| format!("creating container {id}"));
    }

    let fifos = if a.detach {
        None
    } else {
        Some(Fifos::new(a.process.interactive, a.process.tty)?)
    };
    let (stdin, stdout, stderr) = match (&fifos, &log_dir) {
        (Some(f), _) => f.uris(),
        (None, Some(d)) => {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
            if a.process.interactive {
                super::stdio_hold::start(opts, d, &id)?
            } else {
                let u = logger::uri(d)?;
                (String::new(), u.clone(), u)
            }
        }
        (None, None) => Default::default(),
    };
    let keep = match (&fifos, &log_dir) {
        (Some(_), Some(d)) => {
            Some(logger::Sink::open(d).with_context(|| format!("creating {}", d.display()))?)
        }
        _ => None,
    };
    let attached = fifos
        .as_ref()
        .map(|f| stdio::attach(conn, f, &id, "", keep));
    let create = conn
        .tasks()
        .create(conn.req(api::CreateTaskRequest {
            container_id: id.clone(),
            rootfs: mounts,
            stdin,
            stdout,
            stderr,
            terminal: a.process.tty,
            ..Default::default()
        }))
        .await;
    if let Err(s) = create {
        prepared.remove(conn).await;
        eprintln!("ember: creating the task of {id}: {}", s.message());
        return Ok(stdio::start_failure_code(s.message()));
    }
    if let Some(at) = &attached {
        at.created();
    }
    let waiter = {
        let (conn, id) = (conn.clone(), id.clone());
        tokio::spawn(async move { conn.wait(&id, "").await })
    };
    if a.process.tty && !a.detach {
        // Sized before it starts, so that the process sees the size from the first.
        stdio::resize(conn, &id, "").await;
    }
    let raw = stdio::raw_mode(a.process.tty && !a.detach)?;
    // Signals are caught from before the start, so none kills this client instead.
    let fwd = (!a.detach)
        .then(|| stdio::forward(conn, &id, "", a.process.tty))
        .transpose()?;
    if let Err(s) = conn
        .tasks()
        .start(conn.req(api::StartRequest {
            container_id: id.clone(),
            exec_id: String::new(),
        }))
        .await
    {
        drop(raw);
        let _ = super::rm::delete_task(conn, &id).await;
        prepared.remove(conn).await;
        eprintln!("ember: starting {id}: {}", s.message());
        return Ok(stdio::start_failure_code(s.message()));
    }
    if a.detach {
        println!("{id}");
        return Ok(0);
    }
    let status = waiter.await.context("waiting for the task")??;
    if let Some(f) = fwd {
        f.abort();
    }
    if let Some(at) = attached {
        at.finish(Duration::from_secs(2)).await;
    }
    drop(raw);
    let deleted = super::rm::delete_task(conn, &id).await;
    if a.rm {
        prepared.remove(conn).await;
    } else if let Ok(code) = deleted {
        super::ps::record_exit(conn, &id, code).await;
    }
    drop(fifos);
    Ok(status as i32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_flag() {
        use clap::Parser;
        #[derive(Parser)]
        struct T {
            #[command(flatten)]
            a: RunArgs,
        }
        let parse = |args: &[&str]| T::try_parse_from([&["run"][..], args].concat()).unwrap().a;
        let a = parse(&["--vm", "web", "img", "true"]);
        assert_eq!(
            vm_annotations(EMBER_RUNTIME, &a).unwrap(),
            vec![("io.ember.vm.id".to_string(), "web".to_string())]
        );
        assert!(vm_annotations(super::super::RUNC_RUNTIME, &a).is_err());
        let a = parse(&["--vm", "web", "--cpus", "2", "img"]);
        assert!(vm_annotations(EMBER_RUNTIME, &a).is_err());
        let a = parse(&["--vm", "", "img"]);
        assert!(vm_annotations(EMBER_RUNTIME, &a).is_err());
        assert!(vm_annotations(EMBER_RUNTIME, &parse(&["img"]))
            .unwrap()
            .is_empty());
    }

    #[test]
    fn memory_sizes() {
        assert_eq!(parse_memory("512m").unwrap(), 512);
        assert_eq!(parse_memory("1g").unwrap(), 1024);
        assert_eq!(parse_memory("1GB").unwrap(), 1024);
        assert_eq!(parse_memory("268435456").unwrap(), 256);
        assert!(parse_memory("12").is_err());
        assert!(parse_memory("lots").is_err());
    }
}
