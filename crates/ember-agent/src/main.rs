//! `ember-agent`: PID 1 of Ember's microVM guests. It serves the ttrpc service
//! `ember.agent.v1.Agent` (see `ember-agent-api`) on the `ember.agent`
//! virtio-serial port and on vsock, and runs OCI containers with its own small
//! runtime (namespaces, cgroup v2, pivot_root; no external runtime).
//!
//! Usage:
//!   ember-agent                         as /init (PID 1): serial port + vsock
//!   ember-agent --listen unix:/path     on a host, for tests (repeatable;
//!                                       also `vsock[:port]`, `serial[:name]`)
//!   Options: --cgroup-root <dir|none>   (default /sys/fs/cgroup)
//!            --state-dir <dir>          (default /run/ember/containers)
//!            --run-dir <dir>            files/ and metadata/ (default /run/ember)
//!            --log <filter>             (default info; env EMBER_AGENT_LOG)

#![deny(clippy::undocumented_unsafe_blocks)]

mod cgroup;
mod channel;
mod container;
mod identity;
mod init;
mod loopdev;
mod network;
mod reaper;
mod runtime;
mod service;
mod spawn;
mod stdio;
mod sys;

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};

#[derive(Debug, Clone, PartialEq, Eq)]
enum Listen {
    Unix(PathBuf),
    Vsock(u32),
    Serial(String),
}

#[derive(Debug)]
struct Opts {
    listen: Vec<Listen>,
    cgroup_root: Option<PathBuf>,
    state_dir: PathBuf,
    run_dir: Option<PathBuf>,
    log: String,
}

fn parse_listen(s: &str) -> Result<Listen> {
    let (kind, rest) = s.split_once(':').unwrap_or((s, ""));
    Ok(match kind {
        "unix" if !rest.is_empty() => Listen::Unix(rest.into()),
        "vsock" => Listen::Vsock(if rest.is_empty() {
            ember_agent_api::VSOCK_PORT
        } else {
            rest.parse().context("bad vsock port")?
        }),
        "serial" => Listen::Serial(if rest.is_empty() {
            ember_agent_api::SERIAL_PORT_NAME.into()
        } else {
            rest.into()
        }),
        _ => bail!("bad --listen {s:?}: want unix:/path, vsock[:port] or serial[:name]"),
    })
}

fn parse_opts(args: &[String]) -> Result<Opts> {
    let mut o = Opts {
        listen: Vec::new(),
        cgroup_root: Some("/sys/fs/cgroup".into()),
        state_dir: "/run/ember/containers".into(),
        run_dir: None,
        log: std::env::var("EMBER_AGENT_LOG").unwrap_or_else(|_| "info".into()),
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let (flag, inline) = match a.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_string())),
            _ => (a.as_str(), None),
        };
        let mut value = || -> Result<String> {
            match &inline {
                Some(v) => Ok(v.clone()),
                None => it
                    .next()
                    .cloned()
                    .with_context(|| format!("{flag} needs a value")),
            }
        };
        match flag {
            "--listen" => o.listen.push(parse_listen(&value()?)?),
            "--cgroup-root" => {
                let v = value()?;
                o.cgroup_root = if v == "none" { None } else { Some(v.into()) };
            }
            "--state-dir" => o.state_dir = value()?.into(),
            "--run-dir" => o.run_dir = Some(value()?.into()),
            "--log" => o.log = value()?,
            "-h" | "--help" => {
                println!(
                    "usage: ember-agent [--listen unix:/path|vsock[:port]|serial[:name]]... \
                     [--cgroup-root DIR|none] [--state-dir DIR] [--run-dir DIR] [--log FILTER]"
                );
                std::process::exit(0);
            }
            // The kernel passes unknown cmdline words to init as arguments.
            _ if std::process::id() == 1 => {}
            _ => bail!("unknown argument {a:?}"),
        }
    }
    Ok(o)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some(spawn::HELPER_ARG) {
        spawn::helper_main(&args[2..]);
    }
    let is_pid1 = std::process::id() == 1;
    let mut cmdline = String::new();
    if is_pid1 {
        match init::pid1_setup() {
            Ok(c) => cmdline = c,
            Err(e) => eprintln!("ember-agent: early setup failed: {e}"),
        }
    }
    let opts = match parse_opts(&args[1..]) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("ember-agent: {e:#}");
            if is_pid1 {
                init::power_off();
            }
            std::process::exit(2);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&opts.log)
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build();
    let res = match rt {
        Ok(rt) => rt.block_on(run(opts, is_pid1, &cmdline)),
        Err(e) => Err(e.into()),
    };
    if let Err(e) = res {
        tracing::error!("ember-agent: {e:#}");
        if is_pid1 {
            // PID 1 must not exit (kernel panic); power off so the host notices.
            std::thread::sleep(Duration::from_millis(100));
            init::power_off();
        }
        std::process::exit(1);
    }
}

