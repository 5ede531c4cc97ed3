//! Stdio of a detached `ember run -d -i` container: FIFOs beside its kept output,
//! served by a small `ember` process of its own until the task exits. It holds
//! stdin open for writing, so that the container reads on (and gets whatever is
//! written to the `stdin` FIFO later) instead of meeting the end of its input at
//! once, and keeps stdout and stderr as the logger does (shims take no stdin
//! beside a `binary://` logger).

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use nix::sys::stat::Mode;

use super::logger::Sink;
use super::Conn;
use crate::client::ClientOpts;

/// First argument that makes `ember` the holder: `stdio-holder:DIR`, then the
/// daemon's socket, the namespace and the container id.
pub const ARG_PREFIX: &str = "stdio-holder:";

/// The FIFOs in `dir`: stdin, stdout, stderr.
fn fifos(dir: &Path) -> [PathBuf; 3] {
    ["stdin", "stdout", "stderr"].map(|n| dir.join(n))
}

/// Makes the FIFOs in `dir` and starts their holder; the stdio URIs for the task.
pub fn start(opts: &ClientOpts, dir: &Path, id: &str) -> Result<(String, String, String)> {
    for p in fifos(dir) {
        nix::unistd::mkfifo(&p, Mode::from_bits_truncate(0o600))
            .with_context(|| format!("mkfifo {}", p.display()))?;
    }
    let fifo = dir.to_path_buf();
    let mut child = Command::new(std::env::current_exe()?)
        .arg(format!("{ARG_PREFIX}{}", fifo.display()))
        .arg(&opts.address)
        .arg(&opts.namespace)
        .arg(id)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .context("starting the holder of the stdio FIFOs")?;
    // It says when the FIFO is held, before the shim opens its end.
    let mut line = String::new();
    if let Some(out) = child.stdout.take() {
        let _ = std::io::BufRead::read_line(&mut std::io::BufReader::new(out), &mut line);
    }
    if line.trim() != "held" {
        let _ = child.kill();
        anyhow::bail!(
            "the holder of the stdio FIFOs in {} did not start",
            fifo.display()
        );
    }
    let [i, o, e] = fifos(dir).map(|p| p.display().to_string());
    Ok((i, o, e))
}

/// Runs as the holder: `dir` holds the FIFOs; `args` are the socket, namespace and id.
pub fn serve(dir: &str, args: &[String]) -> i32 {
    let [address, namespace, id] = args else {
        return 2;
    };
    let dir = Path::new(dir);
    // Read-write: opens do not wait for the other end, and no FIFO sees its last
    // writer go while this process lives.
    let open = |p: &Path| std::fs::OpenOptions::new().read(true).write(true).open(p);
    let [i, o, e] = fifos(dir);
    let (Ok(_stdin), Ok(out), Ok(err), Ok(sink)) = (open(&i), open(&o), open(&e), Sink::open(dir))
    else {
        return 1;
    };
    let sink = Arc::new(Mutex::new(sink));
    for mut src in [out, err] {
        let sink = sink.clone();
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
        });
    }
    println!("held");
    let opts = ClientOpts {
        address: address.into(),
        namespace: namespace.clone(),
        json: false,
    };
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return 1;
    };
    rt.block_on(async {
        let Ok(conn) = Conn::new(&opts).await else {
            return;
        };
        // The task may not exist yet: the holder starts before it is created.
        for _ in 0..600 {
            match conn.task(id).await {
                Ok(Some(_)) => break,
                Ok(None) => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
                Err(_) => return,
            }
        }
        let _ = conn.wait(id, "").await;
        // The last output in the FIFOs is read before this process goes.
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    });
    0
}
