//! containerd's stdio for a process: FIFO paths (what `ctr` gives), `file:///path`, or
//! `binary:///path?args` (a logging binary fed through fds 3 and 4, which closes fd 5
//! once it is ready). Output is pulled from the agent and written here; stdin is read
//! here and pushed to the agent until containerd's `CloseIO`.

use std::os::fd::{FromRawFd, OwnedFd};
use std::path::Path;
use std::process::Stdio as ProcStdio;

use ember_agent_api::{AgentClient, OutputStream, MAX_IO_CHUNK};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::sync::watch;

#[derive(Debug, thiserror::Error)]
pub enum StdioError {
    #[error("opening {0}: {1}")]
    Open(String, std::io::Error),
    #[error("unsupported stdio URI {0}")]
    Unsupported(String),
}

/// Where one output stream goes.
pub type Sink = Box<dyn AsyncWrite + Send + Unpin>;

/// Opens the sinks for stdout and stderr. With `binary://` both go to one logger process.
pub async fn open_outputs(
    stdout: &str,
    stderr: &str,
    namespace: &str,
    id: &str,
) -> Result<(Option<Sink>, Option<Sink>), StdioError> {
    if stdout.starts_with("binary://") {
        let (o, e) = spawn_logger(stdout, namespace, id).await?;
        return Ok((Some(o), Some(e)));
    }
    Ok((open_output(stdout)?, open_output(stderr)?))
}

fn open_output(uri: &str) -> Result<Option<Sink>, StdioError> {
    if uri.is_empty() {
        return Ok(None);
    }
    if let Some(path) = uri.strip_prefix("file://") {
        if let Some(dir) = Path::new(path).parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| StdioError::Open(uri.into(), e))?;
        return Ok(Some(Box::new(tokio::fs::File::from_std(f))));
    }
    if uri.contains("://") && !uri.starts_with("fifo://") {
        return Err(StdioError::Unsupported(uri.into()));
    }
    let path = uri.trim_start_matches("fifo://");
    // Read-write keeps the open from failing while the client has not opened its end.
    let tx = pipe::OpenOptions::new()
        .read_write(true)
        .open_sender(path)
        .map_err(|e| StdioError::Open(uri.into(), e))?;
    Ok(Some(Box::new(tx)))
}

/// Opens the stdin FIFO for reading.
pub fn open_input(uri: &str) -> Result<Option<pipe::Receiver>, StdioError> {
    if uri.is_empty() {
        return Ok(None);
    }
    let path = uri.trim_start_matches("fifo://");
    if uri.contains("://") && !uri.starts_with("fifo://") {
        return Err(StdioError::Unsupported(uri.into()));
    }
    pipe::OpenOptions::new()
        .read_write(true)
        .open_receiver(path)
        .map(Some)
        .map_err(|e| StdioError::Open(uri.into(), e))
}

/// Starts a `binary://` logger: its fd 3 reads stdout, fd 4 stderr; it closes fd 5
/// when ready.
async fn spawn_logger(uri: &str, namespace: &str, id: &str) -> Result<(Sink, Sink), StdioError> {
    let rest = uri.trim_start_matches("binary://");
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    let args: Vec<String> = query
        .split('&')
        .filter(|s| !s.is_empty())
        .map(|kv| match kv.split_once('=') {
            Some((k, "")) => k.to_string(),
            Some((k, v)) => format!("{k}={v}"),
            None => kv.to_string(),
        })
        .collect();
    let pipe = || {
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| StdioError::Open(uri.into(), e.into()))
    };
    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    let (ready_r, ready_w) = pipe()?;
    // Copies above the target numbers, so the dup2 onto 3, 4 and 5 cannot clobber one
    // another; all are close-on-exec, so the logger inherits only 3, 4 and 5.
    let high = |fd: &OwnedFd| {
        nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(10))
            .map_err(|e| StdioError::Open(uri.into(), e.into()))
    };
    let fds = [high(&out_r)?, high(&err_r)?, high(&ready_w)?];
    let mut cmd = std::process::Command::new(path);
    cmd.args(&args)
        .env("CONTAINER_ID", id)
        .env("CONTAINER_NAMESPACE", namespace)
        .stdin(ProcStdio::null())
        .stdout(ProcStdio::null())
        .stderr(ProcStdio::null());
    // SAFETY: between fork and exec only dup2 (async-signal-safe) is called, on fds
    // that stay open in the parent until after spawn returns.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(move || {
            for (i, fd) in fds.iter().enumerate() {
                if libc::dup2(*fd, 3 + i as i32) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(|e| StdioError::Open(uri.into(), e))?;
    for fd in fds {
        let _ = nix::unistd::close(fd);
    }
    drop((out_r, err_r, ready_w));
    // Wait for the logger to close its end of the ready pipe.
    let mut ready = tokio::fs::File::from_std(std::fs::File::from(ready_r));
    let mut b = [0u8; 1];
    let _ = ready.read(&mut b).await;
    std::mem::forget(child);
    Ok((fd_sink(out_w), fd_sink(err_w)))
}

fn fd_sink(fd: OwnedFd) -> Sink {
    // SAFETY: the fd is owned and transferred into the File.
    let f = unsafe { std::fs::File::from_raw_fd(std::os::fd::IntoRawFd::into_raw_fd(fd)) };
    Box::new(tokio::fs::File::from_std(f))
}

/// Copies one output stream from the agent into `sink` until the stream ends.
pub async fn pump_output(
    agent: AgentClient,
    container_id: String,
    exec_id: String,
    stream: OutputStream,
    mut sink: Option<Sink>,
) {
    loop {
        match agent
            .read_output(&container_id, &exec_id, stream, MAX_IO_CHUNK)
            .await
        {
            Ok(r) => {
                if let Some(s) = sink.as_mut() {
                    if !r.data.is_empty()
                        && (s.write_all(&r.data).await.is_err() || s.flush().await.is_err())
                    {
                        // The reader went away: keep draining so the guest never blocks.
                        sink = None;
                    }
                }
                if r.eof {
                    break;
                }
            }
            Err(e) => {
                tracing::debug!("output of {container_id}/{exec_id} ended: {e}");
                break;
            }
        }
    }
    if let Some(mut s) = sink {
        let _ = s.shutdown().await;
    }
}

/// Copies stdin into the process until `close` fires (containerd's CloseIO) or the
/// input fails; then drains what is already buffered and closes the process's stdin.
pub async fn pump_input<R: AsyncRead + Unpin>(
    agent: AgentClient,
    container_id: String,
    exec_id: String,
    mut input: R,
    mut close: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        tokio::select! {
            r = input.read(&mut buf) => match r {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if agent.write_stdin(&container_id, &exec_id, buf[..n].to_vec()).await.is_err() {
                        return;
                    }
                }
            },
            _ = closed(&mut close) => {
                // Whatever the client wrote before closing is still in the pipe.
                while let Ok(Ok(n)) = tokio::time::timeout(std::time::Duration::from_millis(20), input.read(&mut buf)).await {
                    if n == 0 || agent.write_stdin(&container_id, &exec_id, buf[..n].to_vec()).await.is_err() {
                        break;
                    }
                }
                break;
            }
        }
    }
    let _ = agent.close_stdin(&container_id, &exec_id).await;
}

/// Resolves once the flag turns true (or its sender is gone).
async fn closed(rx: &mut watch::Receiver<bool>) {
    loop {
        let now = *rx.borrow_and_update();
        if now || rx.changed().await.is_err() {
            return;
        }
    }
}
