//! Disk usage of a directory tree, counted the way `du` does: allocated blocks, and
//! every inode once even when it has several links.

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::Usage;

pub fn disk_usage(root: &Path) -> std::io::Result<Usage> {
    let mut seen = HashSet::new();
    let mut usage = Usage::default();
    let mut stack = vec![root.to_path_buf()];
    while let Some(path) = stack.pop() {
        let md = match std::fs::symlink_metadata(&path) {
            Ok(md) => md,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        if seen.insert((md.dev(), md.ino())) {
            usage.inodes += 1;
            usage.size += (md.blocks() * 512) as i64;
        }
        if md.is_dir() {
            for entry in std::fs::read_dir(&path)? {
                stack.push(entry?.path());
            }
        }
    }
    Ok(usage)
}
