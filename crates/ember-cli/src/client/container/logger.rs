//! Kept output of containers: `ember` itself serves as the shim's `binary://`
//! logger of a detached container, writing stdout and stderr into `output.log`
//! under the container's log directory, rotated to `output.log.1` past
//! [`ROTATE_AT`], so at most twice that is kept. A foreground `ember run` writes
//! what it shows into the same files ([`Sink`]), so `ember logs` works for both.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::FromRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// First argument that makes `ember` the logger: `log-driver:DIR`.
pub const ARG_PREFIX: &str = "log-driver:";
/// Size at which the current log is rotated.
pub const ROTATE_AT: u64 = 4 << 20;
pub const CURRENT: &str = "output.log";
pub const PREVIOUS: &str = "output.log.1";

/// The `binary://` URI that makes the shim start this `ember` as logger for `dir`.
pub fn uri(dir: &Path) -> anyhow::Result<String> {
    let exe = std::env::current_exe()?;
    Ok(format!(
        "binary://{}?{ARG_PREFIX}{}",
        exe.display(),
        dir.display()
    ))
}

/// The log directory of container `id` in `namespace`.
pub fn dir(namespace: &str, id: &str) -> PathBuf {
    super::state_dir().join("logs").join(namespace).join(id)
}

/// The kept output of one container, rotated past [`ROTATE_AT`].
pub struct Sink {
    dir: PathBuf,
    file: File,
    written: u64,
}

impl Sink {
    /// Appends to the output kept in `dir` (created if need be).
    pub fn open(dir: &Path) -> std::io::Result<Sink> {
        std::fs::create_dir_all(dir)?;
        let file = open(dir)?;
        let written = file.metadata().map(|m| m.len()).unwrap_or(0);
        Ok(Sink {
            dir: dir.to_path_buf(),
            file,
            written,
        })
    }

    pub fn write(&mut self, data: &[u8]) {
        if self.written + data.len() as u64 > ROTATE_AT && self.written > 0 {
            let _ = std::fs::rename(self.dir.join(CURRENT), self.dir.join(PREVIOUS));
            if let Ok(f) = open(&self.dir) {
                self.file = f;
                self.written = 0;
            }
        }
        if self.file.write_all(data).is_ok() {
            self.written += data.len() as u64;
        }
    }
}

fn open(dir: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(CURRENT))
}

/// Runs as the logger: fd 3 is stdout, fd 4 stderr, fd 5 closed once ready.
/// Returns when both streams end.
pub fn serve(dir: &str) -> i32 {
    let sink = Sink::open(Path::new(dir));
    // SAFETY: the shim hands this process fds 3, 4 and 5 and nothing else owns them.
    let (out, err, ready) = unsafe {
        (
            File::from_raw_fd(3),
            File::from_raw_fd(4),
            File::from_raw_fd(5),
        )
    };
    drop(ready);
    let Ok(sink) = sink else {
        return 1;
    };
    let sink = Arc::new(Mutex::new(sink));
    let pump = |mut src: File, sink: Arc<Mutex<Sink>>| {
        std::thread::spawn(move || {
            let mut buf = [0u8; 32 * 1024];
            while let Ok(n) = src.read(&mut buf) {
                if n == 0 {
                    break;
                }
                if let Ok(mut s) = sink.lock() {
                    s.write(&buf[..n]);
                }
            }
        })
    };
    let a = pump(out, sink.clone());
    let b = pump(err, sink);
    let _ = a.join();
    let _ = b.join();
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_bounds_the_kept_output() {
        let d = tempfile::tempdir().unwrap();
        let mut s = Sink {
            dir: d.path().into(),
            file: open(d.path()).unwrap(),
            written: 0,
        };
        let chunk = vec![b'x'; 1 << 20];
        for _ in 0..11 {
            s.write(&chunk);
        }
        let cur = std::fs::metadata(d.path().join(CURRENT)).unwrap().len();
        let prev = std::fs::metadata(d.path().join(PREVIOUS)).unwrap().len();
        assert!(cur <= ROTATE_AT && prev <= ROTATE_AT, "{cur} {prev}");
        assert_eq!(cur + prev, 7 << 20);
    }
}
