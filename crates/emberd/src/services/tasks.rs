//! `containerd.services.tasks.v1.Tasks`: tasks of containers, each run by a shim
//! through the v2 runtime ([`crate::runtime`]). Task events come from the shims
//! (forwarded over the daemon's ttrpc socket).

use std::sync::Arc;

use containerd_client::services::v1 as wire;
use containerd_client::types::v1::Process;
use containerd_client::types::{Metric, Mount};
use ember_metadata::db::Reader;
use ember_shim_api as shim;
use ember_snapshot::convert::mount_to_wire;
use tonic::{Code, Request, Response, Status};

use crate::daemon::Metadata;
use crate::grpc::tasks::tasks_server::{Tasks, TasksServer};
use crate::plugin::{InitError, Registration, GRPC, METADATA, RUNTIME};
use crate::runtime::{CreateOpts, Error, ShimTask, TaskManager};
use crate::services::containers::any_out;
use crate::services::{blocking, namespace, timestamp, GrpcService};

pub fn registration() -> Registration {
    Registration::new(GRPC, "tasks", &[METADATA, RUNTIME], |ctx| {
        let service = Service {
            md: ctx.registry.first(METADATA).map_err(InitError::Failed)?,
            tasks: ctx.registry.first(RUNTIME).map_err(InitError::Failed)?,
        };
        Ok(GrpcService::instance(move |r| {
            r.add_service(limited!(TasksServer::new(service.clone())));
        }))
    })
}

#[derive(Clone)]
pub struct Service {
    md: Arc<Metadata>,
    tasks: Arc<TaskManager>,
}

/// The status for a runtime error; a shim's own status keeps its code.
fn status(e: Error) -> Status {
    match e {
        Error::Daemon(e) => crate::services::status(e),
        Error::Shim(ember_ttrpc::Error::Status(s)) => {
            Status::new(Code::from_i32(s.code() as i32), s.message().to_string())
        }
        Error::Shim(e) => {
            tracing::error!(error = %e, "task request failed");
            Status::unknown(e.to_string())
        }
    }
}

fn process(t: &ShimTask, s: &shim::StateResponse) -> Process {
    // The shim's id is the process's: the container's for the init process, the
    // exec id for others.
    let id = [&s.id, &s.exec_id, &t.id]
        .into_iter()
        .find(|i| !i.is_empty())
        .cloned()
        .unwrap_or_default();
    Process {
        container_id: t.id.clone(),
        id,
        pid: s.pid,
        status: s.status,
        stdin: s.stdin.clone(),
        stdout: s.stdout.clone(),
        stderr: s.stderr.clone(),
        terminal: s.terminal,
        exit_status: s.exit_status,
        exited_at: s.exited_at,
    }
}

impl Service {
    fn task(&self, ns: &str, id: &str) -> Result<Arc<ShimTask>, Status> {
        self.tasks.get(ns, id).map_err(status)
    }

    /// The rootfs mounts of a task: the request's, else the container's snapshot's.
    async fn rootfs(
        &self,
        ns: &str,
        c: &ember_metadata::Container,
        given: Vec<Mount>,
    ) -> Result<Vec<Mount>, Status> {
        if !given.is_empty() || c.snapshot_key.is_empty() {
            return Ok(given);
        }
        let store = self.md.snapshotter(&c.snapshotter)?;
        let mounts = store
            .mounts(ns, &c.snapshot_key)
            .await
            .map_err(crate::services::status)?;
        Ok(mounts.iter().map(mount_to_wire).collect())
    }
}

#[tonic::async_trait]
impl Tasks for Service {
    async fn create(
        &self,
        r: Request<wire::CreateTaskRequest>,
    ) -> Result<Response<wire::CreateTaskResponse>, Status> {
        let ns = namespace(&r)?;
        let r = r.into_inner();
        if r.checkpoint.is_some() {
            return Err(Status::unimplemented(
                "restoring from a checkpoint is not supported",
            ));
        }
        let db = self.md.db.clone();
        let (n, id) = (ns.clone(), r.container_id.clone());
        let c = blocking(move || db.view(|tx| tx.get_container(&n, &id))).await?;
        let spec = c
            .spec
            .as_ref()
            .map(|s| s.value.clone())
            .ok_or_else(|| Status::failed_precondition("container has no spec"))?;
        let runtime = if r.runtime_path.is_empty() {
            c.runtime.name.clone()
        } else {
            r.runtime_path.clone()
        };
        let rootfs = self.rootfs(&ns, &c, r.rootfs).await?;
        let options = r
            .options
            .or_else(|| c.runtime.options.as_ref().map(any_out));
        let task = self
            .tasks
            .create(
                &ns,
                &c.id,
                &runtime,
                &spec,
                CreateOpts {
                    rootfs,
                    stdin: r.stdin,
                    stdout: r.stdout,
                    stderr: r.stderr,
                    terminal: r.terminal,
                    options,
                },
            )
            .await
            .map_err(status)?;
        Ok(Response::new(wire::CreateTaskResponse {
            container_id: task.id.clone(),
            pid: task.pid,
        }))
    }

