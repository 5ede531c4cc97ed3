//! Copying a VMM file (its log, its metrics) into a FIFO that a client named in
//! `CreateVM`, from a task that never blocks the shim: the FIFO is opened read-write
//! and non-blocking (so opening never waits for a reader and writing never fails for
//! lack of one), and data the reader does not take in time is dropped. A VMM that
//! keeps no metrics (QEMU) gets one JSON line a second of what the host sees of its
//! process instead.

use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::watch;

/// How often the source file is looked at.
const POLL: Duration = Duration::from_millis(200);

/// Opens (creating it when missing) the FIFO at `fifo` and starts copying what is
/// appended to `source` into it until `stop` turns true.
pub fn spawn_copy(source: PathBuf, fifo: &Path, stop: watch::Receiver<bool>) -> Result<(), String> {
    let out = open_fifo(fifo)?;
    tokio::spawn(copy(source, out, stop));
    Ok(())
}

fn open_fifo(path: &Path) -> Result<std::fs::File, String> {
    match std::fs::metadata(path) {
        Ok(m) if !m.file_type().is_fifo() => {
            return Err(format!("{} exists and is not a FIFO", path.display()))
        }
        Ok(_) => {}
        Err(_) => {
            nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o600))
                .map_err(|e| format!("creating the FIFO {}: {e}", path.display()))?;
        }
    }
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| format!("opening the FIFO {}: {e}", path.display()))
}

/// Writes `{"vmm_pid":…,"rss_bytes":…,"cpu_time_ms":…}` for process `pid` into the
/// FIFO at `fifo` every second until `stop` turns true or the process is gone.
pub fn spawn_stats(pid: u32, fifo: &Path, mut stop: watch::Receiver<bool>) -> Result<(), String> {
    let mut out = open_fifo(fifo)?;
    tokio::spawn(async move {
        while let Some((rss, cpu)) = proc_usage(pid) {
            let line = format!("{{\"vmm_pid\":{pid},\"rss_bytes\":{rss},\"cpu_time_ms\":{cpu}}}\n");
            let _ = out.write(line.as_bytes());
            tokio::select! {
                _ = tokio::time::sleep(STATS_EVERY) => {}
                _ = stop.changed() => return,
            }
            if *stop.borrow() {
                return;
            }
        }
    });
    Ok(())
}

const STATS_EVERY: Duration = Duration::from_secs(1);

/// Resident bytes and CPU milliseconds (user + system) of `pid`.
fn proc_usage(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces): utime and stime are
    // the 12th and 13th of them.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf only reads a configuration value.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Some((rss_kb * 1024, ticks * 1000 / hz))
}

async fn copy(source: PathBuf, mut out: std::fs::File, mut stop: watch::Receiver<bool>) {
    let mut pos = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if let Ok(mut f) = std::fs::File::open(&source) {
            // Shorter than what was copied: the capped log rotated, start it afresh.
            if f.metadata().is_ok_and(|m| m.len() < pos) {
                pos = 0;
            }
            if f.seek(SeekFrom::Start(pos)).is_ok() {
                while let Ok(n) = f.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    pos += n as u64;
                    // A full pipe (WouldBlock): the reader is behind, this part is dropped.
                    let _ = out.write(&buf[..n]);
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(POLL) => {}
            _ = stop.changed() => return,
        }
        if *stop.borrow() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_rotated_source_is_followed() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("vmm.log");
        let fifo = d.path().join("log.fifo");
        std::fs::write(&src, "before rotation, a longer line\n").unwrap();
        let (tx, rx) = watch::channel(false);
        spawn_copy(src.clone(), &fifo, rx).unwrap();
        let mut reader = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&fifo)
            .unwrap();
        tokio::time::sleep(POLL * 2).await;
        // What a capped log does at its cap: the file moves aside, a new one starts.
        std::fs::rename(&src, d.path().join("vmm.log.1")).unwrap();
        std::fs::write(&src, "after\n").unwrap();
        tokio::time::sleep(POLL * 3).await;
        let mut got = String::new();
        let _ = reader.read_to_string(&mut got);
        assert_eq!(got, "before rotation, a longer line\nafter\n");
        tx.send(true).unwrap();
    }

    #[tokio::test]
    async fn copies_appends_and_never_blocks_without_a_reader() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("vmm.log");
        let fifo = d.path().join("log.fifo");
        std::fs::write(&src, "first\n").unwrap();
        let (tx, rx) = watch::channel(false);
        spawn_copy(src.clone(), &fifo, rx).unwrap();
        let mut reader = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&fifo)
            .unwrap();
        // More than a pipe holds while nobody reads: dropped, not blocking.
        let big = vec![b'x'; 1 << 20];
        std::fs::OpenOptions::new()
            .append(true)
            .open(&src)
            .unwrap()
            .write_all(&big)
            .unwrap();
        tokio::time::sleep(POLL * 3).await;
        let mut got = Vec::new();
        let mut b = vec![0u8; 1 << 20];
        while let Ok(n) = reader.read(&mut b) {
            if n == 0 {
                break;
            }
            got.extend_from_slice(&b[..n]);
        }
        assert!(
            got.starts_with(b"first\n"),
            "{:?}",
            &got[..got.len().min(20)]
        );
        assert!(got.len() < big.len(), "nothing was dropped: {}", got.len());
        tx.send(true).unwrap();
        let not_fifo = d.path().join("plain");
        std::fs::write(&not_fifo, "").unwrap();
        assert!(spawn_copy(src, &not_fifo, watch::channel(false).1).is_err());
    }

    #[tokio::test]
    async fn stats_lines_of_a_process() {
        let d = tempfile::tempdir().unwrap();
        let fifo = d.path().join("metrics.fifo");
        let (tx, rx) = watch::channel(false);
        spawn_stats(std::process::id(), &fifo, rx).unwrap();
        let mut reader = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&fifo)
            .unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut b = vec![0u8; 4096];
        let n = reader.read(&mut b).unwrap();
        let line = String::from_utf8_lossy(&b[..n]);
        let v: serde_json::Value = serde_json::from_str(line.lines().next().unwrap()).unwrap();
        assert_eq!(v["vmm_pid"], std::process::id());
        assert!(v["rss_bytes"].as_u64().unwrap() > 0, "{v}");
        tx.send(true).unwrap();
    }
}
