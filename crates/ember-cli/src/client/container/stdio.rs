//! The client end of a process's stdio: FIFOs created here and handed to the shim,
//! copied to and from this terminal; raw mode, window resizes and signals forwarded.

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result};
use containerd_client::services::v1 as api;
use nix::sys::stat::Mode;

use super::logger::Sink;
use super::Conn;
use crate::vm::{terminal_size, RawMode};

/// FIFOs for one process, removed with the value.
pub struct Fifos {
    _dir: tempfile::TempDir,
    pub stdin: Option<PathBuf>,
    pub stdout: PathBuf,
    pub stderr: Option<PathBuf>,
}

impl Fifos {
    /// `stdin` when input is forwarded; no stderr FIFO with a terminal (one stream).
    pub fn new(stdin: bool, terminal: bool) -> Result<Fifos> {
        let base = super::state_dir().join("fifo");
        std::fs::create_dir_all(&base).with_context(|| format!("creating {}", base.display()))?;
        let dir = tempfile::Builder::new()
            .prefix("io-")
            .tempdir_in(&base)
            .context("creating the FIFO directory")?;
        let make = |name: &str| -> Result<PathBuf> {
            let p = dir.path().join(name);
            nix::unistd::mkfifo(&p, Mode::from_bits_truncate(0o600))
                .with_context(|| format!("mkfifo {}", p.display()))?;
            Ok(p)
        };
        Ok(Fifos {
            stdin: if stdin { Some(make("stdin")?) } else { None },
            stdout: make("stdout")?,
            stderr: if terminal {
                None
            } else {
                Some(make("stderr")?)
            },
            _dir: dir,
        })
    }

    pub fn uris(&self) -> (String, String, String) {
        let s = |p: &Option<PathBuf>| {
            p.as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        };
        (
            s(&self.stdin),
            self.stdout.display().to_string(),
            s(&self.stderr),
        )
    }
}

/// Copy threads between the FIFOs and this process's stdio.
pub struct Attached {
    outputs: Vec<JoinHandle<()>>,
    /// Tells the stdin thread the process exists, so `CloseIO` can find it.
    created: Option<std::sync::mpsc::Sender<()>>,
}

/// Opens the FIFOs (blocking until the shim opens its ends) on threads and copies,
/// the output also into `keep` when given (a container's kept output).
/// Stdin's end is closed at end of input, and the shim told with `CloseIO` once
/// [`Attached::created`] says the process exists.
pub fn attach(conn: &Conn, f: &Fifos, id: &str, exec_id: &str, keep: Option<Sink>) -> Attached {
    let keep = keep.map(|s| Arc::new(Mutex::new(s)));
    let copy_out = |p: PathBuf, err: bool| {
        let keep = keep.clone();
        std::thread::spawn(move || {
            let Ok(mut r) = OpenOptions::new().read(true).open(&p) else {
                return;
            };
            let mut buf = [0u8; 32 * 1024];
            loop {
                match r.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        if let Some(Ok(mut k)) = keep.as_ref().map(|k| k.lock()) {
                            k.write(&buf[..n]);
                        }
                        let res = if err {
                            let mut e = std::io::stderr().lock();
                            e.write_all(&buf[..n]).and_then(|_| e.flush())
                        } else {
                            let mut o = std::io::stdout().lock();
                            o.write_all(&buf[..n]).and_then(|_| o.flush())
                        };
                        if res.is_err() {
                            // The reader has gone: the output is still kept.
                            if keep.is_none() {
                                return;
                            }
                        }
                    }
                }
            }
        })
    };
    let mut outputs = vec![copy_out(f.stdout.clone(), false)];
    if let Some(e) = &f.stderr {
        outputs.push(copy_out(e.clone(), true));
    }
    let mut created = None;
    if let Some(p) = f.stdin.clone() {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        created = Some(tx);
        let (conn, id, exec_id) = (conn.clone(), id.to_string(), exec_id.to_string());
        let rt = tokio::runtime::Handle::current();
        std::thread::spawn(move || {
            if let Ok(mut w) = OpenOptions::new().write(true).open(&p) {
                let _ = std::io::copy(&mut std::io::stdin().lock(), &mut w);
            }
            if rx.recv().is_err() {
                return;
            }
            rt.block_on(async move {
                let _ = conn
                    .tasks()
                    .close_io(conn.req(api::CloseIoRequest {
                        container_id: id,
                        exec_id,
                        stdin: true,
                    }))
                    .await;
            });
        });
    }
    Attached { outputs, created }
}

