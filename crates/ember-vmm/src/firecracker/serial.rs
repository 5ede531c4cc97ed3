//! The serial under which Firecracker shows a disk to the guest.

use std::path::Path;

/// The virtio-blk serial Firecracker gives a disk: the decimal device number, special
/// device number and inode number of its backing file, run together and cut to the
/// 20 bytes a virtio-blk id holds.
pub fn disk_serial(path: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    let mut id = format!("{}{}{}", m.dev(), m.rdev(), m.ino());
    id.truncate(20);
    Some(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serial_follows_the_backing_file() {
        use std::os::unix::fs::MetadataExt;
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("disk");
        std::fs::write(&p, b"x").unwrap();
        let m = std::fs::metadata(&p).unwrap();
        let s = disk_serial(&p).unwrap();
        assert!(s.len() <= 20);
        assert!(format!("{}{}{}", m.dev(), m.rdev(), m.ino()).starts_with(&s));
        assert!(disk_serial(&d.path().join("none")).is_none());
    }
}
