//! The host wiring against real namespaces, veths, taps and tc (root only, in
//! namespaces made here).

use super::*;

/// A test namespace holding `eth0` (one end of a veth; the other end, `peer0`, stays
/// in the namespace too, as a stand-in for a bridge port).
struct TestNs(PathBuf);

impl TestNs {
    fn new(tag: &str) -> Self {
        let dir = Path::new("/run/ember/test-netns");
        let p = dir.join(format!("{tag}-{}", std::process::id()));
        netns::remove(&p);
        netns::create(&p).unwrap();
        TestNs(p)
    }

    fn ip(&self, args: &[&str]) -> String {
        netns::run(&self.0, "ip", args).unwrap()
    }

    fn with_veth(self, mtu: &str) -> Self {
        self.ip(&[
            "link", "add", "eth0", "mtu", mtu, "type", "veth", "peer", "name", "peer0", "mtu", mtu,
        ]);
        self.ip(&["addr", "add", "10.77.0.2/24", "dev", "eth0"]);
        self.ip(&["link", "set", "eth0", "up"]);
        self.ip(&["link", "set", "peer0", "up"]);
        self.ip(&["route", "add", "default", "via", "10.77.0.1", "dev", "eth0"]);
        self
    }

    fn links(&self) -> String {
        self.ip(&["-o", "link"])
    }
}

impl Drop for TestNs {
    fn drop(&mut self) {
        netns::remove(&self.0);
    }
}

fn spec_with_netns(path: Option<&str>) -> serde_json::Value {
    let mut ns = serde_json::json!({"type": "network"});
    if let Some(p) = path {
        ns["path"] = p.into();
    }
    serde_json::json!({"linux": {"namespaces": [{"type": "mount"}, ns]}})
}

#[test]
fn the_spec_names_the_namespace() {
    assert_eq!(
        request_from_spec(&serde_json::json!({"linux": {"namespaces": [{"type": "mount"}]}}))
            .unwrap(),
        NetRequest::None
    );
    assert_eq!(
        request_from_spec(&serde_json::json!({})).unwrap(),
        NetRequest::None
    );
    assert_eq!(
        request_from_spec(&spec_with_netns(None)).unwrap(),
        NetRequest::Fresh
    );
    assert_eq!(
        request_from_spec(&spec_with_netns(Some("/proc/self/ns/net"))).unwrap(),
        NetRequest::Path("/proc/self/ns/net".into())
    );
    for bad in ["/run/netns/ember-none-such", "/etc/hostname"] {
        let e = request_from_spec(&spec_with_netns(Some(bad))).unwrap_err();
        assert_eq!(e.status().code(), Code::InvalidArgument);
        assert!(e.to_string().contains(bad), "{e}");
    }
}

#[test]
fn placeholder_macs_are_local_and_distinct() {
    let a = placeholder_mac("0a1b2c3d4e5f6a7b", 0);
    assert_eq!(a, "02:e0:0a:1b:2c:00");
    assert!(ember_vmm::valid_mac(&a));
    assert_ne!(a, placeholder_mac("0a1b2c3d4e5f6a7b", 1));
    assert!(ember_vmm::valid_mac(&placeholder_mac("x", 0)));
}

#[test]
fn a_fresh_namespace_gets_one_waiting_nic_and_goes_on_release() {
    let state = tempfile::tempdir().unwrap();
    let p = prepare(&NetRequest::Fresh, state.path()).unwrap().unwrap();
    let ns = p.net.netns.clone();
    assert!(ns.starts_with(netns::NETNS_DIR), "{}", ns.display());
    assert!(p.net.made_netns);
    assert_eq!(p.nics.len(), 1);
    assert_eq!(p.nics[0].tap, "tap0");
    assert!(p.guest.is_none());
    assert_eq!(p.net.late.len(), 1);
    let links = netns::run(&ns, "ip", &["-o", "link"]).unwrap();
    assert!(links.contains("tap0:") && links.contains("UP"), "{links}");
    // The record names all of it; releasing it (as `delete` after a crash does)
    // removes the namespace.
    let rec: VmNet =
        serde_json::from_slice(&std::fs::read(state.path().join(RECORD_FILE)).unwrap()).unwrap();
    assert_eq!(rec, p.net);
    release_recorded(state.path());
    assert!(!ns.exists());
    assert!(!state.path().join(RECORD_FILE).exists());
}

