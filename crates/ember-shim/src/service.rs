//! `containerd.task.v2.Task` over ttrpc: wire messages in, calls on [`Task`] out.

use std::sync::Arc;

use ember_ttrpc::{Code, Service, Status};

use crate::protos::*;
use crate::task::Task;

pub fn task_service(task: Arc<Task>) -> Service {
    let t = task;
    let svc = Service::new();
    let svc = {
        let t = t.clone();
        svc.method("State", move |r: ProcessRequest| {
            let t = t.clone();
            async move { t.state(&r.id, &r.exec_id) }
        })
    };
    let svc = {
        let t = t.clone();
        svc.method("Create", move |r: CreateTaskRequest| {
            let t = t.clone();
            async move { t.create(r).await.map(|pid| CreateTaskResponse { pid }) }
        })
    };
    let svc = {
        let t = t.clone();
        svc.method("Start", move |r: ProcessRequest| {
            let t = t.clone();
            async move {
                t.start(&r.id, &r.exec_id)
                    .await
                    .map(|pid| PidResponse { pid })
            }
        })
    };
    let svc = {
        let t = t.clone();
        svc.method("Delete", move |r: ProcessRequest| {
            let t = t.clone();
            async move { t.delete(&r.id, &r.exec_id).await }
        })
    };
    let svc = {
        let t = t.clone();
        svc.method("Pids", move |r: IdRequest| {
            let t = t.clone();
            async move { t.pids(&r.id).await }
        })
    };
    let svc = {
        let t = t.clone();
        svc.method("Pause", move |r: IdRequest| {
            let t = t.clone();
            async move { t.pause(&r.id).await.map(|_| Empty {}) }
        })
    };
    let svc = {
        let t = t.clone();
        svc.method("Resume", move |r: IdRequest| {
            let t = t.clone();
            async move { t.resume(&r.id).await.map(|_| Empty {}) }
        })
    };
    let svc = svc.method("Checkpoint", |_: IdRequest| async move {
        Err::<Empty, _>(Status::new(
            Code::Unimplemented,
            "checkpoint is not supported",
        ))
    });
    let svc = {
        let t = t.clone();
        svc.method("Kill", move |r: KillRequest| {
            let t = t.clone();
            async move { t.kill(r).await.map(|_| Empty {}) }
        })
    };
    let svc = {
        let t = t.clone();
        svc.method("Exec", move |r: ExecProcessRequest| {
            let t = t.clone();
            async move { t.exec(r).await.map(|_| Empty {}) }
        })
    };
    let svc = {
        let t = t.clone();
        svc.method("ResizePty", move |r: ResizePtyRequest| {
            let t = t.clone();
            async move { t.resize_pty(r).await.map(|_| Empty {}) }
        })
    };
    let svc = {
        let t = t.clone();
        svc.method("CloseIO", move |r: CloseIoRequest| {
            let t = t.clone();
            async move { t.close_io(r).map(|_| Empty {}) }
        })
    };
    let svc = {
        let t = t.clone();
        svc.method("Update", move |r: UpdateTaskRequest| {
            let t = t.clone();
            async move { t.update(r).await.map(|_| Empty {}) }
        })
    };
    let svc = {
        let t = t.clone();
        svc.method("Wait", move |r: ProcessRequest| {
            let t = t.clone();
            async move { t.wait(&r.id, &r.exec_id).await }
        })
    };
    let svc = {
        let t = t.clone();
        svc.method("Stats", move |r: IdRequest| {
            let t = t.clone();
            async move { t.stats(&r.id).await }
        })
    };
    let svc = {
        let t = t.clone();
        svc.method("Connect", move |r: IdRequest| {
            let t = t.clone();
            async move { t.connect(&r.id) }
        })
    };
    svc.method("Shutdown", move |r: ShutdownRequest| {
        let t = t.clone();
        async move { t.request_shutdown(r.now).map(|_| Empty {}) }
    })
}
