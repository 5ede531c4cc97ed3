//! The metrics endpoint: plain HTTP/1.1, `GET /v1/metrics`, one request per
//! connection.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::collect::{render, Sources};
use super::Metrics;

/// The endpoint's path, as containerd's.
pub const PATH: &str = "/v1/metrics";
const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
/// The most a request's head may take, in bytes and time.
const MAX_HEAD: usize = 8192;
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Parses `[metrics] address`: `HOST:PORT` with an IP address or `localhost`.
pub fn parse_address(address: &str) -> Result<SocketAddr> {
    if let Ok(a) = address.parse::<SocketAddr>() {
        return Ok(a);
    }
    if let Some(port) = address.strip_prefix("localhost:") {
        if let Ok(port) = port.parse::<u16>() {
            return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
        }
    }
    bail!("metrics address {address:?} is not IP:PORT (for example \"127.0.0.1:1338\")")
}

/// Binds the metrics address; a port in use fails the daemon's start.
pub fn bind(address: &str) -> Result<TcpListener> {
    let addr = parse_address(address)?;
    let std = std::net::TcpListener::bind(addr)
        .with_context(|| format!("binding the metrics address {addr}"))?;
    std.set_nonblocking(true)?;
    Ok(TcpListener::from_std(std)?)
}

/// Serves scrapes until the listener's task is dropped.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>, sources: Sources) {
    loop {
        let (conn, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("metrics: accepting a connection: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (metrics, sources) = (metrics.clone(), sources.clone());
        tokio::spawn(async move {
            if let Err(e) = answer(conn, &metrics, &sources).await {
                tracing::debug!(%peer, "metrics request: {e:#}");
            }
        });
    }
}

/// What a request's head asks for.
#[derive(Debug, PartialEq)]
enum Ask {
    Metrics,
    NotFound,
    BadMethod,
    Bad,
}

fn parse_head(head: &str) -> Ask {
    let mut parts = head.lines().next().unwrap_or("").split_whitespace();
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return Ask::Bad;
    };
    if !version.starts_with("HTTP/1.") {
        return Ask::Bad;
    }
    let path = target.split('?').next().unwrap_or("");
    match (method, path) {
        ("GET" | "HEAD", PATH) => Ask::Metrics,
        (_, PATH) => Ask::BadMethod,
        _ => Ask::NotFound,
    }
}

async fn answer(mut conn: TcpStream, metrics: &Metrics, sources: &Sources) -> Result<()> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    let read = async {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = conn.read(&mut buf).await?;
            if n == 0 {
                bail!("connection closed before the request's end");
            }
            head.extend_from_slice(&buf[..n]);
            if head.len() > MAX_HEAD {
                bail!("request head over {MAX_HEAD} bytes");
            }
        }
        Ok(())
    };
    let ask = match tokio::time::timeout(READ_TIMEOUT, read).await {
        Ok(Ok(())) => parse_head(&String::from_utf8_lossy(&head)),
        Ok(Err(_)) => Ask::Bad,
        Err(_) => bail!("request not sent within {READ_TIMEOUT:?}"),
    };
    let is_head = head.starts_with(b"HEAD ");
    let (status, body) = match ask {
        Ask::Metrics => ("200 OK", render(metrics, sources).await),
        Ask::NotFound => (
            "404 Not Found",
            format!("not found; metrics are at {PATH}\n"),
        ),
        Ask::BadMethod => ("405 Method Not Allowed", "use GET\n".into()),
        Ask::Bad => ("400 Bad Request", "bad request\n".into()),
    };
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {CONTENT_TYPE}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if !is_head {
        out.extend_from_slice(body.as_bytes());
    }
    conn.write_all(&out).await?;
    conn.shutdown().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(
            parse_address("127.0.0.1:1338").unwrap(),
            "127.0.0.1:1338".parse().unwrap()
        );
        assert_eq!(parse_address("[::1]:0").unwrap().port(), 0);
        assert_eq!(parse_address("localhost:9").unwrap().port(), 9);
        for bad in [
            "",
            "1338",
            "127.0.0.1",
            "host:1",
            "127.0.0.1:99999",
            ":1338",
        ] {
            let e = parse_address(bad).unwrap_err().to_string();
            assert!(e.contains("is not IP:PORT"), "{bad}: {e}");
        }
    }

    #[test]
    fn requests() {
        assert_eq!(parse_head("GET /v1/metrics HTTP/1.1\r\n\r\n"), Ask::Metrics);
        assert_eq!(
            parse_head("GET /v1/metrics?x=1 HTTP/1.0\r\n\r\n"),
            Ask::Metrics
        );
        assert_eq!(parse_head("GET / HTTP/1.1\r\n\r\n"), Ask::NotFound);
        assert_eq!(
            parse_head("POST /v1/metrics HTTP/1.1\r\n\r\n"),
            Ask::BadMethod
        );
        assert_eq!(parse_head("GET /v1/metrics\r\n\r\n"), Ask::Bad);
        assert_eq!(parse_head("\u{0}\u{1}"), Ask::Bad);
    }

    #[tokio::test]
    async fn serves_over_loopback() {
        let listener = bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let m = Arc::new(Metrics::default());
        m.shim_starts.inc(vec![super::super::label("runtime", "r")]);
        tokio::spawn(serve(listener, m, Sources::default()));
        let get = |req: &'static str| async move {
            let mut c = TcpStream::connect(addr).await.unwrap();
            c.write_all(req.as_bytes()).await.unwrap();
            let mut s = String::new();
            c.read_to_string(&mut s).await.unwrap();
            s
        };
        let r = get("GET /v1/metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
        assert!(
            r.contains("ember_shim_starts_total{runtime=\"r\"} 1\n"),
            "{r}"
        );
        assert!(
            r.contains("# TYPE ember_vm_restore_seconds histogram\n"),
            "{r}"
        );
        assert!(get("GET /x HTTP/1.1\r\n\r\n")
            .await
            .starts_with("HTTP/1.1 404"));
        // The port is taken now: a second daemon would not start.
        let e = bind(&addr.to_string()).unwrap_err();
        assert!(format!("{e:#}").contains("in use"), "{e:#}");
    }
}
