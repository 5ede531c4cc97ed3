//! Runs the task of an existing container on the rootfs mounts given, through
//! containerd's Tasks API (Create, Start, Wait, Delete), as a snapshotter's mounts
//! would reach the runtime; prints `create_ms run_ms delete_ms` (the benchmarks'
//! driver, scripts/bench-erofs-start.sh).
//!
//! Usage: task-on-mounts SOCKET CONTAINER TYPE OPTION...
//! (one mount: `overlay lowerdir=… upperdir=… workdir=…`).

use std::time::{Duration, Instant};

use containerd_client::services::v1 as api;
use containerd_client::services::v1::tasks_client::TasksClient;
use containerd_client::tonic::Request;
use containerd_client::types::Mount;

fn req<T>(msg: T) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut()
        .insert("containerd-namespace", "default".parse().unwrap());
    r
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [socket, id, fstype, options @ ..] = args.as_slice() else {
        return Err("usage: task-on-mounts SOCKET CONTAINER TYPE OPTION...".into());
    };
    let ch = containerd_client::connect(socket).await?;
    let mut tasks = TasksClient::new(ch);
    let t0 = Instant::now();
    tasks
        .create(req(api::CreateTaskRequest {
            container_id: id.clone(),
            rootfs: vec![Mount {
                r#type: fstype.clone(),
                source: fstype.clone(),
                target: String::new(),
                options: options.to_vec(),
            }],
            ..Default::default()
        }))
        .await?;
    let created = t0.elapsed();
    let t1 = Instant::now();
    tasks
        .start(req(api::StartRequest {
            container_id: id.clone(),
            exec_id: String::new(),
        }))
        .await?;
    let wait = tasks.wait(req(api::WaitRequest {
        container_id: id.clone(),
        exec_id: String::new(),
    }));
    let status = tokio::time::timeout(Duration::from_secs(300), wait)
        .await??
        .into_inner()
        .exit_status;
    let ran = t1.elapsed();
    let t2 = Instant::now();
    tasks
        .delete(req(api::DeleteTaskRequest {
            container_id: id.clone(),
        }))
        .await?;
    let deleted = t2.elapsed();
    if status != 0 {
        return Err(format!("the task exited with {status}").into());
    }
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!("{:.0} {:.0} {:.0}", ms(created), ms(ran), ms(deleted));
    Ok(())
}
