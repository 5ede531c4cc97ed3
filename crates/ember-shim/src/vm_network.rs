//! firecracker-containerd's `CreateVM.NetworkInterfaces`.
//!
//! * `StaticConfig`: `HostDevName` is a tap that exists in the shim's network
//!   namespace; the VM gets a virtio-net NIC on it with `MacAddress` (MTU: the tap's),
//!   and the guest interface is configured from `IPConfig` (address, default route
//!   via the gateway, `Nameservers` as the containers' resolv.conf).
//! * `CNIConfig`: Ember makes a network namespace for the VM (under
//!   [`netns::NETNS_DIR`]), runs CNI ADD of the named network in it (see [`crate::cni`]),
//!   joins the interface CNI made to a tap ([`connect_tap`]), boots the VMM in that
//!   namespace and configures the guest from the CNI result. CNI DEL runs at StopVM,
//!   and at `delete` after a crash: what was done is recorded in the VM's state
//!   directory (`cni.json`) before it is done.
//! * `AllowMMDS`: Ember's metadata is a file in the guest, always reachable; the flag
//!   is accepted and changes nothing.

use std::path::{Path, PathBuf};

use ember_agent_api::{ConfigureNetworkRequest, DnsConfig, GuestInterface, GuestRoute};
use ember_ttrpc::{Code, Status};
use ember_vm_api::fc::FirecrackerNetworkInterface;
use ember_vmm::Nic;
use serde::{Deserialize, Serialize};

use crate::cni;
use crate::net::{self, netns, NetRequest, VmNet};

/// The record of a VM's CNI network in its state directory.
pub const RECORD_FILE: &str = "cni.json";
/// firecracker-containerd's default name of the CNI interface.
const DEFAULT_CNI_IFNAME: &str = "veth0";

fn bad(m: impl Into<String>) -> Status {
    Status::new(Code::InvalidArgument, m.into())
}

/// A checked interface of the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Planned {
    Static {
        mac: String,
        tap: String,
        address: Option<String>,
        gateway: Option<String>,
        nameservers: Vec<String>,
    },
    Cni {
        network: String,
        ifname: String,
        bin_path: Vec<PathBuf>,
        conf_dir: PathBuf,
        cache_dir: PathBuf,
        args: Vec<(String, String)>,
    },
}

