//! `ember vm` against a real emberd: a VM made by `ember vm create`, two containers
//! placed in it by `ember run --vm`, its metadata, pause and resume, and stop; a VM made
//! for a container; and the errors of the verbs.

mod common;

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use common::containers::{self as support, ok, text, Daemon};
use serde_json::Value;

const IMAGE: &str = "docker.io/ember/busybox:latest";
const VM: &str = "cli-vm";

fn ls_json(d: &Daemon) -> Vec<Value> {
    let out = ok(&d.run(&["vm", "ls", "--json"]));
    match serde_json::from_str(&out) {
        Ok(Value::Array(v)) => v,
        other => panic!("vm ls --json: {other:?}\n{out}"),
    }
}

fn vm_entry(d: &Daemon, id: &str) -> Value {
    ls_json(d)
        .into_iter()
        .find(|v| v["id"] == id)
        .unwrap_or_else(|| panic!("{id} not in vm ls --json"))
}

/// The table row of `id` in `ember vm ls`, split on whitespace.
fn ls_row(d: &Daemon, id: &str) -> Vec<String> {
    let out = ok(&d.run(&["vm", "ls"]));
    let mut lines = out.lines();
    let header: Vec<&str> = lines.next().unwrap_or_default().split("   ").collect();
    let header: Vec<&str> = header
        .iter()
        .map(|h| h.trim())
        .filter(|h| !h.is_empty())
        .collect();
    assert_eq!(
        header,
        [
            "ID",
            "STATE",
            "VCPUS",
            "MEMORY",
            "CONTAINERS",
            "VMM PID",
            "UPTIME"
        ],
        "{out}"
    );
    lines
        .find(|l| l.split_whitespace().next() == Some(id))
        .unwrap_or_else(|| panic!("{id} not in vm ls:\n{out}"))
        .split_whitespace()
        .map(String::from)
        .collect()
}

fn failed_with(o: &Output, code: i32, msg: &str) {
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(code), "{err}{}", text(&o.stdout));
    assert!(err.contains(msg), "wanted {msg:?} in: {err}");
    assert_eq!(err.trim().lines().count(), 1, "not one line: {err}");
    assert!(!err.contains("panicked"), "{err}");
}

fn boot_id(d: &Daemon, container: &str) -> String {
    let o = d.run(&["exec", container, "cat", "/proc/sys/kernel/random/boot_id"]);
    ok(&o).trim().to_string()
}

fn metadata(d: &Daemon) -> Value {
    serde_json::from_str(&ok(&d.run(&["vm", "metadata", "get", VM]))).unwrap()
}

fn gone(pid: u64) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // A zombie is gone as a VMM.
        Ok(s) => s
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z'),
    }
}

