//! The shim v2 task API as containerd's clients see it, the same flows driven
//! against runc's shim and against Ember's under a private containerd: execs created
//! and deleted without a start, the codes of calls on processes that exited, exit
//! times in host time, a process that does not exist failing the create, resource
//! updates reaching the container's cgroup, the processes listed, resizes of
//! processes without a terminal. Differences fail the test.

mod common;

use std::os::unix::fs::OpenOptionsExt;
use std::process::Command;
use std::time::{Duration, SystemTime};

use common::*;
use containerd_client::services::v1 as api;
use containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient;
use containerd_client::services::v1::snapshots::MountsRequest;
use containerd_client::services::v1::tasks_client::TasksClient;
use containerd_client::tonic::transport::Channel;
use containerd_client::tonic::{Code, Request};

const NS: &str = "default";
const PROCESS_TYPE: &str = "types.containerd.io/opencontainers/runtime-spec/1/Process";
const RESOURCES_TYPE: &str = "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources";

fn req<T>(msg: T) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut()
        .insert("containerd-namespace", NS.parse().unwrap());
    r
}

fn process(args: &[&str]) -> prost_types::Any {
    process_on(args, false)
}

fn process_on(args: &[&str], terminal: bool) -> prost_types::Any {
    let p = serde_json::json!({
        "terminal": terminal,
        "args": args,
        "cwd": "/",
        "env": ["PATH=/bin:/usr/bin"],
        "user": {"uid": 0, "gid": 0},
    });
    prost_types::Any {
        type_url: PROCESS_TYPE.into(),
        value: p.to_string().into_bytes(),
    }
}

/// A status code, or Ok.
fn code<T>(r: Result<T, containerd_client::tonic::Status>) -> Code {
    r.err().map(|s| s.code()).unwrap_or(Code::Ok)
}

fn host_now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn seconds_from_now(t: Option<prost_types::Timestamp>) -> i64 {
    t.map(|t| t.seconds - host_now()).unwrap_or(i64::MIN)
}

