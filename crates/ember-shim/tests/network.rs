//! Networks of containers in microVMs, as containerd clients ask for them, under
//! Debian's containerd 1.6 and its `ctr`: the task pid is the VMM's, in the VM's
//! network namespace; `ctr run --cni` (bridge + host-local) gives the container an
//! address it serves and pings from; two VMs on one bridge reach each other; a
//! namespace named by the spec carries its interfaces into the VM; nothing (tap,
//! veth, tc filter, namespace, host-local allocation) outlives the containers, also
//! after a kill -9 of the shim.
//!
//! Every network is made inside a namespace the test creates (see common/net.rs).

mod common;
#[path = "common/net.rs"]
mod net;

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use common::*;
use net::*;

/// `ctr run -d` of the test image, its id noted for the cleanup checks and sweeps.
fn run_detached(c: &Containerd, id: &str, args: &[&str]) {
    c.used_ids.lock().unwrap().push(id.to_string());
    c.run_detached(id, args);
}

fn inode(p: &Path) -> u64 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .ino()
}

/// The pid `ctr tasks ls` shows for `id`.
fn task_pid(c: &Containerd, id: &str) -> u32 {
    let out = text(&c.ctr(&["tasks", "ls"]).stdout);
    out.lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|w| w.first() == Some(&id))
        .and_then(|w| w.get(1)?.parse().ok())
        .unwrap_or_else(|| panic!("no task {id}: {out}"))
}

/// Whether process `pid` holds a descriptor of tap `tap` (a tun fd's fdinfo names it).
fn holds_tap(pid: u32, tap: &str) -> bool {
    std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| std::fs::read_to_string(e.path()).ok())
                .any(|i| i.lines().any(|l| l.split_whitespace().eq(["iff:", tap])))
        })
        .unwrap_or(false)
}

fn links_in(netns: &Path) -> String {
    let out = std::process::Command::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .args(["ip", "-o", "link"])
        .output()
        .unwrap();
    text(&out.stdout)
}

/// A VM's own namespace is gone (and so the taps and veths in it).
fn assert_netns_gone(c: &Containerd, id: &str) {
    let ns = vm_netns(c, id);
    wait_for(
        Duration::from_secs(15),
        &format!("{} removed", ns.display()),
        || (!ns.exists()).then_some(()),
    );
}

/// `ctr run` without `--cni`: the spec asks for a new network namespace, the shim
/// makes one for the VM, and the task pid is the VMM's, running in it with its one
/// pre-made NIC's tap open. `ctr task ps` still lists the guest's processes.
#[test]
fn the_task_pid_is_the_vmm_in_the_vms_own_namespace() {
    let c = Containerd::start();
    let _sweep = NetnsSweep(&c);
    run_detached(&c, "pid1", &["sleep", "600"]);
    let pid = task_pid(&c, "pid1");
    assert!(
        c.vmms().contains(&(pid as i32)),
        "task pid {pid} is not a VMM of ours: {:?}",
        c.vmms()
    );
    let ns = vm_netns(&c, "pid1");
    assert_eq!(
        inode(Path::new(&format!("/proc/{pid}/ns/net"))),
        inode(&ns),
        "the VMM is not in the VM's namespace {}",
        ns.display()
    );
    let links = links_in(&ns);
    assert!(links.contains("tap0:"), "{links}");
    assert!(holds_tap(pid, "tap0"), "the VMM holds no tap0");
    let ps = text(&c.ctr(&["tasks", "ps", "pid1"]).stdout);
    assert!(!ps.contains(&format!("\n{pid} ")), "{ps}");
    assert!(ps.lines().count() >= 2, "{ps}");
    // An exec's pid is the guest's; the task's stays the VMM's.
    c.exec_ok("pid1", "e1", &["true"]);
    assert_eq!(task_pid(&c, "pid1"), pid);
    c.kill_and_remove("pid1");
    assert_netns_gone(&c, "pid1");
    c.assert_clean();
}

