//! Host-initiated connections over Firecracker's hybrid vsock.
//!
//! Firecracker listens on the unix socket `uds_path`. A host connection asks for a guest
//! port with the line `CONNECT <port>\n`; Firecracker answers `OK <host port>\n` once the
//! guest accepted, and from then on the unix stream carries the guest port's bytes. If
//! nothing listens on the guest port, Firecracker closes the connection instead.

use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::UnixStream;

use crate::Error;

/// The handshake answer is short; anything longer is not Firecracker.
const MAX_ANSWER: usize = 64;

/// How long the guest may take to accept a connection.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Connects to guest vsock `port` through the hybrid vsock socket at `uds_path`.
pub(crate) async fn connect(uds_path: &Path, port: u32) -> Result<UnixStream, Error> {
    let fut = async {
        let mut stream = UnixStream::connect(uds_path).await.map_err(|e| {
            Error::Control(format!(
                "vsock: cannot connect to {}: {e}",
                uds_path.display()
            ))
        })?;
        handshake(&mut stream, port).await?;
        Ok(stream)
    };
    tokio::time::timeout(CONNECT_TIMEOUT, fut)
        .await
        .map_err(|_| {
            Error::Control(format!(
                "vsock: guest port {port} did not accept within {CONNECT_TIMEOUT:?}"
            ))
        })?
}

/// Runs the `CONNECT`/`OK` exchange on `stream`. Reads byte by byte so that no guest
/// data following the answer line is consumed. Returns the host-side port Firecracker
/// assigned.
pub(crate) async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    port: u32,
) -> Result<u32, Error> {
    stream
        .write_all(format!("CONNECT {port}\n").as_bytes())
        .await
        .map_err(|e| Error::Control(format!("vsock: sending CONNECT {port}: {e}")))?;
    let mut line = Vec::with_capacity(16);
    loop {
        let mut byte = [0u8; 1];
        let n = stream
            .read(&mut byte)
            .await
            .map_err(|e| Error::Control(format!("vsock: reading the answer to CONNECT: {e}")))?;
        if n == 0 {
            return Err(Error::Control(format!(
                "vsock: connection closed; nothing listens on guest port {port}"
            )));
        }
        if byte[0] == b'\n' {
            break;
        }
        line.push(byte[0]);
        if line.len() > MAX_ANSWER {
            return Err(Error::Control("vsock: handshake answer too long".into()));
        }
    }
    parse_answer(&line, port)
}

fn parse_answer(line: &[u8], port: u32) -> Result<u32, Error> {
    let text = String::from_utf8_lossy(line);
    text.trim_end_matches('\r')
        .strip_prefix("OK ")
        .and_then(|p| p.trim().parse::<u32>().ok())
        .ok_or_else(|| {
            Error::Control(format!(
                "vsock: unexpected answer to CONNECT {port}: {text:?}"
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncBufReadExt;
    use tokio::net::UnixListener;

    /// A fake hybrid vsock endpoint: checks the CONNECT line, answers, then echoes.
    async fn fake_vsock(listener: UnixListener, expect_port: u32, accept: bool) {
        let (stream, _) = listener.accept().await.unwrap();
        let mut reader = tokio::io::BufReader::new(stream);
        let mut line = String::new();
        reader.read_line(&mut line).await.unwrap();
        assert_eq!(line, format!("CONNECT {expect_port}\n"));
        if !accept {
            return; // dropping the stream closes it, like Firecracker does
        }
        // The answer and the first guest bytes arrive in one write.
        reader
            .get_mut()
            .write_all(b"OK 1073741824\nhello")
            .await
            .unwrap();
        let mut buf = [0u8; 4];
        reader.read_exact(&mut buf).await.unwrap();
        reader.get_mut().write_all(&buf).await.unwrap();
    }

    #[tokio::test]
    async fn connects_and_keeps_guest_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vsock.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let server = tokio::spawn(fake_vsock(listener, 1024, true));
        let mut s = connect(&path, 1024).await.unwrap();
        let mut hello = [0u8; 5];
        s.read_exact(&mut hello).await.unwrap();
        assert_eq!(&hello, b"hello");
        s.write_all(b"ping").await.unwrap();
        let mut pong = [0u8; 4];
        s.read_exact(&mut pong).await.unwrap();
        assert_eq!(&pong, b"ping");
        server.await.unwrap();
    }

    #[tokio::test]
    async fn refused_port_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vsock.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let server = tokio::spawn(fake_vsock(listener, 7, false));
        let err = connect(&path, 7).await.unwrap_err();
        assert!(err.to_string().contains("nothing listens"), "{err}");
        server.await.unwrap();
    }

    #[tokio::test]
    async fn missing_socket_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = connect(&dir.path().join("none"), 7).await.unwrap_err();
        assert!(err.to_string().contains("cannot connect"), "{err}");
    }

    #[test]
    fn parses_answers() {
        assert_eq!(parse_answer(b"OK 1073741824", 5).unwrap(), 1073741824);
        assert_eq!(parse_answer(b"OK 12\r", 5).unwrap(), 12);
        assert!(parse_answer(b"ERR", 5).is_err());
        assert!(parse_answer(b"OK x", 5).is_err());
    }
}
