//! A QMP (QEMU Machine Protocol) client: JSON objects, one per line, over a unix socket.
//! Commands are answered in order with `return` or `error`; `event` objects may arrive
//! at any time and are delivered on a broadcast channel.

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
        let mut guard = self.writer.lock().await;
        let (wr, rx) = &mut *guard;
        let mut msg = json!({ "execute": command });
        if let Some(a) = arguments {
            msg["arguments"] = a;
        }
        let mut line = msg.to_string();
        line.push('\n');
        wr.write_all(line.as_bytes())
            .await
            .map_err(|e| Error::Control(format!("QMP {command}: {e}")))?;
        match tokio::time::timeout(Duration::from_secs(10), rx.recv()).await {
            Ok(Some(Ok(v))) => Ok(v),
            Ok(Some(Err(e))) => Err(Error::Control(format!("QMP {command}: {e}"))),
            Ok(None) => Err(Error::Control(format!("QMP {command}: connection closed"))),
            Err(_) => Err(Error::Control(format!("QMP {command}: no answer in 10s"))),
        }
    }
}
