//! A small synchronous rtnetlink client: the few link, address and route requests
//! the agent makes, built by hand (the message layouts of `linux/rtnetlink.h`).
//! Every request asks for an acknowledgement, so each failure comes back as the
//! kernel's errno for that request.

use std::io;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, OwnedFd};

use nix::sys::socket::{
    bind, recv, send, socket, AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol,
    SockType,
};

const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_MULTI: u16 = 0x2;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_ROOT: u16 = 0x100;
const NLM_F_MATCH: u16 = 0x200;
const NLM_F_REPLACE: u16 = 0x100;
const NLM_F_CREATE: u16 = 0x400;

const RTM_NEWLINK: u16 = 16;
const RTM_NEWADDR: u16 = 20;
const RTM_DELADDR: u16 = 21;
const RTM_GETADDR: u16 = 22;
const RTM_NEWROUTE: u16 = 24;

const IFLA_ADDRESS: u16 = 1;
const IFLA_IFNAME: u16 = 3;
const IFLA_MTU: u16 = 4;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFA_BROADCAST: u16 = 4;
const IFA_F_NODAD: u8 = 0x02;
const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;

const RT_TABLE_MAIN: u8 = 254;
const RTPROT_STATIC: u8 = 4;
const RT_SCOPE_UNIVERSE: u8 = 0;
const RT_SCOPE_LINK: u8 = 253;
const RTN_UNICAST: u8 = 1;

const IFF_UP: u32 = 0x1;

/// An address of an interface as the kernel lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkAddr {
    pub addr: IpAddr,
    pub prefix: u8,
    pub link_local: bool,
}

/// One route to add.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub dst: IpAddr,
    pub prefix: u8,
    pub gateway: Option<IpAddr>,
    pub oif: Option<u32>,
}

pub struct Netlink {
    fd: OwnedFd,
    seq: u32,
}

/// A request under construction: header, fixed part, then attributes.
struct Msg(Vec<u8>);

impl Msg {
    fn new(kind: u16, flags: u16, fixed: &[u8]) -> Msg {
        let mut b = vec![0u8; 16];
        b[4..6].copy_from_slice(&kind.to_ne_bytes());
        b[6..8].copy_from_slice(&(flags | NLM_F_REQUEST).to_ne_bytes());
        b.extend_from_slice(fixed);
        Msg(b)
    }

    fn attr(mut self, kind: u16, data: &[u8]) -> Msg {
        let len = 4 + data.len();
        self.0.extend_from_slice(&(len as u16).to_ne_bytes());
        self.0.extend_from_slice(&kind.to_ne_bytes());
        self.0.extend_from_slice(data);
        while !self.0.len().is_multiple_of(4) {
            self.0.push(0);
        }
        self
    }

    fn finish(mut self, seq: u32) -> Vec<u8> {
        let len = self.0.len() as u32;
        self.0[0..4].copy_from_slice(&len.to_ne_bytes());
        self.0[8..12].copy_from_slice(&seq.to_ne_bytes());
        self.0
    }
}

fn ifinfomsg(index: u32, flags: u32, change: u32) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[4..8].copy_from_slice(&(index as i32).to_ne_bytes());
    b[8..12].copy_from_slice(&flags.to_ne_bytes());
    b[12..16].copy_from_slice(&change.to_ne_bytes());
    b
}

fn family(a: &IpAddr) -> u8 {
    match a {
        IpAddr::V4(_) => libc::AF_INET as u8,
        IpAddr::V6(_) => libc::AF_INET6 as u8,
    }
}

fn addr_bytes(a: &IpAddr) -> Vec<u8> {
    match a {
        IpAddr::V4(v) => v.octets().to_vec(),
        IpAddr::V6(v) => v.octets().to_vec(),
    }
}

fn ifaddrmsg(addr: &IpAddr, prefix: u8, flags: u8, index: u32) -> [u8; 8] {
    let mut b = [0u8; 8];
    b[0] = family(addr);
    b[1] = prefix;
    b[2] = flags;
    b[3] = RT_SCOPE_UNIVERSE;
    b[4..8].copy_from_slice(&index.to_ne_bytes());
    b
}

/// The IPv4 broadcast address of `a/prefix`.
fn broadcast(a: std::net::Ipv4Addr, prefix: u8) -> std::net::Ipv4Addr {
    let host = if prefix >= 32 { 0 } else { u32::MAX >> prefix };
    std::net::Ipv4Addr::from(u32::from(a) | host)
}

/// Walks the attributes in `b`: (type, payload).
fn attrs(mut b: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    while b.len() >= 4 {
        let len = u16::from_ne_bytes([b[0], b[1]]) as usize;
        let kind = u16::from_ne_bytes([b[2], b[3]]) & 0x3fff;
        if len < 4 || len > b.len() {
            break;
        }
        out.push((kind, &b[4..len]));
        let step = (len + 3) & !3;
        b = &b[step.min(b.len())..];
    }
    out
}

