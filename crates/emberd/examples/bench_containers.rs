//! Containers Create + Delete over gRPC, against any containerd-compatible socket:
//! `bench_containers SOCKET [OPS] [CONCURRENCY]`. Prints `ops_per_sec=N`.

use std::time::Instant;

use containerd_client::services::v1 as api;
use containerd_client::services::v1::containers_client::ContainersClient;
use containerd_client::tonic::Request;

fn req<T>(msg: T) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut()
        .insert("containerd-namespace", "bench".parse().unwrap());
    r
}

fn container(id: String) -> api::Container {
    api::Container {
        id,
        image: "docker.io/library/busybox:latest".into(),
        runtime: Some(api::container::Runtime {
            name: "io.containerd.runc.v2".into(),
            options: None,
        }),
        spec: Some(prost_types::Any {
            type_url: "types.containerd.io/opencontainers/runtime-spec/1/Spec".into(),
            value: br#"{"ociVersion":"1.0.2","process":{"args":["sh"],"cwd":"/"},"root":{"path":"rootfs"}}"#.to_vec(),
        }),
        labels: [("bench".to_string(), "yes".to_string())].into(),
        ..Default::default()
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let socket = args
        .get(1)
        .expect("usage: bench_containers SOCKET [OPS] [CONCURRENCY]");
    let ops: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(1000);
    let conc: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(1);
    let channel = containerd_client::connect(socket)
        .await
        .expect("connecting");
    // Warm up the connection.
    let mut c = ContainersClient::new(channel.clone());
    c.create(req(api::CreateContainerRequest {
        container: Some(container("warmup".into())),
    }))
    .await
    .expect("create");
    c.delete(req(api::DeleteContainerRequest {
        id: "warmup".into(),
    }))
    .await
    .expect("delete");
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..conc {
        let mut c = ContainersClient::new(channel.clone());
        let n = ops / conc + usize::from(w < ops % conc);
        tasks.push(tokio::spawn(async move {
            for i in 0..n {
                let id = format!("bench-{w}-{i}");
                c.create(req(api::CreateContainerRequest {
                    container: Some(container(id.clone())),
                }))
                .await
                .expect("create");
                c.delete(req(api::DeleteContainerRequest { id }))
                    .await
                    .expect("delete");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "ops={ops} concurrency={conc} seconds={secs:.3} ops_per_sec={:.0}",
        ops as f64 / secs
    );
}