    async fn start(
        &self,
        r: Request<wire::StartRequest>,
    ) -> Result<Response<wire::StartResponse>, Status> {
        let ns = namespace(&r)?;
        let r = r.into_inner();
        let t = self.task(&ns, &r.container_id)?;
        let resp = t.client.start(&r.container_id, &r.exec_id).await;
        let pid = resp.map_err(|e| status(e.into()))?.pid;
        Ok(Response::new(wire::StartResponse { pid }))
    }

    async fn delete(
        &self,
        r: Request<wire::DeleteTaskRequest>,
    ) -> Result<Response<wire::DeleteResponse>, Status> {
        let ns = namespace(&r)?;
        let id = r.into_inner().container_id;
        let d = self.tasks.delete(&ns, &id).await.map_err(status)?;
        Ok(Response::new(wire::DeleteResponse {
            id,
            pid: d.pid,
            exit_status: d.exit_status,
            exited_at: d.exited_at,
        }))
    }

    async fn delete_process(
        &self,
        r: Request<wire::DeleteProcessRequest>,
    ) -> Result<Response<wire::DeleteResponse>, Status> {
        let ns = namespace(&r)?;
        let r = r.into_inner();
        if r.exec_id.is_empty() {
            return Err(Status::invalid_argument("exec_id is required"));
        }
        let t = self.task(&ns, &r.container_id)?;
        let d = t
            .client
            .delete(&r.container_id, &r.exec_id)
            .await
            .map_err(|e| status(e.into()))?;
        Ok(Response::new(wire::DeleteResponse {
            id: r.exec_id,
            pid: d.pid,
            exit_status: d.exit_status,
            exited_at: d.exited_at,
        }))
    }

    async fn get(
        &self,
        r: Request<wire::GetRequest>,
    ) -> Result<Response<wire::GetResponse>, Status> {
        let ns = namespace(&r)?;
        let r = r.into_inner();
        let t = self.task(&ns, &r.container_id)?;
        let s = t
            .client
            .state(&r.container_id, &r.exec_id)
            .await
            .map_err(|e| status(e.into()))?;
        Ok(Response::new(wire::GetResponse {
            process: Some(process(&t, &s)),
        }))
    }

    async fn list(
        &self,
        r: Request<wire::ListTasksRequest>,
    ) -> Result<Response<wire::ListTasksResponse>, Status> {
        let ns = namespace(&r)?;
        let mut tasks = Vec::new();
        for t in self.tasks.list(&ns) {
            match t.client.state(&t.id, "").await {
                Ok(s) => tasks.push(process(&t, &s)),
                Err(e) => tracing::warn!(id = %t.id, "task state: {e}"),
            }
        }
        Ok(Response::new(wire::ListTasksResponse { tasks }))
    }

    async fn kill(&self, r: Request<wire::KillRequest>) -> Result<Response<()>, Status> {
        let ns = namespace(&r)?;
        let r = r.into_inner();
        let t = self.task(&ns, &r.container_id)?;
        t.client
            .kill(&shim::KillRequest {
                id: r.container_id,
                exec_id: r.exec_id,
                signal: r.signal,
                all: r.all,
            })
            .await
            .map_err(|e| status(e.into()))?;
        Ok(Response::new(()))
    }

    async fn exec(&self, r: Request<wire::ExecProcessRequest>) -> Result<Response<()>, Status> {
        let ns = namespace(&r)?;
        let r = r.into_inner();
        if r.exec_id.is_empty() {
            return Err(Status::invalid_argument("exec id cannot be empty"));
        }
        let t = self.task(&ns, &r.container_id)?;
        // The shim names files after the exec id (the runc shim its pid file).
        ember_metadata::identifiers::validate_as("exec id", &r.exec_id)
            .map_err(crate::services::status)?;
        t.client
            .exec(&shim::ExecProcessRequest {
                id: r.container_id,
                exec_id: r.exec_id,
                terminal: r.terminal,
                stdin: r.stdin,
                stdout: r.stdout,
                stderr: r.stderr,
                spec: r.spec,
            })
            .await
            .map_err(|e| status(e.into()))?;
        Ok(Response::new(()))
    }

