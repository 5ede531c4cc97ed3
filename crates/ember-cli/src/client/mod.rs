//! Client verbs of `ember`: talk to `emberd` (or containerd) over its gRPC socket.
//!
//! Every verb prints a table by default and JSON with `--json`.

pub mod container;
pub mod containers;
pub mod content;
pub mod events;
pub mod image_export;
pub mod image_list;
pub mod image_tag;
pub mod image_unpack;
pub mod images;
pub mod leases;
pub mod login;
pub mod namespaces;
pub mod plugins;
pub mod progress;
pub mod snapshot_list;
pub mod snapshots;
pub mod transfer;
pub mod version;
pub mod vm;

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use containerd_client::tonic::transport::Channel;
use containerd_client::tonic::Request;
use serde::Serialize;

/// Options shared by the client verbs.
#[derive(clap::Args, Debug, Clone)]
pub struct ClientOpts {
    /// Socket of the daemon (no short form: `-a` is `ps -a`, as in docker).
    #[arg(
        long,
        global = true,
        env = "EMBER_ADDRESS",
        default_value = "/run/emberd/emberd.sock"
    )]
    pub address: PathBuf,
    /// Namespace of the objects.
    #[arg(
        long,
        short = 'n',
        global = true,
        env = "EMBER_NAMESPACE",
        default_value = "default"
    )]
    pub namespace: String,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
}

impl ClientOpts {
    pub async fn channel(&self) -> Result<Channel> {
        match containerd_client::connect(&self.address).await {
            Ok(c) => Ok(c),
            Err(e) => Err(not_reachable(&self.address, &e)),
        }
    }

    /// A request in the selected namespace.
    pub fn req<T>(&self, msg: T) -> Request<T> {
        let mut r = Request::new(msg);
        if let Ok(v) = self.namespace.parse() {
            r.metadata_mut().insert("containerd-namespace", v);
        }
        r
    }
}

/// Why the daemon at `socket` could not be reached, and what to do about it.
fn not_reachable(socket: &std::path::Path, e: &(dyn std::error::Error + 'static)) -> anyhow::Error {
    let io = std::iter::successors(Some(e), |e| (*e).source())
        .find_map(|e| e.downcast_ref::<std::io::Error>())
        .map(|e| e.kind());
    let start = "start it with `emberd` (as root; `nohup emberd >/var/log/emberd.log 2>&1 &` \
                 runs it in the background), or name its socket with --address or EMBER_ADDRESS";
    let s = socket.display();
    match io {
        Some(std::io::ErrorKind::NotFound) => {
            anyhow::anyhow!("emberd is not running: there is no socket {s}; {start}")
        }
        Some(std::io::ErrorKind::ConnectionRefused) => {
            anyhow::anyhow!("emberd is not running: nothing listens on {s}; {start}")
        }
        Some(std::io::ErrorKind::PermissionDenied) => anyhow::anyhow!(
            "no permission to use {s}: run ember as root (or as a user the socket lets in)"
        ),
        _ => {
            let mut msg = format!("connecting to {s}");
            let mut last = String::new();
            for c in std::iter::successors(Some(e), |e| (*e).source()) {
                let t = c.to_string();
                if !t.is_empty() && !last.contains(&t) {
                    msg.push_str(": ");
                    msg.push_str(&t);
                }
                last = t;
            }
            anyhow::anyhow!(msg)
        }
    }
}

/// An error and its causes in one line, each cause once: a cause whose text the
/// line holds already is left out, and one that starts by naming what the line
/// ends with (`reading x.tar` then `x.tar: no such file`) loses that name.
pub fn describe(e: &anyhow::Error) -> String {
    let mut msg = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if text.is_empty() || msg.contains(&text) {
            continue;
        }
        if msg.is_empty() {
            msg = text;
            continue;
        }
        let last = msg.rsplit(' ').next().unwrap_or_default().to_string();
        let text = text
            .strip_prefix(&format!("{last}: "))
            .map(str::to_string)
            .unwrap_or(text);
        if msg.contains(&text) {
            continue;
        }
        msg.push_str(": ");
        msg.push_str(&text);
    }
    msg
}