/// Checks `NetworkInterfaces` at the edge: each has exactly one of StaticConfig and
/// CNIConfig; at most one CNI network, not mixed with static taps (the VMM runs in
/// the CNI network's namespace, where the shim's taps are not); no rate limiters.
pub fn check(ifs: &[FirecrackerNetworkInterface]) -> Result<Vec<Planned>, Status> {
    let mut out = Vec::new();
    for (i, n) in ifs.iter().enumerate() {
        let at = format!("NetworkInterfaces[{i}]");
        if n.in_rate_limiter
            .as_ref()
            .is_some_and(|r| *r != Default::default())
            || n.out_rate_limiter
                .as_ref()
                .is_some_and(|r| *r != Default::default())
        {
            return Err(Status::new(
                Code::Unimplemented,
                format!("{at}: rate limiters are not supported"),
            ));
        }
        match (&n.static_config, &n.cni_config) {
            (Some(s), None) => {
                if s.host_dev_name.is_empty() {
                    return Err(bad(format!("{at}.StaticConfig: HostDevName is required")));
                }
                if !valid_mac(&s.mac_address) {
                    return Err(bad(format!(
                        "{at}.StaticConfig: MacAddress {:?} is not a MAC address",
                        s.mac_address
                    )));
                }
                let ipc = s.ip_config.clone().unwrap_or_default();
                let address = (!ipc.primary_addr.is_empty()).then(|| ipc.primary_addr.clone());
                if let Some(a) = &address {
                    let ok = a.split_once('/').is_some_and(|(ip, p)| {
                        ip.parse::<std::net::IpAddr>().is_ok() && p.parse::<u8>().is_ok()
                    });
                    if !ok {
                        return Err(bad(format!(
                            "{at}.StaticConfig.IPConfig: PrimaryAddr {a:?} is not an address in CIDR notation"
                        )));
                    }
                }
                let gateway = (!ipc.gateway_addr.is_empty()).then(|| ipc.gateway_addr.clone());
                if let Some(g) = &gateway {
                    if g.parse::<std::net::IpAddr>().is_err() {
                        return Err(bad(format!(
                            "{at}.StaticConfig.IPConfig: GatewayAddr {g:?} is not an address"
                        )));
                    }
                }
                out.push(Planned::Static {
                    mac: s.mac_address.to_ascii_lowercase(),
                    tap: s.host_dev_name.clone(),
                    address,
                    gateway,
                    nameservers: ipc.nameservers.clone(),
                });
            }
            (None, Some(c)) => {
                if c.network_name.is_empty() {
                    return Err(bad(format!("{at}.CNIConfig: NetworkName is required")));
                }
                let or = |s: &str, d: &str| PathBuf::from(if s.is_empty() { d } else { s });
                out.push(Planned::Cni {
                    network: c.network_name.clone(),
                    ifname: if c.interface_name.is_empty() {
                        DEFAULT_CNI_IFNAME.into()
                    } else {
                        c.interface_name.clone()
                    },
                    bin_path: if c.bin_path.is_empty() {
                        vec![cni::DEFAULT_BIN_DIR.into()]
                    } else {
                        c.bin_path.iter().map(PathBuf::from).collect()
                    },
                    conf_dir: or(&c.conf_dir, "/etc/cni/conf.d"),
                    cache_dir: or(&c.cache_dir, cni::DEFAULT_CACHE_DIR),
                    args: c
                        .args
                        .iter()
                        .map(|a| (a.key.clone(), a.value.clone()))
                        .collect(),
                });
            }
            (Some(_), Some(_)) => {
                return Err(bad(format!(
                    "{at}: StaticConfig and CNIConfig are exclusive"
                )))
            }
            (None, None) => return Err(bad(format!("{at}: needs a StaticConfig or a CNIConfig"))),
        }
    }
    let cnis = out
        .iter()
        .filter(|p| matches!(p, Planned::Cni { .. }))
        .count();
    if cnis > 1 {
        return Err(bad("NetworkInterfaces: at most one CNIConfig"));
    }
    if cnis == 1 && out.len() > 1 {
        return Err(bad(
            "NetworkInterfaces: a CNIConfig cannot be mixed with StaticConfig interfaces \
             (the VMM runs in the CNI network's namespace)",
        ));
    }
    Ok(out)
}

fn valid_mac(s: &str) -> bool {
    let parts: Vec<&str> = s.split(':').collect();
    parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && u8::from_str_radix(p, 16).is_ok())
}

/// What a VM boots with for its network.
#[derive(Debug, Clone, Default)]
pub struct FcNetwork {
    pub nics: Vec<Nic>,
    /// The namespace the VMM runs in (CNI networks).
    pub netns: Option<PathBuf>,
    /// Sent to the agent once the guest is up.
    pub guest: ConfigureNetworkRequest,
    /// The taps and redirects made for a CNI network (released with the VMM).
    pub host: Option<VmNet>,
}

/// What was done for a CNI network, so that it can be undone after a crash.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub conf_dir: PathBuf,
    pub network: String,
    pub invocation: cni::Invocation,
    /// Ember made the namespace (and removes it).
    pub made_netns: bool,
}

/// Joins interface `ifname` of the namespace `netns` (the one CNI made) to a new tap
/// there, both ways (tc redirect), with the host networking's [`net::prepare`]
/// (which records what it made in `dir`'s `net.json`); returns the NIC the VM boots
/// with (the tap, the interface's MAC, its MTU) and the record to release at teardown.
pub fn connect_tap(netns: &Path, ifname: &str, dir: &Path) -> Result<(Nic, VmNet), Status> {
    let prepared = net::prepare(&NetRequest::Path(netns.to_path_buf()), dir)
        .map_err(|e| e.status())?
        .ok_or_else(|| Status::new(Code::Internal, "no network prepared for the VM"))?;
    let nic = prepared
        .net
        .wires
        .iter()
        .find(|w| w.iface == ifname)
        .and_then(|w| prepared.nics.iter().find(|n| n.tap == w.tap))
        .cloned();
    match nic {
        Some(nic) => Ok((nic, prepared.net)),
        None => {
            net::release(&prepared.net);
            let _ = std::fs::remove_file(dir.join(net::RECORD_FILE));
            Err(Status::new(
                Code::FailedPrecondition,
                format!(
                    "CNIConfig: CNI ADD made no interface {ifname} in {}",
                    netns.display()
                ),
            ))
        }
    }
}

