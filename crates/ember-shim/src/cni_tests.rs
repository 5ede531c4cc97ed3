//! The CNI runner: result parsing, configuration lookup, and ADD/DEL against
//! Debian's real plugins (bridge, host-local) inside namespaces made here.

use super::*;
use serde_json::json;

fn inv(netns: &str) -> Invocation {
    Invocation {
        container_id: "ctr1".into(),
        netns: netns.into(),
        ifname: "eth0".into(),
        ..Default::default()
    }
}

#[test]
fn results_of_each_version() {
    let v1 = json!({
        "cniVersion": "1.0.0",
        "interfaces": [
            {"name": "cni0", "mac": "aa:aa:aa:aa:aa:aa"},
            {"name": "veth1", "mac": "bb:bb:bb:bb:bb:bb"},
            {"name": "eth0", "mac": "02:11:22:33:44:55", "sandbox": "/run/netns/x"}
        ],
        "ips": [
            {"address": "10.1.0.5/24", "gateway": "10.1.0.1", "interface": 2},
            {"address": "fd00::5/64", "gateway": "fd00::1", "interface": 2},
            {"address": "10.9.0.1/24", "interface": 0}
        ],
        "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}, {"dst": "10.7.0.0/16", "gw": "10.1.0.254"}],
        "dns": {"nameservers": ["10.1.0.1"], "search": ["a.test"], "options": ["ndots:2"]}
    });
    let r = parse_result("n", &v1, &inv("/run/netns/x")).unwrap();
    assert_eq!(r.mac, "02:11:22:33:44:55");
    assert_eq!(r.addresses, ["10.1.0.5/24", "fd00::5/64"]);
    assert_eq!(
        r.routes,
        [
            ("0.0.0.0/0".to_string(), "10.1.0.1".to_string()),
            ("::/0".into(), "fd00::1".into()),
            ("10.7.0.0/16".into(), "10.1.0.254".into())
        ]
    );
    assert_eq!(
        (r.nameservers, r.search, r.options),
        (
            vec!["10.1.0.1".into()],
            vec!["a.test".into()],
            vec!["ndots:2".into()]
        )
    );
    // 0.3.1 carries "version" per ip; no interface index means the sandbox's.
    let v03 = json!({
        "cniVersion": "0.3.1",
        "ips": [{"version": "4", "address": "10.2.0.9/16", "gateway": "10.2.0.1"}]
    });
    let r = parse_result("n", &v03, &inv("/x")).unwrap();
    assert_eq!(r.addresses, ["10.2.0.9/16"]);
    assert_eq!(r.mac, "");
    let e = parse_result(
        "n",
        &json!({"cniVersion": "0.2.0", "ip4": {"ip": "10.0.0.2/24"}}),
        &inv("/x"),
    )
    .unwrap_err();
    assert!(e.to_string().contains("not supported"), "{e}");
    let e = parse_result("n", &json!({"cniVersion": "1.0.0", "ips": []}), &inv("/x")).unwrap_err();
    assert!(
        e.to_string().contains("no address for interface eth0"),
        "{e}"
    );
}

#[test]
fn networks_are_found_by_name() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(
        d.path().join("10-a.conflist"),
        json!({"cniVersion": "1.0.0", "name": "a", "plugins": [{"type": "bridge"}, {"type": "portmap"}]})
            .to_string(),
    )
    .unwrap();
    std::fs::write(
        d.path().join("20-b.conf"),
        json!({"cniVersion": "0.4.0", "name": "b", "type": "ptp"}).to_string(),
    )
    .unwrap();
    std::fs::write(d.path().join("30-junk.json"), "not json").unwrap();
    std::fs::write(
        d.path().join("40-c.conflist"),
        json!({"name": "c", "plugins": [{"ipam": {}}]}).to_string(),
    )
    .unwrap();
    let a = find_network(d.path(), "a").unwrap();
    assert_eq!((a.cni_version.as_str(), a.plugins.len()), ("1.0.0", 2));
    let b = find_network(d.path(), "b").unwrap();
    assert_eq!(b.plugins[0]["type"], "ptp");
    let e = find_network(d.path(), "nope").unwrap_err();
    assert!(
        e.to_string().contains("no configuration of that name"),
        "{e}"
    );
    let e = find_network(d.path(), "c").unwrap_err();
    assert!(e.to_string().contains("without a type"), "{e}");
    let e = find_network(Path::new("/nonexistent/cni"), "a").unwrap_err();
    assert!(e.to_string().contains("/nonexistent/cni"), "{e}");
}

