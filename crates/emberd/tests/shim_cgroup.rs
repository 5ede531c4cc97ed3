//! The `ShimCgroup` runtime option (`containerd.runc.v1.Options.shim_cgroup`) given in
//! a task's create: runc's shim and Ember's both move into that cgroup.

mod common;

use std::path::{Path, PathBuf};

use common::tasks::*;
use common::*;
use containerd_client::services::v1 as api;
use containerd_client::services::v1::tasks_client::TasksClient;
use ember_shim_api::RuncOptions;

const NS: &str = "shimcg";

/// The cgroup directories of `path` in every mounted hierarchy.
fn cgroup_dirs(path: &str) -> Vec<PathBuf> {
    let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    mi.lines()
        .filter_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            let fs = post.split_whitespace().next()?;
            let mount = pre.split_whitespace().nth(4)?;
            (fs == "cgroup" || fs == "cgroup2").then(|| Path::new(mount).join(path))
        })
        .collect()
}

/// Removes the test's cgroups once their processes are gone.
struct Cgroups(Vec<PathBuf>);

impl Drop for Cgroups {
    fn drop(&mut self) {
        for d in &self.0 {
            let _ = std::fs::remove_dir(d);
        }
    }
}

/// Whether process `pid` is in cgroup `path` of some hierarchy.
fn in_cgroup(pid: i32, path: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .unwrap_or_default()
        .lines()
        .any(|l| l.rsplit(':').next() == Some(&format!("/{path}")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shims_join_the_shim_cgroup_of_their_options() {
    if !can_run_runc() {
        return;
    }
    let ember = Path::new(env!("CARGO_BIN_EXE_emberd")).with_file_name("containerd-shim-ember-v2");
    let mut runtimes = vec!["io.containerd.runc.v2"];
    if ember.exists() && ember_guest::GuestImage::locate().is_ok() {
        runtimes.push("io.containerd.ember.v2");
    } else {
        eprintln!("the ember shim or the guest image is missing: runc's shim alone");
    }
    let path = format!("ember-shimcg-{}", std::process::id());
    let dirs = cgroup_dirs(&path);
    for d in &dirs {
        std::fs::create_dir_all(d).unwrap();
        // A v1 cpuset takes no process before it has cpus and memory nodes.
        for f in ["cpuset.cpus", "cpuset.mems"] {
            if let Ok(v) = std::fs::read_to_string(d.parent().unwrap().join(f)) {
                std::fs::write(d.join(f), v.trim()).unwrap();
            }
        }
    }
    let _cg = Cgroups(dirs);
    let work = tempfile::tempdir().unwrap();
    let d = Emberd::start(work.path());
    import_busybox(&d.socket, NS, work.path());
    let mut tasks = TasksClient::new(d.channel().await);
    let options = RuncOptions {
        shim_cgroup: format!("/{path}"),
        ..Default::default()
    };
    for (i, runtime) in runtimes.iter().enumerate() {
        let id = format!("cg{i}-{}", std::process::id());
        let _left = TaskGuard(d.socket.clone(), vec![id.clone()]);
        create_container(&d.socket, NS, runtime, &id, &["sleep", "600"]);
        tasks
            .create(req(
                NS,
                api::CreateTaskRequest {
                    container_id: id.clone(),
                    options: Some(options.to_any()),
                    ..Default::default()
                },
            ))
            .await
            .unwrap_or_else(|e| panic!("{runtime}: {e}"));
        let shims = shim_pids(&d.socket, &id);
        assert!(!shims.is_empty(), "{runtime}: no shim");
        for pid in shims {
            assert!(
                in_cgroup(pid, &path),
                "{runtime}: shim {pid} is not in {path}"
            );
        }
        let kill = api::KillRequest {
            container_id: id.clone(),
            signal: 9,
            ..Default::default()
        };
        tasks.kill(req(NS, kill)).await.unwrap();
        let delete = api::DeleteTaskRequest {
            container_id: id.clone(),
        };
        tasks.delete(req(NS, delete)).await.unwrap();
        ctr(&d.socket, NS, &["containers", "rm", &id]).expect_ok();
        wait_shim_gone(&d.socket, &id);
    }
}
