//! The shared directory's file server of a jailed QEMU: QEMU's own
//! `virtfs-proxy-helper`, run outside the jail (root, in the host's mount namespace,
//! chrooted by itself into the shared directory, keeping only the capabilities a 9p
//! server needs to set owners and modes), speaking 9p's proxy protocol to QEMU over
//! a socket in the jail. Bind mounts made later under the shared directory are the
//! host's, so the server sees them as they are, read-only ones read-only.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

use crate::logs::{drain, SharedLog};
use crate::process::spawn_supervised;
use crate::Error;

/// Where Debian's qemu-system-common installs the helper.
pub const DEFAULT_HELPER: &str = "/usr/lib/qemu/virtfs-proxy-helper";

/// The helper binary: `$EMBER_VIRTFS_PROXY_HELPER`, else Debian's.
pub fn helper() -> PathBuf {
    std::env::var_os("EMBER_VIRTFS_PROXY_HELPER")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_HELPER))
}

/// A running file server.
pub(crate) struct FileServer {
    pub child: Child,
    pub drain: tokio::task::JoinHandle<()>,
}

/// Starts the server for `dir` on `socket` (owned by `uid`:`gid`, the VMM's) and
/// waits until the socket is there.
pub(crate) async fn start(
    dir: &Path,
    socket: &Path,
    uid: u32,
    gid: u32,
    log: SharedLog,
) -> Result<FileServer, Error> {
    let bin = helper();
    if !bin.is_file() {
        return Err(Error::MissingFile {
            what: "9p file server of a jailed QEMU (virtfs-proxy-helper)",
            path: bin,
            hint: "install it with `apt-get install qemu-system-common`, or set EMBER_VIRTFS_PROXY_HELPER",
        });
    }
    let _ = std::fs::remove_file(socket);
    let mut cmd = Command::new(&bin);
    cmd.arg("--path")
        .arg(dir)
        .arg("--socket")
        .arg(socket)
        .arg("--uid")
        .arg(uid.to_string())
        .arg("--gid")
        .arg(gid.to_string())
        .arg("--nodaemon")
        .kill_on_drop(true);
    let mut child =
        spawn_supervised(cmd, Stdio::null(), Stdio::piped()).map_err(|source| Error::Spawn {
            binary: bin.clone(),
            source,
        })?;
    let drain = drain(child.stderr.take().expect("piped"), log);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !socket.exists() {
        if let Ok(Some(st)) = child.try_wait() {
            return Err(Error::Control(format!(
                "the 9p file server {} exited at start ({st})",
                bin.display()
            )));
        }
        if Instant::now() > deadline {
            let _ = child.kill().await;
            return Err(Error::Control(format!(
                "the 9p file server did not make its socket {}",
                socket.display()
            )));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(FileServer { child, drain })
}