/// What one runtime answered, step by step.
#[derive(Debug, PartialEq)]
struct Answers(Vec<(&'static str, String)>);

impl Answers {
    fn push(&mut self, step: &'static str, v: impl std::fmt::Debug) {
        self.0.push((step, format!("{v:?}")));
    }
}

struct Flow<'a> {
    c: &'a Containerd,
    ch: Channel,
    tasks: TasksClient<Channel>,
    id: String,
}

impl Flow<'_> {
    async fn exec(&mut self, exec: &str, args: &[&str]) -> Code {
        code(
            self.tasks
                .exec(req(api::ExecProcessRequest {
                    container_id: self.id.clone(),
                    exec_id: exec.into(),
                    spec: Some(process(args)),
                    ..Default::default()
                }))
                .await,
        )
    }

    async fn start(&mut self, exec: &str) -> Code {
        code(
            self.tasks
                .start(req(api::StartRequest {
                    container_id: self.id.clone(),
                    exec_id: exec.into(),
                }))
                .await,
        )
    }

    async fn kill(&mut self, exec: &str, signal: u32) -> Code {
        code(
            self.tasks
                .kill(req(api::KillRequest {
                    container_id: self.id.clone(),
                    exec_id: exec.into(),
                    signal,
                    all: false,
                }))
                .await,
        )
    }

    async fn wait(&mut self, exec: &str) -> api::WaitResponse {
        self.tasks
            .wait(req(api::WaitRequest {
                container_id: self.id.clone(),
                exec_id: exec.into(),
            }))
            .await
            .unwrap()
            .into_inner()
    }

    async fn delete_exec(&mut self, exec: &str) -> Result<api::DeleteResponse, Code> {
        self.tasks
            .delete_process(req(api::DeleteProcessRequest {
                container_id: self.id.clone(),
                exec_id: exec.into(),
            }))
            .await
            .map(|r| r.into_inner())
            .map_err(|s| s.code())
    }

    async fn status(&mut self, exec: &str) -> Result<i32, Code> {
        self.tasks
            .get(req(api::GetRequest {
                container_id: self.id.clone(),
                exec_id: exec.into(),
            }))
            .await
            .map(|r| r.into_inner().process.unwrap().status)
            .map_err(|s| s.code())
    }

    fn ctr_exec(&self, exec: &str, script: &str) -> String {
        let out = self.c.ctr(&[
            "tasks",
            "exec",
            "--exec-id",
            exec,
            &self.id,
            "sh",
            "-c",
            script,
        ]);
        text(&out.stdout).trim().to_string()
    }

    /// The flows on a running task of this runtime.
    /// `run_args` go to `ctr run`.
    async fn run(&mut self, runtime: &str, run_args: &[&str]) -> Answers {
        let mut a = Answers(vec![]);
        let mut args = vec!["run", "-d", "--runtime", runtime];
        args.extend_from_slice(run_args);
        args.extend_from_slice(&[IMAGE, &self.id, "sleep", "600"]);
        let out = self.c.ctr(&args);
        assert!(out.status.success(), "{}", text(&out.stderr));

        // The container's wall clock is the host's.
        let guest: i64 = self.ctr_exec("clock", "date +%s").parse().unwrap_or(0);
        let skew = guest - host_now();
        assert!(
            skew.abs() <= 1,
            "{runtime}: the container's clock is {skew} s off"
        );

        // An exec created and never started: listed as created, deleted, gone, and
        // its id free again; a signal to it is refused.
        a.push("exec", self.exec("idle", &["true"]).await);
        a.push("idle status", self.status("idle").await);
        a.push("kill idle", self.kill("idle", 9).await);
        let d = self.delete_exec("idle").await.unwrap();
        a.push("delete idle", (d.exit_status, d.pid, d.exited_at));
        a.push("idle gone", self.status("idle").await);
        a.push("exec again", self.exec("idle", &["true"]).await);
        a.push("delete again", self.delete_exec("idle").await.is_ok());

        // An exec that ran and exited: exit in host time, then the codes after exit.
        a.push(
            "exec quick",
            self.exec("quick", &["sh", "-c", "exit 3"]).await,
        );
        a.push("start quick", self.start("quick").await);
        let w = self.wait("quick").await;
        let skew = seconds_from_now(w.exited_at);
        assert!(
            skew.abs() <= 2,
            "{runtime}: exit time {skew} s from the host's"
        );
        a.push("quick exit", w.exit_status);
        a.push("kill quick", self.kill("quick", 9).await);
        a.push("start quick again", self.start("quick").await);
        let d = self.delete_exec("quick").await.map(|d| d.exit_status);
        a.push("delete quick", d);
        a.push(
            "delete quick again",
            self.delete_exec("quick").await.map(|_| ()),
        );

        // A running exec cannot be deleted.
        a.push("exec long", self.exec("long", &["sleep", "100"]).await);
        a.push("start long", self.start("long").await);
        a.push("delete long", self.delete_exec("long").await.map(|_| ()));
        a.push("kill long", self.kill("long", 9).await);
        a.push("long exit", self.wait("long").await.exit_status);
        a.push("delete long after", self.delete_exec("long").await.is_ok());

        // Resizing a process without a terminal does nothing.
        let r = self
            .tasks
            .resize_pty(req(api::ResizePtyRequest {
                container_id: self.id.clone(),
                exec_id: String::new(),
                width: 100,
                height: 40,
            }))
            .await;
        a.push("resize", code(r));
        a.push("terminal exec", self.terminal_exec().await);

        // The processes: the init alone.
        let pids = self
            .tasks
            .list_pids(req(api::ListPidsRequest {
                container_id: self.id.clone(),
            }))
            .await
            .unwrap()
            .into_inner()
            .processes;
        a.push("pids", pids.len());

        // A memory limit reaches the container's cgroup.
        let resources = serde_json::json!({"memory": {"limit": 67108864}});
        let r = self
            .tasks
            .update(req(api::UpdateTaskRequest {
                container_id: self.id.clone(),
                resources: Some(prost_types::Any {
                    type_url: RESOURCES_TYPE.into(),
                    value: resources.to_string().into_bytes(),
                }),
                ..Default::default()
            }))
            .await;
        a.push("update", code(r));
        a.push(
            "memory limit",
            self.ctr_exec(
                "mem",
                "cat /sys/fs/cgroup/memory.max 2>/dev/null || \
                 cat /sys/fs/cgroup/memory/memory.limit_in_bytes",
            ),
        );

        // The init's exit: host time, then the codes after exit.
        a.push("kill init", self.kill("", 9).await);
        let w = self.wait("").await;
        let skew = seconds_from_now(w.exited_at);
        assert!(
            skew.abs() <= 2,
            "{runtime}: exit time {skew} s from the host's"
        );
        a.push("init exit", w.exit_status);
        a.push("kill init again", self.kill("", 9).await);
        a.push("exec after exit", self.exec("late", &["true"]).await);
        let d = self
            .tasks
            .delete(req(api::DeleteTaskRequest {
                container_id: self.id.clone(),
            }))
            .await
            .map(|d| d.into_inner().exit_status);
        a.push("delete task", d.map_err(|s| s.code()));
        let again = self
            .tasks
            .delete(req(api::DeleteTaskRequest {
                container_id: self.id.clone(),
            }))
            .await;
        a.push("delete task again", code(again));
        let out = self.c.ctr(&["containers", "rm", &self.id]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        a
    }

    /// An exec on a terminal given a stderr FIFO that nobody reads: the terminal
    /// carries all output, stderr is never opened. Returns what came out.
    async fn terminal_exec(&mut self) -> String {
        let dir = tempfile::tempdir().unwrap();
        let (out, errs) = (dir.path().join("out"), dir.path().join("err"));
        for f in [&out, &errs] {
            nix::unistd::mkfifo(f, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        }
        let reader = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&out)
            .unwrap();
        let r = self
            .tasks
            .exec(req(api::ExecProcessRequest {
                container_id: self.id.clone(),
                exec_id: "tty".into(),
                terminal: true,
                stdout: out.display().to_string(),
                stderr: errs.display().to_string(),
                spec: Some(process_on(
                    &["sh", "-c", "echo on-tty; echo to-err >&2; sleep 2"],
                    true,
                )),
                ..Default::default()
            }))
            .await;
        if let Err(e) = r {
            return format!("exec: {:?}", e.code());
        }
        let started = tokio::time::timeout(Duration::from_secs(20), self.start("tty")).await;
        if started.is_err() {
            return "start hung".into();
        }
        // While it runs: a stderr FIFO with a writer would make a read wait; with
        // none it reads as ended.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mut err_reader = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&errs)
            .unwrap();
        let stderr_open = matches!(
            std::io::Read::read(&mut err_reader, &mut [0u8; 16]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock
        );
        let _ = tokio::time::timeout(Duration::from_secs(20), self.wait("tty")).await;
        let mut seen = String::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let mut reader = reader;
        while !seen.contains("to-err") && std::time::Instant::now() < deadline {
            let mut buf = [0u8; 256];
            match std::io::Read::read(&mut reader, &mut buf) {
                Ok(n) if n > 0 => seen += &String::from_utf8_lossy(&buf[..n]),
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        let _ = self.delete_exec("tty").await;
        let seen = seen.replace('\r', "");
        format!("{} (stderr opened: {stderr_open})", seen.trim())
    }

    /// Creates container `suffix` running `args` and its task (not started).
    async fn create_task(
        &mut self,
        runtime: &str,
        suffix: &str,
        args: &[&str],
    ) -> (String, Result<u32, containerd_client::tonic::Status>) {
        let id = format!("{}-{suffix}", self.id);
        let mut a = vec!["containers", "create", "--runtime", runtime, IMAGE, &id];
        a.extend_from_slice(args);
        let out = self.c.ctr(&a);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let r = self.create(&id).await;
        (id, r)
    }

    /// Creates the task of existing container `id` on its snapshot.
    async fn create(&mut self, id: &str) -> Result<u32, containerd_client::tonic::Status> {
        let mounts = SnapshotsClient::new(self.ch.clone())
            .mounts(req(MountsRequest {
                snapshotter: "overlayfs".into(),
                key: id.into(),
            }))
            .await
            .unwrap()
            .into_inner()
            .mounts;
        self.tasks
            .create(req(api::CreateTaskRequest {
                container_id: id.into(),
                rootfs: mounts,
                ..Default::default()
            }))
            .await
            .map(|r| r.into_inner().pid)
    }

    /// Tasks of one container in rounds, each created as soon as the previous one
    /// is deleted, as containerd's Go client does (create, start, wait, delete):
    /// each round's exit status from the delete, or the first failure.
    async fn tasks_in_a_row(&mut self, runtime: &str) -> Vec<Result<u32, String>> {
        let (id, mut created) = self.create_task(runtime, "again", &["false"]).await;
        let mut rounds = Vec::new();
        for round in 0..3 {
            if round > 0 {
                created = self.create(&id).await;
            }
            if let Err(e) = created {
                rounds.push(Err(format!("create: {e}")));
                break;
            }
            let container_id = id.clone();
            let start = api::StartRequest {
                container_id: container_id.clone(),
                exec_id: String::new(),
            };
            let wait = api::WaitRequest {
                container_id: container_id.clone(),
                exec_id: String::new(),
            };
            let delete = api::DeleteTaskRequest { container_id };
            let round = async {
                self.tasks.start(req(start)).await?;
                self.tasks.wait(req(wait)).await?;
                let d = self.tasks.delete(req(delete)).await?;
                Ok::<_, containerd_client::tonic::Status>(d.into_inner().exit_status)
            };
            let round = tokio::time::timeout(Duration::from_secs(60), round).await;
            match round {
                Ok(Ok(status)) => rounds.push(Ok(status)),
                Ok(Err(e)) => {
                    rounds.push(Err(e.to_string()));
                    break;
                }
                Err(_) => {
                    rounds.push(Err("timed out".into()));
                    break;
                }
            }
        }
        if !rounds.iter().all(|r| r.is_ok()) {
            // What a failed round left.
            let kill = api::KillRequest {
                container_id: id.clone(),
                signal: 9,
                ..Default::default()
            };
            let _ = self.tasks.kill(req(kill)).await;
            let delete = api::DeleteTaskRequest {
                container_id: id.clone(),
            };
            let _ = self.tasks.delete(req(delete)).await;
        }
        self.remove_container(&id);
        rounds
    }

    fn remove_container(&self, id: &str) {
        let out = self.c.ctr(&["containers", "rm", id]);
        assert!(out.status.success(), "{}", text(&out.stderr));
    }

    /// A task created and deleted without a start: its status, then the delete's
    /// exit status.
    async fn created_and_deleted(
        &mut self,
        runtime: &str,
    ) -> (Result<i32, Code>, Result<u32, Code>) {
        let (id, r) = self
            .create_task(runtime, "unstarted", &["sleep", "600"])
            .await;
        r.unwrap_or_else(|e| panic!("{runtime}: {e}"));
        let status = self
            .tasks
            .get(req(api::GetRequest {
                container_id: id.clone(),
                exec_id: String::new(),
            }))
            .await
            .map(|r| r.into_inner().process.unwrap().status)
            .map_err(|s| s.code());
        let d = self
            .tasks
            .delete(req(api::DeleteTaskRequest {
                container_id: id.clone(),
            }))
            .await
            .map(|d| d.into_inner().exit_status)
            .map_err(|s| s.code());
        self.remove_container(&id);
        (status, d)
    }

    /// Creates a task whose process does not exist: the create fails.
    async fn missing_binary(&mut self, runtime: &str) -> (Code, String) {
        let (id, r) = self
            .create_task(runtime, "nobin", &["/no/such/binary"])
            .await;
        self.remove_container(&id);
        match r {
            Ok(_) => (Code::Ok, String::new()),
            Err(s) => (s.code(), s.message().to_string()),
        }
    }
}

async fn flows(
    c: &Containerd,
    runtime: &str,
    run_args: &[&str],
    id: &str,
) -> (Answers, (Code, String)) {
    let ch = containerd_client::connect(&c.sock).await.unwrap();
    let mut f = Flow {
        c,
        tasks: TasksClient::new(ch.clone()),
        ch,
        id: id.into(),
    };
    let mut answers = f.run(runtime, run_args).await;
    let unstarted = f.created_and_deleted(runtime).await;
    answers.push("created and deleted", unstarted);
    let in_a_row = f.tasks_in_a_row(runtime).await;
    answers.push("tasks in a row", in_a_row);
    (answers, f.missing_binary(runtime).await)
}

fn have_runc() -> bool {
    Command::new("containerd-shim-runc-v2")
        .arg("-v")
        .output()
        .is_ok_and(|o| o.status.success())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_task_api_answers_as_under_runc() {
    if !have_runc() {
        eprintln!("skipping: containerd-shim-runc-v2 missing (apt-get install containerd)");
        return;
    }
    let c = Containerd::start();
    let id = format!("api{}", std::process::id());
    let (runc, runc_nobin) = flows(&c, RUNC, &[], &format!("{id}-runc")).await;
    // Under TCG, where the guest's clock is the furthest from the host's.
    let tcg = ["--annotation", "io.ember.vm.accel=tcg"];
    let (ember, ember_nobin) = flows(&c, RUNTIME, &tcg, &format!("{id}-ember")).await;
    for (r, e) in runc.0.iter().zip(&ember.0) {
        assert_eq!(r, e, "runc and ember differ\n{}", c.shim_logs());
    }
    assert_eq!(runc.0.len(), ember.0.len());
    let tty = ember.0.iter().find(|(step, _)| *step == "terminal exec");
    assert!(
        tty.is_some_and(|(_, out)| out.contains("on-tty") && out.contains("to-err")),
        "{tty:?}"
    );
    // Both fail at create, naming the missing binary.
    for (code, msg) in [&runc_nobin, &ember_nobin] {
        assert_ne!(*code, Code::Ok, "a task without its binary was created");
        assert!(msg.contains("/no/such/binary"), "{msg}");
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    c.assert_clean();
}
