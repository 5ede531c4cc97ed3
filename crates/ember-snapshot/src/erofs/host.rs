//! The host side of the `erofs` snapshotter's images: loop mounts of layers and
//! writable images, and making a writable image.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

use crate::{Error, Result};

/// Whether something is mounted on `dir` (it lies on another device than its
/// parent directory).
pub fn is_mounted(dir: &Path) -> bool {
    let (Ok(md), Some(parent)) = (std::fs::symlink_metadata(dir), dir.parent()) else {
        return false;
    };
    match std::fs::symlink_metadata(parent) {
        Ok(p) => p.dev() != md.dev(),
        Err(_) => false,
    }
}

fn run_mount(args: &[&str], image: &Path, target: &Path) -> std::result::Result<(), String> {
    let out = Command::new("mount")
        .args(args)
        .arg(image)
        .arg(target)
        .output()
        .map_err(|e| format!("running mount: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

/// Mounts the EROFS image `image` read-only on `target` (a loop device that goes
/// away with the mount), unless it is mounted already.
pub fn mount_layer(image: &Path, target: &Path) -> Result<()> {
    if is_mounted(target) {
        return Ok(());
    }
    std::fs::create_dir_all(target)?;
    run_mount(&["-t", "erofs", "-o", "ro,loop"], image, target).map_err(|e| {
        Error::Internal(format!(
            "the EROFS layer {} cannot be mounted (corrupt or not an EROFS image?): {e}",
            image.display()
        ))
    })
}

/// Mounts the ext4 image `image` read-write on `target`, unless it is mounted.
/// `noinit_itable`: the image stays sparse (no background zeroing of inode tables).
pub fn mount_upper(image: &Path, target: &Path) -> Result<()> {
    if is_mounted(target) {
        return Ok(());
    }
    std::fs::create_dir_all(target)?;
    run_mount(
        &["-t", "ext4", "-o", "rw,loop,noinit_itable"],
        image,
        target,
    )
    .map_err(|e| {
        Error::Internal(format!(
            "the writable image {} cannot be mounted: {e}",
            image.display()
        ))
    })
}

/// Unmounts `target` (not lazily) when mounted; a busy mount is
/// `FailedPrecondition` naming `what`.
pub fn unmount(target: &Path, what: &str) -> Result<()> {
    match super::claim::unmount_if_mounted(target) {
        Ok(_) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => Err(Error::FailedPrecondition(format!(
            "{what}: {} is in use on the host",
            target.display()
        ))),
        Err(e) => Err(Error::internal(
            &format!("unmounting {}", target.display()),
            e,
        )),
    }
}

/// Makes a sparse ext4 image of `size` bytes at `image` holding empty `upper/` and
/// `work/` directories (staged in `stage`, removed afterwards).
pub fn make_upper_image(image: &Path, size: u64, stage: &Path) -> Result<()> {
    std::fs::create_dir_all(stage.join("upper"))?;
    std::fs::create_dir_all(stage.join("work"))?;
    let f = std::fs::File::create(image)?;
    f.set_len(size)?;
    drop(f);
    let out = Command::new("mkfs.ext4")
        .args([
            "-q",
            "-F",
            "-m",
            "0",
            "-E",
            "lazy_itable_init=1,lazy_journal_init=1,root_owner=0:0",
            "-d",
        ])
        .arg(stage)
        .arg(image)
        .output()
        .map_err(|e| Error::internal("running mkfs.ext4", e))?;
    let _ = std::fs::remove_dir_all(stage);
    if !out.status.success() {
        return Err(Error::Internal(format!(
            "mkfs.ext4 {}: {}",
            image.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// Allocated bytes of a file (0 when it is absent).
pub fn allocated(path: &Path) -> i64 {
    std::fs::metadata(path)
        .map(|m| (m.blocks() * 512) as i64)
        .unwrap_or(0)
}

/// A size such as `64G`, `512M`, `1073741824`.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        None => (s, 1u64),
        Some((i, _)) => {
            let unit = s[i..].trim_end_matches(['B', 'b', 'i']);
            let mult = match unit.to_ascii_uppercase().as_str() {
                "K" => 1 << 10,
                "M" => 1 << 20,
                "G" => 1 << 30,
                "T" => 1 << 40,
                "" => 1,
                _ => return None,
            };
            (&s[..i], mult)
        }
    };
    num.parse::<u64>().ok()?.checked_mul(mult)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64G"), Some(64 << 30));
        assert_eq!(parse_size("512MiB"), Some(512 << 20));
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("x"), None);
        assert_eq!(parse_size("1Q"), None);
    }
}
