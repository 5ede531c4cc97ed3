//! A shim's log: the bundle's `log` FIFO, copied line by line into the daemon's
//! log, with the last lines kept so that a shim that dies or fails can be
//! explained with its own words.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::{Arc, Mutex};

use ember_metadata::Error as E;

/// How many of a shim's last log lines are kept.
const TAIL_LINES: usize = 20;

/// The copier of one shim's log; stopped by [`ShimLog::abort`] or when dropped.
pub struct ShimLog {
    task: tokio::task::AbortHandle,
    tail: Arc<Mutex<VecDeque<String>>>,
}

impl ShimLog {
    pub fn abort(&self) {
        self.task.abort();
    }

    /// The shim's last log lines, oldest first, joined by newlines.
    pub fn tail(&self) -> String {
        let tail = self.tail.lock().unwrap_or_else(|p| p.into_inner());
        tail.iter().cloned().collect::<Vec<_>>().join("\n")
    }
}

impl Drop for ShimLog {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Opens the bundle's `log` FIFO (creating it), which shims write their log to,
/// and copies what arrives into the daemon's log.
pub(crate) fn follow_shim_log(
    bundle: &Path,
    ns: &str,
    id: &str,
) -> crate::runtime::Result<ShimLog> {
    use tokio::io::AsyncBufReadExt;
    let path = bundle.join("log");
    if !path.exists() {
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o700))
            .map_err(|e| E::Internal(format!("creating {}: {e}", path.display())))?;
    }
    // Read-write, so the reader never sees end-of-file between shim writers.
    let rx = tokio::net::unix::pipe::OpenOptions::new()
        .read_write(true)
        .open_receiver(&path)
        .map_err(|e| E::Internal(format!("opening {}: {e}", path.display())))?;
    let (ns, id) = (ns.to_string(), id.to_string());
    let tail = Arc::new(Mutex::new(VecDeque::with_capacity(TAIL_LINES)));
    let kept = tail.clone();
    let task = tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(rx).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            tracing::info!(target: "emberd::shim", namespace = %ns, id = %id, "{line}");
            keep(&kept, line);
        }
    });
    Ok(ShimLog {
        task: task.abort_handle(),
        tail,
    })
}

fn keep(tail: &Mutex<VecDeque<String>>, line: String) {
    let mut tail = tail.lock().unwrap_or_else(|p| p.into_inner());
    if tail.len() == TAIL_LINES {
        tail.pop_front();
    }
    tail.push_back(line);
}

/// How long a dead shim's last log lines may take to arrive.
const DRAIN: std::time::Duration = std::time::Duration::from_millis(300);

/// The shim's last log lines, as a suffix for an error (empty when it logged
/// nothing). Waits a moment first: lines a shim wrote just before it died may
/// still be in the FIFO.
pub async fn explain(log: &ShimLog) -> String {
    tokio::time::sleep(DRAIN).await;
    match log.tail() {
        t if t.is_empty() => String::new(),
        t => format!("; the shim's last log lines:\n{t}"),
    }
}

/// The last `n` lines of a text (a shim's stderr), for a log line or an error.
pub fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.trim().lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tail_keeps_the_last_lines() {
        let tail = Mutex::new(VecDeque::new());
        for i in 0..TAIL_LINES + 5 {
            keep(&tail, format!("line {i}"));
        }
        let t = tail.lock().unwrap();
        assert_eq!(t.len(), TAIL_LINES);
        assert_eq!(t.front().unwrap(), "line 5");
        assert_eq!(last_lines("a\nb\nc\n", 2), "b\nc");
        assert_eq!(last_lines("a", 5), "a");
        assert_eq!(last_lines("", 5), "");
    }
}