fn sys_net(dev: &str, what: &str) -> Option<String> {
    std::fs::read_to_string(Path::new("/sys/class/net").join(dev).join(what))
        .ok()
        .map(|s| s.trim().to_string())
}

/// The key naming a VM's namespace: its state directory's name.
fn key_of(dir: &Path) -> String {
    dir.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "vm".into())
}

/// Makes the host side (blocking: runs CNI plugins). On failure nothing is left.
pub fn prepare(vm_id: &str, planned: &[Planned], dir: &Path) -> Result<FcNetwork, Status> {
    let mut net = FcNetwork::default();
    for (i, p) in planned.iter().enumerate() {
        let guest_name = format!("eth{i}");
        match p {
            Planned::Static {
                mac,
                tap,
                address,
                gateway,
                nameservers,
            } => {
                let Some(mtu) = sys_net(tap, "mtu").and_then(|m| m.parse().ok()) else {
                    return Err(bad(format!(
                        "NetworkInterfaces[{i}].StaticConfig: HostDevName {tap}: no such device in the shim's network namespace"
                    )));
                };
                if sys_net(tap, "tun_flags").is_none() {
                    return Err(bad(format!(
                        "NetworkInterfaces[{i}].StaticConfig: HostDevName {tap} is not a tap device"
                    )));
                }
                net.nics.push(Nic {
                    id: format!("net{i}"),
                    tap: tap.clone(),
                    mac: mac.clone(),
                    mtu,
                });
                net.guest.interfaces.push(GuestInterface {
                    device_mac: mac.clone(),
                    name: guest_name.clone(),
                    mtu,
                    addresses: address.iter().cloned().collect(),
                    ..Default::default()
                });
                if let Some(g) = gateway {
                    net.guest.routes.push(GuestRoute {
                        destination: if g.contains(':') { "::/0" } else { "0.0.0.0/0" }.into(),
                        gateway: g.clone(),
                        interface: guest_name,
                    });
                }
                if !nameservers.is_empty() {
                    net.guest
                        .dns
                        .get_or_insert_with(DnsConfig::default)
                        .nameservers
                        .extend(nameservers.iter().cloned());
                }
            }
            Planned::Cni { .. } => {
                let (nic, host, guest) = prepare_cni(vm_id, p, dir, &guest_name)?;
                net.netns = Some(host.netns.clone());
                net.nics.push(nic);
                net.host = Some(host);
                net.guest = guest;
            }
        }
    }
    Ok(net)
}