#[test]
fn vm_life_cycle_with_two_containers() {
    if !support::can_run() || !support::has_guest() {
        return;
    }
    let d = Daemon::start();
    d.import_busybox(IMAGE);

    // create prints the id; a second create of the same id fails and leaves it be.
    let o = d.run(&[
        "vm", "create", "--id", VM, "--vcpus", "1", "--memory", "256",
    ]);
    assert_eq!(ok(&o).trim(), VM, "{}", d.log());
    failed_with(
        &d.run(&["vm", "create", "--id", VM]),
        1,
        &format!("VM {VM} already exists"),
    );

    // ls: the table and the JSON agree.
    let row = ls_row(&d, VM);
    assert_eq!(&row[1..6], ["running", "1", "256", "MiB", "0"], "{row:?}");
    let v = vm_entry(&d, VM);
    assert_eq!(v["state"], "running");
    assert_eq!(v["vcpus"], 1);
    assert_eq!(v["memory_mib"], 256);
    assert_eq!(v["explicit"], true);
    assert_eq!(v["containers"], serde_json::json!([]));
    let vmm_pid = v["vmm_pid"].as_u64().expect("a VMM pid");
    assert_eq!(row[6], vmm_pid.to_string());
    assert!(!gone(vmm_pid), "VMM {vmm_pid} is not running");
    assert_eq!(ok(&d.run(&["vm", "ls", "-q"])).trim(), VM);

    // Two containers in that VM: same guest, one VMM.
    // The second one with a read-only host volume, shared into the running VM.
    let vol = d.dir.path().join("vol");
    std::fs::create_dir_all(&vol).unwrap();
    std::fs::write(vol.join("greeting"), "from the host\n").unwrap();
    let bind = format!("{}:/data:ro", vol.display());
    for (c, extra) in [("c1", &[][..]), ("c2", &["-v", bind.as_str()][..])] {
        let o = d.run(
            &[
                &["run", "-d", "--name", c, "--vm", VM][..],
                extra,
                &[IMAGE, "sleep", "600"],
            ]
            .concat(),
        );
        assert_eq!(ok(&o).trim(), c, "{}", d.log());
    }
    let o = d.run(&["exec", "c2", "cat", "/data/greeting"]);
    assert_eq!(ok(&o), "from the host\n");
    let o = d.run(&["exec", "c2", "sh", "-c", "echo x > /data/new"]);
    assert!(!o.status.success(), "a read-only volume took a write");
    assert!(!vol.join("new").exists());
    // A volume whose source is missing is refused by name, and the VM keeps its two.
    let o = d.run(&[
        "run",
        "--rm",
        "--vm",
        VM,
        "-v",
        "/no/such/dir:/data",
        IMAGE,
        "true",
    ]);
    assert_eq!(o.status.code(), Some(125), "{}", text(&o.stderr));
    assert!(
        text(&o.stderr).contains("/no/such/dir"),
        "{}",
        text(&o.stderr)
    );
    let (b1, b2) = (boot_id(&d, "c1"), boot_id(&d, "c2"));
    assert_eq!(b1.len(), 36, "{b1}");
    assert_eq!(b1, b2, "the containers run in different guests");
    let v = vm_entry(&d, VM);
    let mut containers: Vec<&str> = v["containers"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c.as_str())
        .collect();
    containers.sort();
    assert_eq!(containers, ["c1", "c2"]);
    assert_eq!(v["vmm_pid"].as_u64(), Some(vmm_pid));
    assert_eq!(ls_row(&d, VM)[5], "2");
    let spec: Value = serde_json::from_str(&ok(&d.run(&["inspect", "c1"]))).unwrap();
    assert_eq!(spec[0]["spec"]["annotations"]["io.ember.vm.id"], VM);

    // info: Describe and GetVMInfo in one.
    let info = ok(&d.run(&["vm", "info", VM]));
    for want in [
        "ID:".to_string(),
        "State:        running".to_string(),
        format!("VMM PID:      {vmm_pid}"),
        "Containers:   2 (".to_string(),
        "Socket:".to_string(),
    ] {
        assert!(info.contains(&want), "{want:?} not in:\n{info}");
    }
    let j: Value = serde_json::from_str(&ok(&d.run(&["vm", "info", VM, "--json"]))).unwrap();
    assert_eq!(j["id"], VM);
    assert!(!j["socket_path"].as_str().unwrap_or("").is_empty(), "{j}");

    // Metadata: set, get, merge; visible in the containers; bad JSON is refused
    // before the daemon is asked and the document stays.
    ok(&d.run(&[
        "vm",
        "metadata",
        "set",
        VM,
        r#"{"role":"web","tags":{"a":1,"b":2}}"#,
    ]));
    assert_eq!(
        metadata(&d),
        serde_json::json!({"role": "web", "tags": {"a": 1, "b": 2}})
    );
    let patch = d.dir.path().join("patch.json");
    std::fs::write(&patch, r#"{"tags":{"a":null,"c":3},"zone":"z1"}"#).unwrap();
    ok(&d.run(&[
        "vm",
        "metadata",
        "set",
        "--merge",
        VM,
        &format!("@{}", patch.display()),
    ]));
    let want = serde_json::json!({"role": "web", "tags": {"b": 2, "c": 3}, "zone": "z1"});
    assert_eq!(metadata(&d), want);
    failed_with(
        &d.run(&["vm", "metadata", "set", VM, "{not json"]),
        1,
        "not JSON",
    );
    assert_eq!(metadata(&d), want);
    for c in ["c1", "c2"] {
        let o = d.run(&["exec", c, "cat", "/run/ember/metadata/metadata.json"]);
        let seen: Value = serde_json::from_str(&ok(&o)).unwrap();
        assert_eq!(seen, want, "{c}");
    }

    // Pause and resume the whole VM.
    ok(&d.run(&["vm", "pause", VM]));
    assert_eq!(vm_entry(&d, VM)["state"], "paused");
    assert_eq!(ls_row(&d, VM)[1], "paused");
    ok(&d.run(&["vm", "resume", VM]));
    assert_eq!(vm_entry(&d, VM)["state"], "running");
    assert_eq!(boot_id(&d, "c1"), b1);

    // Stop: the VM, its VMM and its running containers go.
    let t = Instant::now();
    assert_eq!(ok(&d.run(&["vm", "stop", VM])).trim(), VM);
    assert!(t.elapsed() < Duration::from_secs(60), "{:?}", t.elapsed());
    let deadline = Instant::now() + Duration::from_secs(20);
    while !(ls_json(&d).is_empty() && gone(vmm_pid)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(ls_json(&d), Vec::<Value>::new());
    assert_eq!(ok(&d.run(&["vm", "ls", "-q"])), "");
    assert!(gone(vmm_pid), "VMM {vmm_pid} outlived its VM");
    assert_eq!(ok(&d.run(&["ps", "-q"])), "", "containers still running");
    failed_with(&d.run(&["vm", "info", VM]), 1, &format!("no such VM: {VM}"));
    ok(&d.run(&["rm", "-f", "c1", "c2"]));
    assert_eq!(ok(&d.run(&["ps", "-a", "-q"])), "");

    // A VM no `vm create` made: booted for its first container, gone with its last.
    ok(&d.run(&[
        "run", "-d", "--name", "c3", "--vm", "implicit", IMAGE, "sleep", "600",
    ]));
    let v = vm_entry(&d, "implicit");
    assert_eq!(v["explicit"], false);
    assert_eq!(v["containers"], serde_json::json!(["c3"]));
    ok(&d.run(&["rm", "-f", "c3"]));
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ls_json(&d).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(ls_json(&d), Vec::<Value>::new());
}

#[test]
fn vm_verbs_fail_clearly() {
    if !support::can_run() {
        return;
    }
    let d = Daemon::start();
    for verb in [
        &["info", "ghost"][..],
        &["stop", "ghost"],
        &["pause", "ghost"],
        &["resume", "ghost"],
        &["metadata", "get", "ghost"],
        &["metadata", "set", "ghost", "{}"],
    ] {
        let o = d.run(&[&["vm"][..], verb].concat());
        failed_with(&o, 1, "no such VM: ghost");
    }
    // Bad input never reaches the daemon: these fail the same with no daemon at all.
    let nowhere = Path::new("/nonexistent/emberd.sock");
    for args in [
        &["vm", "create", "--vcpus", "0"][..],
        &["vm", "create", "--drive-mount", "relative"],
        &["vm", "create", "--id", "a/b"],
        &["vm", "metadata", "set", "x", "[1,"],
        &["vm", "metadata", "set", "x", "@/no/such/file"],
        &["run", "--vm", "x", "--runtime", "runc", IMAGE, "true"],
    ] {
        let o = d
            .ember()
            .env("EMBER_ADDRESS", nowhere)
            .args(args)
            .output()
            .unwrap();
        let err = text(&o.stderr);
        assert!(!o.status.success(), "{args:?}");
        assert!(
            !err.contains("connecting") && !err.contains("panicked"),
            "{args:?}: {err}"
        );
    }
    assert_eq!(ok(&d.run(&["vm", "ls", "-q"])), "");

    // A daemon without the VM API (Debian's containerd) is named as such.
    if let Some(bin) = support::which("containerd") {
        let dir = d.dir.path().join("containerd");
        let c = common::Daemon::containerd(bin.to_str().unwrap(), &dir, &[]);
        let o = d
            .ember()
            .env("EMBER_ADDRESS", &c.socket)
            .args(["vm", "ls"])
            .output()
            .unwrap();
        failed_with(&o, 1, "does not serve the VM API");
    }
}
