//! `ember stop` (SIGTERM, then SIGKILL after a grace period) and `ember kill`.

use std::str::FromStr;
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use nix::sys::signal::Signal;

use super::{each, is_running, Conn};
use crate::client::ClientOpts;

#[derive(clap::Args, Debug)]
#[command(about = "Stop running containers: SIGTERM, then SIGKILL after the timeout")]
pub struct StopArgs {
    /// Seconds to wait before SIGKILL.
    #[arg(short, long, default_value_t = 10)]
    time: u64,
    #[arg(required = true)]
    ids: Vec<String>,
}

#[derive(clap::Args, Debug)]
#[command(about = "Send a signal to running containers")]
pub struct KillArgs {
    /// Signal name or number.
    #[arg(short, long, default_value = "KILL")]
    signal: String,
    #[arg(required = true)]
    ids: Vec<String>,
}

/// `KILL`, `SIGKILL` or `9`.
pub fn parse_signal(s: &str) -> Result<i32> {
    if let Ok(n) = s.parse::<i32>() {
        return Signal::try_from(n)
            .map(|s| s as i32)
            .map_err(|_| anyhow!("unknown signal {s}"));
    }
    let name = s.to_ascii_uppercase();
    let name = if name.starts_with("SIG") {
        name
    } else {
        format!("SIG{name}")
    };
    Signal::from_str(&name)
        .map(|s| s as i32)
        .map_err(|_| anyhow!("unknown signal {s}"))
}

async fn running(conn: &Conn, id: &str) -> Result<bool> {
    conn.container(id).await?;
    Ok(matches!(conn.task(id).await?, Some(p) if is_running(&p)))
}

async fn stop(conn: &Conn, id: &str, grace: Duration) -> Result<()> {
    if !running(conn, id).await? {
        return Ok(());
    }
    conn.kill(id, libc::SIGTERM, false).await?;
    if tokio::time::timeout(grace, conn.wait(id, "")).await.is_ok() {
        return Ok(());
    }
    conn.kill(id, libc::SIGKILL, true).await?;
    tokio::time::timeout(Duration::from_secs(30), conn.wait(id, ""))
        .await
        .map_err(|_| anyhow!("container {id} did not exit after SIGKILL"))??;
    Ok(())
}

pub async fn run_stop(opts: &ClientOpts, a: StopArgs) -> Result<i32> {
    let conn = Conn::new(opts).await?;
    let grace = Duration::from_secs(a.time);
    each(a.ids, |id| {
        let conn = conn.clone();
        async move { stop(&conn, &id, grace).await }
    })
    .await
}

pub async fn run_kill(opts: &ClientOpts, a: KillArgs) -> Result<i32> {
    let sig = parse_signal(&a.signal)?;
    let conn = Conn::new(opts).await?;
    each(a.ids, |id| {
        let conn = conn.clone();
        async move {
            if !running(&conn, &id).await? {
                bail!("container {id} is not running");
            }
            conn.kill(&id, sig, false).await
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals() {
        assert_eq!(parse_signal("KILL").unwrap(), 9);
        assert_eq!(parse_signal("sigterm").unwrap(), 15);
        assert_eq!(parse_signal("1").unwrap(), 1);
        assert!(parse_signal("NOPE").is_err());
        assert!(parse_signal("99").is_err());
    }
}
