//! Networking seen from the shim: OCI hooks run on the host with the task's state
//! (a shim started for one bundle, driven over its ttrpc socket as containerd does),
//! and firecracker-containerd's CreateVM with network interfaces.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

mod common;

use common::*;
use ember_shim_api::*;

/// Starts the shim for task `id` in `bundle` the way containerd does; its address.
fn start_shim(c: &Containerd, id: &str, bundle: &Path) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_containerd-shim-ember-v2"))
        .args(["-namespace", "default", "-address"])
        .arg(&c.sock)
        .args(["-id", id, "start"])
        .current_dir(bundle)
        .env("TTRPC_ADDRESS", format!("{}.ttrpc", c.sock.display()))
        .env("EMBER_RUNTIME_CONFIG", c.dir.path().join("runtime.toml"))
        .output()
        .unwrap();
    assert!(out.status.success(), "start: {}", text(&out.stderr));
    text(&out.stdout).trim().to_string()
}

/// Runs `containerd-shim-ember-v2 delete` for the bundle, as containerd does after a
/// shim's exit.
fn shim_delete(c: &Containerd, id: &str, bundle: &Path) {
    let _ = Command::new(env!("CARGO_BIN_EXE_containerd-shim-ember-v2"))
        .args(["-namespace", "default", "-address"])
        .arg(&c.sock)
        .args(["-id", id, "delete"])
        .current_dir(bundle)
        .env("EMBER_RUNTIME_CONFIG", c.dir.path().join("runtime.toml"))
        .output();
}

/// A busybox bundle running `args` whose hooks write the state they read to
/// `<out>/<point>.json` (after `extra` hooks of their own).
fn hooked_bundle(
    dir: &Path,
    args: &[&str],
    out: &Path,
    prestart_extra: serde_json::Value,
) -> PathBuf {
    ember_guest::BusyboxBundle::create(dir, args).unwrap();
    let cfg = dir.join("config.json");
    let mut spec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&cfg).unwrap()).unwrap();
    let writer = |point: &str| {
        serde_json::json!({
            "path": "/bin/sh",
            "args": ["sh", "-c", format!("cat > {}/{point}.json", out.display())],
            "env": ["PATH=/usr/bin:/bin"],
            "timeout": 10
        })
    };
    let mut prestart = vec![writer("prestart")];
    if let Some(extra) = prestart_extra.as_array() {
        prestart.extend(extra.iter().cloned());
    }
    spec["hooks"] = serde_json::json!({
        "createRuntime": [writer("createRuntime")],
        "prestart": prestart,
        "poststart": [writer("poststart")],
        "poststop": [writer("poststop")],
    });
    spec["annotations"] = serde_json::json!({"org.example.hooked": "yes"});
    std::fs::write(&cfg, serde_json::to_vec(&spec).unwrap()).unwrap();
    dir.to_path_buf()
}