fn prepare_cni(
    vm_id: &str,
    p: &Planned,
    dir: &Path,
    guest_name: &str,
) -> Result<(Nic, VmNet, ConfigureNetworkRequest), Status> {
    let Planned::Cni {
        network,
        ifname,
        bin_path,
        conf_dir,
        cache_dir,
        args,
    } = p
    else {
        unreachable!("prepare_cni takes a CNI interface")
    };
    let fail = |e: cni::CniError| Status::new(Code::FailedPrecondition, e.to_string());
    let conf = cni::find_network(conf_dir, network).map_err(fail)?;
    let netns = netns::fresh_path(&key_of(dir));
    let record = Record {
        conf_dir: conf_dir.clone(),
        network: network.clone(),
        invocation: cni::Invocation {
            container_id: vm_id.into(),
            netns: netns.clone(),
            ifname: ifname.clone(),
            args: args.clone(),
            bin_path: bin_path.clone(),
            cache_dir: cache_dir.clone(),
        },
        made_netns: true,
    };
    // Recorded before anything is made, so a crash at any point can be undone.
    save(dir, &record).map_err(|e| Status::new(Code::Internal, e))?;
    let made = netns::create(&netns).map_err(|e| e.status()).and_then(|_| {
        let result = cni::add(&conf, &record.invocation).map_err(fail)?;
        let wired = connect_tap(&netns, ifname, dir).inspect_err(|_| {
            if let Err(e) = cni::del(&conf, &record.invocation, Some(&result.raw)) {
                tracing::warn!("CNI DEL after a failed tap: {e}");
            }
        })?;
        Ok((result, wired))
    });
    let (result, (nic, host)) = match made {
        Ok(m) => m,
        Err(e) => {
            netns::remove(&netns);
            let _ = std::fs::remove_file(dir.join(RECORD_FILE));
            return Err(e);
        }
    };
    let mut guest = ConfigureNetworkRequest {
        interfaces: vec![GuestInterface {
            device_mac: nic.mac.clone(),
            name: guest_name.into(),
            mac: result.mac.clone(),
            mtu: nic.mtu,
            addresses: result.addresses.clone(),
        }],
        ..Default::default()
    };
    for (dst, gw) in &result.routes {
        guest.routes.push(GuestRoute {
            destination: dst.clone(),
            gateway: gw.clone(),
            interface: guest_name.into(),
        });
    }
    if !result.nameservers.is_empty() {
        guest.dns = Some(DnsConfig {
            nameservers: result.nameservers.clone(),
            search: result.search.clone(),
            options: result.options.clone(),
        });
    }
    Ok((nic, host, guest))
}

fn save(dir: &Path, r: &Record) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let path = dir.join(RECORD_FILE);
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec(r).unwrap_or_default())
        .and_then(|_| std::fs::rename(&tmp, &path))
        .map_err(|e| format!("writing {}: {e}", path.display()))
}

/// Undoes what the record in `dir` says was done (CNI DEL, the namespace), then
/// removes the record. Blocking; nothing recorded: nothing to do.
pub fn release(dir: &Path) {
    let path = dir.join(RECORD_FILE);
    let Ok(bytes) = std::fs::read(&path) else {
        return;
    };
    match serde_json::from_slice::<Record>(&bytes) {
        Ok(r) => {
            match cni::find_network(&r.conf_dir, &r.network) {
                Ok(conf) => {
                    if let Err(e) = cni::del(&conf, &r.invocation, None) {
                        tracing::warn!("CNI DEL of network {}: {e}", r.network);
                    }
                }
                Err(e) => tracing::warn!("CNI DEL impossible: {e}"),
            }
            if r.made_netns {
                netns::remove(&r.invocation.netns);
            }
        }
        Err(e) => tracing::warn!("{}: {e}; removed", path.display()),
    }
    let _ = std::fs::remove_file(&path);
}

#[cfg(test)]
mod tests {
    use super::*;
    use ember_vm_api::fc::*;

    fn stat(mac: &str, tap: &str, addr: &str, gw: &str) -> FirecrackerNetworkInterface {
        FirecrackerNetworkInterface {
            static_config: Some(StaticNetworkConfiguration {
                mac_address: mac.into(),
                host_dev_name: tap.into(),
                ip_config: Some(IpConfiguration {
                    primary_addr: addr.into(),
                    gateway_addr: gw.into(),
                    nameservers: vec!["10.0.0.1".into()],
                }),
            }),
            ..Default::default()
        }
    }

