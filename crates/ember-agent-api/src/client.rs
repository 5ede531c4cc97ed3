//! Typed host-side client of the agent service.

use std::time::Duration;

use ember_ttrpc::{Client, Result};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::messages::*;
use crate::{method, SERVICE};

/// Timeout for calls that should answer at once.
const QUICK: Option<Duration> = Some(Duration::from_secs(30));

/// A connection to one agent.
#[derive(Clone)]
pub struct AgentClient {
    rpc: Client,
}

impl AgentClient {
    pub fn new<S: AsyncRead + AsyncWrite + Send + 'static>(stream: S) -> Self {
        AgentClient {
            rpc: Client::new(stream),
        }
    }

    pub fn is_closed(&self) -> bool {
        self.rpc.is_closed()
    }

    pub async fn ping(&self, timeout: Duration) -> Result<PingResponse> {
        self.rpc
            .call(SERVICE, method::PING, &Empty {}, Some(timeout))
            .await
    }

    pub async fn create_container(
        &self,
        req: &CreateContainerRequest,
    ) -> Result<CreateContainerResponse> {
        self.rpc
            .call(
                SERVICE,
                method::CREATE_CONTAINER,
                req,
                Some(Duration::from_secs(120)),
            )
            .await
    }

    pub async fn create_process(&self, req: &CreateProcessRequest) -> Result<Empty> {
        self.rpc
            .call(SERVICE, method::CREATE_PROCESS, req, QUICK)
            .await
    }

    pub async fn start_process(&self, container_id: &str, exec_id: &str) -> Result<u32> {
        let r: StartProcessResponse = self
            .rpc
            .call(
                SERVICE,
                method::START_PROCESS,
                &pref(container_id, exec_id),
                QUICK,
            )
            .await?;
        Ok(r.pid)
    }

    /// Waits (without timeout) until the process exits.
    pub async fn wait_process(
        &self,
        container_id: &str,
        exec_id: &str,
    ) -> Result<WaitProcessResponse> {
        self.rpc
            .call(
                SERVICE,
                method::WAIT_PROCESS,
                &pref(container_id, exec_id),
                None,
            )
            .await
    }

    pub async fn signal_process(
        &self,
        container_id: &str,
        exec_id: &str,
        signal: u32,
        all: bool,
    ) -> Result<()> {
        let req = SignalProcessRequest {
            container_id: container_id.into(),
            exec_id: exec_id.into(),
            signal,
            all,
        };
        let _: Empty = self
            .rpc
            .call(SERVICE, method::SIGNAL_PROCESS, &req, QUICK)
            .await?;
        Ok(())
    }

    /// Writes one chunk (at most `MAX_IO_CHUNK` bytes) to the process's stdin.
    pub async fn write_stdin(
        &self,
        container_id: &str,
        exec_id: &str,
        data: Vec<u8>,
    ) -> Result<u32> {
        let req = WriteStdinRequest {
            container_id: container_id.into(),
            exec_id: exec_id.into(),
            data,
        };
        let r: WriteStdinResponse = self
            .rpc
            .call(SERVICE, method::WRITE_STDIN, &req, None)
            .await?;
        Ok(r.written)
    }

    pub async fn close_stdin(&self, container_id: &str, exec_id: &str) -> Result<()> {
        let _: Empty = self
            .rpc
            .call(
                SERVICE,
                method::CLOSE_STDIN,
                &pref(container_id, exec_id),
                QUICK,
            )
            .await?;
        Ok(())
    }

    /// Long-polls one output stream: returns once data is available or the stream ended.
    pub async fn read_output(
        &self,
        container_id: &str,
        exec_id: &str,
        stream: OutputStream,
        max_len: u32,
    ) -> Result<ReadOutputResponse> {
        let req = ReadOutputRequest {
            container_id: container_id.into(),
            exec_id: exec_id.into(),
            stream: stream as i32,
            max_len,
        };
        self.rpc
            .call(SERVICE, method::READ_OUTPUT, &req, None)
            .await
    }

    pub async fn resize_pty(
        &self,
        container_id: &str,
        exec_id: &str,
        width: u32,
        height: u32,
    ) -> Result<()> {
        let req = ResizePtyRequest {
            container_id: container_id.into(),
            exec_id: exec_id.into(),
            width,
            height,
        };
        let _: Empty = self
            .rpc
            .call(SERVICE, method::RESIZE_PTY, &req, QUICK)
            .await?;
        Ok(())
    }

    pub async fn pause_container(&self, container_id: &str) -> Result<()> {
        let _: Empty = self
            .rpc
            .call(SERVICE, method::PAUSE_CONTAINER, &cref(container_id), QUICK)
            .await?;
        Ok(())
    }

    pub async fn resume_container(&self, container_id: &str) -> Result<()> {
        let _: Empty = self
            .rpc
            .call(
                SERVICE,
                method::RESUME_CONTAINER,
                &cref(container_id),
                QUICK,
            )
            .await?;
        Ok(())
    }

    pub async fn list_pids(&self, container_id: &str) -> Result<Vec<u32>> {
        let r: ListPidsResponse = self
            .rpc
            .call(SERVICE, method::LIST_PIDS, &cref(container_id), QUICK)
            .await?;
        Ok(r.pids)
    }

    pub async fn stats(&self, container_id: &str) -> Result<StatsResponse> {
        self.rpc
            .call(SERVICE, method::STATS, &cref(container_id), QUICK)
            .await
    }

    pub async fn update_container(
        &self,
        container_id: &str,
        resources_json: Vec<u8>,
    ) -> Result<()> {
        let req = UpdateContainerRequest {
            container_id: container_id.into(),
            resources_json,
        };
        let _: Empty = self
            .rpc
            .call(SERVICE, method::UPDATE_CONTAINER, &req, QUICK)
            .await?;
        Ok(())
    }

    /// Kills what is left of the container and releases its mounts and cgroup.
    pub async fn remove_container(&self, container_id: &str) -> Result<()> {
        let _: Empty = self
            .rpc
            .call(
                SERVICE,
                method::REMOVE_CONTAINER,
                &cref(container_id),
                Some(Duration::from_secs(60)),
            )
            .await?;
        Ok(())
    }

    /// Forgets an exec process that exited or was never started.
    pub async fn remove_process(&self, container_id: &str, exec_id: &str) -> Result<()> {
        let _: Empty = self
            .rpc
            .call(
                SERVICE,
                method::REMOVE_PROCESS,
                &pref(container_id, exec_id),
                QUICK,
            )
            .await?;
        Ok(())
    }

    /// Sets the guest's wall clock to `now`.
    pub async fn set_clock(&self, now: std::time::SystemTime) -> Result<()> {
        let unix_ns = crate::unix_ns(now);
        let _: Empty = self
            .rpc
            .call(
                SERVICE,
                method::SET_CLOCK,
                &SetClockRequest { unix_ns },
                QUICK,
            )
            .await?;
        Ok(())
    }

    /// Gives a VM restored from a template its own identity (entropy, hostname,
    /// clock) and, where it waited for it, its shared directory.
    pub async fn set_identity(&self, req: &SetIdentityRequest) -> Result<SetIdentityResponse> {
        self.rpc
            .call(SERVICE, method::SET_IDENTITY, req, QUICK)
            .await
    }

    /// Waits (without timeout) for the next OOM kill in any container.
    pub async fn wait_oom(&self) -> Result<OomEvent> {
        self.rpc
            .call(SERVICE, method::WAIT_OOM, &Empty {}, None)
            .await
    }

    /// Mounts a block device (or a region of the pool drive) at a guest path.
    pub async fn mount_block(&self, req: &MountBlockRequest) -> Result<()> {
        let _: Empty = self
            .rpc
            .call(
                SERVICE,
                method::MOUNT_BLOCK,
                req,
                Some(Duration::from_secs(60)),
            )
            .await?;
        Ok(())
    }

    /// Unmounts what [`Self::mount_block`] mounted at `target` (and frees its loop device).
    pub async fn unmount(&self, target: &str) -> Result<()> {
        let req = UnmountRequest {
            target: target.into(),
        };
        let _: Empty = self
            .rpc
            .call(
                SERVICE,
                method::UNMOUNT,
                &req,
                Some(Duration::from_secs(60)),
            )
            .await?;
        Ok(())
    }

    /// Replaces the metadata document the guest sees.
    pub async fn set_metadata(&self, json: &str) -> Result<()> {
        let req = SetMetadataRequest { json: json.into() };
        let _: Empty = self
            .rpc
            .call(SERVICE, method::SET_METADATA, &req, QUICK)
            .await?;
        Ok(())
    }

    /// Sets up the guest's interfaces, routes and DNS (see `ConfigureNetworkRequest`).
    pub async fn configure_network(&self, req: &crate::ConfigureNetworkRequest) -> Result<()> {
        let _: Empty = self
            .rpc
            .call(SERVICE, method::CONFIGURE_NETWORK, req, QUICK)
            .await?;
        Ok(())
    }

    /// Asks the agent to sync and power the guest off.
    pub async fn shutdown(&self) -> Result<()> {
        let _: Empty = self
            .rpc
            .call(SERVICE, method::SHUTDOWN, &Empty {}, QUICK)
            .await?;
        Ok(())
    }
}

fn pref(container_id: &str, exec_id: &str) -> ProcessRef {
    ProcessRef {
        container_id: container_id.into(),
        exec_id: exec_id.into(),
    }
}

fn cref(container_id: &str) -> ContainerRef {
    ContainerRef {
        container_id: container_id.into(),
    }
}
