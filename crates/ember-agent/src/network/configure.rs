//! Applying a `ConfigureNetworkRequest` to the guest's interfaces and routes.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use ember_agent_api::{GuestInterface, GuestRoute};

use super::netlink::{Netlink, Route};
use super::NetError;

/// An interface of the request, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WantIf {
    pub device_mac: [u8; 6],
    pub name: Option<String>,
    pub mac: Option<[u8; 6]>,
    pub mtu: Option<u32>,
    pub addrs: Vec<(IpAddr, u8)>,
}

/// A route of the request, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WantRoute {
    pub text: String,
    pub dst: IpAddr,
    pub prefix: u8,
    pub gateway: Option<IpAddr>,
    pub interface: Option<String>,
}

pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = s.trim().split([':', '-']);
    for b in out.iter_mut() {
        let p = parts.next()?;
        if p.len() != 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

pub fn fmt_mac(m: &[u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// `10.0.0.5/24` or `fd00::5/64` (a bare address is a host prefix).
pub fn parse_cidr(s: &str) -> Option<(IpAddr, u8)> {
    let (a, p) = match s.trim().split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (s.trim(), None),
    };
    let addr: IpAddr = a.parse().ok()?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let prefix = match p {
        Some(p) => p.parse::<u8>().ok().filter(|p| *p <= max)?,
        None => max,
    };
    Some((addr, prefix))
}

fn valid_ifname(n: &str) -> bool {
    !n.is_empty()
        && n.len() < 16
        && n != "."
        && n != ".."
        && !n.chars().any(|c| c == '/' || c == ':' || c.is_whitespace())
}

pub fn check_interface(i: &GuestInterface) -> Result<WantIf, NetError> {
    let label = if i.name.is_empty() {
        i.device_mac.clone()
    } else {
        i.name.clone()
    };
    let bad = |what: String| NetError::Invalid(format!("interface {label}: {what}"));
    let device_mac = parse_mac(&i.device_mac)
        .ok_or_else(|| bad(format!("bad device MAC {:?}", i.device_mac)))?;
    let mac = if i.mac.is_empty() {
        None
    } else {
        Some(parse_mac(&i.mac).ok_or_else(|| bad(format!("bad MAC {:?}", i.mac)))?)
    };
    let name = if i.name.is_empty() {
        None
    } else if valid_ifname(&i.name) {
        Some(i.name.clone())
    } else {
        return Err(bad(
            "bad name: 1-15 characters, no '/', ':' or spaces".into()
        ));
    };
    if i.mtu != 0 && !(68..=65535).contains(&i.mtu) {
        return Err(bad(format!("MTU {} out of range 68-65535", i.mtu)));
    }
    let mut addrs = Vec::new();
    for a in &i.addresses {
        addrs.push(parse_cidr(a).ok_or_else(|| bad(format!("bad address {a:?}")))?);
    }
    Ok(WantIf {
        device_mac,
        name,
        mac,
        mtu: (i.mtu != 0).then_some(i.mtu),
        addrs,
    })
}

pub fn check_route(r: &GuestRoute) -> Result<WantRoute, NetError> {
    let text = format!(
        "{} via {} dev {}",
        r.destination,
        if r.gateway.is_empty() {
            "-"
        } else {
            &r.gateway
        },
        if r.interface.is_empty() {
            "-"
        } else {
            &r.interface
        }
    );
    let bad = |what: &str| NetError::Invalid(format!("route {text}: {what}"));
    let (dst, prefix) = parse_cidr(&r.destination).ok_or_else(|| bad("bad destination"))?;
    let gateway = if r.gateway.is_empty() {
        None
    } else {
        let g: IpAddr = r.gateway.trim().parse().map_err(|_| bad("bad gateway"))?;
        if g.is_ipv4() != dst.is_ipv4() {
            return Err(bad("gateway and destination of different families"));
        }
        Some(g)
    };
    if gateway.is_none() && r.interface.is_empty() {
        return Err(bad("an on-link route needs an interface"));
    }
    Ok(WantRoute {
        text,
        dst,
        prefix,
        gateway,
        interface: (!r.interface.is_empty()).then(|| r.interface.clone()),
    })
}

/// Where the kernel lists interfaces (a parameter for tests).
pub struct Sysfs(pub PathBuf);

impl Default for Sysfs {
    fn default() -> Self {
        Sysfs("/sys/class/net".into())
    }
}

impl Sysfs {
    /// Name and index of the interface whose MAC is one of `macs`.
    fn find(&self, macs: &[[u8; 6]]) -> Option<(String, u32)> {
        let rd = std::fs::read_dir(&self.0).ok()?;
        for e in rd.flatten() {
            let addr = std::fs::read_to_string(e.path().join("address")).unwrap_or_default();
            if parse_mac(&addr).is_some_and(|m| macs.contains(&m)) {
                let name = e.file_name().to_string_lossy().into_owned();
                if let Some(i) = self.index(&name) {
                    return Some((name, i));
                }
            }
        }
        None
    }

    pub fn index(&self, name: &str) -> Option<u32> {
        std::fs::read_to_string(self.0.join(name).join("ifindex"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    fn mac(&self, name: &str) -> Option<[u8; 6]> {
        parse_mac(&std::fs::read_to_string(self.0.join(name).join("address")).ok()?)
    }

    fn mtu(&self, name: &str) -> Option<u32> {
        std::fs::read_to_string(self.0.join(name).join("mtu"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }
}

/// How long a NIC may take to show up (virtio devices still probing at boot).
const APPEAR_TIMEOUT: Duration = Duration::from_secs(3);

/// Configures one interface; returns its final name.
pub fn apply_interface(nl: &mut Netlink, sys: &Sysfs, w: &WantIf) -> Result<String, NetError> {
    let label = w.name.clone().unwrap_or_else(|| fmt_mac(&w.device_mac));
    let fail =
        |what: &str, e: std::io::Error| NetError::Failed(format!("interface {label}: {what}: {e}"));
    // A repeated request finds the NIC by the MAC it was given last time.
    let mut macs = vec![w.device_mac];
    macs.extend(w.mac);
    let deadline = Instant::now() + APPEAR_TIMEOUT;
    let (cur_name, index) = loop {
        if let Some(f) = sys.find(&macs) {
            break f;
        }
        if Instant::now() >= deadline {
            return Err(NetError::NotFound(format!(
                "interface {label}: no network interface has MAC {}",
                fmt_mac(&w.device_mac)
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let rename = w.name.as_ref().filter(|n| **n != cur_name);
    let remac = w.mac.filter(|m| sys.mac(&cur_name) != Some(*m));
    if rename.is_some() || remac.is_some() {
        nl.set_up(index, false)
            .map_err(|e| fail("setting it down", e))?;
    }
    if let Some(n) = rename {
        nl.set_name(index, n)
            .map_err(|e| fail(&format!("renaming {cur_name} to {n}"), e))?;
    }
    let name = rename.cloned().unwrap_or(cur_name);
    if let Some(m) = remac {
        nl.set_mac(index, m)
            .map_err(|e| fail(&format!("setting MAC {}", fmt_mac(&m)), e))?;
    }
    if let Some(mtu) = w.mtu.filter(|m| sys.mtu(&name) != Some(*m)) {
        nl.set_mtu(index, mtu)
            .map_err(|e| fail(&format!("setting MTU {mtu}"), e))?;
    }
    // The request replaces the interface's addresses (kernel-made link-local ones stay).
    let have = nl.addrs(index).map_err(|e| fail("listing addresses", e))?;
    for h in &have {
        let kernel_made = h.addr.is_ipv6() && h.link_local;
        if !kernel_made && !w.addrs.contains(&(h.addr, h.prefix)) {
            nl.del_addr(index, h.addr, h.prefix)
                .map_err(|e| fail(&format!("removing address {}/{}", h.addr, h.prefix), e))?;
        }
    }
    for (a, p) in &w.addrs {
        nl.add_addr(index, *a, *p)
            .map_err(|e| fail(&format!("adding address {a}/{p}"), e))?;
    }
    nl.set_up(index, true)
        .map_err(|e| fail("bringing it up", e))?;
    Ok(name)
}

pub fn apply_route(nl: &mut Netlink, sys: &Sysfs, r: &WantRoute) -> Result<(), NetError> {
    let oif = match &r.interface {
        Some(n) => Some(sys.index(n).ok_or_else(|| {
            NetError::NotFound(format!("route {}: no interface named {n}", r.text))
        })?),
        None => None,
    };
    let route = Route {
        dst: r.dst,
        prefix: r.prefix,
        gateway: r.gateway,
        oif,
    };
    nl.add_route(&route)
        .map_err(|e| NetError::Failed(format!("route {}: {e}", r.text)))
}

/// Brings `lo` up (addresses come with it).
pub fn loopback_up(nl: &mut Netlink, sys: &Sysfs) -> Result<(), NetError> {
    let i = sys
        .index("lo")
        .ok_or_else(|| NetError::NotFound("no loopback interface".into()))?;
    nl.set_up(i, true)
        .map_err(|e| NetError::Failed(format!("interface lo: bringing it up: {e}")))
}

/// The addresses the request gives, first per interface, for `/etc/hosts`.
pub fn primary_addrs(ifs: &[WantIf]) -> Vec<IpAddr> {
    ifs.iter()
        .flat_map(|i| i.addrs.iter().map(|(a, _)| *a))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs() {
        assert_eq!(
            parse_mac("02:AB:00:00:00:0f\n"),
            Some([2, 0xab, 0, 0, 0, 0xf])
        );
        assert_eq!(
            parse_mac("02-ab-00-00-00-0f"),
            Some([2, 0xab, 0, 0, 0, 0xf])
        );
        assert_eq!(parse_mac("02:ab:00:00:00"), None);
        assert_eq!(parse_mac("02:ab:00:00:00:0f:01"), None);
        assert_eq!(parse_mac("2:ab:00:00:00:0f"), None);
        assert_eq!(fmt_mac(&[2, 0xab, 0, 0, 0, 0xf]), "02:ab:00:00:00:0f");
    }

    #[test]
    fn cidrs() {
        assert_eq!(
            parse_cidr("10.0.0.5/24"),
            Some(("10.0.0.5".parse().unwrap(), 24))
        );
        assert_eq!(
            parse_cidr("fd00::5/64"),
            Some(("fd00::5".parse().unwrap(), 64))
        );
        assert_eq!(
            parse_cidr("10.0.0.5"),
            Some(("10.0.0.5".parse().unwrap(), 32))
        );
        assert_eq!(parse_cidr("10.0.0.5/33"), None);
        assert_eq!(parse_cidr("fd00::/129"), None);
        assert_eq!(parse_cidr("nope/3"), None);
    }

    #[test]
    fn bad_input_names_the_interface_or_route() {
        let e = check_interface(&GuestInterface {
            device_mac: "zz".into(),
            name: "eth0".into(),
            ..Default::default()
        })
        .unwrap_err();
        assert!(
            e.to_string().contains("eth0") && e.to_string().contains("zz"),
            "{e}"
        );
        let e = check_interface(&GuestInterface {
            device_mac: "02:00:00:00:00:01".into(),
            name: "a/b".into(),
            ..Default::default()
        })
        .unwrap_err();
        assert!(e.to_string().contains("bad name"), "{e}");
        let e = check_interface(&GuestInterface {
            device_mac: "02:00:00:00:00:01".into(),
            addresses: vec!["10.0.0.1/40".into()],
            ..Default::default()
        })
        .unwrap_err();
        assert!(e.to_string().contains("02:00:00:00:00:01"), "{e}");
        let e = check_route(&GuestRoute {
            destination: "0.0.0.0/0".into(),
            gateway: "fd00::1".into(),
            interface: String::new(),
        })
        .unwrap_err();
        assert!(e.to_string().contains("different families"), "{e}");
        let e = check_route(&GuestRoute {
            destination: "10.2.0.0/16".into(),
            ..Default::default()
        })
        .unwrap_err();
        assert!(e.to_string().contains("needs an interface"), "{e}");
    }
}
