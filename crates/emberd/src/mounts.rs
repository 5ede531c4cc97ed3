//! Performing the mounts a snapshotter hands out (`mount -t TYPE SOURCE TARGET -o
//! OPTIONS`), for the diff service.

use std::path::{Path, PathBuf};

use ember_snapshot::Mount;
use nix::mount::{MntFlags, MsFlags};

fn flag(o: &str) -> Option<(bool, MsFlags)> {
    Some(match o {
        "ro" => (true, MsFlags::MS_RDONLY),
        "rw" => (false, MsFlags::MS_RDONLY),
        "bind" => (true, MsFlags::MS_BIND),
        "rbind" => (true, MsFlags::MS_BIND | MsFlags::MS_REC),
        "nosuid" => (true, MsFlags::MS_NOSUID),
        "suid" => (false, MsFlags::MS_NOSUID),
        "nodev" => (true, MsFlags::MS_NODEV),
        "dev" => (false, MsFlags::MS_NODEV),
        "noexec" => (true, MsFlags::MS_NOEXEC),
        "exec" => (false, MsFlags::MS_NOEXEC),
        "noatime" => (true, MsFlags::MS_NOATIME),
        "relatime" => (true, MsFlags::MS_RELATIME),
        "sync" => (true, MsFlags::MS_SYNCHRONOUS),
        "remount" => (true, MsFlags::MS_REMOUNT),
        "defaults" | "async" | "atime" => (false, MsFlags::empty()),
        _ => return None,
    })
}

/// Mounts one mount on `target`.
pub fn mount(m: &Mount, target: &Path) -> std::io::Result<()> {
    let mut flags = MsFlags::empty();
    let mut data = Vec::new();
    for o in &m.options {
        match flag(o) {
            Some((true, f)) => flags |= f,
            Some((false, f)) => flags &= !f,
            None => data.push(o.as_str()),
        }
    }
    if m.kind == "bind" {
        flags |= MsFlags::MS_BIND;
    }
    let data = data.join(",");
    let bind = flags.contains(MsFlags::MS_BIND);
    let (fstype, first) = if bind {
        // A bind mount ignores `ro` until remounted.
        (None, flags & !MsFlags::MS_RDONLY)
    } else {
        (Some(m.kind.as_str()), flags)
    };
    nix::mount::mount(
        Some(m.source.as_str()),
        target,
        fstype,
        first,
        if data.is_empty() {
            None
        } else {
            Some(data.as_str())
        },
    )
    .map_err(std::io::Error::from)?;
    if bind && flags.contains(MsFlags::MS_RDONLY) {
        nix::mount::mount(
            None::<&str>,
            target,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            None::<&str>,
        )
        .map_err(std::io::Error::from)?;
    }
    Ok(())
}

/// The same mounts, read-only: overlays lose their upper directory (which becomes
/// the top lower one), binds get `ro`.
pub fn readonly(mounts: &[Mount]) -> Vec<Mount> {
    mounts
        .iter()
        .map(|m| {
            let mut m = m.clone();
            if m.kind == "overlay" {
                let upper = m
                    .options
                    .iter()
                    .find_map(|o| o.strip_prefix("upperdir=").map(str::to_string));
                let mut opts: Vec<String> = m
                    .options
                    .iter()
                    .filter(|o| !o.starts_with("upperdir=") && !o.starts_with("workdir="))
                    .cloned()
                    .collect();
                if let Some(u) = upper {
                    for o in opts.iter_mut() {
                        if let Some(l) = o.strip_prefix("lowerdir=") {
                            *o = format!("lowerdir={u}:{l}");
                        }
                    }
                }
                m.options = opts;
            } else {
                m.options.retain(|o| o != "rw");
                m.options.push("ro".into());
            }
            m
        })
        .collect()
}

/// Mounts on a fresh temporary directory, unmounted and removed on drop.
pub struct TempMount {
    pub dir: tempfile::TempDir,
    mounted: usize,
}

impl TempMount {
    pub fn new(mounts: &[Mount], under: &Path) -> std::io::Result<TempMount> {
        std::fs::create_dir_all(under)?;
        let dir = tempfile::Builder::new()
            .prefix("mount-")
            .tempdir_in(under)?;
        let mut t = TempMount { dir, mounted: 0 };
        for m in mounts {
            mount(m, t.dir.path())?;
            t.mounted += 1;
        }
        Ok(t)
    }

    pub fn path(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }
}

impl Drop for TempMount {
    fn drop(&mut self) {
        for _ in 0..self.mounted {
            if let Err(e) = nix::mount::umount2(self.dir.path(), MntFlags::empty()) {
                tracing::warn!(path = %self.dir.path().display(), error = %e, "unmounting");
                let _ = nix::mount::umount2(self.dir.path(), MntFlags::MNT_DETACH);
            }
        }
    }
}