#[test]
fn present_interfaces_get_taps_and_redirects_both_ways() {
    let t = TestNs::new("pre").with_veth("1400");
    let state = tempfile::tempdir().unwrap();
    let p = prepare(&NetRequest::Path(t.0.clone()), state.path())
        .unwrap()
        .unwrap();
    assert!(!p.net.made_netns);
    // eth0 and peer0 are both there; each gets a tap.
    assert_eq!(p.nics.len(), 2, "{:?}", p.nics);
    let eth0 = p.net.wires.iter().find(|w| w.iface == "eth0").unwrap();
    let nic = p.nics.iter().find(|n| n.tap == eth0.tap).unwrap();
    assert_eq!(nic.mtu, 1400);
    let guest = p.guest.clone().unwrap();
    let gi = guest.interfaces.iter().find(|i| i.name == "eth0").unwrap();
    assert_eq!(gi.mac, nic.mac);
    assert_eq!(gi.device_mac, nic.mac);
    assert_eq!(gi.addresses, ["10.77.0.2/24"]);
    assert!(guest.routes.iter().any(|r| r.destination == "0.0.0.0/0"
        && r.gateway == "10.77.0.1"
        && r.interface == "eth0"));
    let tap_mtu = t.ip(&["-o", "link", "show", &eth0.tap]);
    assert!(tap_mtu.contains("mtu 1400"), "{tap_mtu}");
    for (from, to) in [("eth0", eth0.tap.as_str()), (eth0.tap.as_str(), "eth0")] {
        let f = redirect::filters(&t.0, from).unwrap();
        assert!(
            f.contains("mirred") && f.contains(&format!("to device {to}")),
            "{from}: {f}"
        );
    }
    // The addresses stay on the interface.
    assert!(t
        .ip(&["-o", "addr", "show", "eth0"])
        .contains("10.77.0.2/24"));
    release(&p.net);
    let links = t.links();
    assert!(!links.contains("tap"), "{links}");
    assert!(redirect::filters(&t.0, "eth0").unwrap().trim().is_empty());
    assert!(t.0.exists(), "a client's namespace is left alone");
}

#[test]
fn an_interface_the_vm_cannot_carry_is_named() {
    let t = TestNs::new("tun");
    t.ip(&["tuntap", "add", "dev", "l3tun", "mode", "tun"]);
    let state = tempfile::tempdir().unwrap();
    let e = prepare(&NetRequest::Path(t.0.clone()), state.path()).unwrap_err();
    assert_eq!(e.status().code(), Code::InvalidArgument);
    assert!(e.to_string().contains("l3tun"), "{e}");
    // Nothing is left: no tap, no record.
    assert!(!t.links().contains("tap"));
    assert!(!state.path().join(RECORD_FILE).exists());
}

#[test]
fn a_late_interface_joins_the_waiting_nic() {
    let t = TestNs::new("late");
    let state = tempfile::tempdir().unwrap();
    let p = prepare(&NetRequest::Path(t.0.clone()), state.path())
        .unwrap()
        .unwrap();
    let mut net = p.net.clone();
    assert_eq!(net.late.len(), 1);
    // Nothing new yet.
    assert!(wire_new(&mut net, state.path()).unwrap().is_none());
    // Two interfaces for one waiting NIC: refused, naming them.
    // (Taps stand in for CNI's veth: Ethernet-like, one interface each.)
    t.ip(&["tuntap", "add", "dev", "eth0", "mode", "tap"]);
    t.ip(&["link", "set", "eth0", "mtu", "1450"]);
    t.ip(&["tuntap", "add", "dev", "extra0", "mode", "tap"]);
    let e = wire_new(&mut net.clone(), state.path()).unwrap_err();
    assert_eq!(e.status().code(), Code::FailedPrecondition);
    assert!(
        e.to_string().contains("eth0") && e.to_string().contains("extra0"),
        "{e}"
    );
    t.ip(&["link", "del", "extra0"]);
    t.ip(&["addr", "add", "10.77.0.2/24", "dev", "eth0"]);
    t.ip(&["link", "set", "eth0", "up"]);
    t.ip(&["route", "add", "default", "via", "10.77.0.1", "dev", "eth0"]);
    let req = wire_new(&mut net, state.path()).unwrap().unwrap();
    let gi = &req.interfaces[0];
    assert_eq!(gi.name, "eth0");
    assert_eq!(gi.device_mac, p.nics[0].mac);
    assert_ne!(gi.mac, gi.device_mac);
    assert_eq!(gi.mtu, 1450);
    assert!(req.routes.iter().any(|r| r.gateway == "10.77.0.1"));
    assert!(net.late.is_empty());
    assert!(t.ip(&["-o", "link", "show", "tap0"]).contains("mtu 1450"));
    let f = redirect::filters(&t.0, "eth0").unwrap();
    assert!(f.contains("to device tap0"), "{f}");
    // Once joined, Start does nothing more.
    assert!(wire_new(&mut net, state.path()).unwrap().is_none());
    release(&net);
    assert!(!t.links().contains("tap0"));
}