    fn cni_if(name: &str) -> FirecrackerNetworkInterface {
        FirecrackerNetworkInterface {
            allow_mmds: true,
            cni_config: Some(CniConfiguration {
                network_name: name.into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn requests_are_checked_at_the_edge() {
        let ok = check(&[stat("02:AA:00:00:00:01", "tap0", "10.0.0.2/24", "10.0.0.1")]).unwrap();
        assert_eq!(
            ok,
            [Planned::Static {
                mac: "02:aa:00:00:00:01".into(),
                tap: "tap0".into(),
                address: Some("10.0.0.2/24".into()),
                gateway: Some("10.0.0.1".into()),
                nameservers: vec!["10.0.0.1".into()],
            }]
        );
        let c = check(&[cni_if("fcnet")]).unwrap();
        let Planned::Cni {
            ifname,
            bin_path,
            conf_dir,
            cache_dir,
            ..
        } = &c[0]
        else {
            panic!()
        };
        assert_eq!(ifname, "veth0");
        assert_eq!(bin_path, &[PathBuf::from("/opt/cni/bin")]);
        assert_eq!(conf_dir, Path::new("/etc/cni/conf.d"));
        assert_eq!(cache_dir, Path::new("/var/lib/cni"));
        let msg =
            |ifs: &[FirecrackerNetworkInterface]| check(ifs).unwrap_err().message().to_string();
        assert!(msg(&[stat("nope", "tap0", "", "")]).contains("MacAddress \"nope\""));
        assert!(msg(&[stat("02:00:00:00:00:01", "", "", "")]).contains("HostDevName is required"));
        assert!(msg(&[stat("02:00:00:00:00:01", "t", "10.0.0.2", "")]).contains("CIDR"));
        assert!(msg(&[stat("02:00:00:00:00:01", "t", "", "x")]).contains("GatewayAddr"));
        assert!(msg(&[cni_if("a"), cni_if("b")]).contains("at most one CNIConfig"));
        assert!(msg(&[cni_if("a"), stat("02:00:00:00:00:01", "t", "", "")]).contains("mixed"));
        assert!(msg(&[Default::default()]).contains("needs a StaticConfig or a CNIConfig"));
        assert!(msg(&[cni_if("")]).contains("NetworkName is required"));
        let mut limited = cni_if("a");
        limited.in_rate_limiter = Some(FirecrackerRateLimiter {
            bandwidth: Some(FirecrackerTokenBucket {
                capacity: 1,
                ..Default::default()
            }),
            ..Default::default()
        });
        assert_eq!(check(&[limited]).unwrap_err().code(), Code::Unimplemented);
    }

    fn cni_planned(ns: &crate::cni::tests::Netns, conf_dir: &Path, cache: &Path) -> Planned {
        Planned::Cni {
            network: "embertest".into(),
            ifname: "veth0".into(),
            bin_path: vec![ns.bin.path().to_path_buf()],
            conf_dir: conf_dir.into(),
            cache_dir: cache.into(),
            args: vec![("IgnoreUnknown".into(), "1".into())],
        }
    }

    fn leases(ipam: &Path) -> usize {
        std::fs::read_dir(ipam.join("embertest"))
            .map(|rd| {
                rd.flatten()
                    .filter(|e| e.file_name().to_string_lossy().starts_with("10.86."))
                    .count()
            })
            .unwrap_or(0)
    }

    /// A CNI network's interface is joined to a tap of the VM's namespace (the NIC
    /// carries its MAC, a tc redirect each way); releasing the taps (as the VMM's
    /// teardown does) and the CNI record (as StopVM does) leaves nothing.
    #[test]
    fn a_cni_network_is_joined_to_a_tap_and_released() {
        let Some(ns) = crate::cni::tests::Netns::new("fcw") else {
            return;
        };
        let d = tempfile::tempdir().unwrap();
        let ipam = d.path().join("ipam");
        crate::cni::tests::bridge_network(d.path(), &ipam, "10.86.0.0/24");
        let vmdir = d.path().join(format!("vm-fcw-{}", std::process::id()));
        let vm_netns = netns::fresh_path(&key_of(&vmdir));
        struct Undo(PathBuf);
        impl Drop for Undo {
            fn drop(&mut self) {
                net::release_recorded(&self.0);
                release(&self.0);
            }
        }
        let undo = Undo(vmdir.clone());
        let planned = [cni_planned(&ns, d.path(), &d.path().join("cache"))];
        let made = prepare("fcw", &planned, &vmdir).unwrap();
        assert_eq!(made.netns.as_deref(), Some(vm_netns.as_path()));
        let host = made.host.clone().expect("the taps are recorded");
        assert_eq!(host.wires.len(), 1, "{host:?}");
        assert_eq!(host.wires[0].iface, "veth0");
        let nic = &made.nics[0];
        assert_eq!(nic.tap, host.wires[0].tap);
        let veth_mac = net::discover::interfaces(&vm_netns)
            .unwrap()
            .into_iter()
            .find(|i| i.name == "veth0")
            .expect("CNI's veth0 is in the VM's namespace")
            .mac;
        assert_eq!(nic.mac, veth_mac);
        let filters = net::redirect::filters(&vm_netns, "veth0").unwrap();
        assert!(filters.contains(&nic.tap), "{filters}");
        let g = &made.guest.interfaces[0];
        assert_eq!(
            (g.device_mac.as_str(), g.name.as_str()),
            (nic.mac.as_str(), "eth0")
        );
        assert!(g.addresses[0].starts_with("10.86.0."), "{g:?}");
        assert_eq!(leases(&ipam), 1);
        drop(undo);
        assert_eq!(leases(&ipam), 0, "CNI DEL ran");
        assert!(!vm_netns.exists(), "the namespace is gone");
        assert!(!vmdir.join(RECORD_FILE).exists());
        assert!(!vmdir.join(net::RECORD_FILE).exists());

        // A network that fails in CNI: the plugin's error, nothing left.
        let mut missing = cni_planned(&ns, d.path(), &d.path().join("cache"));
        if let Planned::Cni { network, .. } = &mut missing {
            *network = "missing-net".into();
        }
        let planned = [missing];
        let e = prepare("fcw", &planned, &vmdir).unwrap_err();
        assert!(e.message().contains("CNI network missing-net"), "{e:?}");
        assert!(!vmdir.join(RECORD_FILE).exists());
    }

    /// What a crashed shim leaves (the record, CNI's interface and address, the
    /// namespace) goes at `release`.
    #[test]
    fn release_undoes_a_recorded_cni_add() {
        let Some(ns) = crate::cni::tests::Netns::new("fcr") else {
            return;
        };
        let d = tempfile::tempdir().unwrap();
        let ipam = d.path().join("ipam");
        let conf = crate::cni::tests::bridge_network(d.path(), &ipam, "10.86.0.0/24");
        let vmdir = d.path().join(format!("vm-fcr-{}", std::process::id()));
        let netns = netns::fresh_path(&key_of(&vmdir));
        let Planned::Cni {
            bin_path,
            cache_dir,
            args,
            ..
        } = cni_planned(&ns, d.path(), &d.path().join("cache"))
        else {
            unreachable!()
        };
        let record = Record {
            conf_dir: d.path().into(),
            network: "embertest".into(),
            invocation: cni::Invocation {
                container_id: "fcr".into(),
                netns: netns.clone(),
                ifname: "veth0".into(),
                args,
                bin_path,
                cache_dir,
            },
            made_netns: true,
        };
        save(&vmdir, &record).unwrap();
        // Whatever happens below, nothing stays.
        struct Undo(PathBuf, PathBuf);
        impl Drop for Undo {
            fn drop(&mut self) {
                release(&self.0);
                netns::remove(&self.1);
            }
        }
        let _undo = Undo(vmdir.clone(), netns.clone());
        netns::create(&netns).unwrap();
        cni::add(&conf, &record.invocation).unwrap();
        assert_eq!(leases(&ipam), 1);
        release(&vmdir);
        assert_eq!(leases(&ipam), 0, "CNI DEL ran");
        assert!(!netns.exists(), "the namespace is gone");
        assert!(!vmdir.join(RECORD_FILE).exists());
        // Nothing recorded: nothing to do.
        release(&vmdir);
    }

    #[test]
    fn a_static_tap_must_exist() {
        let planned = check(&[stat(
            "02:00:00:00:00:01",
            "ember-no-tap0",
            "10.0.0.2/24",
            "",
        )])
        .unwrap();
        let d = tempfile::tempdir().unwrap();
        let e = prepare("vm", &planned, d.path()).unwrap_err();
        assert!(
            e.message().contains("ember-no-tap0: no such device"),
            "{e:?}"
        );
    }
}
