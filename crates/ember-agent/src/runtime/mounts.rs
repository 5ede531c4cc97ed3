//! `MountBlock` / `Unmount`: block filesystems mounted at guest paths, outside any
//! container (drive mounts).

use std::path::{Path, PathBuf};

use ember_agent_api::MountBlockRequest;
use ember_ttrpc::Status;

use super::block;
use super::{internal, Agent, R};
use crate::sys;

/// Checks a mount target: absolute, plain (no `..` or `.`), not `/` and not inside
/// the kernel's own filesystems.
pub(super) fn check_target(target: &str) -> R<PathBuf> {
    let p = Path::new(target);
    let bad = |why: &str| Status::invalid_argument(format!("mount target {target:?} {why}"));
    if !p.is_absolute() {
        return Err(bad("is not an absolute path"));
    }
    if target.split('/').any(|c| c == "." || c == "..") {
        return Err(bad("contains . or .."));
    }
    let clean: PathBuf = p.components().collect();
    if clean == Path::new("/") {
        return Err(bad("is the root directory"));
    }
    for forbidden in ["/proc", "/sys", "/dev"] {
        if clean.starts_with(forbidden) {
            return Err(bad(&format!("lies inside {forbidden}")));
        }
    }
    Ok(clean)
}

impl Agent {
    pub async fn mount_block(&self, req: MountBlockRequest) -> R<()> {
        let file = req
            .device
            .as_ref()
            .map(|d| d.file.as_bytes())
            .unwrap_or_default();
        crate::identity::ensure_shared_for(&[file]).map_err(Status::internal)?;
        let target = check_target(&req.target)?;
        let dev = req
            .device
            .ok_or_else(|| Status::invalid_argument("device is required"))?;
        if block::is_plain_dir(&dev) {
            return Err(Status::invalid_argument("the device is a directory"));
        }
        let mut mounts = self.block_mounts.lock().await;
        if mounts.contains_key(&target) {
            return Err(Status::already_exists(format!(
                "{} is already mounted",
                target.display()
            )));
        }
        let t = target.clone();
        let m = tokio::task::spawn_blocking(move || {
            std::fs::create_dir_all(&t)
                .map_err(|e| internal(&format!("creating {}", t.display()), e))?;
            block::mount(&dev, &t)
        })
        .await
        .map_err(|e| internal("mount", e))??;
        tracing::info!(target = %target.display(), loop_dev = ?m.loop_number, "block device mounted");
        mounts.insert(target, m);
        Ok(())
    }

    pub async fn unmount(&self, target: &str) -> R<()> {
        let target = check_target(target)?;
        let mut mounts = self.block_mounts.lock().await;
        let m = mounts
            .get(&target)
            .cloned()
            .ok_or_else(|| Status::not_found(format!("nothing mounted at {}", target.display())))?;
        tokio::task::spawn_blocking(move || {
            sys::umount(&m.target, libc::MNT_DETACH)
                .map_err(|e| internal(&format!("unmounting {}", m.target.display()), e))?;
            block::release_loop(m.loop_number);
            Ok::<_, Status>(())
        })
        .await
        .map_err(|e| internal("unmount", e))??;
        mounts.remove(&target);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        assert_eq!(
            check_target("/mnt/data").unwrap(),
            PathBuf::from("/mnt/data")
        );
        assert_eq!(
            check_target("/mnt//data/").unwrap(),
            PathBuf::from("/mnt/data")
        );
        for bad in [
            "mnt",
            "",
            "/",
            "/proc/x",
            "/sys",
            "/dev/shm/x",
            "/mnt/../proc",
            "/a/./b",
        ] {
            let e = check_target(bad).unwrap_err();
            assert_eq!(e.code(), ember_ttrpc::Code::InvalidArgument, "{bad:?}");
        }
        assert!(check_target("/devices").is_ok());
    }
}
