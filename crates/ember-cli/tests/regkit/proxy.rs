//! An HTTP/1.1 proxy on loopback in front of a registry that can misbehave on
//! purpose: a blob with wrong bytes, a blob cut short, a connection dropped in
//! the middle of a blob, manifests served with another media type. It counts the
//! blob bytes it hands out and records each request line.

use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

/// What the proxy does wrong.
#[derive(Clone, Debug, PartialEq)]
pub enum Fault {
    None,
    /// The blob's bytes arrive with one of them changed.
    Corrupt(String),
    /// The blob arrives with half its bytes (a consistent, short response).
    Truncate(String),
    /// The connection is reset halfway through the blob.
    Drop(String),
    /// Manifests are served with this `Content-Type`.
    ManifestType(String),
}

#[derive(Default)]
struct State {
    fault: Option<Fault>,
    blob_bytes: u64,
    requests: Vec<String>,
}

pub struct Proxy {
    /// `127.0.0.1:<port>`.
    pub host: String,
    state: Arc<Mutex<State>>,
}

impl Proxy {
    /// A proxy in front of `upstream` (`host:port`).
    pub fn start(upstream: &str) -> Proxy {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let host = l.local_addr().unwrap().to_string();
        let state = Arc::new(Mutex::new(State::default()));
        let (s, up) = (state.clone(), upstream.to_string());
        std::thread::spawn(move || {
            for c in l.incoming().flatten() {
                let (s, up) = (s.clone(), up.clone());
                std::thread::spawn(move || {
                    let _ = serve(c, &up, &s);
                });
            }
        });
        Proxy { host, state }
    }

    pub fn set(&self, f: Fault) {
        self.state.lock().unwrap().fault = Some(f);
    }

    /// Blob body bytes sent since the last call.
    pub fn take_blob_bytes(&self) -> u64 {
        std::mem::take(&mut self.state.lock().unwrap().blob_bytes)
    }

    /// Request lines (`METHOD path`) since the last call.
    pub fn take_requests(&self) -> Vec<String> {
        std::mem::take(&mut self.state.lock().unwrap().requests)
    }
}

struct Head {
    first: String,
    headers: Vec<(String, String)>,
}

impl Head {
    fn get(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn set(&mut self, name: &str, value: &str) {
        self.headers.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
        self.headers.push((name.to_string(), value.to_string()));
    }

    fn bytes(&self) -> Vec<u8> {
        let mut s = format!("{}\r\n", self.first);
        for (k, v) in &self.headers {
            s.push_str(&format!("{k}: {v}\r\n"));
        }
        s.push_str("\r\n");
        s.into_bytes()
    }
}

fn read_head(r: &mut impl BufRead) -> std::io::Result<Option<Head>> {
    let mut first = String::new();
    if r.read_line(&mut first)? == 0 {
        return Ok(None);
    }
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        r.read_line(&mut line)?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    Ok(Some(Head {
        first: first.trim_end().to_string(),
        headers,
    }))
}

/// A whole body (by `Content-Length`, chunked, or to the end for responses).
fn read_body(r: &mut impl BufRead, head: &Head, to_eof: bool) -> std::io::Result<Vec<u8>> {
    let mut body = Vec::new();
    if let Some(n) = head.get("content-length") {
        let n: usize = n.parse().unwrap_or(0);
        body.resize(n, 0);
        r.read_exact(&mut body)?;
    } else if head
        .get("transfer-encoding")
        .is_some_and(|t| t.contains("chunked"))
    {
        loop {
            let mut line = String::new();
            r.read_line(&mut line)?;
            let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or("0"), 16)
                .unwrap_or(0);
            if size == 0 {
                // Trailers, up to the empty line.
                loop {
                    let mut t = String::new();
                    r.read_line(&mut t)?;
                    if t.trim().is_empty() {
                        break;
                    }
                }
                break;
            }
            let start = body.len();
            body.resize(start + size, 0);
            r.read_exact(&mut body[start..])?;
            let mut crlf = [0u8; 2];
            r.read_exact(&mut crlf)?;
        }
    } else if to_eof {
        r.read_to_end(&mut body)?;
    }
    Ok(body)
}