impl Attached {
    /// The process has been created: end of input may now be passed on.
    pub fn created(&self) {
        if let Some(tx) = &self.created {
            let _ = tx.send(());
        }
    }

    /// Waits for the shim to close the outputs, at most `limit` (a background
    /// process of the container may hold them open).
    pub async fn finish(self, limit: Duration) {
        let _ = tokio::time::timeout(
            limit,
            tokio::task::spawn_blocking(move || {
                for h in self.outputs {
                    let _ = h.join();
                }
            }),
        )
        .await;
    }
}

/// Raw mode on this terminal when `terminal` and stdin is one.
pub fn raw_mode(terminal: bool) -> Result<Option<RawMode>> {
    use std::io::IsTerminal;
    if terminal && std::io::stdin().is_terminal() {
        Ok(Some(RawMode::enable()?))
    } else {
        Ok(None)
    }
}

/// Passes this terminal's size on to the process's pty.
pub async fn resize(conn: &Conn, id: &str, exec_id: &str) {
    let (width, height) = terminal_size();
    let _ = conn
        .tasks()
        .resize_pty(conn.req(api::ResizePtyRequest {
            container_id: id.into(),
            exec_id: exec_id.into(),
            width,
            height,
        }))
        .await;
}

/// Forwards this terminal's size now and on each SIGWINCH (with a terminal), and
/// SIGINT, SIGTERM, SIGHUP and SIGQUIT to the process, until the returned task is aborted.
pub fn forward(
    conn: &Conn,
    id: &str,
    exec_id: &str,
    terminal: bool,
) -> Result<tokio::task::JoinHandle<()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut winch = signal(SignalKind::window_change())?;
    let mut sigs = Vec::new();
    for k in [
        SignalKind::interrupt(),
        SignalKind::terminate(),
        SignalKind::hangup(),
        SignalKind::quit(),
    ] {
        sigs.push((k.as_raw_value(), signal(k)?));
    }
    let (conn, id, exec_id) = (conn.clone(), id.to_string(), exec_id.to_string());
    Ok(tokio::spawn(async move {
        if terminal {
            resize(&conn, &id, &exec_id).await;
        }
        let (tx, mut rx) = tokio::sync::mpsc::channel::<i32>(8);
        for (n, mut s) in sigs {
            let tx = tx.clone();
            tokio::spawn(async move {
                while s.recv().await.is_some() {
                    if tx.send(n).await.is_err() {
                        return;
                    }
                }
            });
        }
        loop {
            tokio::select! {
                Some(()) = winch.recv() => {
                    if terminal {
                        resize(&conn, &id, &exec_id).await;
                    }
                }
                Some(n) = rx.recv() => {
                    let _ = conn
                        .tasks()
                        .kill(conn.req(api::KillRequest {
                            container_id: id.clone(),
                            exec_id: exec_id.clone(),
                            signal: n as u32,
                            all: false,
                        }))
                        .await;
                }
            }
        }
    }))
}

/// docker's exit codes for a process that could not be started: 127 when the
/// command is not found, 126 when it cannot be run, 125 otherwise.
pub fn start_failure_code(message: &str) -> i32 {
    let m = message.to_ascii_lowercase();
    if m.contains("not found") || m.contains("no such file") {
        127
    } else if m.contains("permission denied") || m.contains("exec format") {
        126
    } else {
        super::EXIT_EMBER
    }
}
