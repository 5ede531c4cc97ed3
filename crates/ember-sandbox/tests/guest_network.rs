//! The network of a real guest (QEMU microvm): containers of one VM share the guest's
//! network namespace (localhost between two containers, `lo` up, a spec's own
//! network namespace ignored); then a virtio-net NIC on a tap of a test namespace,
//! configured by `ConfigureNetwork`, answers pings from that namespace, reaches the
//! gateway and resolves names through dnsmasq running there. One VM carries every
//! assertion. Everything network lives in namespaces made here (root only).

mod common;
#[path = "common/features.rs"]
mod features;

use std::process::Command;
use std::time::Duration;

use common::{guest, rootfs_copy};
use ember_agent_api::{
    BlockRootfs, ConfigureNetworkRequest, DnsConfig, GuestInterface, GuestRoute,
};
use ember_sandbox::{Sandbox, SandboxConfig};
use ember_vmm::{Drive, Nic};
use features::*;

const GUEST_MAC: &str = "02:00:00:99:00:02";

fn ip(args: &[&str]) -> std::process::Output {
    Command::new("ip").args(args).output().unwrap()
}

/// A namespace holding `tap0` (10.99.0.1/24) and dnsmasq answering for ember.test.
struct HostSide {
    name: String,
    dnsmasq: Option<std::process::Child>,
}

impl HostSide {
    fn new() -> HostSide {
        let name = format!("ember-gn-{}", std::process::id());
        let _ = ip(&["netns", "del", &name]);
        assert!(ip(&["netns", "add", &name]).status.success());
        let mut h = HostSide {
            name,
            dnsmasq: None,
        };
        for args in [
            &["tuntap", "add", "dev", "tap0", "mode", "tap"][..],
            &["addr", "add", "10.99.0.1/24", "dev", "tap0"],
            &["link", "set", "tap0", "up"],
            &["link", "set", "lo", "up"],
        ] {
            let mut a = vec!["-n", &h.name];
            a.extend_from_slice(args);
            let o = ip(&a);
            assert!(
                o.status.success(),
                "ip {a:?}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
        {
            h.dnsmasq = Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    &h.name,
                    "/usr/sbin/dnsmasq",
                    "--keep-in-foreground",
                ])
                .args([
                    "--no-resolv",
                    "--no-hosts",
                    "--bind-dynamic",
                    "--listen-address=10.99.0.1",
                    "--address=/ember.test/10.99.0.7",
                    "--pid-file=",
                    "--user=root",
                ])
                .spawn()
                .map_err(|e| eprintln!("dnsmasq: {e}"))
                .ok();
        }
        h
    }

    fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    fn ping(&self, addr: &str) -> bool {
        (0..5).any(|_| {
            Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    &self.name,
                    "/bin/busybox",
                    "ping",
                    "-c1",
                    "-W2",
                    addr,
                ])
                .output()
                .unwrap()
                .status
                .success()
        })
    }
}

impl Drop for HostSide {
    fn drop(&mut self) {
        if let Some(c) = &mut self.dnsmasq {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = ip(&["netns", "del", &self.name]);
    }
}

fn rootfs(sb: &Sandbox, drive: &str) -> BlockRootfs {
    BlockRootfs {
        serial: sb.guest_serial(drive).unwrap(),
        fstype: "ext4".into(),
        ..Default::default()
    }
}

/// A spec asking for a new network namespace, as CRI and dockerd do.
fn spec_new_netns(args: &[&str]) -> Vec<u8> {
    let mut v: serde_json::Value = serde_json::from_slice(&spec_with_mounts(args, &[])).unwrap();
    let ns = v["linux"]["namespaces"].as_array_mut().unwrap();
    ns.retain(|n| n["type"] != "network");
    ns.push(serde_json::json!({"type": "network"}));
    serde_json::to_vec(&v).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_share_the_guest_network_and_a_nic_reaches_the_host() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIPPED: not root");
        return;
    }
    let host = HostSide::new();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let state = d.join("state");
    std::fs::create_dir_all(&state).unwrap();
    let mut cfg = SandboxConfig::new("gn-main", &guest(), state);
    cfg.boot_timeout = Duration::from_secs(90);
    cfg.memory_mib = 256;
    cfg.drives = ["web", "client"]
        .iter()
        .map(|id| Drive {
            id: id.to_string(),
            path: rootfs_copy(d, id),
            read_only: false,
        })
        .collect();
    cfg.nics = vec![Nic {
        id: "net0".into(),
        tap: "tap0".into(),
        mac: GUEST_MAC.into(),
        mtu: 1500,
    }];
    cfg.netns = Some(host.path().into());
    let sb = Sandbox::boot(cfg).await.unwrap_or_else(|e| panic!("{e}"));
    let a = sb.agent();