    async fn resize_pty(&self, r: Request<wire::ResizePtyRequest>) -> Result<Response<()>, Status> {
        let ns = namespace(&r)?;
        let r = r.into_inner();
        let t = self.task(&ns, &r.container_id)?;
        t.client
            .resize_pty(&shim::ResizePtyRequest {
                id: r.container_id,
                exec_id: r.exec_id,
                width: r.width,
                height: r.height,
            })
            .await
            .map_err(|e| status(e.into()))?;
        Ok(Response::new(()))
    }

    async fn close_io(&self, r: Request<wire::CloseIoRequest>) -> Result<Response<()>, Status> {
        let ns = namespace(&r)?;
        let r = r.into_inner();
        let t = self.task(&ns, &r.container_id)?;
        t.client
            .close_io(&shim::CloseIoRequest {
                id: r.container_id,
                exec_id: r.exec_id,
                stdin: r.stdin,
            })
            .await
            .map_err(|e| status(e.into()))?;
        Ok(Response::new(()))
    }

    async fn pause(&self, r: Request<wire::PauseTaskRequest>) -> Result<Response<()>, Status> {
        let ns = namespace(&r)?;
        let id = r.into_inner().container_id;
        let t = self.task(&ns, &id)?;
        t.client.pause(&id).await.map_err(|e| status(e.into()))?;
        Ok(Response::new(()))
    }

    async fn resume(&self, r: Request<wire::ResumeTaskRequest>) -> Result<Response<()>, Status> {
        let ns = namespace(&r)?;
        let id = r.into_inner().container_id;
        let t = self.task(&ns, &id)?;
        t.client.resume(&id).await.map_err(|e| status(e.into()))?;
        Ok(Response::new(()))
    }

    async fn list_pids(
        &self,
        r: Request<wire::ListPidsRequest>,
    ) -> Result<Response<wire::ListPidsResponse>, Status> {
        let ns = namespace(&r)?;
        let id = r.into_inner().container_id;
        let t = self.task(&ns, &id)?;
        let p = t.client.pids(&id).await.map_err(|e| status(e.into()))?;
        Ok(Response::new(wire::ListPidsResponse {
            processes: p.processes,
        }))
    }

    async fn checkpoint(
        &self,
        _: Request<wire::CheckpointTaskRequest>,
    ) -> Result<Response<wire::CheckpointTaskResponse>, Status> {
        Err(Status::unimplemented("checkpoint is not supported"))
    }

    async fn update(&self, r: Request<wire::UpdateTaskRequest>) -> Result<Response<()>, Status> {
        let ns = namespace(&r)?;
        let r = r.into_inner();
        let t = self.task(&ns, &r.container_id)?;
        t.client
            .update(&shim::UpdateTaskRequest {
                id: r.container_id,
                resources: r.resources,
                annotations: r.annotations,
            })
            .await
            .map_err(|e| status(e.into()))?;
        Ok(Response::new(()))
    }

    async fn metrics(
        &self,
        r: Request<wire::MetricsRequest>,
    ) -> Result<Response<wire::MetricsResponse>, Status> {
        let ns = namespace(&r)?;
        let filter = crate::services::filter(&r.into_inner().filters)?;
        let mut metrics = Vec::new();
        for t in self.tasks.list(&ns) {
            let fields = TaskFields(&t);
            if !filter.matches(&fields) {
                continue;
            }
            match t.client.stats(&t.id).await {
                Ok(s) => metrics.push(Metric {
                    timestamp: timestamp(std::time::SystemTime::now()),
                    id: t.id.clone(),
                    data: s.stats,
                }),
                Err(e) => tracing::warn!(id = %t.id, "task stats: {e}"),
            }
        }
        Ok(Response::new(wire::MetricsResponse { metrics }))
    }

    async fn wait(
        &self,
        r: Request<wire::WaitRequest>,
    ) -> Result<Response<wire::WaitResponse>, Status> {
        let ns = namespace(&r)?;
        let r = r.into_inner();
        let t = self.task(&ns, &r.container_id)?;
        let w = t
            .client
            .wait(&r.container_id, &r.exec_id)
            .await
            .map_err(|e| status(e.into()))?;
        Ok(Response::new(wire::WaitResponse {
            exit_status: w.exit_status,
            exited_at: w.exited_at,
        }))
    }
}

/// A task as the filter language sees it.
struct TaskFields<'a>(&'a ShimTask);

impl ember_metadata::Fields for TaskFields<'_> {
    fn field(&self, path: &[String]) -> Option<String> {
        match path[0].as_str() {
            "id" | "container_id" => Some(self.0.id.clone()),
            "runtime" => Some(self.0.runtime.clone()),
            _ => None,
        }
    }
}
