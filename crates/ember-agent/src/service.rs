//! The ttrpc service `ember.agent.v1.Agent`, one `Server` per connection so that
//! long polls of a connection that went away end instead of eating output.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use ember_agent_api::*;
use ember_ttrpc::{Code, Server, Service, Status};
use tokio::sync::watch;

use crate::runtime::Agent;

/// Races `fut` against the connection closing.
async fn until_closed<T>(
    mut closed: watch::Receiver<bool>,
    fut: impl Future<Output = Result<T, Status>>,
) -> Result<T, Status> {
    tokio::select! {
        r = fut => r,
        _ = async { closed.wait_for(|c| *c).await.map(|_| ()) } => Err(Status::new(Code::Cancelled, "connection closed")),
    }
}

/// Builds the server for one connection; `closed` turns true when it ends.
pub fn server(agent: Arc<Agent>, closed: watch::Receiver<bool>) -> Server {
    let a = agent;
    let svc =
        Service::new()
            .method(method::PING, |_: Empty| async move {
                Ok(PingResponse {
                    version: env!("CARGO_PKG_VERSION").to_string(),
                    kernel_release: crate::sys::kernel_release(),
                    uptime_ms: crate::sys::uptime_ms(),
                })
            })
            .method(method::CREATE_CONTAINER, {
                let a = a.clone();
                move |r: CreateContainerRequest| {
                    let a = a.clone();
                    async move {
                        let pid = a.create_container(r).await?;
                        Ok(CreateContainerResponse { pid })
                    }
                }
            })
            .method(method::CREATE_PROCESS, {
                let a = a.clone();
                move |r: CreateProcessRequest| {
                    let a = a.clone();
                    async move {
                        a.create_process(r).await?;
                        Ok(Empty {})
                    }
                }
            })
            .method(method::START_PROCESS, {
                let a = a.clone();
                move |r: ProcessRef| {
                    let a = a.clone();
                    async move {
                        let pid = a.start_process(&r.container_id, &r.exec_id).await?;
                        Ok(StartProcessResponse { pid })
                    }
                }
            })
            .method(method::WAIT_PROCESS, {
                let a = a.clone();
                let closed = closed.clone();
                move |r: ProcessRef| {
                    let a = a.clone();
                    let closed = closed.clone();
                    async move {
                        until_closed(closed, a.wait_process(&r.container_id, &r.exec_id)).await
                    }
                }
            })
            .method(method::SIGNAL_PROCESS, {
                let a = a.clone();
                move |r: SignalProcessRequest| {
                    let a = a.clone();
                    async move {
                        a.signal_process(&r.container_id, &r.exec_id, r.signal, r.all)
                            .await?;
                        Ok(Empty {})
                    }
                }
            })
            .method(method::WRITE_STDIN, {
                let a = a.clone();
                let closed = closed.clone();
                move |r: WriteStdinRequest| {
                    let a = a.clone();
                    let closed = closed.clone();
                    async move {
                        let written = until_closed(
                            closed,
                            a.write_stdin(&r.container_id, &r.exec_id, &r.data),
                        )
                        .await?;
                        Ok(WriteStdinResponse { written })
                    }
                }
            })
            .method(method::CLOSE_STDIN, {
                let a = a.clone();
                move |r: ProcessRef| {
                    let a = a.clone();
                    async move {
                        a.close_stdin(&r.container_id, &r.exec_id).await?;
                        Ok(Empty {})
                    }
                }
            })
            .method(method::READ_OUTPUT, {
                let a = a.clone();
                let closed = closed.clone();
                move |r: ReadOutputRequest| {
                    let a = a.clone();
                    let closed = closed.clone();
                    async move {
                        let (data, eof) = until_closed(
                            closed,
                            a.read_output(&r.container_id, &r.exec_id, r.stream, r.max_len),
                        )
                        .await?;
                        Ok(ReadOutputResponse { data, eof })
                    }
                }
            })
            .method(method::RESIZE_PTY, {
                let a = a.clone();
                move |r: ResizePtyRequest| {
                    let a = a.clone();
                    async move {
                        a.resize_pty(&r.container_id, &r.exec_id, r.width, r.height)?;
                        Ok(Empty {})
                    }
                }
            })
            .method(method::PAUSE_CONTAINER, {
                let a = a.clone();
                move |r: ContainerRef| {
                    let a = a.clone();
                    async move {
                        a.pause(&r.container_id).await?;
                        Ok(Empty {})
                    }
                }
            })
            .method(method::RESUME_CONTAINER, {
                let a = a.clone();
                move |r: ContainerRef| {
                    let a = a.clone();
                    async move {
                        a.resume(&r.container_id).await?;
                        Ok(Empty {})
                    }
                }
            })
            .method(method::LIST_PIDS, {
                let a = a.clone();
                move |r: ContainerRef| {
                    let a = a.clone();
                    async move {
                        let pids = a.list_pids(&r.container_id)?;
                        Ok(ListPidsResponse { pids })
                    }
                }
            })
            .method(method::STATS, {
                let a = a.clone();
                move |r: ContainerRef| {
                    let a = a.clone();
                    async move { a.stats(&r.container_id) }
                }
            })
            .method(method::UPDATE_CONTAINER, {
                let a = a.clone();
                move |r: UpdateContainerRequest| {
                    let a = a.clone();
                    async move {
                        a.update(&r.container_id, &r.resources_json)?;
                        Ok(Empty {})
                    }
                }
            })
            .method(method::REMOVE_CONTAINER, {
                let a = a.clone();
                move |r: ContainerRef| {
                    let a = a.clone();
                    async move {
                        a.remove(&r.container_id).await?;
                        Ok(Empty {})
                    }
                }
            })
            .method(method::REMOVE_PROCESS, {
                let a = a.clone();
                move |r: ProcessRef| {
                    let a = a.clone();
                    async move {
                        a.remove_process(&r.container_id, &r.exec_id).await?;
                        Ok(Empty {})
                    }
                }
            })
            .method(method::MOUNT_BLOCK, {
                let a = a.clone();
                move |r: MountBlockRequest| {
                    let a = a.clone();
                    async move {
                        a.mount_block(r).await?;
                        Ok(Empty {})
                    }
                }
            })
            .method(method::UNMOUNT, {
                let a = a.clone();
                move |r: UnmountRequest| {
                    let a = a.clone();
                    async move {
                        a.unmount(&r.target).await?;
                        Ok(Empty {})
                    }
                }
            })
            .method(method::SET_METADATA, {
                let a = a.clone();
                move |r: SetMetadataRequest| {
                    let a = a.clone();
                    async move {
                        a.set_metadata(&r.json).await?;
                        Ok(Empty {})
                    }
                }
            })
            .method(method::CONFIGURE_NETWORK, {
                let a = a.clone();
                move |r: ConfigureNetworkRequest| {
                    let a = a.clone();
                    async move {
                        a.configure_network(r).await?;
                        Ok(Empty {})
                    }
                }
            })
            .method(method::SET_CLOCK, |r: SetClockRequest| async move {
                crate::sys::set_clock(r.unix_ns)
                    .map_err(|e| Status::new(Code::Internal, format!("setting the clock: {e}")))?;
                Ok(Empty {})
            })
            .method(method::SET_IDENTITY, |r: SetIdentityRequest| async move {
                crate::identity::check(&r).map_err(|e| Status::new(Code::InvalidArgument, e))?;
                if std::process::id() != 1 {
                    return Err(Status::new(
                        Code::FailedPrecondition,
                        "the identity of a guest is set by its PID 1 agent",
                    ));
                }
                let shared_mounted =
                    tokio::task::spawn_blocking(move || crate::identity::apply(&r))
                        .await
                        .map_err(|e| Status::new(Code::Internal, e.to_string()))?
                        .map_err(|e| {
                            Status::new(Code::Internal, format!("setting the identity: {e}"))
                        })?;
                Ok(SetIdentityResponse {
                    boot_id: crate::identity::boot_id(),
                    shared_mounted,
                })
            })
            .method(method::WAIT_OOM, {
                let a = a.clone();
                let closed = closed.clone();
                move |_: Empty| {
                    let a = a.clone();
                    let closed = closed.clone();
                    async move {
                        let container_id =
                            until_closed(closed, async { Ok(a.wait_oom().await) }).await?;
                        Ok(OomEvent { container_id })
                    }
                }
            })
            .method(method::SHUTDOWN, {
                let a = a.clone();
                move |_: Empty| {
                    let a = a.clone();
                    async move {
                        tokio::spawn(async move {
                            // Let the reply go out first.
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            crate::init::shutdown(&a).await;
                        });
                        Ok(Empty {})
                    }
                }
            });
    Server::new().register(SERVICE, svc)
}
