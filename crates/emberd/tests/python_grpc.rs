//! Python's grpcio against emberd, with stubs generated at run time from the
//! repository's proto/ by grpc_tools: with grpcio's default channel options and
//! with an `:authority` that is the socket's path (what some grpcio versions
//! send), the same script against emberd and against a private containerd, and
//! the answers compared.

mod common;

use std::path::Path;
use std::process::Command;

use common::{can_run, Containerd, Emberd};

const PYTHON: &str = "/usr/bin/python3";

fn have_grpcio() -> bool {
    Command::new(PYTHON)
        .args(["-c", "import grpc, grpc_tools"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Runs the client script; its JSON answer.
fn run(socket: &Path, authority: Option<&str>) -> serde_json::Value {
    let work = tempfile::tempdir().unwrap();
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut cmd = Command::new(PYTHON);
    cmd.arg(manifest.join("tests/python/clients.py"))
        .arg(socket)
        .arg(manifest.join("../../proto"))
        .arg(work.path());
    if let Some(a) = authority {
        cmd.arg(a);
    }
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "clients.py failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

#[test]
fn python_grpcio_gets_the_same_answers_as_from_containerd() {
    if !can_run() {
        return;
    }
    if !have_grpcio() {
        eprintln!("skipping: {PYTHON} lacks grpcio or grpc_tools (apt-get install python3-grpcio python3-grpc-tools)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let emberd = Emberd::start(dir.path());
    let path = emberd.socket.display().to_string();
    let escaped = path.replace('/', "%2F");
    let mut answers = Vec::new();
    for authority in [None, Some(path.as_str()), Some(escaped.as_str())] {
        let got = run(&emberd.socket, authority);
        let expect = |key: &str, want: serde_json::Value| {
            assert_eq!(got[key], want, "{key} with :authority {authority:?}: {got}");
        };
        expect("version", serde_json::json!({"ok": true}));
        expect("ns_get_unknown", serde_json::json!({"ok": {}}));
        expect("ns_get", serde_json::json!({"ok": {"k": "v"}}));
        expect(
            "ns_update_name",
            serde_json::json!({"code": "INVALID_ARGUMENT"}),
        );
        expect(
            "ns_get_updated",
            serde_json::json!({"ok": [{"k": "v", "k2": "v2"}, {"n": "1"}]}),
        );
        expect("container_get_8mib", serde_json::json!({"ok": true}));
        expect(
            "container_create_17mib",
            serde_json::json!({"code": "RESOURCE_EXHAUSTED"}),
        );
        expect(
            "unknown_service",
            serde_json::json!({"code": "UNIMPLEMENTED"}),
        );
        expect(
            "unknown_method",
            serde_json::json!({"code": "UNIMPLEMENTED"}),
        );
        expect("health", serde_json::json!({"ok": "SERVING"}));
        expect(
            "health_unknown_service",
            serde_json::json!({"code": "NOT_FOUND"}),
        );
        answers.push(got);
    }
    let Some(containerd) = Containerd::start() else {
        return;
    };
    let path = containerd.socket.display().to_string();
    for (i, authority) in [None, Some(path.as_str())].into_iter().enumerate() {
        assert_eq!(
            answers[i],
            run(&containerd.socket, authority),
            "emberd and containerd differ with :authority {authority:?}"
        );
    }
}
