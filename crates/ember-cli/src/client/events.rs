//! `ember events`: the daemon's event stream, one line per event.

use anyhow::Result;
use containerd_client::events as ev;
use containerd_client::services::v1 as api;
use containerd_client::services::v1::events_client::EventsClient;
use containerd_client::types::Envelope;
use prost::Message;
use serde_json::{json, Map, Value};

use super::{rfc3339, rpc, time_of, ClientOpts};

#[derive(clap::Args, Debug)]
#[command(about = "Show the daemon's events as they happen")]
pub struct EventsArgs {
    /// containerd filters, e.g. `topic~="^/tasks/"` or `namespace==default`; an event
    /// matching any of them is shown.
    #[arg(long = "filter", short = 'f')]
    filters: Vec<String>,
}

/// The fields of an event payload this client knows, `None` for other kinds.
fn fields(any: &prost_types::Any) -> Option<Map<String, Value>> {
    let name = any.type_url.rsplit('/').next().unwrap_or(&any.type_url);
    let b = &any.value[..];
    let v = match name {
        "containerd.events.TaskCreate" => {
            let e = ev::TaskCreate::decode(b).ok()?;
            json!({"container_id": e.container_id, "pid": e.pid})
        }
        "containerd.events.TaskStart" => {
            let e = ev::TaskStart::decode(b).ok()?;
            json!({"container_id": e.container_id, "pid": e.pid})
        }
        "containerd.events.TaskExit" => {
            let e = ev::TaskExit::decode(b).ok()?;
            json!({"container_id": e.container_id, "id": e.id, "pid": e.pid, "exit_status": e.exit_status})
        }
        "containerd.events.TaskDelete" => {
            let e = ev::TaskDelete::decode(b).ok()?;
            json!({"container_id": e.container_id, "id": e.id, "pid": e.pid, "exit_status": e.exit_status})
        }
        "containerd.events.TaskOOM" => {
            json!({"container_id": ev::TaskOom::decode(b).ok()?.container_id})
        }
        "containerd.events.TaskExecAdded" => {
            let e = ev::TaskExecAdded::decode(b).ok()?;
            json!({"container_id": e.container_id, "exec_id": e.exec_id})
        }
        "containerd.events.TaskExecStarted" => {
            let e = ev::TaskExecStarted::decode(b).ok()?;
            json!({"container_id": e.container_id, "exec_id": e.exec_id, "pid": e.pid})
        }
        "containerd.events.TaskPaused" => {
            json!({"container_id": ev::TaskPaused::decode(b).ok()?.container_id})
        }
        "containerd.events.TaskResumed" => {
            json!({"container_id": ev::TaskResumed::decode(b).ok()?.container_id})
        }
        "containerd.events.ContainerCreate" => {
            let e = ev::ContainerCreate::decode(b).ok()?;
            json!({"id": e.id, "image": e.image,
                   "runtime": e.runtime.map(|r| r.name).unwrap_or_default()})
        }
        "containerd.events.ContainerUpdate" => {
            let e = ev::ContainerUpdate::decode(b).ok()?;
            json!({"id": e.id, "image": e.image})
        }
        "containerd.events.ContainerDelete" => {
            json!({"id": ev::ContainerDelete::decode(b).ok()?.id})
        }
        "containerd.events.ImageCreate" => {
            json!({"name": api::ImageCreate::decode(b).ok()?.name})
        }
        "containerd.events.ImageUpdate" => {
            json!({"name": api::ImageUpdate::decode(b).ok()?.name})
        }
        "containerd.events.ImageDelete" => {
            json!({"name": api::ImageDelete::decode(b).ok()?.name})
        }
        _ => return None,
    };
    match v {
        Value::Object(m) => Some(m),
        _ => None,
    }
}

/// `k=v` pairs of an event's fields, empty ones left out.
fn pairs(m: &Map<String, Value>) -> String {
    m.iter()
        .filter(|(_, v)| !matches!(v, Value::String(s) if s.is_empty()))
        .map(|(k, v)| match v {
            Value::String(s) => format!("{k}={s}"),
            other => format!("{k}={other}"),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// One event as a line: `TIME NAMESPACE TOPIC k=v...`, or a JSON object.
fn line(e: &Envelope, as_json: bool) -> String {
    let payload = e.event.as_ref();
    let decoded = payload.and_then(fields);
    let kind = payload.map(|a| a.type_url.clone()).unwrap_or_default();
    let time = rfc3339(time_of(&e.timestamp));
    if as_json {
        return json!({
            "timestamp": time,
            "namespace": e.namespace,
            "topic": e.topic,
            "type": kind,
            "event": decoded.map(Value::Object).unwrap_or(Value::Null),
        })
        .to_string();
    }
    let rest = match decoded {
        Some(m) => pairs(&m),
        None => kind,
    };
    format!("{time} {} {} {rest}", e.namespace, e.topic)
        .trim_end()
        .to_string()
}

pub async fn run(opts: &ClientOpts, a: EventsArgs) -> Result<i32> {
    let channel = opts.channel().await?;
    let mut stream = EventsClient::new(channel)
        .subscribe(api::SubscribeRequest { filters: a.filters })
        .await
        .map_err(rpc)?
        .into_inner();
    while let Some(e) = stream.message().await.map_err(rpc)? {
        println!("{}", line(&e, opts.json));
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_of_known_and_unknown_events() {
        let exit = ev::TaskExit {
            container_id: "web".into(),
            id: "web".into(),
            pid: 42,
            exit_status: 3,
            exited_at: None,
        };
        let e = Envelope {
            timestamp: Some(prost_types::Timestamp {
                seconds: 1709209815,
                nanos: 0,
            }),
            namespace: "default".into(),
            topic: "/tasks/exit".into(),
            event: Some(prost_types::Any {
                type_url: "containerd.events.TaskExit".into(),
                value: exit.encode_to_vec(),
            }),
        };
        assert_eq!(
            line(&e, false),
            "2024-02-29T12:30:15Z default /tasks/exit container_id=web exit_status=3 id=web pid=42"
        );
        let v: Value = serde_json::from_str(&line(&e, true)).unwrap();
        assert_eq!(v["event"]["exit_status"], 3);
        assert_eq!(v["topic"], "/tasks/exit");
        let odd = Envelope {
            event: Some(prost_types::Any {
                type_url: "example.Other".into(),
                value: vec![1, 2],
            }),
            ..e
        };
        assert!(line(&odd, false).ends_with("/tasks/exit example.Other"));
    }
}