/// `cmdline`: the kernel command line PID 1 read at its early setup (else empty).
async fn run(opts: Opts, is_pid1: bool, cmdline: &str) -> Result<()> {
    let reaper = reaper::Reaper::start().context("installing the SIGCHLD handler")?;
    if !is_pid1 {
        // Orphans of our containers come back to us, as they would to PID 1.
        let _ = nix::sys::prctl::set_child_subreaper(true);
        // As in a guest: containers share this namespace, and localhost works there.
        network::loopback_up();
    }
    std::fs::create_dir_all(&opts.state_dir)
        .with_context(|| format!("creating {}", opts.state_dir.display()))?;
    let mut cfg =
        runtime::Config::guest_dirs(opts.cgroup_root.clone(), opts.state_dir.clone(), is_pid1);
    if let Some(d) = &opts.run_dir {
        cfg.files_dir = d.join("files");
        cfg.metadata_dir = d.join("metadata");
        cfg.network_dir = d.join("network");
    }
    // A guest booted to become a template mounts its shared directory only when
    // a clone gets its identity: a mounted 9p export cannot be saved.
    let template =
        init::cmdline_value(cmdline, ember_agent_api::CMDLINE_TEMPLATE).is_some_and(|v| v == "1");
    if is_pid1 && !template {
        identity::mount_shared_once();
    }
    // The first container process starts without forking the agent (a template
    // guest is saved with this helper waiting).
    let _ = tokio::task::spawn_blocking(spawn::ready::prepare).await;
    let agent = runtime::Agent::new(cfg, reaper);
    let mut listen = opts.listen.clone();
    if listen.is_empty() {
        if !is_pid1 {
            bail!("not PID 1: say where to serve with --listen unix:/path (or vsock, serial)");
        }
        listen = vec![
            Listen::Serial(ember_agent_api::SERIAL_PORT_NAME.into()),
            Listen::Vsock(ember_agent_api::VSOCK_PORT),
        ];
    }
    let mut tasks = tokio::task::JoinSet::new();
    let mut serving = 0;
    for l in listen {
        match l {
            Listen::Unix(path) => {
                let listener_agent = agent.clone();
                // Bind now so that the ready marker means "connectable".
                let _ = std::fs::remove_file(&path);
                let ul = tokio::net::UnixListener::bind(&path)
                    .with_context(|| format!("binding {}", path.display()))?;
                tracing::info!("serving on unix socket {}", path.display());
                tasks.spawn(async move { channel::serve_unix(listener_agent, ul).await });
                serving += 1;
            }
            Listen::Vsock(port) => match channel::vsock_listener(port) {
                Ok(l) => {
                    tracing::info!("serving on vsock port {port}");
                    tasks.spawn(channel::serve_vsock(agent.clone(), l));
                    serving += 1;
                }
                Err(e) => tracing::info!("no vsock ({e}); not serving on it"),
            },
            Listen::Serial(name) => {
                let a = agent.clone();
                serving += 1;
                tasks.spawn(async move { serve_serial_when_present(a, name).await });
            }
        }
    }
    if serving == 0 {
        bail!("nothing to serve on");
    }
    {
        let mut out = std::io::stdout();
        let _ = writeln!(out, "{}", ember_agent_api::READY_MARKER);
        let _ = out.flush();
    }
    while let Some(r) = tasks.join_next().await {
        match r {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!("listener failed: {e}"),
            Err(e) => tracing::error!("listener task: {e}"),
        }
    }
    bail!("all listeners ended")
}

/// Waits for the virtio-serial port to appear (devices may still be probing), then
/// serves it.
async fn serve_serial_when_present(
    agent: Arc<runtime::Agent>,
    name: String,
) -> std::io::Result<()> {
    let mut waited = Duration::ZERO;
    let mut warned = false;
    loop {
        if let Some(path) = channel::find_serial_port(&name) {
            // devtmpfs may create the node a moment after sysfs shows the port.
            for _ in 0..100 {
                if path.exists() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            return channel::serve_serial(agent, path).await;
        }
        if waited > Duration::from_secs(5) && !warned {
            tracing::warn!("no virtio-serial port named {name:?} yet; still looking");
            warned = true;
        }
        let step = if waited < Duration::from_secs(5) {
            20
        } else {
            500
        };
        tokio::time::sleep(Duration::from_millis(step)).await;
        waited += Duration::from_millis(step);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_specs() {
        assert_eq!(
            parse_listen("unix:/tmp/a").unwrap(),
            Listen::Unix("/tmp/a".into())
        );
        assert_eq!(parse_listen("vsock").unwrap(), Listen::Vsock(1024));
        assert_eq!(parse_listen("vsock:5").unwrap(), Listen::Vsock(5));
        assert_eq!(
            parse_listen("serial").unwrap(),
            Listen::Serial("ember.agent".into())
        );
        assert!(parse_listen("tcp:1").is_err());
        assert!(parse_listen("unix:").is_err());
    }

    #[test]
    fn options() {
        let a: Vec<String> = [
            "--listen",
            "unix:/x",
            "--cgroup-root=none",
            "--state-dir",
            "/s",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let o = parse_opts(&a).unwrap();
        assert_eq!(o.listen, vec![Listen::Unix("/x".into())]);
        assert_eq!(o.cgroup_root, None);
        assert_eq!(o.state_dir, PathBuf::from("/s"));
    }
}
