//! `emberd`: the Ember daemon. It serves containerd's gRPC API on a unix socket, so
//! containerd's clients (`ctr`, the Go client) drive it unchanged.

use std::path::PathBuf;

use clap::Parser;
use emberd::{config, daemon};

#[derive(Parser)]
#[command(
    name = "emberd",
    version,
    about = "The Ember daemon (containerd's API, microVM containers)"
)]
struct Args {
    /// Configuration file (containerd's TOML format). Without it, built-in defaults.
    #[arg(short, long, env = "EMBERD_CONFIG")]
    config: Option<PathBuf>,
    /// Directory for persistent data (overrides the configuration's `root`).
    #[arg(long)]
    root: Option<PathBuf>,
    /// Directory for runtime state (overrides the configuration's `state`).
    #[arg(long)]
    state: Option<PathBuf>,
    /// Unix socket to serve on (overrides `[grpc] address`).
    #[arg(short, long)]
    address: Option<PathBuf>,
    /// Log level or filter (error, warn, info, debug, trace; or a tracing filter).
    #[arg(short, long)]
    log_level: Option<String>,
}

fn main() {
    let args = Args::parse();
    let mut config = match &args.config {
        Some(path) => match config::Config::load(path) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("emberd: {e:#}");
                std::process::exit(1);
            }
        },
        None => config::Config::default(),
    };
    if let Some(root) = args.root {
        config.root = root;
    }
    if let Some(state) = args.state {
        config.state = state;
    }
    if let Some(address) = args.address {
        config.grpc.address = address;
    }
    let level = args
        .log_level
        .clone()
        .or_else(|| Some(config.debug.level.clone()).filter(|l| !l.is_empty()))
        .unwrap_or_else(|| "info".into());
    // A bare level applies to emberd; the HTTP/2 stack stays quiet unless asked for
    // with a full filter (`debug,h2=trace`).
    let filter = if level.contains('=') || level.contains(',') {
        level
    } else {
        format!("{level},h2=warn,hyper=warn,hyper_util=warn,tower=warn")
    };
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(&filter))
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("emberd: starting the runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = rt.block_on(daemon::run(config)) {
        tracing::error!("{e:#}");
        eprintln!("emberd: {e:#}");
        std::process::exit(1);
    }
}
