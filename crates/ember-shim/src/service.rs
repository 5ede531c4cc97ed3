//! `containerd.task.v2.Task` over ttrpc: wire messages in, calls on [`Task`] out.

use std::sync::Arc;

use ember_ttrpc::{Code, Service, Status};

use crate::socket::ShimSocket;
use crate::task::Task;
use ember_shim_api::*;

/// Registers method `$name` on `$svc`: each call gets its own handle `$t` on the
/// task and its decoded request `$r`, and answers with `$body`.
macro_rules! forward {
    ($svc:ident, $task:ident, $name:literal, |$t:ident, $r:ident: $req:ty| $body:expr) => {
        let $svc = {
            let task = $task.clone();
            $svc.method($name, move |$r: $req| {
                let $t = task.clone();
                async move { $body }
            })
        };
    };
}

pub fn task_service(task: Arc<Task>, socket: Arc<ShimSocket>) -> Service {
    let svc = Service::new();
    forward!(svc, task, "State", |t, r: ProcessRequest| t
        .state(&r.id, &r.exec_id));
    forward!(svc, task, "Create", |t, r: CreateTaskRequest| t
        .create(r)
        .await
        .map(|pid| CreateTaskResponse { pid }));
    forward!(svc, task, "Start", |t, r: ProcessRequest| t
        .start(&r.id, &r.exec_id)
        .await
        .map(|pid| PidResponse { pid }));
    forward!(svc, task, "Delete", |t, r: ProcessRequest| t
        .delete(&r.id, &r.exec_id)
        .await);
    forward!(svc, task, "Pids", |t, r: IdRequest| t.pids(&r.id).await);
    forward!(svc, task, "Pause", |t, r: IdRequest| t
        .pause(&r.id)
        .await
        .map(|_| Empty {}));
    forward!(svc, task, "Resume", |t, r: IdRequest| t
        .resume(&r.id)
        .await
        .map(|_| Empty {}));
    let svc = svc.method("Checkpoint", |_: IdRequest| async move {
        Err::<Empty, _>(Status::new(
            Code::Unimplemented,
            "checkpoint is not supported",
        ))
    });
    forward!(svc, task, "Kill", |t, r: KillRequest| t
        .kill(r)
        .await
        .map(|_| Empty {}));
    forward!(svc, task, "Exec", |t, r: ExecProcessRequest| t
        .exec(r)
        .await
        .map(|_| Empty {}));
    forward!(svc, task, "ResizePty", |t, r: ResizePtyRequest| t
        .resize_pty(r)
        .await
        .map(|_| Empty {}));
    forward!(svc, task, "CloseIO", |t, r: CloseIoRequest| t
        .close_io(r)
        .map(|_| Empty {}));
    forward!(svc, task, "Update", |t, r: UpdateTaskRequest| t
        .update(r)
        .await
        .map(|_| Empty {}));
    forward!(svc, task, "Wait", |t, r: ProcessRequest| t
        .wait(&r.id, &r.exec_id)
        .await);
    forward!(svc, task, "Stats", |t, r: IdRequest| t.stats(&r.id).await);
    forward!(svc, task, "Connect", |t, r: IdRequest| t.connect(&r.id));
    // A shim that goes stops answering at its address before it acknowledges, so
    // the daemon's next start of this task never finds it there.
    svc.method("Shutdown", move |r: ShutdownRequest| {
        let (t, socket) = (task.clone(), socket.clone());
        async move {
            if t.request_shutdown(r.now)? {
                socket.release();
            }
            Ok(Empty {})
        }
    })
}