/// Turns a gRPC status into an error that reads like the daemon's message.
pub fn rpc(s: containerd_client::tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{}", s.message())
}

/// Prints rows as an aligned table (header first), or as JSON.
pub fn output<T: Serialize>(
    opts: &ClientOpts,
    items: &[T],
    header: &[&str],
    row: impl Fn(&T) -> Vec<String>,
) -> Result<()> {
    if opts.json {
        println!("{}", serde_json::to_string_pretty(items)?);
        return Ok(());
    }
    let mut rows: Vec<Vec<String>> = vec![header.iter().map(|s| s.to_string()).collect()];
    rows.extend(items.iter().map(row));
    print!("{}", table(&rows));
    Ok(())
}

pub fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .map(|r| r.get(c).map(|s| s.chars().count()).unwrap_or(0))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let mut line = String::new();
        for (i, cell) in r.iter().enumerate() {
            if i + 1 == r.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<w$}   ", w = widths[i]));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `k=v,k2=v2`, or `-` when empty.
pub fn labels_cell<'a>(labels: impl IntoIterator<Item = (&'a String, &'a String)>) -> String {
    let mut l: Vec<String> = labels
        .into_iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    l.sort();
    if l.is_empty() {
        "-".into()
    } else {
        l.join(",")
    }
}

/// Parses `KEY=VALUE` arguments.
pub fn parse_labels(args: &[String]) -> Result<std::collections::HashMap<String, String>> {
    args.iter()
        .map(|a| {
            a.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .with_context(|| format!("label {a:?} is not KEY=VALUE"))
        })
        .collect()
}

/// Sizes as `4.0 KiB`.
pub fn human_size(n: i64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < units.len() {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.1} {}", units[u])
}

pub fn time_of(t: &Option<prost_types::Timestamp>) -> Option<SystemTime> {
    (*t).and_then(|t| SystemTime::try_from(t).ok())
}

/// RFC 3339 in UTC, seconds precision.
pub fn rfc3339(t: Option<SystemTime>) -> String {
    let Some(t) = t else {
        return "-".into();
    };
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let days = secs.div_euclid(86400);
    let rem = secs.rem_euclid(86400);
    // Civil date from days since the epoch (proleptic Gregorian).
    let z = days + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Seconds from `t` to now (0 for times ahead).
pub fn secs_since(t: SystemTime) -> u64 {
    SystemTime::now()
        .duration_since(t)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Short ages: `3m`, `2h`.
pub fn age(t: Option<SystemTime>) -> String {
    let Some(s) = t.map(secs_since) else {
        return "-".into();
    };
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m", s / 60),
        3600..=86399 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causes_are_told_once() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "No such file or directory");
        let e = anyhow::Error::new(io).context("/x.tar: No such file or directory");
        let e = e.context("reading /x.tar");
        assert_eq!(describe(&e), "reading /x.tar: No such file or directory");
        let e = anyhow::anyhow!("image \"a:1\" not found").context("pulling a:1");
        assert_eq!(describe(&e), "pulling a:1: image \"a:1\" not found");
        let e = anyhow::anyhow!("boom").context("boom");
        assert_eq!(describe(&e), "boom");
    }

    #[test]
    fn formatting() {
        assert_eq!(human_size(4096), "4.0 KiB");
        assert_eq!(human_size(10), "10.0 B");
        let t = UNIX_EPOCH + std::time::Duration::from_secs(1709209815);
        assert_eq!(rfc3339(Some(t)), "2024-02-29T12:30:15Z");
        assert_eq!(rfc3339(Some(UNIX_EPOCH)), "1970-01-01T00:00:00Z");
        let rows = vec![
            vec!["A".into(), "BB".into()],
            vec!["long".into(), "x".into()],
        ];
        assert_eq!(table(&rows), "A      BB\nlong   x\n");
        assert!(parse_labels(&["a=b".into()]).is_ok());
        assert!(parse_labels(&["ab".into()]).is_err());
    }
}
