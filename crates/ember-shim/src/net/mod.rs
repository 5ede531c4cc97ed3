//! The host side of a VM's network (the tc-redirect-tap model).
//!
//! The VMM runs in the sandbox's network namespace: the one the OCI spec names
//! (CRI, dockerd with a path, nerdctl), or one Ember makes for the VM under
//! [`netns::NETNS_DIR`] when the spec asks for a new one (`ctr run --cni`, dockerd's
//! libnetwork hook), so the task pid (the VMM's) names exactly the VM's namespace.
//!
//! Interfaces present before boot each get a tap (`tapN`, same MTU) joined to them by
//! tc ingress redirects both ways; the VM boots with one virtio-net NIC per tap,
//! carrying the interface's MAC, and the guest gets its addresses and routes. When
//! the namespace is empty at boot, the VM boots with one pre-made NIC on `tap0` under
//! a placeholder MAC; at the first container's Start, [`wire_late`] joins the
//! interface that appeared (CNI's veth) to `tap0` and tells the guest to take its MAC,
//! addresses and routes. The interface keeps its addresses in the namespace (as
//! tc-redirect-tap does): its own stack never sees a frame.
//!
//! What was made is recorded in the VM's state directory (`net.json`) before it is
//! made, so a `delete` after a crash can release it ([`release_recorded`]).

pub mod discover;
pub mod netns;
pub mod redirect;
pub mod tap;

use std::path::{Path, PathBuf};

use ember_agent_api::{ConfigureNetworkRequest, GuestInterface};
use ember_ttrpc::{Code, Status};
use ember_vmm::Nic;
use serde::{Deserialize, Serialize};

use crate::vm::VmHost;

/// Name of the record of a VM's network in its state directory.
pub const RECORD_FILE: &str = "net.json";

/// MTU of a pre-made NIC until the interface it stands for is known.
const DEFAULT_MTU: u32 = 1500;

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("network namespace {path}: {why}")]
    Netns { path: PathBuf, why: String },
    #[error("the network namespace {0} named by the spec does not exist (or is not a network namespace)")]
    NoSuchNetns(PathBuf),
    #[error("{command}: {why}")]
    Command { command: String, why: String },
    #[error("reading iproute2's output: {0}")]
    Parse(String),
    #[error("interface {name} ({what}) cannot be carried into the VM: only Ethernet-like interfaces (veth, tap, macvlan, ...) can back a virtio-net NIC")]
    NotEthernet { name: String, what: String },
    #[error("interfaces {names:?} appeared in the VM's network namespace after boot, but the VM has {slots} pre-made NIC(s) for them; give the interfaces to the namespace before the VM boots (a namespace path in the spec)")]
    TooManyLate { names: Vec<String>, slots: usize },
    #[error("the VM's network record {path}: {why}")]
    Record { path: PathBuf, why: String },
}

impl NetError {
    pub fn status(&self) -> Status {
        let code = match self {
            NetError::NoSuchNetns(_) | NetError::NotEthernet { .. } => Code::InvalidArgument,
            NetError::TooManyLate { .. } => Code::FailedPrecondition,
            _ => Code::Internal,
        };
        Status::new(code, self.to_string())
    }
}

/// The network a VM's first container asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum NetRequest {
    /// No network namespace in the spec (the host's network): the VM gets no NIC.
    #[default]
    None,
    /// The spec names an existing namespace.
    Path(PathBuf),
    /// The spec asks for a new namespace: Ember makes one for the VM.
    Fresh,
}

/// Reads `linux.namespaces[type=network]` of an OCI spec; a path that is not a
/// network namespace is refused.
pub fn request_from_spec(spec: &serde_json::Value) -> Result<NetRequest, NetError> {
    let Some(list) = spec.pointer("/linux/namespaces").and_then(|n| n.as_array()) else {
        return Ok(NetRequest::None);
    };
    let Some(ns) = list
        .iter()
        .find(|n| n.get("type").and_then(|t| t.as_str()) == Some("network"))
    else {
        return Ok(NetRequest::None);
    };
    match ns
        .get("path")
        .and_then(|p| p.as_str())
        .filter(|p| !p.is_empty())
    {
        None => Ok(NetRequest::Fresh),
        Some(p) => {
            let p = PathBuf::from(p);
            if netns::is_netns(&p) {
                Ok(NetRequest::Path(p))
            } else {
                Err(NetError::NoSuchNetns(p))
            }
        }
    }
}

/// A pre-made NIC waiting for the interface it will stand for.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Slot {
    pub tap: String,
    pub mac: String,
}

/// An interface of the namespace joined to a tap.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Wire {
    pub iface: String,
    pub tap: String,
}

/// What Ember made for a VM's network: the record in `net.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmNet {
    /// The namespace the VMM runs in.
    pub netns: PathBuf,
    /// Ember made the namespace (and removes it).
    pub made_netns: bool,
    /// Taps Ember made in the namespace.
    pub taps: Vec<String>,
    /// Interfaces joined to taps (Ember added their ingress qdiscs).
    pub wires: Vec<Wire>,
    /// Pre-made NICs not joined yet.
    pub late: Vec<Slot>,
}