    // Two containers (a pod): a server on the guest's localhost, a client beside it.
    create(
        a,
        "web",
        rootfs(&sb, "web"),
        spec_new_netns(&["sh", "-c", "mkdir -p /www && echo pod-ok > /www/index.html && exec httpd -f -p 127.0.0.1:8080 -h /www"]),
        Vec::new(),
    )
    .await
    .unwrap_or_else(|e| panic!("create web: {e}"));
    a.start_process("web", "").await.unwrap();
    create(
        a,
        "client",
        rootfs(&sb, "client"),
        spec_new_netns(&["sleep", "1000"]),
        Vec::new(),
    )
    .await
    .unwrap();
    a.start_process("client", "").await.unwrap();
    let got = sh(
        a,
        "client",
        "get",
        "for i in $(seq 50); do wget -q -O - http://127.0.0.1:8080/ && exit 0; sleep 0.2; done; exit 1",
    )
    .await;
    assert_eq!(got.trim(), "pod-ok");
    let lo = sh(a, "client", "lo", "ip -o link show lo").await;
    assert!(lo.contains(",UP"), "{lo}");
    let up = exec(a, "client", "loup", &["sh", "-c", "ip link set lo up"]).await;
    assert_eq!(up.status, 0, "{up:?}");

    // The NIC: configured in the guest, it answers the host side.
    a.configure_network(&ConfigureNetworkRequest {
        interfaces: vec![GuestInterface {
            device_mac: GUEST_MAC.into(),
            name: "eth0".into(),
            mtu: 1500,
            addresses: vec!["10.99.0.2/24".into()],
            ..Default::default()
        }],
        routes: vec![GuestRoute {
            destination: "0.0.0.0/0".into(),
            gateway: "10.99.0.1".into(),
            interface: "eth0".into(),
        }],
        dns: Some(DnsConfig {
            nameservers: vec!["10.99.0.1".into()],
            ..Default::default()
        }),
        hostname: "gn-main".into(),
    })
    .await
    .unwrap_or_else(|e| panic!("ConfigureNetwork: {e}\n{}", sb.vm().console_tail(4000)));
    assert!(
        host.ping("10.99.0.2"),
        "the guest does not answer on its NIC"
    );
    let out = sh(
        a,
        "client",
        "gw",
        "ping -c1 -W3 10.99.0.1 && ip -o addr show eth0",
    )
    .await;
    assert!(out.contains("10.99.0.2/24"), "{out}");

    // Name resolution through the configured DNS (a container created afterwards
    // gets the agent's resolv.conf).
    {
        a.signal_process("client", "", 9, false).await.unwrap();
        a.wait_process("client", "").await.unwrap();
        a.remove_container("client").await.unwrap();
        create(
            a,
            "client",
            rootfs(&sb, "client"),
            spec_new_netns(&["sleep", "1000"]),
            Vec::new(),
        )
        .await
        .unwrap();
        a.start_process("client", "").await.unwrap();
        let out = sh(
            a,
            "client",
            "dns",
            "cat /etc/resolv.conf; for i in $(seq 20); do nslookup www.ember.test > /tmp/o 2>&1; \
             grep -q 10.99.0.7 /tmp/o && break; sleep 0.3; done; cat /tmp/o",
        )
        .await;
        assert!(out.contains("nameserver 10.99.0.1"), "{out}");
        assert!(out.contains("10.99.0.7"), "{out}");
    }
    sb.shutdown_within(Duration::from_secs(5)).await.ok();
}
