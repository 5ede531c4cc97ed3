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
