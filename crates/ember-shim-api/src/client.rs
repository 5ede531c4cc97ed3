//! A typed client of a shim's `containerd.task.v2.Task` service.

use std::time::Duration;

use ember_ttrpc::{Client, Result};

use crate::*;

/// A connection to one shim.
#[derive(Clone)]
pub struct ShimClient {
    inner: Client,
}

/// Calls that may take a while (a VM boot, a process to exit) get no timeout;
/// the rest get this.
const SHORT: Option<Duration> = Some(Duration::from_secs(30));

impl ShimClient {
    /// Connects to a shim's socket, given as the shim printed it
    /// (`unix:///path`, `unix://@abstract` or a bare path).
    pub async fn connect(address: &str) -> std::io::Result<ShimClient> {
        let path = address.strip_prefix("unix://").unwrap_or(address);
        let stream = if let Some(name) = path.strip_prefix('@') {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
            let s = std::os::unix::net::UnixStream::connect_addr(&addr)?;
            s.set_nonblocking(true)?;
            tokio::net::UnixStream::from_std(s)?
        } else {
            tokio::net::UnixStream::connect(path).await?
        };
        Ok(ShimClient {
            inner: Client::new(stream),
        })
    }

    /// Whether the connection is gone.
    pub fn is_closed(&self) -> bool {
        self.inner.is_closed()
    }

    /// Returns when the connection is gone (the shim exited or died).
    pub async fn closed(&self) {
        self.inner.closed().await
    }

    async fn call<Req: prost::Message, Resp: prost::Message + Default>(
        &self,
        method: &str,
        req: &Req,
        timeout: Option<Duration>,
    ) -> Result<Resp> {
        self.inner.call(TASK_SERVICE, method, req, timeout).await
    }

    pub async fn create(&self, r: &CreateTaskRequest) -> Result<CreateTaskResponse> {
        self.call("Create", r, None).await
    }

    pub async fn start(&self, id: &str, exec_id: &str) -> Result<PidResponse> {
        self.call("Start", &process(id, exec_id), None).await
    }

    pub async fn state(&self, id: &str, exec_id: &str) -> Result<StateResponse> {
        self.call("State", &process(id, exec_id), SHORT).await
    }

    pub async fn delete(&self, id: &str, exec_id: &str) -> Result<DeleteResponse> {
        self.call("Delete", &process(id, exec_id), None).await
    }

    pub async fn wait(&self, id: &str, exec_id: &str) -> Result<WaitResponse> {
        self.call("Wait", &process(id, exec_id), None).await
    }

    pub async fn kill(&self, r: &KillRequest) -> Result<Empty> {
        self.call("Kill", r, SHORT).await
    }

    pub async fn exec(&self, r: &ExecProcessRequest) -> Result<Empty> {
        self.call("Exec", r, SHORT).await
    }

    pub async fn resize_pty(&self, r: &ResizePtyRequest) -> Result<Empty> {
        self.call("ResizePty", r, SHORT).await
    }

    pub async fn close_io(&self, r: &CloseIoRequest) -> Result<Empty> {
        self.call("CloseIO", r, SHORT).await
    }

    pub async fn pause(&self, id: &str) -> Result<Empty> {
        self.call("Pause", &IdRequest { id: id.into() }, SHORT)
            .await
    }

    pub async fn resume(&self, id: &str) -> Result<Empty> {
        self.call("Resume", &IdRequest { id: id.into() }, SHORT)
            .await
    }

    pub async fn pids(&self, id: &str) -> Result<PidsResponse> {
        self.call("Pids", &IdRequest { id: id.into() }, SHORT).await
    }

    pub async fn update(&self, r: &UpdateTaskRequest) -> Result<Empty> {
        self.call("Update", r, SHORT).await
    }

    pub async fn stats(&self, id: &str) -> Result<StatsResponse> {
        self.call("Stats", &IdRequest { id: id.into() }, SHORT)
            .await
    }

    pub async fn connect_info(&self, id: &str) -> Result<ConnectResponse> {
        self.call("Connect", &IdRequest { id: id.into() }, SHORT)
            .await
    }

    pub async fn shutdown(&self, id: &str, now: bool) -> Result<Empty> {
        let r = ShutdownRequest { id: id.into(), now };
        self.call("Shutdown", &r, SHORT).await
    }
}

fn process(id: &str, exec_id: &str) -> ProcessRequest {
    ProcessRequest {
        id: id.into(),
        exec_id: exec_id.into(),
    }
}
