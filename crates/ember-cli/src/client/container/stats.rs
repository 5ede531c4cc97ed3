//! `ember stats`: CPU, memory and pids of running containers, from the daemon's
//! `Tasks.Metrics` (cgroup v1 or v2 metrics from runc's shim, v2 from the microVM's).

use std::collections::HashMap;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use containerd_client::services::v1 as api;
use ember_shim_api::cgroup2;
use prost::Message;
use serde::Serialize;

use super::{is_running, Conn};
use crate::client::{human_size, rpc, table, ClientOpts};

/// Time between two samples.
const EVERY: Duration = Duration::from_secs(1);

#[derive(clap::Args, Debug)]
#[command(about = "Show CPU, memory and pids of running containers")]
pub struct StatsArgs {
    /// One sample, then exit (default: a table refreshed every second).
    #[arg(long)]
    no_stream: bool,
    /// Containers (default: all running ones).
    ids: Vec<String>,
}

/// One container's figures at one time.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Sample {
    pub cpu_usec: u64,
    pub memory: u64,
    pub memory_limit: u64,
    pub pids: u64,
}

#[derive(Serialize, Debug, PartialEq)]
pub struct Row {
    pub id: String,
    /// Percent of one CPU over the last interval (200.0 is two CPUs busy).
    pub cpu_percent: f64,
    pub memory_bytes: u64,
    /// 0 when unlimited.
    pub memory_limit_bytes: u64,
    pub pids: u64,
}

