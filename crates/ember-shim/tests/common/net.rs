//! Networks for the network tests, made only inside namespaces the test creates:
//! a namespace `ember-t-<tag>-<pid>` holding a bridge `br0` (the gateway), a CNI
//! configuration (bridge + host-local) for it, and `ctr` run inside that namespace
//! (so CNI's plugins, which `ctr run --cni` runs itself, attach veths to that bridge)
//! with the configuration bind-mounted over go-cni's default paths in the private
//! mount namespace `ip netns exec` gives it.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::common::{text, Containerd, IMAGE, RUNTIME};

/// Where the shim makes a VM's own network namespace.
pub const EMBER_NETNS_DIR: &str = "/run/ember/netns";
/// Debian's CNI plugins.
pub const CNI_BIN: &str = "/usr/lib/cni";

pub struct TestNet {
    /// Name of the namespace (`ip netns`), also the CNI network's name.
    pub name: String,
    /// 10.88.<subnet>.0/24; the bridge is .1.
    pub subnet: u8,
    pub conf_dir: tempfile::TempDir,
}

fn ip(args: &[&str]) -> Output {
    Command::new("ip")
        .args(args)
        .output()
        .expect("ip (iproute2)")
}

fn ip_ok(args: &[&str]) -> String {
    let out = ip(args);
    assert!(out.status.success(), "ip {args:?}: {}", text(&out.stderr));
    text(&out.stdout)
}

impl TestNet {
    pub fn new(tag: &str, subnet: u8) -> TestNet {
        let name = format!("ember-t-{tag}-{}", std::process::id());
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(Stdio::null())
            .status();
        ip_ok(&["netns", "add", &name]);
        let conf_dir = tempfile::Builder::new()
            .prefix("ember-cni-")
            .tempdir()
            .unwrap();
        let net = TestNet {
            name,
            subnet,
            conf_dir,
        };
        net.ip(&["link", "set", "lo", "up"]);
        net.ip(&["link", "add", "br0", "type", "bridge"]);
        net.ip(&[
            "addr",
            "add",
            &format!("{}/24", net.gateway()),
            "dev",
            "br0",
        ]);
        net.ip(&["link", "set", "br0", "up"]);
        let conf = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": net.name,
            "plugins": [{
                "type": "bridge",
                "bridge": "br0",
                "isGateway": true,
                "ipam": {
                    "type": "host-local",
                    "subnet": format!("10.88.{subnet}.0/24"),
                    "routes": [{"dst": "0.0.0.0/0"}],
                },
            }],
        });
        std::fs::write(
            net.conf_dir.path().join("10-ember-test.conflist"),
            serde_json::to_vec_pretty(&conf).unwrap(),
        )
        .unwrap();
        let _ = std::fs::remove_dir_all(net.allocations_dir());
        net
    }

    pub fn gateway(&self) -> String {
        format!("10.88.{}.1", self.subnet)
    }

    /// `ip -n NAME args`; asserts success.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut a = vec!["-n", &self.name];
        a.extend_from_slice(args);
        ip_ok(&a)
    }

    /// A command run inside the test namespace.
    pub fn exec(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// `ctr` of containerd `c`, run in the test namespace with the test's CNI
    /// configuration where go-cni looks for it (/etc/cni/net.d, /opt/cni/bin).
    pub fn ctr(&self, c: &Containerd, args: &[&str]) -> Command {
        // The mount points exist on the host (empty directories); the bind mounts
        // are made in the private mount namespace of `ip netns exec` only.
        std::fs::create_dir_all("/etc/cni/net.d").unwrap();
        std::fs::create_dir_all("/opt/cni/bin").unwrap();
        let script = format!(
            "mount --bind {conf} /etc/cni/net.d && mount --bind {CNI_BIN} /opt/cni/bin && exec ctr -a {sock} \"$@\"",
            conf = self.conf_dir.path().display(),
            sock = c.sock.display(),
        );
        let mut cmd = self.exec("sh");
        cmd.args(["-c", &script, "sh"]).args(args);
        cmd
    }

    /// `ctr run --rm --cni` of the test image in the foreground, as a child: ctr sets
    /// up CNI after Create, and runs CNI DEL and deletes the task when it ends.
    pub fn spawn_run(&self, c: &Containerd, id: &str, extra: &[&str], args: &[&str]) -> Child {
        c.used_ids.lock().unwrap().push(id.to_string());
        let mut a = vec!["run", "--rm", "--cni", "--runtime", RUNTIME];
        a.extend_from_slice(extra);
        a.extend_from_slice(&[IMAGE, id]);
        a.extend_from_slice(args);
        let log = std::fs::File::create(c.dir.path().join(format!("ctr-{id}.log"))).unwrap();
        self.ctr(c, &a)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap()
    }

    /// The same, waited for.
    pub fn run(&self, c: &Containerd, id: &str, extra: &[&str], args: &[&str]) -> Output {
        c.used_ids.lock().unwrap().push(id.to_string());
        let mut a = vec!["run", "--rm", "--cni", "--runtime", RUNTIME];
        a.extend_from_slice(extra);
        a.extend_from_slice(&[IMAGE, id]);
        a.extend_from_slice(args);
        self.ctr(c, &a).stdin(Stdio::null()).output().unwrap()
    }

    /// host-local's allocations of this network: one file per address in use.
    pub fn allocations_dir(&self) -> PathBuf {
        Path::new("/var/lib/cni/networks").join(&self.name)
    }

    pub fn allocations(&self) -> Vec<String> {
        std::fs::read_dir(self.allocations_dir())
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.parse::<std::net::IpAddr>().is_ok())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Interfaces of the test namespace besides `lo` and `br0` (CNI's veth ends).
    pub fn extra_links(&self) -> Vec<String> {
        self.ip(&["-o", "link"])
            .lines()
            .filter_map(|l| l.split(':').nth(1).map(|n| n.trim().to_string()))
            .map(|n| n.split('@').next().unwrap_or_default().to_string())
            .filter(|n| n != "lo" && n != "br0")
            .collect()
    }

    /// tc filters and qdiscs other than the defaults in the test namespace.
    pub fn tc_leftovers(&self) -> Vec<String> {
        let mut left = Vec::new();
        let out = self
            .exec("tc")
            .args(["filter", "show", "dev", "br0", "ingress"])
            .output()
            .unwrap();
        let f = text(&out.stdout);
        if !f.trim().is_empty() {
            left.push(format!("tc filter on br0: {f}"));
        }
        let out = self.exec("tc").args(["qdisc", "show"]).output().unwrap();
        for l in text(&out.stdout).lines().filter(|l| l.contains("ingress")) {
            left.push(format!("qdisc: {l}"));
        }
        left
    }
}

impl Drop for TestNet {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
        let _ = std::fs::remove_dir_all(self.allocations_dir());
    }
}

