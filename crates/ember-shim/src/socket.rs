//! The shim's listening socket path and its ownership: a shim unlinks the path only
//! while it still names the socket it bound, so a shim on its way out never removes
//! the socket of the next shim of the same task.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

/// The path of a bound shim socket and the inode it was bound as.
pub struct ShimSocket {
    path: PathBuf,
    dev: u64,
    ino: u64,
    released: AtomicBool,
}

impl ShimSocket {
    /// Records the identity of the socket file at `path`, which the caller bound (the
    /// socket's own fd reports an inode of the socket filesystem, not this file's).
    pub fn bound(path: &Path) -> std::io::Result<ShimSocket> {
        let st = std::fs::symlink_metadata(path)?;
        Ok(ShimSocket {
            path: path.to_path_buf(),
            dev: st.dev(),
            ino: st.ino(),
            released: AtomicBool::new(false),
        })
    }

    /// Whether the path still names this socket.
    fn owned(&self) -> bool {
        std::fs::symlink_metadata(&self.path)
            .is_ok_and(|m| m.dev() == self.dev && m.ino() == self.ino)
    }

    /// Unlinks the path (once) if it still names this socket: from then on nobody can
    /// connect to this shim, and a new shim of the task binds a fresh socket.
    pub fn release(&self) {
        if self.released.swap(true, Ordering::SeqCst) {
            return;
        }
        if self.owned() {
            if let Err(e) = std::fs::remove_file(&self.path) {
                tracing::warn!("removing {}: {e}", self.path.display());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    #[test]
    fn release_leaves_a_socket_bound_later_at_the_same_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let _old = UnixListener::bind(&path).unwrap();
        let old_sock = ShimSocket::bound(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        let _new = UnixListener::bind(&path).unwrap();
        let new_sock = ShimSocket::bound(&path).unwrap();
        old_sock.release();
        assert!(path.exists(), "the old shim removed the new shim's socket");
        new_sock.release();
        assert!(!path.exists());
    }
}
