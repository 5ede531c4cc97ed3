//! Moving a process's stdio between host streams and the agent.

use ember_agent_api::{AgentClient, OutputStream, MAX_IO_CHUNK};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Copies one output stream of a process into `out` until the stream ends. Returns
/// the number of bytes copied.
pub async fn copy_output<W: AsyncWrite + Unpin>(
    agent: &AgentClient,
    container_id: &str,
    exec_id: &str,
    stream: OutputStream,
    out: &mut W,
) -> Result<u64, crate::Error> {
    let mut total = 0u64;
    loop {
        let r = agent
            .read_output(container_id, exec_id, stream, MAX_IO_CHUNK)
            .await?;
        if !r.data.is_empty() {
            out.write_all(&r.data).await?;
            out.flush().await?;
            total += r.data.len() as u64;
        }
        if r.eof {
            return Ok(total);
        }
    }
}

/// Collects one output stream of a process until it ends.
pub async fn read_all_output(
    agent: &AgentClient,
    container_id: &str,
    exec_id: &str,
    stream: OutputStream,
) -> Result<Vec<u8>, crate::Error> {
    let mut buf = Vec::new();
    copy_output(agent, container_id, exec_id, stream, &mut buf).await?;
    Ok(buf)
}

/// Copies `input` to the process's stdin until `input` ends, then closes stdin.
pub async fn copy_stdin<R: AsyncRead + Unpin>(
    agent: &AgentClient,
    container_id: &str,
    exec_id: &str,
    input: &mut R,
) -> Result<u64, crate::Error> {
    let mut total = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = input.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        agent
            .write_stdin(container_id, exec_id, buf[..n].to_vec())
            .await?;
        total += n as u64;
    }
    agent.close_stdin(container_id, exec_id).await?;
    Ok(total)
}