/// Containers that join a running VM report its VMM's pid as their task pid.
#[test]
fn containers_of_one_vm_report_its_vmm_pid() {
    let c = Containerd::start();
    let _sweep = NetnsSweep(&c);
    let vm = format!("netvm{}", std::process::id());
    c.used_vms.lock().unwrap().push(vm.clone());
    let ann = format!("io.ember.vm.id={vm}");
    c.run_annotated("j1", &[&ann], &["sleep", "600"]);
    c.run_annotated("j2", &[&ann], &["sleep", "600"]);
    let (p1, p2) = (task_pid(&c, "j1"), task_pid(&c, "j2"));
    assert_eq!(p1, p2);
    assert_eq!(c.vmms(), [p1 as i32]);
    c.kill_and_remove("j2");
    c.kill_and_remove("j1");
    c.assert_clean();
}

/// After a kill -9 of the shim, containerd's `delete` releases the namespace and
/// taps Ember made, from the VM's record.
#[test]
fn a_killed_shim_leaves_no_network_behind() {
    let c = Containerd::start();
    let _sweep = NetnsSweep(&c);
    run_detached(&c, "crash1", &["sleep", "600"]);
    let ns = vm_netns(&c, "crash1");
    assert!(ns.exists());
    let sock = c.sock.display().to_string();
    let shims = pids_matching(&["containerd-shim-ember-v2", &sock, "serve"]);
    assert_eq!(shims.len(), 1, "{shims:?}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(shims[0]),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    // containerd notices the dead shim and runs `shim delete`, which releases the
    // VM's namespace from its record.
    assert_netns_gone(&c, "crash1");
    wait_for(Duration::from_secs(20), "the task deleted", || {
        let _ = c.ctr(&["task", "delete", "-f", "crash1"]);
        let _ = c.ctr(&["containers", "rm", "crash1"]);
        (!text(&c.ctr(&["containers", "ls", "-q"]).stdout).contains("crash1")).then_some(())
    });
    c.assert_clean();
}

/// A VMM killed under its shim takes the VM's network with it.
#[test]
fn a_killed_vmm_leaves_no_network_behind() {
    let c = Containerd::start();
    let _sweep = NetnsSweep(&c);
    run_detached(&c, "vmmkill", &["sleep", "600"]);
    let pid = task_pid(&c, "vmmkill");
    assert!(vm_netns(&c, "vmmkill").exists());
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    c.wait_stopped("vmmkill", 30);
    assert_netns_gone(&c, "vmmkill");
    c.remove("vmmkill");
    c.assert_clean();
}

/// A network namespace path that does not exist is refused as InvalidArgument,
/// before anything is made.
#[test]
fn a_namespace_path_that_does_not_exist_is_invalid_argument() {
    let c = Containerd::start();
    let _sweep = NetnsSweep(&c);
    let missing = format!("/run/netns/ember-t-missing-{}", std::process::id());
    let out = c.try_run_with(
        "nons",
        &[],
        &["--with-ns", &format!("network:{missing}")],
        &["true"],
    );
    assert!(!out.status.success());
    let e = text(&out.stderr);
    assert!(e.contains("invalid argument"), "{e}");
    assert!(e.contains(&missing) && e.contains("does not exist"), "{e}");
    let _ = c.ctr(&["containers", "rm", "nons"]);
    c.assert_clean();
}

/// `ctr run --cni` with bridge + host-local: the container gets its address, pings
/// its gateway, and its busybox httpd serves a 64 MiB file byte-exact to a client in
/// the test namespace; a second VM on the same bridge reaches the first. When the
/// tasks end, ctr's CNI DEL and Ember's teardown leave no veth, tap, tc filter,
/// namespace or allocation.
#[test]
fn cni_bridge_serves_64_mib_pings_and_two_vms_reach_each_other() {
    let c = Containerd::start();
    let _sweep = NetnsSweep(&c);
    let n = TestNet::new("web", 61);
    let mut web = n.spawn_run(
        &c,
        "web",
        &[],
        &[
            "sh",
            "-c",
            "mkdir -p /www && echo hello-from-web > /www/hello \
             && busybox dd if=/dev/urandom of=/www/big bs=1M count=64 2>/dev/null \
             && touch /www/ready && exec busybox httpd -f -p 80 -h /www",
        ],
    );
    let web_ip = wait_for(Duration::from_secs(120), "web's address", || {
        container_ipv4(&c, "web")
    });
    assert!(
        web_ip.starts_with("10.88.61."),
        "web got {web_ip}\n{}",
        c.shim_logs()
    );
    // The address is the one host-local gave out.
    assert_eq!(n.allocations(), std::slice::from_ref(&web_ip));
    let ping = c.exec(
        "web",
        "ping",
        &["busybox", "ping", "-c", "3", "-W", "5", &n.gateway()],
    );
    assert!(
        ping.status.success(),
        "ping of the gateway: {}{}",
        text(&ping.stdout),
        text(&ping.stderr)
    );
    wait_for(Duration::from_secs(120), "the 64 MiB file", || {
        c.exec("web", "ready", &["test", "-e", "/www/ready"])
            .status
            .success()
            .then_some(())
    });
    let inside = c.exec_ok("web", "sum", &["busybox", "sha256sum", "/www/big"]);
    let inside = inside.split_whitespace().next().unwrap().to_string();
    let got = n
        .exec("sh")
        .args([
            "-c",
            &format!("curl -sSf --max-time 300 http://{web_ip}/big | sha256sum"),
        ])
        .output()
        .unwrap();
    assert!(got.status.success(), "{}", text(&got.stderr));
    assert_eq!(
        text(&got.stdout).split_whitespace().next().unwrap(),
        inside,
        "the download differs from the file"
    );

    // A second VM on the bridge reaches the first.
    let mut peer = n.spawn_run(&c, "peer", &[], &["sleep", "600"]);
    let peer_ip = wait_for(Duration::from_secs(120), "peer's address", || {
        container_ipv4(&c, "peer")
    });
    assert_ne!(peer_ip, web_ip);
    let ping = c.exec(
        "peer",
        "ping",
        &["busybox", "ping", "-c", "2", "-W", "5", &web_ip],
    );
    assert!(ping.status.success(), "peer → web: {}", text(&ping.stdout));
    let hello = c.exec_ok(
        "peer",
        "get",
        &[
            "busybox",
            "wget",
            "-q",
            "-O",
            "-",
            &format!("http://{web_ip}/hello"),
        ],
    );
    assert_eq!(hello.trim(), "hello-from-web");
    assert_eq!(n.allocations().len(), 2);

    for (id, child) in [("web", &mut web), ("peer", &mut peer)] {
        c.kill(id);
        let end = wait_for(
            Duration::from_secs(60),
            &format!("ctr run {id} ends"),
            || child.try_wait().unwrap(),
        );
        // ctr run ends with the task's status: killed by SIGKILL.
        assert_eq!(end.code(), Some(137), "ctr run {id}");
        assert_netns_gone(&c, id);
    }
    assert_eq!(n.allocations(), Vec::<String>::new(), "host-local leaks");
    wait_for(Duration::from_secs(15), "CNI's veths gone", || {
        n.extra_links().is_empty().then_some(())
    });
    assert!(n.tc_leftovers().is_empty(), "{:?}", n.tc_leftovers());
    c.assert_clean();
}

/// 20 `ctr run --rm --cni` in a row each get an address, and leave no tap, veth,
/// tc filter, namespace or host-local allocation behind.
#[test]
fn twenty_cni_runs_in_a_row_leave_nothing_behind() {
    let c = Containerd::start();
    let _sweep = NetnsSweep(&c);
    let n = TestNet::new("rows", 62);
    for i in 0..20 {
        let id = format!("row{i}");
        let out = n.run(
            &c,
            &id,
            &[],
            &["busybox", "ip", "-4", "-o", "addr", "show", "eth0"],
        );
        assert!(
            out.status.success(),
            "run {i}: {}\n{}",
            text(&out.stderr),
            c.shim_logs()
        );
        assert!(
            text(&out.stdout).contains("inet 10.88.62."),
            "run {i}: {}",
            text(&out.stdout)
        );
        assert_netns_gone(&c, &id);
        assert_eq!(n.allocations(), Vec::<String>::new(), "after run {i}");
    }
    wait_for(Duration::from_secs(15), "CNI's veths gone", || {
        n.extra_links().is_empty().then_some(())
    });
    assert!(n.tc_leftovers().is_empty(), "{:?}", n.tc_leftovers());
    let left: Vec<_> = (0..20)
        .map(|i| vm_netns(&c, &format!("row{i}")))
        .filter(|p| p.exists())
        .collect();
    assert!(left.is_empty(), "{left:?}");
    c.assert_clean();
}

/// A namespace the spec names (as CRI and nerdctl pass it), with its interface
/// there before boot: the VMM runs in it, the interface is carried into the VM
/// (address, route, MAC), and when the task goes the namespace is left as it was.
#[test]
fn a_named_namespace_carries_its_interface_into_the_vm() {
    let c = Containerd::start();
    let _sweep = NetnsSweep(&c);
    let n = TestNet::new("cri", 63);
    let pod = format!("ember-t-pod-{}", std::process::id());
    let _ = std::process::Command::new("ip")
        .args(["netns", "del", &pod])
        .stderr(std::process::Stdio::null())
        .status();
    assert!(std::process::Command::new("ip")
        .args(["netns", "add", &pod])
        .status()
        .unwrap()
        .success());
    struct DelNs(String);
    impl Drop for DelNs {
        fn drop(&mut self) {
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", &self.0])
                .status();
        }
    }
    let _pod_guard = DelNs(pod.clone());
    // A veth: eth0 in the pod's namespace, its peer on the test bridge.
    n.ip(&[
        "link", "add", "vpod", "type", "veth", "peer", "name", "eth0", "netns", &pod,
    ]);
    n.ip(&["link", "set", "vpod", "master", "br0", "up"]);
    let in_pod = |args: &[&str]| {
        let mut a = vec!["-n", pod.as_str()];
        a.extend_from_slice(args);
        let out = std::process::Command::new("ip").args(&a).output().unwrap();
        assert!(out.status.success(), "{a:?}: {}", text(&out.stderr));
        text(&out.stdout)
    };
    in_pod(&["addr", "add", "10.88.63.50/24", "dev", "eth0"]);
    in_pod(&["link", "set", "eth0", "up"]);
    in_pod(&["route", "add", "default", "via", "10.88.63.1"]);
    let mac = in_pod(&["-o", "link", "show", "eth0"]);
    let mac = mac
        .split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .unwrap()
        .to_string();
    let path = format!("/run/netns/{pod}");
    let out = c.try_run_with(
        "pod1",
        &[],
        &["--with-ns", &format!("network:{path}")],
        &["sleep", "600"],
    );
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out.stderr),
        c.shim_logs()
    );
    let pid = task_pid(&c, "pod1");
    assert_eq!(
        inode(Path::new(&format!("/proc/{pid}/ns/net"))),
        inode(Path::new(&path))
    );
    assert_eq!(container_ipv4(&c, "pod1").as_deref(), Some("10.88.63.50"));
    let link = c.exec_ok(
        "pod1",
        "mac",
        &["busybox", "ip", "-o", "link", "show", "eth0"],
    );
    assert!(link.contains(&mac), "the guest's eth0 lacks {mac}: {link}");
    let ping = c.exec(
        "pod1",
        "ping",
        &["busybox", "ping", "-c", "3", "-W", "5", "10.88.63.1"],
    );
    assert!(ping.status.success(), "{}", text(&ping.stdout));
    // The test namespace reaches the container too.
    let back = n
        .exec("busybox")
        .args(["ping", "-c", "2", "-W", "5", "10.88.63.50"])
        .output()
        .unwrap();
    assert!(
        back.status.success(),
        "{}{}",
        text(&back.stdout),
        text(&back.stderr)
    );
    c.kill_and_remove("pod1");
    let links = in_pod(&["-o", "link"]);
    assert!(!links.contains("tap"), "{links}");
    let qd = std::process::Command::new("ip")
        .args(["netns", "exec", &pod, "tc", "qdisc", "show", "dev", "eth0"])
        .output()
        .unwrap();
    assert!(
        !text(&qd.stdout).contains("ingress"),
        "{}",
        text(&qd.stdout)
    );
    assert!(in_pod(&["-o", "addr", "show", "eth0"]).contains("10.88.63.50/24"));
    c.assert_clean();
}