fn read_state(out: &Path, point: &str) -> serde_json::Value {
    let p = out.join(format!("{point}.json"));
    serde_json::from_slice(&std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
        .unwrap()
}

fn create_req(id: &str, bundle: &Path) -> CreateTaskRequest {
    CreateTaskRequest {
        id: id.into(),
        bundle: bundle.display().to_string(),
        ..Default::default()
    }
}

#[test]
fn oci_hooks_run_on_the_host_with_the_task_state() {
    let c = Containerd::start();
    let out = c.dir.path().join("hook-out");
    std::fs::create_dir_all(&out).unwrap();
    let id = "hooked";
    let bundle = hooked_bundle(
        &c.dir.path().join("bundles").join(id),
        &["sleep", "60"],
        &out,
        serde_json::Value::Null,
    );
    let address = start_shim(&c, id, &bundle);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let client = rt.block_on(ShimClient::connect(&address)).unwrap();
    let pid = rt
        .block_on(client.create(&create_req(id, &bundle)))
        .unwrap()
        .pid;

    for point in ["createRuntime", "prestart"] {
        let st = read_state(&out, point);
        assert_eq!(st["id"], id, "{st}");
        assert_eq!(st["status"], "creating", "{st}");
        assert_eq!(st["pid"], pid, "{point} hook saw another pid: {st}");
        assert_eq!(st["bundle"], bundle.display().to_string(), "{st}");
        assert_eq!(st["annotations"]["org.example.hooked"], "yes", "{st}");
        assert!(st["ociVersion"].is_string(), "{st}");
    }
    assert!(!out.join("poststart.json").exists());
    let started = rt.block_on(client.start(id, "")).unwrap().pid;
    let st = read_state(&out, "poststart");
    assert_eq!(
        (st["status"].as_str(), st["pid"].as_u64()),
        (Some("running"), Some(started as u64))
    );
    assert!(!out.join("poststop.json").exists());
    rt.block_on(client.kill(&KillRequest {
        id: id.into(),
        signal: 9,
        ..Default::default()
    }))
    .unwrap();
    rt.block_on(client.wait(id, "")).unwrap();
    rt.block_on(client.delete(id, "")).unwrap();
    let st = read_state(&out, "poststop");
    assert_eq!(st["status"], "stopped", "{st}");
    let _ = rt.block_on(client.shutdown(id, true));
    shim_delete(&c, id, &bundle);

    // A failing prestart hook fails Create with its message, and nothing is left:
    // the VM it booted is gone.
    let out2 = c.dir.path().join("hook-out-2");
    std::fs::create_dir_all(&out2).unwrap();
    let id = "hook-fails";
    let bundle = hooked_bundle(
        &c.dir.path().join("bundles").join(id),
        &["true"],
        &out2,
        serde_json::json!([{"path": "/bin/sh", "args": ["sh", "-c", "echo no network for you >&2; exit 7"]}]),
    );
    let address = start_shim(&c, id, &bundle);
    let client = rt.block_on(ShimClient::connect(&address)).unwrap();
    let e = rt
        .block_on(client.create(&create_req(id, &bundle)))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("prestart hook #1") && e.contains("no network for you"),
        "{e}"
    );
    assert!(out2.join("prestart.json").exists());
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !c.vmms().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "VMM left: {:?}",
            c.vmms()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = rt.block_on(client.shutdown(id, true));
    shim_delete(&c, id, &bundle);

    // Hooks the shim cannot run are refused before anything is made.
    let id = "hook-in-container";
    let dir = c.dir.path().join("bundles").join(id);
    ember_guest::BusyboxBundle::create(&dir, &["true"]).unwrap();
    let cfg = dir.join("config.json");
    let mut spec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&cfg).unwrap()).unwrap();
    spec["hooks"] = serde_json::json!({"startContainer": [{"path": "/bin/true"}]});
    std::fs::write(&cfg, serde_json::to_vec(&spec).unwrap()).unwrap();
    let address = start_shim(&c, id, &dir);
    let client = rt.block_on(ShimClient::connect(&address)).unwrap();
    let e = rt
        .block_on(client.create(&create_req(id, &dir)))
        .unwrap_err()
        .to_string();
    assert!(e.contains("startContainer hooks are not supported"), "{e}");
    assert!(c.vmms().is_empty(), "a VM was booted: {:?}", c.vmms());
    let _ = rt.block_on(client.shutdown(id, true));
    shim_delete(&c, id, &dir);
}

/// The prestart hook's `pid` is a live host process: the sandbox's VMM, which is the
/// task's pid once the VMM runs in the sandbox's network namespace (dockerd's
/// libnetwork joins that namespace through `/proc/<pid>/ns/net`).
#[test]
fn prestart_hook_pid_is_the_sandbox_host_process() {
    let c = Containerd::start();
    let out = c.dir.path().join("hook-out");
    std::fs::create_dir_all(&out).unwrap();
    let id = "hooked-pid";
    let bundle = hooked_bundle(
        &c.dir.path().join("bundles").join(id),
        &["sleep", "60"],
        &out,
        serde_json::Value::Null,
    );
    let address = start_shim(&c, id, &bundle);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let client = rt.block_on(ShimClient::connect(&address)).unwrap();
    let pid = rt
        .block_on(client.create(&create_req(id, &bundle)))
        .unwrap()
        .pid;
    let st = read_state(&out, "prestart");
    assert_eq!(st["pid"], pid);
    let vmms = c.vmms();
    let _ = rt.block_on(client.kill(&KillRequest {
        id: id.into(),
        signal: 9,
        ..Default::default()
    }));
    let _ = rt.block_on(client.delete(id, ""));
    let _ = rt.block_on(client.shutdown(id, true));
    shim_delete(&c, id, &bundle);
    assert!(
        vmms.contains(&(pid as i32)),
        "the hook's pid {pid} is not the VMM's (VMMs: {vmms:?})"
    );
}

