//! A minimal HTTP/1.1 client for Firecracker's REST API on its unix socket.
//!
//! Every request uses a fresh connection: the API server handles one request at a time
//! and a fresh connection keeps a half-read response from ever poisoning the next one.
//! Bodies are JSON; responses are framed by `Content-Length`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use crate::Error;

/// Largest response head or body accepted; Firecracker's answers are a few hundred bytes.
const MAX_RESPONSE: usize = 1 << 20;

/// How long one request may take, connect to last body byte.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Method {
    Get,
    Put,
    Patch,
}

impl Method {
    fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Put => "PUT",
            Method::Patch => "PATCH",
        }
    }
}

/// A parsed HTTP response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Response {
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The `fault_message` of a Firecracker error body, else the body as text.
    pub fn fault_message(&self) -> String {
        serde_json::from_slice::<serde_json::Value>(&self.body)
            .ok()
            .and_then(|v| {
                v.get("fault_message")
                    .and_then(|m| m.as_str())
                    .map(str::to_owned)
            })
            .unwrap_or_else(|| String::from_utf8_lossy(&self.body).trim().to_owned())
    }
}

/// Client for one Firecracker API socket.
#[derive(Debug, Clone)]
pub(crate) struct ApiClient {
    socket: PathBuf,
}

impl ApiClient {
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self {
            socket: socket.into(),
        }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Sends a request and returns the response whatever its status; `limit` bounds
    /// the whole exchange.
    pub async fn send_within(
        &self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
        limit: Duration,
    ) -> Result<Response, Error> {
        let fut = async {
            let mut stream = UnixStream::connect(&self.socket).await?;
            let body = body.map(|b| b.to_string().into_bytes());
            stream
                .write_all(&encode_request(method, path, body.as_deref()))
                .await?;
            read_response(&mut stream).await
        };
        match tokio::time::timeout(limit, fut).await {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(e)) => Err(Error::Control(format!("{} {path}: {e}", method.as_str()))),
            Err(_) => Err(Error::Control(format!(
                "{} {path}: no answer within {limit:?}",
                method.as_str()
            ))),
        }
    }

    /// Sends a request and turns a non-2xx status into an error carrying Firecracker's
    /// `fault_message`.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<Response, Error> {
        self.call_within(method, path, body, REQUEST_TIMEOUT).await
    }

    /// [`ApiClient::call`] with its own time limit, for the slow requests (snapshots).
    pub async fn call_within(
        &self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
        limit: Duration,
    ) -> Result<Response, Error> {
        let resp = self.send_within(method, path, body, limit).await?;
        if resp.is_success() {
            Ok(resp)
        } else {
            Err(Error::Control(format!(
                "{} {path} failed with HTTP {}: {}",
                method.as_str(),
                resp.status,
                resp.fault_message()
            )))
        }
    }

    pub async fn put(&self, path: &str, body: &serde_json::Value) -> Result<Response, Error> {
        self.call(Method::Put, path, Some(body)).await
    }

    pub async fn patch(&self, path: &str, body: &serde_json::Value) -> Result<Response, Error> {
        self.call(Method::Patch, path, Some(body)).await
    }

    /// GET returning the JSON body.
    pub async fn get_json(&self, path: &str) -> Result<serde_json::Value, Error> {
        let resp = self.call(Method::Get, path, None).await?;
        serde_json::from_slice(&resp.body)
            .map_err(|e| Error::Control(format!("GET {path}: invalid JSON in response: {e}")))
    }
}

/// Serialises a request. The body, when present, is sent as JSON.
pub(crate) fn encode_request(method: Method, path: &str, body: Option<&[u8]>) -> Vec<u8> {
    let mut out = format!(
        "{} {path} HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\n",
        method.as_str()
    );
    if let Some(body) = body {
        out.push_str("Content-Type: application/json\r\n");
        out.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    out.push_str("\r\n");
    let mut out = out.into_bytes();
    if let Some(body) = body {
        out.extend_from_slice(body);
    }
    out
}

/// The parts of a response head the client needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Head {
    pub status: u16,
    /// `Content-Length`, if the server sent one.
    pub content_length: Option<usize>,
}