impl VmNet {
    fn save(&self, dir: &Path) -> Result<(), NetError> {
        let path = dir.join(RECORD_FILE);
        let fail = |e: std::io::Error| NetError::Record {
            path: path.clone(),
            why: e.to_string(),
        };
        std::fs::create_dir_all(dir).map_err(fail)?;
        let tmp = path.with_extension("json.tmp");
        std::fs::write(
            &tmp,
            serde_json::to_vec(self).expect("the record serialises"),
        )
        .map_err(fail)?;
        std::fs::rename(&tmp, &path).map_err(fail)
    }
}

/// What a boot gets: the record, the NICs, and the guest's configuration when the
/// interfaces were there before boot.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub net: VmNet,
    pub nics: Vec<Nic>,
    pub guest: Option<ConfigureNetworkRequest>,
}

/// A locally administered MAC for a pre-made NIC, from the VM's key.
fn placeholder_mac(key: &str, index: usize) -> String {
    let h: Vec<u8> = key
        .as_bytes()
        .chunks(2)
        .filter_map(|c| u8::from_str_radix(std::str::from_utf8(c).ok()?, 16).ok())
        .chain(std::iter::repeat(0))
        .take(3)
        .collect();
    format!(
        "02:e0:{:02x}:{:02x}:{:02x}:{:02x}",
        h[0], h[1], h[2], index as u8
    )
}

/// The key naming a VM's own namespace: its state directory's name.
fn key_of(dir: &Path) -> String {
    dir.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "vm".into())
}

/// Makes the host side of a VM's network (blocking: runs iproute2). On failure
/// whatever it made is released again.
pub fn prepare(req: &NetRequest, dir: &Path) -> Result<Option<Prepared>, NetError> {
    let mut net = match req {
        NetRequest::None => return Ok(None),
        NetRequest::Path(p) => VmNet {
            netns: p.clone(),
            ..Default::default()
        },
        NetRequest::Fresh => VmNet {
            netns: netns::fresh_path(&key_of(dir)),
            made_netns: true,
            ..Default::default()
        },
    };
    net.save(dir)?;
    match build(&mut net, dir) {
        Ok(p) => Ok(Some(p)),
        Err(e) => {
            release(&net);
            let _ = std::fs::remove_file(dir.join(RECORD_FILE));
            Err(e)
        }
    }
}

fn build(net: &mut VmNet, dir: &Path) -> Result<Prepared, NetError> {
    if net.made_netns {
        netns::create(&net.netns)?;
    }
    let present = discover::interfaces(&net.netns)?;
    if let Some(bad) = present.iter().find(|i| !i.ethernet_like()) {
        return Err(not_ethernet(bad));
    }
    let taken: Vec<String> = present.iter().map(|i| i.name.clone()).collect();
    let mut nics = Vec::new();
    if present.is_empty() {
        // Interfaces come after Create: one NIC waits for the first of them.
        let tap = tap::free_names(&taken, 1).remove(0);
        let mac = placeholder_mac(&key_of(dir), 0);
        net.taps.push(tap.clone());
        net.save(dir)?;
        tap::create(&net.netns, &tap, DEFAULT_MTU)?;
        net.late.push(Slot {
            tap: tap.clone(),
            mac: mac.clone(),
        });
        net.save(dir)?;
        nics.push(Nic {
            id: "net0".into(),
            tap,
            mac,
            mtu: DEFAULT_MTU,
        });
        return Ok(Prepared {
            net: net.clone(),
            nics,
            guest: None,
        });
    }
    let names = tap::free_names(&taken, present.len());
    let mut guest = ConfigureNetworkRequest::default();
    for (i, (iface, tap)) in present.iter().zip(names).enumerate() {
        net.taps.push(tap.clone());
        net.save(dir)?;
        tap::create(&net.netns, &tap, iface.mtu)?;
        net.wires.push(Wire {
            iface: iface.name.clone(),
            tap: tap.clone(),
        });
        net.save(dir)?;
        redirect::connect(&net.netns, &iface.name, &tap)?;
        nics.push(Nic {
            id: format!("net{i}"),
            tap,
            mac: iface.mac.clone(),
            mtu: iface.mtu,
        });
        guest.interfaces.push(guest_interface(iface, &iface.mac));
        guest
            .routes
            .extend(discover::routes(&net.netns, &iface.name)?);
    }
    Ok(Prepared {
        net: net.clone(),
        nics,
        guest: Some(guest),
    })
}

fn not_ethernet(i: &discover::Iface) -> NetError {
    let what = if i.kind.is_empty() {
        format!("link type {}", i.link_type)
    } else {
        format!("{}, link type {}", i.kind, i.link_type)
    };
    NetError::NotEthernet {
        name: i.name.clone(),
        what,
    }
}

fn guest_interface(i: &discover::Iface, device_mac: &str) -> GuestInterface {
    GuestInterface {
        device_mac: device_mac.into(),
        name: i.name.clone(),
        mac: i.mac.clone(),
        mtu: i.mtu,
        addresses: i.addresses.clone(),
    }
}