fn ip_from(fam: u8, b: &[u8]) -> Option<IpAddr> {
    match (fam as i32, b.len()) {
        (libc::AF_INET, 4) => Some(IpAddr::from(<[u8; 4]>::try_from(b).ok()?)),
        (libc::AF_INET6, 16) => Some(IpAddr::from(<[u8; 16]>::try_from(b).ok()?)),
        _ => None,
    }
}

impl Netlink {
    pub fn open() -> io::Result<Netlink> {
        let fd = socket(
            AddressFamily::Netlink,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::NetlinkRoute,
        )?;
        bind(fd.as_raw_fd(), &NetlinkAddr::new(0, 0))?;
        Ok(Netlink { fd, seq: 0 })
    }

    /// Sends `msg` and collects the replies up to its acknowledgement (or the end of
    /// a dump): the payloads of the data messages.
    fn transact(&mut self, msg: Msg) -> io::Result<Vec<(u16, Vec<u8>)>> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let buf = msg.finish(seq);
        send(self.fd.as_raw_fd(), &buf, MsgFlags::empty())?;
        let mut out = Vec::new();
        let mut rb = vec![0u8; 64 * 1024];
        // A dump of a guest's few addresses fits a handful of reads; bound anyway.
        for _ in 0..10_000 {
            let n = recv(self.fd.as_raw_fd(), &mut rb, MsgFlags::empty())?;
            let mut b = &rb[..n];
            while b.len() >= 16 {
                let len = u32::from_ne_bytes([b[0], b[1], b[2], b[3]]) as usize;
                let kind = u16::from_ne_bytes([b[4], b[5]]);
                let flags = u16::from_ne_bytes([b[6], b[7]]);
                let mseq = u32::from_ne_bytes([b[8], b[9], b[10], b[11]]);
                if len < 16 || len > b.len() {
                    return Err(io::Error::other("truncated netlink reply"));
                }
                let payload = &b[16..len];
                b = &b[((len + 3) & !3).min(b.len())..];
                if mseq != seq {
                    continue;
                }
                match kind {
                    NLMSG_ERROR => {
                        let code = payload
                            .get(0..4)
                            .map(|c| i32::from_ne_bytes([c[0], c[1], c[2], c[3]]))
                            .unwrap_or(-libc::EIO);
                        return if code == 0 {
                            Ok(out)
                        } else {
                            Err(io::Error::from_raw_os_error(-code))
                        };
                    }
                    NLMSG_DONE => return Ok(out),
                    _ => {
                        out.push((kind, payload.to_vec()));
                        if flags & NLM_F_MULTI == 0 {
                            return Ok(out);
                        }
                    }
                }
            }
        }
        Err(io::Error::other("netlink reply never ended"))
    }

    /// Sets or clears IFF_UP.
    pub fn set_up(&mut self, index: u32, up: bool) -> io::Result<()> {
        let flags = if up { IFF_UP } else { 0 };
        let m = Msg::new(RTM_NEWLINK, NLM_F_ACK, &ifinfomsg(index, flags, IFF_UP));
        self.transact(m).map(|_| ())
    }

    pub fn set_name(&mut self, index: u32, name: &str) -> io::Result<()> {
        let mut n = name.as_bytes().to_vec();
        n.push(0);
        let m = Msg::new(RTM_NEWLINK, NLM_F_ACK, &ifinfomsg(index, 0, 0)).attr(IFLA_IFNAME, &n);
        self.transact(m).map(|_| ())
    }

    pub fn set_mac(&mut self, index: u32, mac: [u8; 6]) -> io::Result<()> {
        let m = Msg::new(RTM_NEWLINK, NLM_F_ACK, &ifinfomsg(index, 0, 0)).attr(IFLA_ADDRESS, &mac);
        self.transact(m).map(|_| ())
    }

    pub fn set_mtu(&mut self, index: u32, mtu: u32) -> io::Result<()> {
        let m = Msg::new(RTM_NEWLINK, NLM_F_ACK, &ifinfomsg(index, 0, 0))
            .attr(IFLA_MTU, &mtu.to_ne_bytes());
        self.transact(m).map(|_| ())
    }

    /// Adds (or refreshes) an address; IPv6 ones skip duplicate address detection
    /// so they are usable at once.
    pub fn add_addr(&mut self, index: u32, addr: IpAddr, prefix: u8) -> io::Result<()> {
        let flags = if addr.is_ipv6() { IFA_F_NODAD } else { 0 };
        let bytes = addr_bytes(&addr);
        let mut m = Msg::new(
            RTM_NEWADDR,
            NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
            &ifaddrmsg(&addr, prefix, flags, index),
        )
        .attr(IFA_LOCAL, &bytes)
        .attr(IFA_ADDRESS, &bytes);
        if let IpAddr::V4(v4) = addr {
            if prefix < 31 {
                m = m.attr(IFA_BROADCAST, &broadcast(v4, prefix).octets());
            }
        }
        self.transact(m).map(|_| ())
    }

    pub fn del_addr(&mut self, index: u32, addr: IpAddr, prefix: u8) -> io::Result<()> {
        let bytes = addr_bytes(&addr);
        let m = Msg::new(RTM_DELADDR, NLM_F_ACK, &ifaddrmsg(&addr, prefix, 0, index))
            .attr(IFA_LOCAL, &bytes)
            .attr(IFA_ADDRESS, &bytes);
        self.transact(m).map(|_| ())
    }

    /// The addresses of interface `index`.
    pub fn addrs(&mut self, index: u32) -> io::Result<Vec<LinkAddr>> {
        let m = Msg::new(RTM_GETADDR, NLM_F_ROOT | NLM_F_MATCH, &[0u8; 8]);
        let mut out = Vec::new();
        for (kind, p) in self.transact(m)? {
            if kind != RTM_NEWADDR || p.len() < 8 {
                continue;
            }
            let fam = p[0];
            let prefix = p[1];
            let scope = p[3];
            let idx = u32::from_ne_bytes([p[4], p[5], p[6], p[7]]);
            if idx != index {
                continue;
            }
            let a = attrs(&p[8..]);
            let pick = |t| a.iter().find(|(k, _)| *k == t).map(|(_, d)| *d);
            let Some(addr) = pick(IFA_LOCAL)
                .or_else(|| pick(IFA_ADDRESS))
                .and_then(|d| ip_from(fam, d))
            else {
                continue;
            };
            out.push(LinkAddr {
                addr,
                prefix,
                link_local: scope == RT_SCOPE_LINK,
            });
        }
        Ok(out)
    }

    /// Adds (or replaces) a route of the main table.
    pub fn add_route(&mut self, r: &Route) -> io::Result<()> {
        let mut fixed = [0u8; 12];
        fixed[0] = family(&r.dst);
        fixed[1] = r.prefix;
        fixed[4] = RT_TABLE_MAIN;
        fixed[5] = RTPROT_STATIC;
        fixed[6] = if r.gateway.is_some() {
            RT_SCOPE_UNIVERSE
        } else {
            RT_SCOPE_LINK
        };
        fixed[7] = RTN_UNICAST;
        let mut m = Msg::new(
            RTM_NEWROUTE,
            NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
            &fixed,
        );
        if r.prefix > 0 {
            m = m.attr(RTA_DST, &addr_bytes(&r.dst));
        }
        if let Some(g) = &r.gateway {
            m = m.attr(RTA_GATEWAY, &addr_bytes(g));
        }
        if let Some(i) = r.oif {
            m = m.attr(RTA_OIF, &i.to_ne_bytes());
        }
        self.transact(m).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_laid_out_as_the_kernel_wants() {
        let m = Msg::new(RTM_NEWLINK, NLM_F_ACK, &ifinfomsg(7, IFF_UP, IFF_UP))
            .attr(IFLA_IFNAME, b"eth0\0")
            .finish(9);
        // 16 header + 16 ifinfomsg + 4 attr header + 5 name, padded to 8.
        assert_eq!(m.len(), 16 + 16 + 12);
        assert_eq!(u32::from_ne_bytes(m[0..4].try_into().unwrap()), 44);
        assert_eq!(u16::from_ne_bytes(m[4..6].try_into().unwrap()), RTM_NEWLINK);
        assert_eq!(
            u16::from_ne_bytes(m[6..8].try_into().unwrap()),
            NLM_F_REQUEST | NLM_F_ACK
        );
        assert_eq!(u32::from_ne_bytes(m[8..12].try_into().unwrap()), 9);
        assert_eq!(i32::from_ne_bytes(m[20..24].try_into().unwrap()), 7);
        let a = attrs(&m[32..]);
        assert_eq!(a, vec![(IFLA_IFNAME, &b"eth0\0"[..])]);
    }

    #[test]
    fn broadcast_addresses() {
        let a = "10.1.2.3".parse().unwrap();
        assert_eq!(
            broadcast(a, 24),
            "10.1.2.255".parse::<std::net::Ipv4Addr>().unwrap()
        );
        assert_eq!(broadcast(a, 32), a);
        assert_eq!(broadcast(a, 0), std::net::Ipv4Addr::BROADCAST);
    }

    #[test]
    fn attribute_walk_stops_at_garbage() {
        assert!(attrs(&[1, 0]).is_empty());
        assert!(attrs(&[200, 0, 1, 0, 0, 0]).is_empty());
    }
}
