//! firecracker-containerd's VM control API through Python grpcio (default channel
//! options), with stubs generated at run time by grpc_tools from Ember's
//! restatement of the protos (crates/ember-vm-api/proto), or from
//! `$FC_PROTO_DIR` when set: a copy of firecracker-containerd's own `proto/`
//! directory, which proves the wire compatibility with its published interface.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{can_run, Emberd};
use serde_json::{json, Value};

const PYTHON: &str = "/usr/bin/python3";

fn have_grpcio() -> bool {
    let ok = Command::new(PYTHON)
        .args(["-c", "import grpc, grpc_tools"])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("skipping: {PYTHON} lacks grpcio or grpc_tools (apt-get install python3-grpcio python3-grpc-tools)");
    }
    ok
}

fn ember_protos() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../ember-vm-api/proto")
}

/// The proto directories to generate the client from: Ember's, and
/// firecracker-containerd's when `FC_PROTO_DIR` names one.
fn proto_dirs() -> Vec<PathBuf> {
    let mut dirs = vec![ember_protos()];
    if let Some(d) = std::env::var_os("FC_PROTO_DIR") {
        eprintln!("also with firecracker-containerd's protos in {d:?}");
        dirs.push(PathBuf::from(d));
    }
    dirs
}

/// Runs the client script; its JSON answer.
fn run(socket: &Path, protos: &Path, mode: &str, vmid: &str) -> Value {
    let work = tempfile::tempdir().unwrap();
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(PYTHON)
        .arg(manifest.join("tests/python/fccontrol.py"))
        .arg(socket)
        .arg(protos)
        .arg(ember_protos())
        .arg(work.path())
        .args([mode, vmid])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "fccontrol.py failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

#[track_caller]
fn expect(got: &Value, key: &str, want: Value) {
    assert_eq!(got[key], want, "{key}: {got}");
}

fn expect_errors(got: &Value) {
    for key in [
        "info_unknown",
        "stop_unknown",
        "pause_unknown",
        "metadata_unknown",
        "balloon_unknown",
        "describe_unknown",
    ] {
        expect(got, key, json!("NOT_FOUND"));
    }
    for key in ["info_bad_id", "create_bad_id", "info_empty_id"] {
        expect(got, key, json!("INVALID_ARGUMENT"));
    }
    expect(got, "no_namespace", json!("FAILED_PRECONDITION"));
}

#[test]
fn vm_control_errors_reach_grpcio_with_their_codes() {
    if !can_run() || !have_grpcio() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let emberd = Emberd::start(dir.path());
    for protos in proto_dirs() {
        let got = run(&emberd.socket, &protos, "errors", "");
        expect_errors(&got);
        expect(&got, "list_empty", json!({"ok": []}));
    }
}

#[test]
fn grpcio_drives_a_vm_through_all_twelve_calls() {
    if !can_run() || !have_grpcio() {
        return;
    }
    let shim = Path::new(env!("CARGO_BIN_EXE_emberd")).with_file_name("containerd-shim-ember-v2");
    if !shim.exists() || ember_guest::GuestImage::locate().is_err() {
        eprintln!(
            "skipping: the ember shim is not built or the guest image is missing (guest/build.sh)"
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let emberd = Emberd::start(dir.path());
    for (i, protos) in proto_dirs().iter().enumerate() {
        let vmid = format!("vmpy{}-{i}", std::process::id());
        let got = run(&emberd.socket, protos, "all", &vmid);
        expect_errors(&got);
        expect(&got, "create", json!({"ok": vmid}));
        expect(&got, "create_again", json!("ALREADY_EXISTS"));
        expect(&got, "info", json!({"ok": vmid}));
        expect(
            &got,
            "describe",
            json!({"ok": {"state": "running", "vcpus": 1, "memory_mib": 256,
                          "explicit": true, "namespace": "fcpy"}}),
        );
        expect(&got, "list", json!({"ok": [vmid]}));
        expect(&got, "pause", json!("OK"));
        expect(&got, "paused_state", json!({"ok": "paused"}));
        expect(&got, "resume", json!("OK"));
        expect(&got, "resumed_state", json!({"ok": "running"}));
        expect(&got, "set_metadata", json!("OK"));
        expect(&got, "metadata_set", json!({"ok": {"a": 1, "b": {"c": 2}}}));
        expect(&got, "update_metadata", json!("OK"));
        expect(
            &got,
            "metadata_updated",
            json!({"ok": {"a": 1, "b": {"d": 3}, "e": "x"}}),
        );
        expect(&got, "set_bad_json", json!("INVALID_ARGUMENT"));
        expect(&got, "update_bad_json", json!("INVALID_ARGUMENT"));
        expect(
            &got,
            "metadata_kept",
            json!({"ok": {"a": 1, "b": {"d": 3}, "e": "x"}}),
        );
        expect(
            &got,
            "balloon_config",
            json!({"ok": {"amount": 64, "deflate": true, "interval": 1}}),
        );
        expect(&got, "update_balloon", json!("OK"));
        expect(
            &got,
            "balloon_updated",
            json!({"ok": {"amount": 32, "deflate": true, "interval": 1}}),
        );
        assert_eq!(
            got["balloon_stats"]["ok"]["target_mib"],
            json!(32),
            "balloon_stats: {got}"
        );
        expect(&got, "update_balloon_stats", json!("OK"));
        expect(&got, "balloon_interval", json!({"ok": 2}));
        expect(&got, "stop", json!("OK"));
        expect(&got, "info_after_stop", json!("NOT_FOUND"));
        expect(&got, "stop_again", json!("NOT_FOUND"));
        // A UUID in its text form.
        expect(&got, "generated_id_len", json!({"ok": 36}));
        expect(&got, "stop_generated", json!("OK"));
        expect(&got, "create_with_nic", json!("INVALID_ARGUMENT"));
        expect(&got, "info_after_nic", json!("NOT_FOUND"));
        expect(&got, "list_after", json!({"ok": []}));
        // Nothing of the VMs is left in emberd's state.
        let left: Vec<_> = std::fs::read_dir(dir.path().join("state/ember.vm/fcpy"))
            .map(|d| d.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "VM bundles left: {left:?}");
    }
}
