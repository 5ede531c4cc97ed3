//! A QMP (QEMU Machine Protocol) client: JSON objects, one per line, over a unix socket.
//! Commands are answered in order with `return` or `error`; `event` objects may arrive
//! at any time and are delivered on a broadcast channel.

use std::os::fd::{AsRawFd, BorrowedFd};
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::UnixStream;
use tokio::sync::{broadcast, mpsc, Mutex};

use crate::Error;

/// An asynchronous QMP event (`{"event": NAME, "data": {...}}`).
#[derive(Debug, Clone)]
pub struct QmpEvent {
    pub name: String,
    pub data: Value,
}

pub struct Qmp {
    writer: Mutex<(OwnedWriteHalf, mpsc::Receiver<Result<Value, String>>)>,
    events: broadcast::Sender<QmpEvent>,
}

impl Qmp {
    /// Connects, reads the greeting and negotiates capabilities.
    pub async fn connect(path: &Path) -> Result<Self, Error> {
        let stream = UnixStream::connect(path)
            .await
            .map_err(|e| Error::Control(format!("QMP connect {}: {e}", path.display())))?;
        let (rd, wr) = stream.into_split();
        let (tx, rx) = mpsc::channel(4);
        let (events, _) = broadcast::channel(64);
        let ev = events.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(rd).lines();
            let mut greeted = false;
            while let Ok(Some(line)) = lines.next_line().await {
                let Ok(v) = serde_json::from_str::<Value>(&line) else {
                    tracing::debug!("QMP: unparsable line {line:?}");
                    continue;
                };
                if let Some(name) = v.get("event").and_then(Value::as_str) {
                    let _ = ev.send(QmpEvent {
                        name: name.to_string(),
                        data: v.get("data").cloned().unwrap_or(Value::Null),
                    });
                } else if v.get("QMP").is_some() && !greeted {
                    greeted = true;
                } else if let Some(r) = v.get("return") {
                    let _ = tx.send(Ok(r.clone())).await;
                } else if let Some(e) = v.get("error") {
                    let desc = e
                        .get("desc")
                        .and_then(Value::as_str)
                        .unwrap_or("unknown QMP error");
                    let _ = tx.send(Err(desc.to_string())).await;
                }
            }
        });
        let qmp = Qmp {
            writer: Mutex::new((wr, rx)),
            events,
        };
        qmp.execute("qmp_capabilities", None).await?;
        Ok(qmp)
    }

    /// Subscribes to events from now on.
    pub fn events(&self) -> broadcast::Receiver<QmpEvent> {
        self.events.subscribe()
    }

    /// Runs one command and returns its `return` value.
    pub async fn execute(&self, command: &str, arguments: Option<Value>) -> Result<Value, Error> {
        self.call(command, arguments, None).await
    }

    /// Hands QEMU the descriptor `fd` under `name` (`getfd`, the descriptor riding
    /// on the command as SCM_RIGHTS), for commands that name it (`fd:NAME`).
    pub async fn send_fd(&self, name: &str, fd: BorrowedFd<'_>) -> Result<(), Error> {
        self.call("getfd", Some(json!({ "fdname": name })), Some(fd))
            .await
            .map(|_| ())
    }

    async fn call(
        &self,
        command: &str,
        arguments: Option<Value>,
        fd: Option<BorrowedFd<'_>>,
    ) -> Result<Value, Error> {
        let mut guard = self.writer.lock().await;
        let (wr, rx) = &mut *guard;
        let mut msg = json!({ "execute": command });
        if let Some(a) = arguments {
            msg["arguments"] = a;
        }
        let mut line = msg.to_string();
        line.push('\n');
        let sent = match fd {
            None => wr.write_all(line.as_bytes()).await,
            Some(fd) => send_with_fd(wr, line.as_bytes(), fd).await,
        };
        sent.map_err(|e| Error::Control(format!("QMP {command}: {e}")))?;
        match tokio::time::timeout(Duration::from_secs(10), rx.recv()).await {
            Ok(Some(Ok(v))) => Ok(v),
            Ok(Some(Err(e))) => Err(Error::Control(format!("QMP {command}: {e}"))),
            Ok(None) => Err(Error::Control(format!("QMP {command}: connection closed"))),
            Err(_) => Err(Error::Control(format!("QMP {command}: no answer in 10s"))),
        }
    }
}

/// Writes `bytes` with `fd` attached (SCM_RIGHTS) in one `sendmsg`; the rest of a
/// short write follows without it.
async fn send_with_fd(
    wr: &mut OwnedWriteHalf,
    bytes: &[u8],
    fd: BorrowedFd<'_>,
) -> std::io::Result<()> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    let stream: &UnixStream = wr.as_ref();
    let fds = [fd.as_raw_fd()];
    let sent = loop {
        stream.writable().await?;
        let r = stream.try_io(tokio::io::Interest::WRITABLE, || {
            let iov = [std::io::IoSlice::new(bytes)];
            let cmsg = [ControlMessage::ScmRights(&fds)];
            sendmsg::<()>(stream.as_raw_fd(), &iov, &cmsg, MsgFlags::empty(), None)
                .map_err(std::io::Error::from)
        });
        match r {
            Ok(n) => break n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    };
    wr.write_all(&bytes[sent..]).await
}