/// Parses a response head (status line and headers, without the blank line).
pub(crate) fn parse_head(head: &str) -> Result<Head, std::io::Error> {
    let bad = |what: String| std::io::Error::new(std::io::ErrorKind::InvalidData, what);
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(bad(format!("not an HTTP/1.x status line: {status_line:?}")));
    }
    let status = parts
        .next()
        .and_then(|s| s.parse::<u16>().ok())
        .filter(|s| (100..600).contains(s))
        .ok_or_else(|| bad(format!("bad status in {status_line:?}")))?;
    let mut content_length = None;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            return Err(bad(format!("malformed header line {line:?}")));
        };
        if name.trim().eq_ignore_ascii_case("content-length") {
            let n = value
                .trim()
                .parse::<usize>()
                .map_err(|_| bad(format!("bad Content-Length {value:?}")))?;
            content_length = Some(n);
        }
    }
    Ok(Head {
        status,
        content_length,
    })
}

fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n")
}

/// Reads one response: the head up to the blank line, then the body by
/// `Content-Length` (to end of stream when absent, except for bodiless statuses).
pub(crate) async fn read_response<R: tokio::io::AsyncRead + Unpin>(
    reader: &mut R,
) -> Result<Response, std::io::Error> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(pos) = find_head_end(&buf) {
            break pos;
        }
        if buf.len() > MAX_RESPONSE {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "response head too large",
            ));
        }
        let n = reader.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "connection closed before the response head was complete",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head_text = std::str::from_utf8(&buf[..head_end]).map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "response head is not UTF-8",
        )
    })?;
    let head = parse_head(head_text)?;
    let mut body = buf.split_off(head_end + 4);
    let bodiless = head.status == 204 || head.status == 304 || head.status < 200;
    match head.content_length {
        Some(len) if len > MAX_RESPONSE => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "response body too large",
            ))
        }
        Some(len) => {
            while body.len() < len {
                let n = reader.read(&mut chunk).await?;
                if n == 0 {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "connection closed in the middle of the response body",
                    ));
                }
                body.extend_from_slice(&chunk[..n]);
            }
            body.truncate(len);
        }
        None if bodiless => body.clear(),
        None => {
            reader
                .take(MAX_RESPONSE as u64)
                .read_to_end(&mut body)
                .await?;
        }
    }
    Ok(Response {
        status: head.status,
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncBufReadExt;

    #[test]
    fn encodes_put_with_body() {
        let req = encode_request(Method::Put, "/vm", Some(br#"{"a":1}"#));
        let text = String::from_utf8(req).unwrap();
        assert!(text.starts_with("PUT /vm HTTP/1.1\r\n"));
        assert!(text.contains("\r\nContent-Length: 7\r\n"));
        assert!(text.contains("\r\nContent-Type: application/json\r\n"));
        assert!(text.ends_with("\r\n\r\n{\"a\":1}"));
    }

    #[test]
    fn encodes_get_without_body() {
        let text = String::from_utf8(encode_request(Method::Get, "/", None)).unwrap();
        assert!(text.starts_with("GET / HTTP/1.1\r\n"));
        assert!(!text.contains("Content-Length"));
        assert!(text.ends_with("\r\n\r\n"));
    }

    #[test]
    fn parses_heads() {
        let h = parse_head("HTTP/1.1 204 No Content\r\nServer: Firecracker API").unwrap();
        assert_eq!(
            h,
            Head {
                status: 204,
                content_length: None
            }
        );
        let h = parse_head("HTTP/1.1 400 \r\ncontent-length: 42\r\nX: y").unwrap();
        assert_eq!(h.status, 400);
        assert_eq!(h.content_length, Some(42));
        assert!(parse_head("SSH-2.0 hello").is_err());
        assert!(parse_head("HTTP/1.1 abc OK").is_err());
        assert!(parse_head("HTTP/1.1 200 OK\r\nContent-Length: x").is_err());
        assert!(parse_head("HTTP/1.1 200 OK\r\nno colon here").is_err());
    }

    #[tokio::test]
    async fn reads_response_with_body_in_pieces() {
        let (mut a, mut b) = tokio::io::duplex(64);
        let body = r#"{"fault_message":"The requested operation is not supported."}"#;
        let raw = format!(
            "HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}trailing",
            body.len()
        );
        let writer = tokio::spawn(async move {
            for piece in raw.as_bytes().chunks(7) {
                a.write_all(piece).await.unwrap();
            }
            a
        });
        let resp = read_response(&mut b).await.unwrap();
        writer.await.unwrap();
        assert_eq!(resp.status, 400);
        assert!(!resp.is_success());
        assert_eq!(resp.body, body.as_bytes());
        assert_eq!(
            resp.fault_message(),
            "The requested operation is not supported."
        );
    }

    #[tokio::test]
    async fn reads_bodiless_and_eof_framed_responses() {
        let mut raw: &[u8] = b"HTTP/1.1 204 \r\nServer: Firecracker API\r\n\r\n";
        let resp = read_response(&mut raw).await.unwrap();
        assert_eq!(resp.status, 204);
        assert!(resp.is_success());
        assert!(resp.body.is_empty());

        let mut raw: &[u8] = b"HTTP/1.1 200 OK\r\n\r\nuntil-eof";
        let resp = read_response(&mut raw).await.unwrap();
        assert_eq!(resp.body, b"until-eof");

        let mut raw: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort";
        assert!(read_response(&mut raw).await.is_err());
        let mut raw: &[u8] = b"HTTP/1.1 200 OK\r\n";
        assert!(read_response(&mut raw).await.is_err());
    }

    #[test]
    fn fault_message_falls_back_to_text() {
        let r = Response {
            status: 500,
            body: b"  plain failure \n".to_vec(),
        };
        assert_eq!(r.fault_message(), "plain failure");
    }

    #[tokio::test]
    async fn client_round_trip_against_fake_server() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("api.sock");
        let listener = tokio::net::UnixListener::bind(&sock).unwrap();
        let server = tokio::spawn(async move {
            let mut seen = Vec::new();
            for _ in 0..2 {
                let (stream, _) = listener.accept().await.unwrap();
                let mut reader = tokio::io::BufReader::new(stream);
                let mut request_line = String::new();
                reader.read_line(&mut request_line).await.unwrap();
                let mut len = 0usize;
                loop {
                    let mut line = String::new();
                    reader.read_line(&mut line).await.unwrap();
                    if line == "\r\n" {
                        break;
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap();
                    }
                }
                let mut body = vec![0u8; len];
                reader.read_exact(&mut body).await.unwrap();
                seen.push((
                    request_line.trim().to_owned(),
                    String::from_utf8(body).unwrap(),
                ));
                let answer: &[u8] = if seen.len() == 1 {
                    b"HTTP/1.1 204 \r\n\r\n"
                } else {
                    b"HTTP/1.1 400 \r\nContent-Length: 22\r\n\r\n{\"fault_message\":\"no\"}"
                };
                reader.get_mut().write_all(answer).await.unwrap();
            }
            seen
        });
        let client = ApiClient::new(&sock);
        client
            .patch("/vm", &serde_json::json!({"state": "Paused"}))
            .await
            .unwrap();
        let err = client
            .put(
                "/actions",
                &serde_json::json!({"action_type": "InstanceStart"}),
            )
            .await
            .unwrap_err();
        assert!(err.to_string().contains("HTTP 400: no"), "{err}");
        let seen = server.await.unwrap();
        assert_eq!(seen[0].0, "PATCH /vm HTTP/1.1");
        assert_eq!(seen[0].1, r#"{"state":"Paused"}"#);
        assert_eq!(seen[1].0, "PUT /actions HTTP/1.1");
    }
}
