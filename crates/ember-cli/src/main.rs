//! `ember`: the command line of Ember.

/// `print!` and `println!` for all of `ember`: the same, except that a reader of stdout
/// that has gone (`ember plugins --json | head -1`) ends `ember` quietly, as it ends
/// any Unix filter, instead of a panic. Defined before the modules so that their
/// `println!` is this one.
macro_rules! print {
    ($($t:tt)*) => { $crate::stdout::write(format_args!($($t)*)) };
}
macro_rules! println {
    () => { $crate::stdout::write(format_args!("\n")) };
    ($($t:tt)*) => { $crate::stdout::write(format_args!("{}\n", format_args!($($t)*))) };
}

mod client;
mod info;
mod info_jail;
mod stdout;
mod template;
mod vm;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "ember",
    version,
    about = "Containers in microVMs, the containerd way"
)]
struct Cli {
    /// Log level (error, warn, info, debug, trace).
    #[arg(long, global = true, env = "EMBER_LOG", default_value = "warn")]
    log_level: String,
    #[command(flatten)]
    client: client::ClientOpts,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Manage microVMs that hold containers, or run one container in a fresh microVM.
    #[command(subcommand)]
    Vm(vm::VmCommand),
    /// Show the host's virtualisation support and the installed guest image.
    Info(info::InfoArgs),
    Namespaces(client::namespaces::NamespacesArgs),
    Content(client::content::ContentArgs),
    Snapshots(client::snapshots::SnapshotsArgs),
    Leases(client::leases::LeasesArgs),
    Containers(client::containers::ContainersArgs),
    Images(client::images::ImagesArgs),
    Plugins(client::plugins::PluginsArgs),
    Version(client::version::VersionArgs),
    Pull(client::transfer::PullArgs),
    Push(client::transfer::PushArgs),
    Login(client::login::LoginArgs),
    Logout(client::login::LogoutArgs),
    Run(client::container::run::RunArgs),
    Ps(client::container::ps::PsArgs),
    Exec(client::container::exec::ExecArgs),
    Logs(client::container::logs::LogsArgs),
    Stop(client::container::stop::StopArgs),
    Kill(client::container::stop::KillArgs),
    Rm(client::container::rm::RmArgs),
    Inspect(client::container::inspect::InspectArgs),
    Stats(client::container::stats::StatsArgs),
    Tag(client::image_tag::TagArgs),
    Events(client::events::EventsArgs),
}

fn main() {
    if let Some(dir) = std::env::args().nth(1).and_then(|a| {
        a.strip_prefix(client::container::logger::ARG_PREFIX)
            .map(String::from)
    }) {
        std::process::exit(client::container::logger::serve(&dir));
    }
    let args: Vec<String> = std::env::args().collect();
    if let Some(fifo) = args
        .get(1)
        .and_then(|a| a.strip_prefix(client::container::stdio_hold::ARG_PREFIX))
    {
        std::process::exit(client::container::stdio_hold::serve(fifo, &args[2..]));
    }
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(&cli.log_level))
        .with_writer(std::io::stderr)
        .init();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ember: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    let result: Result<i32> = rt.block_on(async {
        match cli.command {
            Command::Vm(c) => vm::run(&cli.client, c).await,
            Command::Info(a) => info::run(a).await.map(|_| 0),
            Command::Namespaces(a) => client::namespaces::run(&cli.client, a).await,
            Command::Content(a) => client::content::run(&cli.client, a).await,
            Command::Snapshots(a) => client::snapshots::run(&cli.client, a).await,
            Command::Leases(a) => client::leases::run(&cli.client, a).await,
            Command::Containers(a) => client::containers::run(&cli.client, a).await,
            Command::Images(a) => client::images::run(&cli.client, a).await,
            Command::Plugins(a) => client::plugins::run(&cli.client, a).await,
            Command::Version(a) => client::version::run(&cli.client, a).await,
            Command::Pull(a) => client::transfer::pull(&cli.client, a).await,
            Command::Push(a) => client::transfer::push(&cli.client, a).await,
            Command::Login(a) => client::login::login(a).await,
            Command::Logout(a) => client::login::logout(a).await,
            Command::Run(a) => client::container::run::run(&cli.client, a).await,
            Command::Ps(a) => client::container::ps::run(&cli.client, a).await,
            Command::Exec(a) => client::container::exec::run(&cli.client, a).await,
            Command::Logs(a) => client::container::logs::run(&cli.client, a).await,
            Command::Stop(a) => client::container::stop::run_stop(&cli.client, a).await,
            Command::Kill(a) => client::container::stop::run_kill(&cli.client, a).await,
            Command::Rm(a) => client::container::rm::run(&cli.client, a).await,
            Command::Inspect(a) => client::container::inspect::run(&cli.client, a).await,
            Command::Tag(a) => client::image_tag::tag(&cli.client, a).await,
            Command::Stats(a) => client::container::stats::run(&cli.client, a).await,
            Command::Events(a) => client::events::run(&cli.client, a).await,
        }
    });
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("ember: {}", crate::client::describe(&e));
            std::process::exit(1);
        }
    }
}