/// Two namespaces made here: `host` (where the plugins run and the bridge lives)
/// and `sandbox`; plugins reach `host` through wrappers in `bin`.
pub(crate) struct Netns {
    pub host: String,
    pub sandbox: String,
    pub bin: tempfile::TempDir,
}

pub(crate) fn ip(args: &[&str]) -> std::process::Output {
    Command::new("ip").args(args).output().unwrap()
}

impl Netns {
    pub fn new(tag: &str) -> Option<Netns> {
        if !nix::unistd::geteuid().is_root() || !Path::new("/usr/lib/cni/bridge").exists() {
            eprintln!("SKIPPED: needs root and /usr/lib/cni (containernetworking-plugins)");
            return None;
        }
        let n = Netns {
            host: format!("ember-cni-{tag}-h-{}", std::process::id()),
            sandbox: format!("ember-cni-{tag}-s-{}", std::process::id()),
            bin: tempfile::tempdir().unwrap(),
        };
        for ns in [&n.host, &n.sandbox] {
            let _ = ip(&["netns", "del", ns]);
            assert!(ip(&["netns", "add", ns]).status.success());
        }
        for plugin in ["bridge", "host-local", "loopback", "tuning"] {
            let w = n.bin.path().join(plugin);
            std::fs::write(
                &w,
                format!(
                    "#!/bin/sh\nexec ip netns exec {} /usr/lib/cni/{plugin} \"$@\"\n",
                    n.host
                ),
            )
            .unwrap();
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&w, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        Some(n)
    }

    fn sandbox_path(&self) -> String {
        format!("/run/netns/{}", self.sandbox)
    }

    fn invocation(&self, cache: &Path) -> Invocation {
        Invocation {
            container_id: "vm-under-test".into(),
            netns: self.sandbox_path().into(),
            ifname: "eth0".into(),
            args: vec![
                ("IgnoreUnknown".into(), "1".into()),
                ("K8S_POD_NAME".into(), "p".into()),
            ],
            bin_path: vec![self.bin.path().to_path_buf()],
            cache_dir: cache.to_path_buf(),
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for ns in [&self.host, &self.sandbox] {
            let _ = ip(&["netns", "del", ns]);
        }
    }
}

pub(crate) fn bridge_network(dir: &Path, ipam_dir: &Path, subnet: &str) -> Network {
    let conf = json!({
        "cniVersion": "1.0.0",
        "name": "embertest",
        "plugins": [
            {"type": "bridge", "bridge": "embr0", "isGateway": true, "ipMasq": false,
             "ipam": {"type": "host-local", "dataDir": ipam_dir, "ranges": [[{"subnet": subnet}]],
                      "routes": [{"dst": "0.0.0.0/0"}]},
             "dns": {"nameservers": ["10.88.0.1"], "search": ["ember.test"]}},
            {"type": "tuning", "mtu": 1400}
        ]
    });
    std::fs::write(dir.join("10-embertest.conflist"), conf.to_string()).unwrap();
    find_network(dir, "embertest").unwrap()
}

#[test]
fn add_and_del_with_the_real_plugins() {
    let Some(ns) = Netns::new("ad") else { return };
    let d = tempfile::tempdir().unwrap();
    let net = bridge_network(d.path(), &d.path().join("ipam"), "10.88.0.0/24");
    let inv = ns.invocation(&d.path().join("cache"));
    let r = add(&net, &inv).unwrap();
    assert_eq!(r.addresses.len(), 1, "{r:?}");
    assert!(r.addresses[0].starts_with("10.88.0."), "{r:?}");
    assert_eq!(
        r.routes,
        [("0.0.0.0/0".to_string(), "10.88.0.1".to_string())]
    );
    assert_eq!(r.nameservers, ["10.88.0.1"]);
    let link = text(&ip(&["-n", &ns.sandbox, "-o", "link", "show", "eth0"]).stdout);
    assert!(link.contains(&r.mac), "{link} vs {r:?}");
    // The chain's second plugin (tuning) ran on the first's result.
    assert!(link.contains("mtu 1400"), "{link}");
    let addr = text(&ip(&["-n", &ns.sandbox, "-o", "addr", "show", "eth0"]).stdout);
    assert!(addr.contains(&r.addresses[0]), "{addr}");
    // The bridge is in the plugins' namespace, not the host's.
    assert!(ip(&["-n", &ns.host, "link", "show", "embr0"])
        .status
        .success());
    assert!(!ip(&["link", "show", "embr0"]).status.success());
    let cached = cached_result(&net, &inv).unwrap();
    assert_eq!(cached["ips"][0]["address"], r.addresses[0].as_str());
    let leases = std::fs::read_dir(d.path().join("ipam/embertest"))
        .unwrap()
        .count();
    assert!(leases >= 2, "host-local keeps a lease file per address");

    del(&net, &inv, None).unwrap();
    assert!(!ip(&["-n", &ns.sandbox, "link", "show", "eth0"])
        .status
        .success());
    assert!(cached_result(&net, &inv).is_none());
    let ip_left = std::fs::read_dir(d.path().join("ipam/embertest"))
        .unwrap()
        .flatten()
        .any(|e| e.file_name().to_string_lossy().starts_with("10.88."));
    assert!(!ip_left, "the address lease is released");
    // DEL is idempotent, as CNI requires.
    del(&net, &inv, None).unwrap();
}

#[test]
fn a_failing_plugin_reports_its_error_and_leaves_nothing() {
    let Some(ns) = Netns::new("fail") else { return };
    let d = tempfile::tempdir().unwrap();
    // The second plugin fails after the bridge made its veth and took an address.
    let conf = json!({
        "cniVersion": "1.0.0",
        "name": "broken",
        "plugins": [
            {"type": "bridge", "bridge": "embr1", "ipam": {"type": "host-local",
             "dataDir": d.path().join("ipam"), "ranges": [[{"subnet": "10.87.0.0/24"}]]}},
            {"type": "tuning", "sysctl": {"net.nonexistent.knob": "1"}}
        ]
    });
    std::fs::write(d.path().join("broken.conflist"), conf.to_string()).unwrap();
    let net = find_network(d.path(), "broken").unwrap();
    let inv = ns.invocation(&d.path().join("cache"));
    let e = add(&net, &inv).unwrap_err().to_string();
    assert!(
        e.starts_with("CNI plugin tuning (ADD) of network broken failed:"),
        "{e}"
    );
    assert!(e.contains("nonexistent"), "{e}");
    assert!(!ip(&["-n", &ns.sandbox, "link", "show", "eth0"])
        .status
        .success());
    let leases = std::fs::read_dir(d.path().join("ipam/broken"))
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with("10.87."))
                .count()
        })
        .unwrap_or(0);
    assert_eq!(leases, 0, "the address was given back");
    assert!(cached_result(&net, &inv).is_none());

    // A plugin that does not exist is named.
    let mut missing = net.clone();
    missing.plugins = vec![json!({"type": "no-such-plugin"})];
    let e = add(&missing, &inv).unwrap_err().to_string();
    assert!(e.contains("no-such-plugin not found"), "{e}");
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}
