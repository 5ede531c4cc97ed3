//! What a network namespace holds: its interfaces (iproute2's JSON output), which
//! of them a VM can carry, and the routes that go through them.

use std::path::Path;

use ember_agent_api::GuestRoute;
use serde::Deserialize;

use super::{netns, NetError};

/// One interface of the namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Iface {
    pub name: String,
    pub mac: String,
    pub mtu: u32,
    /// iproute2's `link_type`: `ether` for what a virtio-net NIC can stand for.
    pub link_type: String,
    /// The driver kind (`veth`, `tun`, `wireguard`, ...; empty for physical devices).
    pub kind: String,
    /// Global addresses in CIDR notation.
    pub addresses: Vec<String>,
}

impl Iface {
    /// Whether a virtio-net NIC can carry the interface's traffic: it passes
    /// Ethernet frames.
    pub fn ethernet_like(&self) -> bool {
        self.link_type == "ether"
    }
}

#[derive(Deserialize)]
struct Link {
    ifname: String,
    #[serde(default)]
    address: String,
    #[serde(default)]
    mtu: u32,
    #[serde(default)]
    link_type: String,
    #[serde(default)]
    linkinfo: Option<LinkInfo>,
    #[serde(default)]
    addr_info: Vec<AddrInfo>,
}

#[derive(Deserialize)]
struct LinkInfo {
    #[serde(default)]
    info_kind: String,
}

#[derive(Deserialize)]
struct AddrInfo {
    #[serde(default)]
    local: String,
    #[serde(default)]
    prefixlen: u8,
    #[serde(default)]
    scope: String,
}

#[derive(Deserialize)]
struct Route {
    dst: String,
    #[serde(default)]
    gateway: String,
    #[serde(default)]
    protocol: String,
}

/// Parses `ip -j -d addr show`.
pub fn parse_links(json: &str) -> Result<Vec<Iface>, NetError> {
    let links: Vec<Link> =
        serde_json::from_str(json).map_err(|e| NetError::Parse(e.to_string()))?;
    Ok(links
        .into_iter()
        .map(|l| Iface {
            addresses: l
                .addr_info
                .iter()
                .filter(|a| a.scope == "global" && !a.local.is_empty())
                .map(|a| format!("{}/{}", a.local, a.prefixlen))
                .collect(),
            name: l.ifname,
            mac: l.address,
            mtu: l.mtu,
            link_type: l.link_type,
            kind: l.linkinfo.map(|i| i.info_kind).unwrap_or_default(),
        })
        .collect())
}

/// Parses `ip -j [-6] route show dev IFACE`: the routes the guest needs through
/// `iface` (the kernel's own subnet routes come back in the guest with the address).
pub fn parse_routes(json: &str, iface: &str, v6: bool) -> Result<Vec<GuestRoute>, NetError> {
    let json = if json.trim().is_empty() { "[]" } else { json };
    let routes: Vec<Route> =
        serde_json::from_str(json).map_err(|e| NetError::Parse(e.to_string()))?;
    Ok(routes
        .into_iter()
        .filter(|r| {
            r.protocol != "kernel" && !r.dst.starts_with("fe80:") && !r.dst.starts_with("ff00:")
        })
        .map(|r| GuestRoute {
            destination: match r.dst.as_str() {
                "default" if v6 => "::/0".into(),
                "default" => "0.0.0.0/0".into(),
                d => d.into(),
            },
            gateway: r.gateway,
            interface: iface.into(),
        })
        .collect())
}

/// Every interface of the namespace at `ns` but `lo`.
pub fn interfaces(ns: &Path) -> Result<Vec<Iface>, NetError> {
    let out = netns::run(ns, "ip", &["-j", "-d", "addr", "show"])?;
    Ok(parse_links(&out)?
        .into_iter()
        .filter(|i| i.link_type != "loopback")
        .collect())
}

/// The IPv4 and IPv6 routes through `iface` in the namespace at `ns`.
pub fn routes(ns: &Path, iface: &str) -> Result<Vec<GuestRoute>, NetError> {
    let v4 = netns::run(ns, "ip", &["-j", "route", "show", "dev", iface])?;
    let v6 = netns::run(ns, "ip", &["-j", "-6", "route", "show", "dev", iface])?;
    let mut r = parse_routes(&v4, iface, false)?;
    r.extend(parse_routes(&v6, iface, true)?);
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINKS: &str = r#"[
      {"ifindex":1,"ifname":"lo","mtu":65536,"link_type":"loopback","address":"00:00:00:00:00:00",
       "addr_info":[{"family":"inet","local":"127.0.0.1","prefixlen":8,"scope":"host"}]},
      {"ifindex":3,"link":"veth1","ifname":"eth0","mtu":1450,"link_type":"ether",
       "address":"66:b4:4e:11:26:82","linkinfo":{"info_kind":"veth"},
       "addr_info":[{"family":"inet","local":"10.88.0.2","prefixlen":24,"scope":"global"},
                    {"family":"inet6","local":"fd00::2","prefixlen":64,"scope":"global"},
                    {"family":"inet6","local":"fe80::64b4:4eff:fe11:2682","prefixlen":64,"scope":"link"}]},
      {"ifindex":4,"ifname":"tun9","mtu":1500,"link_type":"none","linkinfo":{"info_kind":"tun"},"addr_info":[]}
    ]"#;

    #[test]
    fn links_with_their_global_addresses() {
        let l = parse_links(LINKS).unwrap();
        assert_eq!(l.len(), 3);
        assert_eq!(
            l[1],
            Iface {
                name: "eth0".into(),
                mac: "66:b4:4e:11:26:82".into(),
                mtu: 1450,
                link_type: "ether".into(),
                kind: "veth".into(),
                addresses: vec!["10.88.0.2/24".into(), "fd00::2/64".into()],
            }
        );
        assert!(l[1].ethernet_like());
        assert!(!l[2].ethernet_like());
        assert!(parse_links("not json").is_err());
    }

    #[test]
    fn routes_without_the_kernels_own() {
        let v4 = r#"[{"dst":"default","gateway":"10.88.0.1","flags":[]},
                     {"dst":"10.88.0.0/24","protocol":"kernel","scope":"link","prefsrc":"10.88.0.2"},
                     {"dst":"192.168.7.0/24","gateway":"10.88.0.9"}]"#;
        let r = parse_routes(v4, "eth0", false).unwrap();
        assert_eq!(
            r,
            [
                GuestRoute {
                    destination: "0.0.0.0/0".into(),
                    gateway: "10.88.0.1".into(),
                    interface: "eth0".into()
                },
                GuestRoute {
                    destination: "192.168.7.0/24".into(),
                    gateway: "10.88.0.9".into(),
                    interface: "eth0".into()
                },
            ]
        );
        let v6 = r#"[{"dst":"fe80::/64","protocol":"kernel","metric":256},{"dst":"default","gateway":"fd00::1"}]"#;
        let r = parse_routes(v6, "eth0", true).unwrap();
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].destination, "::/0");
        assert!(parse_routes("", "eth0", true).unwrap().is_empty());
    }
}
