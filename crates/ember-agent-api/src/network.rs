//! Guest networking: the interfaces, routes and name-service files the agent sets up
//! in the guest's network namespace, which every container of the VM shares.

/// One guest interface: a virtio-net NIC the VM booted with.
#[derive(Clone, PartialEq, prost::Message)]
pub struct GuestInterface {
    /// The MAC the VMM gave the NIC at boot, by which the agent finds it.
    #[prost(string, tag = "1")]
    pub device_mac: String,
    /// The name the interface gets in the guest (e.g. `eth0`; empty: keep it).
    #[prost(string, tag = "2")]
    pub name: String,
    /// The MAC it ends up with (the host interface's it stands for; empty: keep
    /// `device_mac`).
    #[prost(string, tag = "3")]
    pub mac: String,
    /// 0: leave the MTU alone.
    #[prost(uint32, tag = "4")]
    pub mtu: u32,
    /// Addresses in CIDR notation, IPv4 or IPv6 (`10.1.0.5/24`, `fd00::5/64`).
    #[prost(string, repeated, tag = "5")]
    pub addresses: Vec<String>,
}

/// A route of the guest's main table.
#[derive(Clone, PartialEq, prost::Message)]
pub struct GuestRoute {
    /// Destination in CIDR notation; `0.0.0.0/0` or `::/0` is the default route.
    #[prost(string, tag = "1")]
    pub destination: String,
    /// Next hop (empty: on-link).
    #[prost(string, tag = "2")]
    pub gateway: String,
    /// Guest name of the interface (`GuestInterface::name`; empty: the kernel picks).
    #[prost(string, tag = "3")]
    pub interface: String,
}

/// `/etc/resolv.conf` contents for containers that bring none of their own.
#[derive(Clone, PartialEq, prost::Message)]
pub struct DnsConfig {
    #[prost(string, repeated, tag = "1")]
    pub nameservers: Vec<String>,
    #[prost(string, repeated, tag = "2")]
    pub search: Vec<String>,
    #[prost(string, repeated, tag = "3")]
    pub options: Vec<String>,
}

/// Configures the guest's network: brings the named NICs up with their addresses,
/// then adds the routes. `lo` is always up. May be sent again; each call replaces
/// the configuration of the interfaces it names.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ConfigureNetworkRequest {
    #[prost(message, repeated, tag = "1")]
    pub interfaces: Vec<GuestInterface>,
    #[prost(message, repeated, tag = "2")]
    pub routes: Vec<GuestRoute>,
    #[prost(message, optional, tag = "3")]
    pub dns: Option<DnsConfig>,
    /// The guest's hostname (empty: leave it).
    #[prost(string, tag = "4")]
    pub hostname: String,
}