/// A prestart hook that gives the VM's namespace an interface (as dockerd's
/// libnetwork does) has it joined to the VM's pre-made NIC before Create answers.
#[test]
fn an_interface_added_by_a_prestart_hook_is_wired_at_create() {
    let c = Containerd::start();
    let out = c.dir.path().join("hook-out");
    std::fs::create_dir_all(&out).unwrap();
    let id = "hooked-veth";
    // The hook reads the task pid from its state and adds an Ethernet interface
    // (a tap: no peer to clean up) in that process's network namespace (the
    // VM's own, made by Ember and removed with it).
    let add_iface = serde_json::json!([{
        "path": "/bin/sh",
        "args": ["sh", "-c", "pid=$(sed -n 's/.*\"pid\":\\([0-9]*\\).*/\\1/p') && \
            nsenter --net=/proc/$pid/ns/net sh -c \
            'ip tuntap add dev eth0 mode tap && ip addr add 10.99.0.2/24 dev eth0 && \
             ip link set eth0 up'"],
        "env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"],
        "timeout": 10
    }]);
    let bundle = hooked_bundle(
        &c.dir.path().join("bundles").join(id),
        &["sleep", "60"],
        &out,
        add_iface,
    );
    let cfg = bundle.join("config.json");
    let mut spec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&cfg).unwrap()).unwrap();
    let ns = spec["linux"]["namespaces"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mut ns: Vec<_> = ns.into_iter().filter(|n| n["type"] != "network").collect();
    ns.push(serde_json::json!({"type": "network"}));
    spec["linux"]["namespaces"] = ns.into();
    std::fs::write(&cfg, serde_json::to_vec(&spec).unwrap()).unwrap();
    let address = start_shim(&c, id, &bundle);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let client = rt.block_on(ShimClient::connect(&address)).unwrap();
    let created = rt.block_on(client.create(&create_req(id, &bundle)));
    let filters = created.as_ref().ok().map(|r| {
        let o = Command::new("nsenter")
            .arg(format!("--net=/proc/{}/ns/net", r.pid))
            .args(["tc", "filter", "show", "dev", "eth0", "ingress"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).into_owned()
    });
    let _ = rt.block_on(client.kill(&KillRequest {
        id: id.into(),
        signal: 9,
        ..Default::default()
    }));
    let _ = rt.block_on(client.delete(id, ""));
    let _ = rt.block_on(client.shutdown(id, true));
    shim_delete(&c, id, &bundle);
    let created = created.unwrap();
    assert_eq!(read_state(&out, "prestart")["pid"], created.pid);
    let filters = filters.unwrap();
    assert!(
        filters.contains("tap0"),
        "eth0 is not redirected to the VM's tap after Create: {filters:?}"
    );
}

// ---- CreateVM with network interfaces ----

use ember_vm_api::fc::*;
use ember_vm_api::VmClient;

/// A namespace standing for the host side of CreateVM's networks: the shim runs in
/// it (its taps, its CNI bridges live there), with dnsmasq answering for ember.test.
struct ShimNetns {
    name: String,
    dnsmasq: Option<std::process::Child>,
}

fn ip(args: &[&str]) -> std::process::Output {
    Command::new("ip").args(args).output().unwrap()
}

impl ShimNetns {
    fn new(tag: &str) -> ShimNetns {
        let name = format!("ember-vmn-{tag}-{}", std::process::id());
        let _ = ip(&["netns", "del", &name]);
        assert!(ip(&["netns", "add", &name]).status.success());
        let n = ShimNetns {
            name,
            dnsmasq: None,
        };
        n.ip(&["link", "set", "lo", "up"]);
        n
    }

    fn ip(&self, args: &[&str]) -> String {
        let mut a = vec!["-n", &self.name];
        a.extend_from_slice(args);
        let o = ip(&a);
        assert!(o.status.success(), "ip {a:?}: {}", text(&o.stderr));
        text(&o.stdout)
    }

    fn dns(&mut self, listen: &str, answer: &str) {
        self.dnsmasq = Some(
            Command::new("ip")
                .args(["netns", "exec", &self.name, "/usr/sbin/dnsmasq"])
                .args([
                    "--keep-in-foreground",
                    "--no-resolv",
                    "--no-hosts",
                    "--bind-dynamic",
                ])
                .arg(format!("--listen-address={listen}"))
                .arg(format!("--address=/ember.test/{answer}"))
                .args(["--pid-file=", "--user=root"])
                .spawn()
                .expect("dnsmasq (scripts/deps.sh installs dnsmasq-base)"),
        );
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

    /// Starts the shim of VM `vm` in this namespace, as emberd does; its address.
    fn start_vm_shim(&self, c: &Containerd, vm: &str) -> String {
        let bundle = c.dir.path().join("ember.vm").join(vm);
        std::fs::create_dir_all(&bundle).unwrap();
        std::fs::write(
            bundle.join("config.json"),
            format!(r#"{{"ociVersion":"1.0.2","annotations":{{"io.ember.vm.id":"{vm}"}}}}"#),
        )
        .unwrap();
        let out = Command::new("ip")
            .args(["netns", "exec", &self.name])
            .arg(env!("CARGO_BIN_EXE_containerd-shim-ember-v2"))
            .args(["-namespace", "default", "-address"])
            .arg(&c.sock)
            .args(["-id", vm, "start"])
            .current_dir(&bundle)
            .env("TTRPC_ADDRESS", format!("{}.ttrpc", c.sock.display()))
            .env("EMBER_RUNTIME_CONFIG", c.dir.path().join("runtime.toml"))
            .output()
            .unwrap();
        assert!(out.status.success(), "start: {}", text(&out.stderr));
        text(&out.stdout).trim().to_string()
    }
}

impl Drop for ShimNetns {
    fn drop(&mut self) {
        if let Some(d) = &mut self.dnsmasq {
            let _ = d.kill();
            let _ = d.wait();
        }
        let _ = ip(&["netns", "del", &self.name]);
    }
}

fn vm_req(vm: &str, nic: FirecrackerNetworkInterface) -> CreateVmRequest {
    CreateVmRequest {
        vmid: vm.into(),
        machine_cfg: Some(FirecrackerMachineConfiguration {
            vcpu_count: 1,
            mem_size_mib: 256,
            ..Default::default()
        }),
        network_interfaces: vec![nic],
        ..Default::default()
    }
}

/// A CNI network of the bridge plugin in `dir` (bridge `bridge`, `subnet`/24 whose
/// .1 is the gateway and the nameserver).
fn cni_conf(dir: &Path, name: &str, bridge: &str, prefix: &str, extra: Option<serde_json::Value>) {
    std::fs::create_dir_all(dir).unwrap();
    let mut plugins = vec![serde_json::json!({
        "type": "bridge", "bridge": bridge, "isGateway": true, "ipMasq": false,
        "ipam": {"type": "host-local", "dataDir": dir.join("ipam"),
                 "ranges": [[{"subnet": format!("{prefix}.0/24")}]],
                 "routes": [{"dst": "0.0.0.0/0"}]},
        "dns": {"nameservers": [format!("{prefix}.1")]}
    })];
    plugins.extend(extra);
    std::fs::write(
        dir.join(format!("10-{name}.conflist")),
        serde_json::json!({"cniVersion": "1.0.0", "name": name, "plugins": plugins}).to_string(),
    )
    .unwrap();
}

fn cni_nic(name: &str, conf: &Path) -> FirecrackerNetworkInterface {
    FirecrackerNetworkInterface {
        allow_mmds: true,
        cni_config: Some(CniConfiguration {
            network_name: name.into(),
            interface_name: "veth0".into(),
            bin_path: vec!["/usr/lib/cni".into()],
            conf_dir: conf.display().to_string(),
            cache_dir: conf.join("cache").display().to_string(),
            args: vec![cni_configuration::CniArg {
                key: "IgnoreUnknown".into(),
                value: "1".into(),
            }],
        }),
        ..Default::default()
    }
}

fn leases(conf: &Path, name: &str) -> usize {
    std::fs::read_dir(conf.join("ipam").join(name))
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with("10."))
                .count()
        })
        .unwrap_or(0)
}

