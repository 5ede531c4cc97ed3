//! Host-side logs of a VM with a size cap: a file that reaches its cap is rotated to
//! `<name>.1` (replacing the previous one) and started again, so a guest flooding its
//! console costs at most twice the cap of disk. And guest text quoted into host logs
//! is escaped, so it cannot forge a line of them.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncRead, AsyncReadExt};

use crate::DEFAULT_LOG_MAX_BYTES;

/// A log file with a size cap.
#[derive(Debug)]
pub struct CappedLog {
    path: PathBuf,
    cap: u64,
    file: File,
    len: u64,
}

/// `<path>.1`, where a capped log's previous part goes.
pub fn rotated_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".1");
    PathBuf::from(s)
}

impl CappedLog {
    /// [`CappedLog::create`], for drains.
    pub(crate) fn shared(path: &Path, cap: u64) -> std::io::Result<SharedLog> {
        Ok(Arc::new(Mutex::new(Self::create(path, cap)?)))
    }

    /// Creates (truncating) `path` and drops an older rotated part; `cap` 0 is the
    /// default cap.
    pub fn create(path: &Path, cap: u64) -> std::io::Result<Self> {
        let cap = if cap == 0 { DEFAULT_LOG_MAX_BYTES } else { cap };
        let _ = std::fs::remove_file(rotated_path(path));
        let file = File::create(path)?;
        Ok(CappedLog {
            path: path.to_path_buf(),
            cap,
            file,
            len: 0,
        })
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        std::fs::rename(&self.path, rotated_path(&self.path))?;
        self.file = File::create(&self.path)?;
        self.len = 0;
        Ok(())
    }

    /// Appends `buf`, rotating first when it would pass the cap (a single write
    /// larger than the cap keeps only its end).
    pub fn write(&mut self, mut buf: &[u8]) -> std::io::Result<()> {
        if buf.len() as u64 > self.cap {
            buf = &buf[buf.len() - self.cap as usize..];
        }
        if self.len + buf.len() as u64 > self.cap {
            self.rotate()?;
        }
        self.file.write_all(buf)?;
        self.len += buf.len() as u64;
        Ok(())
    }
}

/// A capped log several drains write into (a VMM's stdout and stderr).
pub(crate) type SharedLog = Arc<Mutex<CappedLog>>;

/// Copies `reader` (a VMM's stdout or stderr, a FIFO it logs into) into `log` until
/// it closes.
pub(crate) fn drain<R>(mut reader: R, log: SharedLog) -> tokio::task::JoinHandle<()>
where
    R: AsyncRead + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let mut log = log.lock().unwrap();
                    if let Err(e) = log.write(&buf[..n]) {
                        tracing::warn!("writing {}: {e}", log.path.display());
                        break;
                    }
                }
            }
        }
    })
}

/// Opens `path` (a FIFO) for a drain; opened read-write, so it never reads an end
/// while the writer has not opened it yet or between two writers.
pub(crate) fn fifo_reader(path: &Path) -> std::io::Result<tokio::net::unix::pipe::Receiver> {
    tokio::net::unix::pipe::OpenOptions::new()
        .read_write(true)
        .open_receiver(path)
}

/// Makes a FIFO at `path` (replacing what is there), owned by `owner` if given.
pub(crate) fn make_fifo(path: &Path, owner: Option<(u32, u32)>) -> std::io::Result<()> {
    let _ = std::fs::remove_file(path);
    nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o600))
        .map_err(std::io::Error::from)?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(path, Some(uid), Some(gid))?;
    }
    Ok(())
}

/// Guest text (console, VMM log) made safe to quote in a host log: every line gets
/// `prefix`, and control characters (escape sequences, carriage returns, other
/// line breaks) are shown escaped, so the text cannot end the host's line or fake
/// another one.
pub fn quote_guest(text: &str, prefix: &str) -> String {
    let mut out = String::with_capacity(text.len() + 16);
    for (i, line) in text.trim_end_matches('\n').split('\n').enumerate() {
        if i > 0 {
            out.push('\n');
        }
        out.push_str(prefix);
        for c in line.chars() {
            match c {
                '\t' => out.push('\t'),
                c if c.is_control() || c == '\u{2028}' || c == '\u{2029}' => {
                    out.extend(c.escape_default())
                }
                c => out.push(c),
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_stays_under_twice_the_cap() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("console.log");
        let mut log = CappedLog::create(&p, 1000).unwrap();
        for i in 0..10_000u32 {
            log.write(format!("line {i}\n").as_bytes()).unwrap();
        }
        let cur = std::fs::metadata(&p).unwrap().len();
        let old = std::fs::metadata(rotated_path(&p)).unwrap().len();
        assert!(cur <= 1000 && old <= 1000, "{cur} {old}");
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(text.ends_with("line 9999\n"), "{text}");
        log.write(&[b'x'; 5000]).unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().len(), 1000);
        // A new log starts without the previous run's rotated part.
        CappedLog::create(&p, 1000).unwrap();
        assert!(!rotated_path(&p).exists());
    }

    #[test]
    fn guest_text_cannot_forge_host_lines() {
        let q = quote_guest(
            "ok\r\n\x1b[2Jlevel=error msg=\"forged\"\rx\u{2028}y\n",
            "console| ",
        );
        assert_eq!(
            q,
            "console| ok\\r\nconsole| \\u{1b}[2Jlevel=error msg=\"forged\"\\rx\\u{2028}y"
        );
        assert!(q.lines().all(|l| l.starts_with("console| ")));
    }
}