/// cgroup v1 metrics as runc's shim reports them on a v1 host
/// (`io.containerd.cgroups.v1.Metrics`): the fields `stats` shows.
mod cgroup1 {
    pub const TYPE_URL: &str = "io.containerd.cgroups.v1.Metrics";

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Metrics {
        #[prost(message, optional, tag = "2")]
        pub pids: Option<Pids>,
        #[prost(message, optional, tag = "3")]
        pub cpu: Option<Cpu>,
        #[prost(message, optional, tag = "4")]
        pub memory: Option<Memory>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Pids {
        #[prost(uint64, tag = "1")]
        pub current: u64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Cpu {
        #[prost(message, optional, tag = "1")]
        pub usage: Option<CpuUsage>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct CpuUsage {
        /// Nanoseconds.
        #[prost(uint64, tag = "1")]
        pub total: u64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Memory {
        #[prost(message, optional, tag = "33")]
        pub usage: Option<MemoryEntry>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct MemoryEntry {
        #[prost(uint64, tag = "1")]
        pub limit: u64,
        #[prost(uint64, tag = "2")]
        pub usage: u64,
    }
}

/// A memory limit as shown: 0 for none (cgroups report a huge number then).
fn limit(l: u64) -> u64 {
    if l >= 1 << 62 {
        0
    } else {
        l
    }
}

/// The figures of a `Tasks.Metrics` entry; `None` for metrics of another kind.
pub fn decode(data: &prost_types::Any) -> Option<Sample> {
    if data.type_url.ends_with(cgroup1::TYPE_URL) {
        let m = cgroup1::Metrics::decode(&data.value[..]).ok()?;
        let mem = m.memory.and_then(|m| m.usage).unwrap_or_default();
        return Some(Sample {
            cpu_usec: m.cpu.and_then(|c| c.usage).unwrap_or_default().total / 1000,
            memory: mem.usage,
            memory_limit: limit(mem.limit),
            pids: m.pids.unwrap_or_default().current,
        });
    }
    if !data.type_url.ends_with(cgroup2::TYPE_URL) {
        return None;
    }
    let m = cgroup2::Metrics::decode(&data.value[..]).ok()?;
    let mem = m.memory.unwrap_or_default();
    Some(Sample {
        cpu_usec: m.cpu.unwrap_or_default().usage_usec,
        memory: mem.usage,
        memory_limit: limit(mem.usage_limit),
        pids: m.pids.unwrap_or_default().current,
    })
}

/// CPU percent of one CPU between two samples `elapsed` apart.
pub fn cpu_percent(before: Option<&Sample>, now: &Sample, elapsed: Duration) -> f64 {
    let Some(b) = before else {
        return 0.0;
    };
    let us = elapsed.as_micros() as f64;
    if us <= 0.0 {
        return 0.0;
    }
    now.cpu_usec.saturating_sub(b.cpu_usec) as f64 / us * 100.0
}

/// The running tasks' ids, in the order asked for (all of them, sorted, when none is).
async fn targets(conn: &Conn, ids: &[String]) -> Result<Vec<String>> {
    let tasks = conn
        .tasks()
        .list(conn.req(api::ListTasksRequest {
            filter: String::new(),
        }))
        .await
        .map_err(rpc)?
        .into_inner()
        .tasks;
    let running: Vec<String> = tasks
        .iter()
        .filter(|t| is_running(t))
        .map(|t| t.id.clone())
        .collect();
    if ids.is_empty() {
        let mut all = running;
        all.sort();
        return Ok(all);
    }
    for id in ids {
        if !running.contains(id) {
            conn.container(id).await?;
            bail!("container {id} is not running");
        }
    }
    Ok(ids.to_vec())
}

async fn sample(conn: &Conn, ids: &[String]) -> Result<HashMap<String, Sample>> {
    let filters = ids.iter().map(|id| format!("id=={id:?}")).collect();
    let metrics = conn
        .tasks()
        .metrics(conn.req(api::MetricsRequest { filters }))
        .await
        .map_err(rpc)?
        .into_inner()
        .metrics;
    Ok(metrics
        .into_iter()
        .filter_map(|m| Some((m.id, decode(m.data.as_ref()?)?)))
        .collect())
}

fn rows(
    ids: &[String],
    before: &HashMap<String, Sample>,
    now: &HashMap<String, Sample>,
    elapsed: Duration,
) -> Vec<Row> {
    ids.iter()
        .filter_map(|id| {
            let s = now.get(id)?;
            Some(Row {
                id: id.clone(),
                cpu_percent: (cpu_percent(before.get(id), s, elapsed) * 100.0).round() / 100.0,
                memory_bytes: s.memory,
                memory_limit_bytes: s.memory_limit,
                pids: s.pids,
            })
        })
        .collect()
}

fn render(rows: &[Row]) -> String {
    let mut t = vec![vec![
        "ID".to_string(),
        "CPU %".into(),
        "MEM USAGE / LIMIT".into(),
        "PIDS".into(),
    ]];
    for r in rows {
        let limit = if r.memory_limit_bytes == 0 {
            "-".to_string()
        } else {
            human_size(r.memory_limit_bytes as i64)
        };
        t.push(vec![
            r.id.clone(),
            format!("{:.2}%", r.cpu_percent),
            format!("{} / {limit}", human_size(r.memory_bytes as i64)),
            r.pids.to_string(),
        ]);
    }
    table(&t)
}

pub async fn run(opts: &ClientOpts, a: StatsArgs) -> Result<i32> {
    let conn = Conn::new(opts).await?;
    let ids = targets(&conn, &a.ids).await?;
    let mut before = sample(&conn, &ids).await?;
    let mut at = Instant::now();
    let clear = !opts.json && std::io::stdout().is_terminal();
    loop {
        tokio::time::sleep(EVERY).await;
        // Containers started since join a streaming view that names none.
        let ids = if a.ids.is_empty() && !a.no_stream {
            targets(&conn, &[]).await?
        } else {
            ids.clone()
        };
        let now = sample(&conn, &ids).await?;
        let elapsed = at.elapsed();
        at = Instant::now();
        let rows = rows(&ids, &before, &now, elapsed);
        if a.no_stream {
            if opts.json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                print!("{}", render(&rows));
            }
            return Ok(0);
        }
        if opts.json {
            for r in &rows {
                println!("{}", serde_json::to_string(r)?);
            }
        } else {
            if clear {
                print!("\x1b[2J\x1b[H");
            }
            print!("{}", render(&rows));
        }
        if !a.ids.is_empty() && rows.is_empty() {
            return Ok(0);
        }
        before = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_cgroup2_metrics() {
        let m = cgroup2::Metrics {
            pids: Some(cgroup2::PidsStat {
                current: 3,
                limit: 0,
            }),
            cpu: Some(cgroup2::CpuStat {
                usage_usec: 1500,
                ..Default::default()
            }),
            memory: Some(cgroup2::MemoryStat {
                usage: 4096,
                usage_limit: u64::MAX,
            }),
            memory_events: None,
        };
        let any = ember_shim_api::to_any(cgroup2::TYPE_URL, &m);
        let s = decode(&any).unwrap();
        assert_eq!(
            s,
            Sample {
                cpu_usec: 1500,
                memory: 4096,
                memory_limit: 0,
                pids: 3
            }
        );
        let v1 = cgroup1::Metrics {
            pids: Some(cgroup1::Pids { current: 2 }),
            cpu: Some(cgroup1::Cpu {
                usage: Some(cgroup1::CpuUsage { total: 3_000_000 }),
            }),
            memory: Some(cgroup1::Memory {
                usage: Some(cgroup1::MemoryEntry {
                    limit: 1 << 30,
                    usage: 8192,
                }),
            }),
        };
        let s = decode(&ember_shim_api::to_any(cgroup1::TYPE_URL, &v1)).unwrap();
        assert_eq!(
            s,
            Sample {
                cpu_usec: 3000,
                memory: 8192,
                memory_limit: 1 << 30,
                pids: 2
            }
        );
        let other = prost_types::Any {
            type_url: "io.containerd.cgroups.v3.Other".into(),
            value: vec![],
        };
        assert!(decode(&other).is_none());
    }

    #[test]
    fn cpu_percent_of_one_cpu() {
        let a = Sample {
            cpu_usec: 1_000_000,
            ..Default::default()
        };
        let b = Sample {
            cpu_usec: 1_500_000,
            ..Default::default()
        };
        let p = cpu_percent(Some(&a), &b, Duration::from_secs(1));
        assert!((p - 50.0).abs() < 1e-9, "{p}");
        assert_eq!(cpu_percent(None, &b, Duration::from_secs(1)), 0.0);
        let rows = rows(
            &["x".to_string()],
            &HashMap::from([("x".to_string(), a)]),
            &HashMap::from([("x".to_string(), b)]),
            Duration::from_secs(1),
        );
        let out = render(&rows);
        assert_eq!(
            out,
            "ID   CPU %    MEM USAGE / LIMIT   PIDS\nx    50.00%   0.0 B / -           0\n"
        );
    }
}
