//! What keeps emberd's runc tasks to themselves: exec ids are identifiers (the runc
//! shim names a pid file after them), and runc's state lives under emberd's own
//! state directory, so a task of the same namespace and id on a containerd of the
//! same host is another task. Compared with a private containerd.

mod common;

use std::path::{Path, PathBuf};

use common::tasks::*;
use common::*;
use containerd_client::services::v1 as api;
use containerd_client::services::v1::tasks_client::TasksClient;
use containerd_client::tonic::Code;

const NS: &str = "isolation";

/// Kills and deletes what a failed run may leave of runc container `id` under the
/// given runc roots, and its shims.
struct Leftovers {
    id: String,
    /// The daemons' addresses.
    addresses: Vec<PathBuf>,
    roots: Vec<PathBuf>,
}

impl Drop for Leftovers {
    fn drop(&mut self) {
        for root in &self.roots {
            let _ = std::process::Command::new("runc")
                .arg("--root")
                .arg(root.join(NS))
                .args(["delete", "-f", &self.id])
                .stderr(std::process::Stdio::null())
                .status();
        }
        for address in &self.addresses {
            kill_task_processes(address, &self.id);
        }
    }
}

/// Tries exec ids on running task `id` through the Tasks API (ctr itself would
/// name its FIFOs after them); returns the codes and messages.
async fn exec_ids(socket: &Path, id: &str) -> Vec<(Code, String)> {
    let ch = containerd_client::connect(socket).await.unwrap();
    let mut tasks = TasksClient::new(ch);
    let process = serde_json::json!({
        "args": ["true"],
        "cwd": "/",
        "env": ["PATH=/bin:/usr/bin"],
        "user": {"uid": 0, "gid": 0},
    });
    let long = "e".repeat(77);
    let mut out = vec![];
    for exec in ["../../../../x/pidesc", "a/b", "-e", &long, "", "ok.exec-1"] {
        let r = tasks
            .exec(req(
                NS,
                api::ExecProcessRequest {
                    container_id: id.into(),
                    exec_id: exec.into(),
                    spec: Some(prost_types::Any {
                        type_url: "types.containerd.io/opencontainers/runtime-spec/1/Process"
                            .into(),
                        value: process.to_string().into_bytes(),
                    }),
                    ..Default::default()
                },
            ))
            .await;
        out.push(match r {
            Ok(_) => (Code::Ok, String::new()),
            Err(s) => (s.code(), s.message().to_string()),
        });
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runc_tasks_are_apart_from_a_containerd_and_exec_ids_are_identifiers() {
    if !can_run_runc() {
        return;
    }
    let Some(c) = Containerd::start() else {
        return;
    };
    let id = format!("same{}", std::process::id());
    let work = tempfile::tempdir().unwrap();
    let d = Emberd::start(work.path());
    let _left = Leftovers {
        id: id.clone(),
        addresses: vec![d.socket.clone(), c.socket.clone()],
        roots: vec![
            work.path().join("state/runc"),
            PathBuf::from("/run/containerd/runc"),
        ],
    };
    import_busybox(&d.socket, NS, work.path());
    import_busybox(&c.socket, NS, work.path());

    // The same namespace and id on both daemons at once.
    for s in [&c.socket, &d.socket] {
        ctr(s, NS, &["run", "-d", IMAGE, &id, "sleep", "600"]).expect_ok();
        wait_status(s, NS, &id, "RUNNING");
    }
    std::thread::sleep(std::time::Duration::from_millis(500));
    for s in [&c.socket, &d.socket] {
        assert_eq!(task_status(s, NS, &id).as_deref(), Some("RUNNING"));
        let out = ctr(
            s,
            NS,
            &["tasks", "exec", "--exec-id", "probe", &id, "echo", "up"],
        );
        assert_eq!(out.stdout, "up\n", "{}", out.stderr);
    }
    assert!(
        work.path().join("state/runc").join(NS).join(&id).exists(),
        "emberd's runc state is not under its state directory"
    );

    // Exec ids: refused before the shim sees them, as containerd refuses them.
    let mine = exec_ids(&d.socket, &id).await;
    let theirs = exec_ids(&c.socket, &id).await;
    assert_eq!(mine, theirs, "emberd and containerd differ");
    for (i, (code, _)) in mine.iter().enumerate().take(5) {
        assert_eq!(*code, Code::InvalidArgument, "{i}: {mine:?}");
    }
    assert!(
        mine[0]
            .1
            .starts_with("invalid exec id ../../../../x/pidesc: identifier"),
        "{mine:?}"
    );
    assert_eq!(mine[5].0, Code::Ok, "{mine:?}");
    assert!(
        !work.path().join("x").exists(),
        "a pid file escaped the bundle"
    );

    for s in [&c.socket, &d.socket] {
        ctr(s, NS, &["tasks", "kill", "-s", "SIGKILL", &id]).expect_ok();
        wait_status(s, NS, &id, "STOPPED");
        ctr(s, NS, &["tasks", "rm", &id]).expect_ok();
        ctr(s, NS, &["containers", "rm", &id]).expect_ok();
        wait_shim_gone(s, &id);
    }
}