/// Joins interfaces that appeared since boot to the pre-made NICs (blocking). None:
/// nothing new (or no NIC waits).
pub fn wire_new(net: &mut VmNet, dir: &Path) -> Result<Option<ConfigureNetworkRequest>, NetError> {
    if net.late.is_empty() {
        return Ok(None);
    }
    let fresh: Vec<discover::Iface> = discover::interfaces(&net.netns)?
        .into_iter()
        .filter(|i| !net.taps.contains(&i.name) && !net.wires.iter().any(|w| w.iface == i.name))
        .collect();
    if fresh.is_empty() {
        return Ok(None);
    }
    if let Some(bad) = fresh.iter().find(|i| !i.ethernet_like()) {
        return Err(not_ethernet(bad));
    }
    if fresh.len() > net.late.len() {
        return Err(NetError::TooManyLate {
            names: fresh.iter().map(|i| i.name.clone()).collect(),
            slots: net.late.len(),
        });
    }
    let mut guest = ConfigureNetworkRequest::default();
    for iface in &fresh {
        let slot = net.late.remove(0);
        if iface.mtu > 0 {
            let mtu = iface.mtu.to_string();
            netns::run(
                &net.netns,
                "ip",
                &["link", "set", "dev", &slot.tap, "mtu", &mtu],
            )?;
        }
        net.wires.push(Wire {
            iface: iface.name.clone(),
            tap: slot.tap.clone(),
        });
        net.save(dir)?;
        redirect::connect(&net.netns, &iface.name, &slot.tap)?;
        guest.interfaces.push(guest_interface(iface, &slot.mac));
        guest
            .routes
            .extend(discover::routes(&net.netns, &iface.name)?);
    }
    Ok(Some(guest))
}

/// Releases what the record says Ember made (blocking): the redirects, the taps,
/// the namespace it made. Parts already gone are skipped.
pub fn release(net: &VmNet) {
    if net.netns.as_os_str().is_empty() || !netns::is_netns(&net.netns) {
        // A client's namespace that is gone took the taps and qdiscs with it.
        if net.made_netns {
            netns::remove(&net.netns);
        }
        return;
    }
    if net.made_netns {
        // The namespace is Ember's own: its taps and filters go with it.
        netns::remove(&net.netns);
        return;
    }
    for w in &net.wires {
        redirect::disconnect(&net.netns, &w.iface);
    }
    for t in &net.taps {
        tap::delete(&net.netns, t);
    }
}

/// Releases the network recorded in the state directory `dir` (after a crash of the
/// shim or the VMM) and removes the record.
pub fn release_recorded(dir: &Path) {
    let path = dir.join(RECORD_FILE);
    let Ok(bytes) = std::fs::read(&path) else {
        return;
    };
    match serde_json::from_slice::<VmNet>(&bytes) {
        Ok(net) => release(&net),
        Err(e) => tracing::warn!("{}: {e}; the VM's network is left as it is", path.display()),
    }
    let _ = std::fs::remove_file(&path);
}

/// Prepares a boot's network off the async runtime.
pub async fn prepare_for_boot(req: NetRequest, dir: PathBuf) -> Result<Option<Prepared>, Status> {
    tokio::task::spawn_blocking(move || prepare(&req, &dir))
        .await
        .map_err(|e| Status::new(Code::Internal, e.to_string()))?
        .map_err(|e| e.status())
}

/// At a container's Start: interfaces that appeared in the VM's namespace since
/// boot (CNI run by the client on the task pid, an OCI hook) are joined to the
/// pre-made NICs and the guest is configured for them. Nothing to do: Ok.
pub async fn wire_late(vm: &VmHost) -> Result<(), Status> {
    let mut guard = vm.net.lock().await;
    let Some(net) = guard.as_mut() else {
        return Ok(());
    };
    if net.late.is_empty() {
        return Ok(());
    }
    let mut work = net.clone();
    let dir = vm.dir.clone();
    let (work, wired) = tokio::task::spawn_blocking(move || {
        let r = wire_new(&mut work, &dir);
        (work, r)
    })
    .await
    .map_err(|e| Status::new(Code::Internal, e.to_string()))?;
    *net = work;
    let Some(req) = wired.map_err(|e| e.status())? else {
        return Ok(());
    };
    tracing::info!(vm = %vm.id, interfaces = ?net.wires, "interfaces joined to the VM's NICs");
    vm.configure_network(&req)
        .await
        .map_err(|e| configure_err(&e))
}

/// A failed `ConfigureNetwork`, named as such.
pub fn configure_err(e: &ember_ttrpc::Error) -> Status {
    let code = match e {
        ember_ttrpc::Error::Status(s) => s.code(),
        other => other.code(),
    };
    Status::new(code, format!("configuring the guest's network: {e}"))
}

/// Releases a VM's network when its VMM is gone (blocking work off the runtime).
pub async fn release_for(vm: &VmHost) {
    let Some(net) = vm.net.lock().await.take() else {
        return;
    };
    let dir = vm.dir.clone();
    let _ = tokio::task::spawn_blocking(move || {
        release(&net);
        let _ = std::fs::remove_file(dir.join(RECORD_FILE));
    })
    .await;
}

#[cfg(test)]
mod tests;