/// Sends a head and body with a `Content-Length` (no chunking).
fn send(w: &mut TcpStream, mut head: Head, body: &[u8], has_body: bool) -> std::io::Result<()> {
    head.headers
        .retain(|(k, _)| !k.eq_ignore_ascii_case("transfer-encoding"));
    if has_body {
        head.set("Content-Length", &body.len().to_string());
    }
    w.write_all(&head.bytes())?;
    w.write_all(body)
}

fn reset(c: &TcpStream) {
    // SO_LINGER 0: closing sends a reset, not an orderly end.
    let off = nix::libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // The reset goes out when the last handle closes, as `serve` returns.
    let _ = nix::sys::socket::setsockopt(c, nix::sys::socket::sockopt::Linger, &off);
}

fn serve(client: TcpStream, upstream: &str, state: &Mutex<State>) -> std::io::Result<()> {
    let mut from_client = BufReader::new(client.try_clone()?);
    let mut to_client = client.try_clone()?;
    let up = TcpStream::connect(upstream)?;
    let mut from_up = BufReader::new(up.try_clone()?);
    let mut to_up = up;
    while let Some(req) = read_head(&mut from_client)? {
        let body = read_body(&mut from_client, &req, false)?;
        let mut parts = req.first.split(' ');
        let method = parts.next().unwrap_or_default().to_string();
        let path = parts.next().unwrap_or_default().to_string();
        state
            .lock()
            .unwrap()
            .requests
            .push(format!("{method} {path}"));
        // The Host header stays the proxy's: the registry builds upload
        // locations from it, and they must lead back here.
        let has_req_body = !body.is_empty() || req.get("content-length").is_some();
        send(&mut to_up, req, &body, has_req_body)?;
        let Some(mut resp) = read_head(&mut from_up)? else {
            return Ok(());
        };
        let status: u16 = resp
            .first
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let no_body = method == "HEAD" || status == 204 || status == 304 || status < 200;
        let mut data = if no_body {
            Vec::new()
        } else {
            read_body(&mut from_up, &resp, true)?
        };
        let fault = state.lock().unwrap().fault.clone().unwrap_or(Fault::None);
        let blob = path.contains("/blobs/sha256:") && method == "GET" && status < 300;
        let hit = |d: &str| blob && path.ends_with(d);
        if let Fault::ManifestType(t) = &fault {
            if path.contains("/manifests/") && status < 300 {
                resp.set("Content-Type", t);
            }
        }
        if blob {
            let mut s = state.lock().unwrap();
            s.blob_bytes += match &fault {
                Fault::Truncate(d) | Fault::Drop(d) if hit(d) => (data.len() / 2) as u64,
                _ => data.len() as u64,
            };
        }
        match &fault {
            Fault::Corrupt(d) if hit(d) && !data.is_empty() => {
                let i = data.len() / 2;
                data[i] ^= 0xff;
            }
            Fault::Truncate(d) if hit(d) => {
                data.truncate(data.len() / 2);
                send(&mut to_client, resp, &data, true)?;
                let _ = to_client.shutdown(Shutdown::Both);
                return Ok(());
            }
            Fault::Drop(d) if hit(d) => {
                // The full length announced, half of it sent, then a reset.
                let n = data.len();
                resp.headers
                    .retain(|(k, _)| !k.eq_ignore_ascii_case("transfer-encoding"));
                resp.set("Content-Length", &n.to_string());
                to_client.write_all(&resp.bytes())?;
                to_client.write_all(&data[..n / 2])?;
                to_client.flush()?;
                reset(&client);
                return Ok(());
            }
            _ => {}
        }
        send(&mut to_client, resp, &data, !no_body)?;
    }
    Ok(())
}