/// The namespace the shim makes for the VM of ungrouped container `id`: named by
/// the VM's state directory (digest of containerd's address, namespace, id).
pub fn vm_netns(c: &Containerd, id: &str) -> PathBuf {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for p in [c.sock.to_str().unwrap(), "default", id] {
        h.update(p.as_bytes());
        h.update([0]);
    }
    let hex: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    Path::new(EMBER_NETNS_DIR).join(&hex[..16])
}

/// Polls `f` every 200 ms until it returns Some, up to `limit`.
pub fn wait_for<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let t = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(t.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The IPv4 address of `eth0` in container `id`, as the guest has it.
pub fn container_ipv4(c: &Containerd, id: &str) -> Option<String> {
    let out = c.exec(
        id,
        &format!("ip-{}", std::process::id()),
        &["busybox", "ip", "-4", "-o", "addr", "show", "eth0"],
    );
    let s = text(&out.stdout);
    let cidr = s.split_whitespace().skip_while(|w| *w != "inet").nth(1)?;
    Some(cidr.split('/').next()?.to_string())
}

/// Removes the namespaces the shim made for this containerd's containers, in case a
/// failed test left its shims to be killed (no `shim delete` runs then). Declared
/// after the `Containerd`, so it runs first.
pub struct NetnsSweep<'a>(pub &'a Containerd);

impl Drop for NetnsSweep<'_> {
    fn drop(&mut self) {
        for id in self.0.used_ids.lock().unwrap().iter() {
            let p = vm_netns(self.0, id);
            if p.exists() {
                let _ = nix::mount::umount2(&p, nix::mount::MntFlags::MNT_DETACH);
                let _ = std::fs::remove_file(&p);
            }
        }
    }
}
