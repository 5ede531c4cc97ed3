//! The `erofs` snapshotter plugin (`io.containerd.snapshotter.v1.erofs`):
//!
//! ```toml
//! [plugins."io.containerd.snapshotter.v1.erofs"]
//! root_path = "/var/lib/emberd/io.containerd.snapshotter.v1.erofs"  # default
//! default_size = "64G"   # writable image size of an active snapshot (or bytes)
//! ```
//!
//! Skipped (like overlayfs on a host without it) when no `mkfs.erofs` is installed.

use std::path::PathBuf;
use std::sync::Arc;

use ember_snapshot::erofs::{parse_size, ErofsConfig, ErofsSnapshotter, DEFAULT_SIZE};
use serde::Deserialize;

use crate::config::plugin_section;
use crate::daemon::SnapshotterPlugin;
use crate::plugin::{InitError, Instance, Registration, SNAPSHOTTER};

#[derive(Deserialize)]
#[serde(untagged)]
enum Size {
    Bytes(u64),
    Text(String),
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Config {
    root_path: String,
    default_size: Option<Size>,
}

pub fn registration() -> Registration {
    Registration::new(SNAPSHOTTER, "erofs", &[], |ctx| {
        let cfg: Config = plugin_section(ctx.section)?;
        let root = if cfg.root_path.is_empty() {
            ctx.root.clone()
        } else {
            PathBuf::from(cfg.root_path)
        };
        let default_size = match cfg.default_size {
            None => DEFAULT_SIZE,
            Some(Size::Bytes(b)) => b,
            Some(Size::Text(t)) => parse_size(&t).ok_or_else(|| {
                InitError::Failed(format!("default_size {t:?} is not a size (e.g. 64G)"))
            })?,
        };
        if default_size < 1 << 20 {
            return Err(InitError::Failed(format!(
                "default_size {default_size} is below 1M"
            )));
        }
        let s =
            ErofsSnapshotter::open(&root, ErofsConfig { default_size }).map_err(|e| match e {
                ember_snapshot::Error::FailedPrecondition(m) => InitError::Skip(m),
                e => InitError::Failed(e.to_string()),
            })?;
        ctx.exports
            .insert("root".into(), root.display().to_string());
        Ok(Arc::new(SnapshotterPlugin(Arc::new(s))) as Instance)
    })
}
