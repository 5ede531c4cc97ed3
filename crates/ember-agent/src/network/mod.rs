//! `ConfigureNetwork`: the guest's network namespace, which every container of the VM
//! shares. NICs are found by the MAC the VMM gave them, renamed, re-MAC'd, given
//! their MTU and addresses and brought up; then the routes are added, the hostname
//! set and the name-service files written for containers (see `files`).

mod configure;
pub mod files;
mod netlink;

use std::path::Path;
use std::sync::Mutex;

use ember_agent_api::ConfigureNetworkRequest;
use ember_ttrpc::Status;

use configure::Sysfs;
use netlink::Netlink;

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Failed(String),
}

impl From<NetError> for Status {
    fn from(e: NetError) -> Status {
        match e {
            NetError::Invalid(m) => Status::invalid_argument(m),
            NetError::NotFound(m) => Status::not_found(m),
            NetError::Failed(m) => Status::internal(m),
        }
    }
}

/// The guest directory of the name-service files.
pub const GUEST_DIR: &str = "/run/ember/network";

/// One configuration at a time.
static CONFIGURING: Mutex<()> = Mutex::new(());

/// Applies `req` (blocking: netlink requests and sysfs reads). All of it is checked
/// before anything changes; a failure names the interface or route and what failed.
pub fn configure(req: &ConfigureNetworkRequest, files_dir: &Path) -> Result<(), NetError> {
    let ifs = req
        .interfaces
        .iter()
        .map(configure::check_interface)
        .collect::<Result<Vec<_>, _>>()?;
    let routes = req
        .routes
        .iter()
        .map(configure::check_route)
        .collect::<Result<Vec<_>, _>>()?;
    let hostname = req.hostname.trim();
    if hostname.len() > 64 || hostname.contains(|c: char| c.is_whitespace() || c == '/') {
        return Err(NetError::Invalid(format!("bad hostname {hostname:?}")));
    }
    let _g = CONFIGURING.lock().unwrap_or_else(|p| p.into_inner());
    let sys = Sysfs::default();
    let mut nl =
        Netlink::open().map_err(|e| NetError::Failed(format!("opening a netlink socket: {e}")))?;
    configure::loopback_up(&mut nl, &sys)?;
    for w in &ifs {
        let name = configure::apply_interface(&mut nl, &sys, w)?;
        tracing::info!("interface {name} configured");
    }
    for r in &routes {
        configure::apply_route(&mut nl, &sys, r)?;
    }
    if !hostname.is_empty() {
        nix::unistd::sethostname(hostname)
            .map_err(|e| NetError::Failed(format!("setting hostname {hostname}: {e}")))?;
    }
    files::write(
        files_dir,
        req.dns.as_ref(),
        hostname,
        &configure::primary_addrs(&ifs),
    )
    .map_err(|e| NetError::Failed(format!("writing {}: {e}", files_dir.display())))
}

/// `ip link set lo up` for the agent's own namespace (at boot). Best effort.
pub fn loopback_up() {
    let res = Netlink::open()
        .map_err(|e| NetError::Failed(e.to_string()))
        .and_then(|mut nl| configure::loopback_up(&mut nl, &Sysfs::default()));
    if let Err(e) = res {
        eprintln!("ember-agent: loopback: {e}");
    }
}

impl crate::runtime::Agent {
    pub async fn configure_network(&self, req: ConfigureNetworkRequest) -> Result<(), Status> {
        let dir = self.network_dir().to_path_buf();
        tokio::task::spawn_blocking(move || configure(&req, &dir))
            .await
            .map_err(|e| Status::internal(format!("network configuration: {e}")))?
            .map_err(Status::from)
    }
}
