//! ConfigureNetwork and the containers' shared network, on a host agent running in a
//! network (and UTS) namespace of its own — the "guest" — joined by a veth pair to a
//! second namespace standing for the host side. Everything lives in namespaces made
//! here and removed on drop. Needs root, `ip`, busybox (and dnsmasq for the DNS test).

#[macro_use]
mod common;

use std::process::Command;

use common::*;
use ember_agent_api::*;
use ember_ttrpc::Code;
use serde_json::json;

/// The MAC the "VMM" gives the NIC, and the one the guest is asked to use.
const DEVICE_MAC: &str = "02:00:00:aa:00:01";
const GUEST_MAC: &str = "02:00:00:bb:00:02";

fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Two namespaces joined by a veth: `guest` holds `vg0` (MAC `DEVICE_MAC`), `host`
/// holds `vh0` with 10.99.0.1/24 and fd99::1/64.
struct Net {
    guest: String,
    host: String,
}

impl Net {
    fn new(tag: &str) -> Net {
        let n = Net {
            guest: format!("ember-{tag}-g-{}", std::process::id()),
            host: format!("ember-{tag}-h-{}", std::process::id()),
        };
        for ns in [&n.guest, &n.host] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
            sh(&["ip", "netns", "add", ns]);
        }
        sh(&[
            "ip", "-n", &n.guest, "link", "add", "vg0", "address", DEVICE_MAC, "type", "veth",
            "peer", "name", "vh0", "netns", &n.host,
        ]);
        sh(&[
            "ip",
            "-n",
            &n.host,
            "addr",
            "add",
            "10.99.0.1/24",
            "dev",
            "vh0",
        ]);
        sh(&[
            "ip",
            "-n",
            &n.host,
            "addr",
            "add",
            "fd99::1/64",
            "dev",
            "vh0",
            "nodad",
        ]);
        sh(&["ip", "-n", &n.host, "link", "set", "vh0", "up"]);
        sh(&["ip", "-n", &n.host, "link", "set", "lo", "up"]);
        n
    }

    fn in_guest(&self, args: &[&str]) -> String {
        let mut a = vec!["ip", "netns", "exec", &self.guest];
        a.extend_from_slice(args);
        sh(&a)
    }

    fn host_ok(&self, args: &[&str]) -> bool {
        Command::new("ip")
            .args(["netns", "exec", &self.host])
            .args(args)
            .output()
            .unwrap()
            .status
            .success()
    }

    async fn agent(&self, name: &str) -> Harness {
        Harness::start_wrapped(
            name,
            &["ip", "netns", "exec", &self.guest, "unshare", "--uts", "--"],
        )
        .await
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for ns in [&self.guest, &self.host] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

fn request() -> ConfigureNetworkRequest {
    ConfigureNetworkRequest {
        interfaces: vec![GuestInterface {
            device_mac: DEVICE_MAC.into(),
            name: "eth0".into(),
            mac: GUEST_MAC.into(),
            mtu: 1400,
            addresses: vec!["10.99.0.2/24".into(), "fd99::2/64".into()],
        }],
        routes: vec![
            GuestRoute {
                destination: "0.0.0.0/0".into(),
                gateway: "10.99.0.1".into(),
                interface: String::new(),
            },
            GuestRoute {
                destination: "10.98.0.0/16".into(),
                gateway: String::new(),
                interface: "eth0".into(),
            },
            GuestRoute {
                destination: "::/0".into(),
                gateway: "fd99::1".into(),
                interface: "eth0".into(),
            },
        ],
        dns: Some(DnsConfig {
            nameservers: vec!["10.99.0.1".into()],
            search: vec!["ember.test".into()],
            options: vec!["ndots:1".into()],
        }),
        hostname: "podhost".into(),
    }
}

fn with_caps(mut spec: serde_json::Value, caps: &[&str]) -> serde_json::Value {
    for set in ["bounding", "effective", "permitted"] {
        let v = spec["process"]["capabilities"][set].as_array_mut().unwrap();
        for c in caps {
            v.push(json!(c));
        }
    }
    spec
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configure_network_sets_up_the_guest_interface() {
    require_root!();
    let net = Net::new("cfg");
    let h = net.agent("net-cfg").await;
    h.client.configure_network(&request()).await.unwrap();

    let link = net.in_guest(&["ip", "-o", "link", "show", "eth0"]);
    assert!(link.contains("mtu 1400"), "{link}");
    assert!(link.contains(GUEST_MAC), "{link}");
    assert!(link.contains(",UP"), "{link}");
    let addrs = net.in_guest(&["ip", "-o", "addr", "show", "eth0"]);
    assert!(
        addrs.contains("inet 10.99.0.2/24 brd 10.99.0.255"),
        "{addrs}"
    );
    assert!(addrs.contains("inet6 fd99::2/64"), "{addrs}");
    let r4 = net.in_guest(&["ip", "route"]);
    assert!(r4.contains("default via 10.99.0.1 dev eth0"), "{r4}");
    assert!(r4.contains("10.98.0.0/16 dev eth0"), "{r4}");
    let r6 = net.in_guest(&["ip", "-6", "route"]);
    assert!(r6.contains("default via fd99::1 dev eth0"), "{r6}");
    let lo = net.in_guest(&["ip", "-o", "link", "show", "lo"]);
    assert!(lo.contains("UP"), "{lo}");
    assert!(
        net.host_ok(&[BUSYBOX, "ping", "-c1", "-W3", "10.99.0.2"]),
        "no IPv4 reply"
    );
    assert!(
        net.host_ok(&[BUSYBOX, "ping6", "-c1", "-W3", "fd99::2"]),
        "no IPv6 reply"
    );

    // A container shares that network and gets the name-service files.
    let look = spec(
        &[
            "sh",
            "-c",
            "ip -o addr show eth0; cat /etc/resolv.conf /etc/hosts; hostname",
        ],
        false,
    );
    let (st, out, err) = h.run_spec("look", look).await;
    assert_eq!(st, 0, "{out}{err}");
    assert!(out.contains("inet 10.99.0.2/24"), "{out}");
    assert!(
        out.contains("nameserver 10.99.0.1\nsearch ember.test\noptions ndots:1\n"),
        "{out}"
    );
    assert!(out.contains("127.0.0.1\tlocalhost"), "{out}");
    assert!(out.contains("10.99.0.2\tpodhost"), "{out}");
    // The container's UTS namespace has the spec's hostname.
    assert!(out.trim_end().ends_with("ctr"), "{out}");

    // A spec that mounts its own resolv.conf keeps it.
    std::fs::write(h.dir.join("my-resolv"), "nameserver 192.0.2.53\n").unwrap();
    let mut own = spec(&["cat", "/etc/resolv.conf"], false);
    own["mounts"].as_array_mut().unwrap().push(json!({
        "destination": "/etc/resolv.conf", "type": "bind",
        "source": h.dir.join("my-resolv"), "options": ["rbind", "ro"]
    }));
    let (st, out, _) = h.run_spec("own", own).await;
    assert_eq!((st, out.as_str()), (0, "nameserver 192.0.2.53\n"));

    // Idempotent: the same request again changes nothing.
    h.client.configure_network(&request()).await.unwrap();
    let again = net.in_guest(&["ip", "-o", "addr", "show", "eth0"]);
    assert_eq!(again.matches(" inet ").count(), 1, "{again}");
    assert_eq!(again.matches("inet6 fd99::2/64").count(), 1, "{again}");
    assert!(net
        .in_guest(&["ip", "-o", "link", "show", "eth0"])
        .contains(",UP"));

    // A new request replaces the interface's addresses.
    let mut moved = request();
    moved.interfaces[0].addresses = vec!["10.99.0.3/24".into()];
    moved.routes.truncate(1);
    h.client.configure_network(&moved).await.unwrap();
    let addrs = net.in_guest(&["ip", "-o", "addr", "show", "eth0"]);
    assert!(addrs.contains("inet 10.99.0.3/24"), "{addrs}");
    assert!(!addrs.contains("inet 10.99.0.2/"), "{addrs}");
    assert!(!addrs.contains("fd99::2"), "{addrs}");
    assert!(
        net.host_ok(&[BUSYBOX, "ping", "-c1", "-W3", "10.99.0.3"]),
        "no reply at the new address"
    );

    // Bad input: an unknown MAC is named, nothing changes; a bad address is refused
    // before anything is touched.
    let mut unknown = request();
    unknown.interfaces[0].device_mac = "02:00:00:00:de:ad".into();
    unknown.interfaces[0].mac = String::new();
    let e = h.client.configure_network(&unknown).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e}");
    assert!(e.to_string().contains("02:00:00:00:de:ad"), "{e}");
    let mut bad = request();
    bad.interfaces[0].addresses = vec!["10.99.0.9/24".into(), "10.99.0.300/24".into()];
    let e = h.client.configure_network(&bad).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e}");
    assert!(
        e.to_string().contains("eth0") && e.to_string().contains("10.99.0.300"),
        "{e}"
    );
    let addrs = net.in_guest(&["ip", "-o", "addr", "show", "eth0"]);
    assert!(!addrs.contains("inet 10.99.0.9/"), "{addrs}");
    let mut bad_route = request();
    bad_route.routes[1].interface = "nope0".into();
    let e = h.client.configure_network(&bad_route).await.unwrap_err();
    assert!(e.to_string().contains("nope0"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_share_the_guest_network_and_localhost() {
    require_root!();
    let net = Net::new("lo");
    let h = net.agent("net-lo").await;
    // No ConfigureNetwork yet: lo alone, up since the agent started.
    std::fs::create_dir_all(h.rootfs.join("www")).unwrap();
    std::fs::write(h.rootfs.join("www/index.html"), "hello from the pod\n").unwrap();

    // A spec asking for a new network namespace (as CRI and dockerd do) or naming one
    // by path still gets the guest's network.
    let mut server = spec(
        &["httpd", "-f", "-p", "127.0.0.1:8080", "-h", "/www"],
        false,
    );
    server["linux"]["namespaces"]
        .as_array_mut()
        .unwrap()
        .push(json!({"type": "network"}));
    h.try_create("web", server, StdioConfig::default())
        .await
        .unwrap();
    h.client.start_process("web", "").await.unwrap();

    let mut client = spec(
        &[
            "sh",
            "-c",
            "ip -o link show lo; for i in $(seq 50); do \
             wget -q -O - http://127.0.0.1:8080/ && exit 0; sleep 0.1; done; exit 1",
        ],
        false,
    );
    client["linux"]["namespaces"]
        .as_array_mut()
        .unwrap()
        .push(json!({"type": "network", "path": "/var/run/netns/some-host-namespace"}));
    let (st, out, err) = h.run_spec("client", client).await;
    assert_eq!(st, 0, "{out}{err}");
    assert!(out.contains("LOWER_UP") || out.contains(",UP"), "{out}");
    assert!(out.contains("hello from the pod"), "{out}");

    // With CAP_NET_ADMIN, `ip link set lo up` works in a container.
    let admin = with_caps(
        spec(&["ip", "link", "set", "lo", "up"], false),
        &["CAP_NET_ADMIN"],
    );
    let (st, out, err) = h.run_spec("admin", admin).await;
    assert_eq!(st, 0, "{out}{err}");

    h.client.signal_process("web", "", 9, false).await.unwrap();
    h.client.wait_process("web", "").await.unwrap();
    h.client.remove_container("web").await.unwrap();
}

/// dnsmasq answering for `ember.test` in the host-side namespace.
struct Dnsmasq(std::process::Child);

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_resolves_names_through_the_configured_dns() {
    require_root!();
    let Ok(dnsmasq) = which("dnsmasq") else {
        eprintln!("SKIPPED: dnsmasq missing (scripts/deps.sh installs dnsmasq-base)");
        return;
    };
    let net = Net::new("dns");
    let _dns = Dnsmasq(
        Command::new("ip")
            .args(["netns", "exec", &net.host])
            .arg(dnsmasq)
            .args([
                "--keep-in-foreground",
                "--no-resolv",
                "--no-hosts",
                "--bind-interfaces",
                "--listen-address=10.99.0.1",
                "--except-interface=lo",
                "--address=/ember.test/10.99.0.7",
                "--pid-file=",
                "--user=root",
            ])
            .spawn()
            .unwrap(),
    );
    let h = net.agent("net-dns").await;
    let mut req = request();
    req.interfaces[0].addresses.truncate(1);
    req.routes.truncate(1);
    h.client.configure_network(&req).await.unwrap();
    let lookup = spec(
        &[
            "sh",
            "-c",
            "for i in $(seq 30); do nslookup www.ember.test >/tmp/o 2>&1; \
             grep -q 10.99.0.7 /tmp/o && break; sleep 0.2; done; cat /tmp/o",
        ],
        false,
    );
    let (st, out, err) = h.run_spec("dns", lookup).await;
    assert_eq!(st, 0, "{out}{err}");
    assert!(out.contains("10.99.0.7"), "{out}");
}

fn which(name: &str) -> Result<std::path::PathBuf, ()> {
    for d in ["/usr/sbin", "/usr/bin", "/sbin", "/bin"] {
        let p = std::path::Path::new(d).join(name);
        if p.exists() {
            return Ok(p);
        }
    }
    Err(())
}

/// `scripts/bench-net-guest.sh`: configuring one NIC (rename, MAC, MTU, an IPv4 and
/// an IPv6 address, three routes, up) by Ember's ConfigureNetwork and by the same
/// steps as iproute2 commands, on a fresh veth each round.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn bench_configure_network() {
    require_root!();
    const ROUNDS: usize = 20;
    let net = Net::new("bench");
    let h = net.agent("net-bench").await;
    let fresh_veth = || {
        let _ = Command::new("ip")
            .args(["-n", &net.guest, "link", "del", "eth0"])
            .output();
        sh(&[
            "ip", "-n", &net.guest, "link", "add", "vg0", "address", DEVICE_MAC, "type", "veth",
            "peer", "name", "vh0", "netns", &net.host,
        ]);
        sh(&["ip", "-n", &net.host, "link", "set", "vh0", "up"]);
    };
    // The fixture made one already.
    let _ = Command::new("ip")
        .args(["-n", &net.guest, "link", "del", "vg0"])
        .output();
    let mut ember = Vec::new();
    for _ in 0..ROUNDS {
        fresh_veth();
        let t = std::time::Instant::now();
        h.client.configure_network(&request()).await.unwrap();
        ember.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let g = net.guest.clone();
    let steps: Vec<Vec<&str>> = vec![
        vec!["link", "set", "vg0", "down"],
        vec!["link", "set", "vg0", "name", "eth0"],
        vec!["link", "set", "eth0", "address", GUEST_MAC],
        vec!["link", "set", "eth0", "mtu", "1400"],
        vec!["addr", "replace", "10.99.0.2/24", "dev", "eth0"],
        vec!["addr", "replace", "fd99::2/64", "dev", "eth0", "nodad"],
        vec!["link", "set", "eth0", "up"],
        vec!["route", "replace", "default", "via", "10.99.0.1"],
        vec!["route", "replace", "10.98.0.0/16", "dev", "eth0"],
        vec![
            "-6", "route", "replace", "default", "via", "fd99::1", "dev", "eth0",
        ],
    ];
    let mut iproute = Vec::new();
    for _ in 0..ROUNDS {
        fresh_veth();
        let t = std::time::Instant::now();
        for s in &steps {
            let mut a = vec!["ip", "-n", &g];
            a.extend_from_slice(s);
            sh(&a);
        }
        iproute.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v[v.len() / 2]
    };
    let (e, i) = (median(&mut ember), median(&mut iproute));
    println!("BENCH configure-network ember_configure_network_ms={e:.2} iproute2_commands_ms={i:.2} ratio={:.2} rounds={ROUNDS}", e / i);
}