/// Names of this containerd's VM state directories (Ember's namespace of a VM is
/// named for its state directory).
fn state_names(c: &Containerd) -> Vec<String> {
    std::fs::read_dir(c.dir.path().join("shim-state"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Which of `names` have a namespace under /run/ember/netns.
fn netns_left(names: &[String]) -> Vec<String> {
    names
        .iter()
        .filter(|n| Path::new("/run/ember/netns").join(n).exists())
        .cloned()
        .collect()
}

#[test]
fn create_vm_with_a_static_tap() {
    let c = Containerd::start();
    let mut ns = ShimNetns::new("st");
    ns.ip(&["tuntap", "add", "dev", "fctap0", "mode", "tap"]);
    ns.ip(&["addr", "add", "10.99.1.1/24", "dev", "fctap0"]);
    ns.ip(&["link", "set", "fctap0", "mtu", "1400", "up"]);
    ns.dns("10.99.1.1", "10.99.1.7");
    let vm = "fcstatic";
    c.used_vms.lock().unwrap().push(vm.into());
    let address = ns.start_vm_shim(&c, vm);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let client = rt.block_on(VmClient::connect(&address)).unwrap();
    let nic = FirecrackerNetworkInterface {
        static_config: Some(StaticNetworkConfiguration {
            mac_address: "02:fc:00:00:00:02".into(),
            host_dev_name: "fctap0".into(),
            ip_config: Some(IpConfiguration {
                primary_addr: "10.99.1.2/24".into(),
                gateway_addr: "10.99.1.1".into(),
                nameservers: vec!["10.99.1.1".into()],
            }),
        }),
        ..Default::default()
    };
    // A tap that is not there is named.
    let mut missing = nic.clone();
    missing.static_config.as_mut().unwrap().host_dev_name = "nosuchtap".into();
    let e = rt
        .block_on(client.create_vm(&vm_req(vm, missing), Duration::from_secs(90)))
        .unwrap_err();
    assert!(e.to_string().contains("nosuchtap: no such device"), "{e}");
    rt.block_on(client.create_vm(&vm_req(vm, nic), Duration::from_secs(90)))
        .unwrap_or_else(|e| panic!("CreateVM: {e}\n{}", c.shim_logs()));
    assert!(ns.ping("10.99.1.2"), "the guest does not answer on its tap");
    let ann = [format!("io.ember.vm.id={vm}")];
    let ann: Vec<&str> = ann.iter().map(String::as_str).collect();
    c.run_annotated("st1", &ann, &["sleep", "1000"]);
    let out = c.exec_ok(
        "st1",
        "net",
        &[
            "sh",
            "-c",
            "ip -o addr show eth0; ip -o link show eth0; ping -c1 -W3 10.99.1.1 >/dev/null && echo gw-ok; \
             for i in $(seq 20); do nslookup www.ember.test >/tmp/o 2>&1; grep -q 10.99.1.7 /tmp/o && break; sleep 0.3; done; cat /tmp/o",
        ],
    );
    assert!(out.contains("inet 10.99.1.2/24"), "{out}");
    assert!(out.contains("mtu 1400"), "the MTU is the tap's: {out}");
    assert!(out.contains("gw-ok"), "{out}");
    assert!(out.contains("10.99.1.7"), "{out}");
    c.kill_and_remove("st1");
    rt.block_on(client.stop_vm(
        &StopVmRequest {
            vmid: vm.into(),
            timeout_seconds: 5,
        },
        Duration::from_secs(30),
    ))
    .unwrap();
    assert!(c.vmms().is_empty(), "StopVM left the VMM");
    // The tap was the caller's: it stays.
    ns.ip(&["link", "show", "fctap0"]);
}

#[test]
fn create_vm_with_a_cni_network() {
    let c = Containerd::start();
    let mut ns = ShimNetns::new("cni");
    let conf = c.dir.path().join("cni");
    cni_conf(&conf, "fcnet", "fcbr0", "10.99.2", None);
    ns.dns("10.99.2.1", "10.99.2.7");
    let vm = "fccni";
    c.used_vms.lock().unwrap().push(vm.into());
    let address = ns.start_vm_shim(&c, vm);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let client = rt.block_on(VmClient::connect(&address)).unwrap();
    rt.block_on(client.create_vm(
        &vm_req(vm, cni_nic("fcnet", &conf)),
        Duration::from_secs(90),
    ))
    .unwrap_or_else(|e| panic!("CreateVM: {e}\n{}", c.shim_logs()));
    assert_eq!(leases(&conf, "fcnet"), 1);
    let names = state_names(&c);
    assert_eq!(
        netns_left(&names).len(),
        1,
        "the VM runs in a namespace of its own"
    );
    let ann = [format!("io.ember.vm.id={vm}")];
    let ann: Vec<&str> = ann.iter().map(String::as_str).collect();
    c.run_annotated("cn1", &ann, &["sleep", "1000"]);
    let out = c.exec_ok(
        "cn1",
        "net",
        &[
            "sh",
            "-c",
            "ip -o addr show eth0; ping -c1 -W3 10.99.2.1 >/dev/null && echo gw-ok; \
             for i in $(seq 20); do nslookup www.ember.test >/tmp/o 2>&1; grep -q 10.99.2.7 /tmp/o && break; sleep 0.3; done; cat /tmp/o",
        ],
    );
    assert!(out.contains("inet 10.99.2."), "{out}");
    assert!(out.contains("gw-ok"), "{out}");
    assert!(out.contains("10.99.2.7"), "{out}");
    c.kill_and_remove("cn1");
    rt.block_on(client.stop_vm(
        &StopVmRequest {
            vmid: vm.into(),
            timeout_seconds: 5,
        },
        Duration::from_secs(30),
    ))
    .unwrap();
    assert!(c.vmms().is_empty(), "StopVM left the VMM");
    assert_eq!(leases(&conf, "fcnet"), 0, "CNI DEL gave the address back");
    assert_eq!(
        netns_left(&names),
        Vec::<String>::new(),
        "the VM's namespace is gone"
    );
}

/// A CNI network whose plugin fails: its error reaches the caller, and no VMM,
/// namespace, address or interface is left.
#[test]
fn a_failing_cni_network_fails_create_vm_and_leaves_nothing() {
    let c = Containerd::start();
    let ns = ShimNetns::new("cnibad");
    let conf = c.dir.path().join("cni");
    cni_conf(
        &conf,
        "badnet",
        "fcbr1",
        "10.99.3",
        Some(serde_json::json!({"type": "tuning", "sysctl": {"net.nonexistent.knob": "1"}})),
    );
    let vm = "fccnibad";
    c.used_vms.lock().unwrap().push(vm.into());
    let address = ns.start_vm_shim(&c, vm);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let client = rt.block_on(VmClient::connect(&address)).unwrap();
    let e = rt
        .block_on(client.create_vm(
            &vm_req(vm, cni_nic("badnet", &conf)),
            Duration::from_secs(90),
        ))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("CNI plugin tuning (ADD) of network badnet failed"),
        "{e}"
    );
    assert!(e.contains("nonexistent"), "{e}");
    assert!(c.vmms().is_empty(), "a VMM was started: {:?}", c.vmms());
    assert_eq!(leases(&conf, "badnet"), 0, "the address was given back");
    let names = state_names(&c);
    assert!(!names.is_empty());
    assert_eq!(
        netns_left(&names),
        Vec::<String>::new(),
        "a namespace was left"
    );
    let veths = ns.ip(&["-o", "link", "show", "type", "veth"]);
    assert!(veths.trim().is_empty(), "veths left: {veths}");
    // A network that does not exist is named.
    let e = rt
        .block_on(client.create_vm(
            &vm_req(vm, cni_nic("nonet", &conf)),
            Duration::from_secs(90),
        ))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("CNI network nonet: no configuration of that name"),
        "{e}"
    );
    let _ = rt.block_on(client.stop_vm(
        &StopVmRequest {
            vmid: vm.into(),
            timeout_seconds: 1,
        },
        Duration::from_secs(30),
    ));
}

/// resolv.conf, hosts and hostname bind-mounted from host files (as CRI, dockerd and
/// nerdctl pass them) are what the container sees at /etc.
#[test]
fn name_files_from_host_bind_mounts() {
    let c = Containerd::start();
    let files = c.dir.path().join("etc-files");
    std::fs::create_dir_all(&files).unwrap();
    std::fs::write(
        files.join("resolv.conf"),
        "nameserver 192.0.2.53\nsearch host.test\n",
    )
    .unwrap();
    std::fs::write(
        files.join("hosts"),
        "127.0.0.1 localhost\n192.0.2.9 web.host.test\n",
    )
    .unwrap();
    std::fs::write(files.join("hostname"), "from-the-host\n").unwrap();
    let mut flags = Vec::new();
    for f in ["resolv.conf", "hosts", "hostname"] {
        flags.push("--mount".to_string());
        flags.push(format!(
            "type=bind,src={},dst=/etc/{f},options=rbind:ro",
            files.join(f).display()
        ));
    }
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let out = c.try_run_with("names", &[], &flags, &["sleep", "1000"]);
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out.stderr),
        c.shim_logs()
    );
    let seen = c.exec_ok(
        "names",
        "cat",
        &["cat", "/etc/resolv.conf", "/etc/hosts", "/etc/hostname"],
    );
    assert_eq!(
        seen,
        "nameserver 192.0.2.53\nsearch host.test\n127.0.0.1 localhost\n192.0.2.9 web.host.test\nfrom-the-host\n"
    );
    c.kill_and_remove("names");
}
