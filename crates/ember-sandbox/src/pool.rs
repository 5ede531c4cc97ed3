//! The pool drive: one sparse file per VM, attached at boot as the virtio-blk drive
//! [`POOL_DRIVE`], from which every container added later gets a region.
//!
//! Regions are 1 MiB aligned and handed out by a bump allocator that never reuses an
//! offset within one VM, so the guest's page cache can never answer for a region
//! with blocks of an earlier one. A released region is hole-punched on the host,
//! which gives its space back. The host fills a region either by copying a
//! filesystem image into it (holes stay holes) or by running `mkfs.ext4` straight
//! into it (`-E offset=`).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use ember_vmm::Drive;

/// Drive id (virtio-blk serial on QEMU) of the pool drive.
pub const POOL_DRIVE: &str = "pool";
/// Apparent size of a pool file (8 TiB); it costs only what regions hold, and with
/// about 1 GiB of room per container it lasts a VM some 8000 containers.
pub const POOL_SIZE: u64 = 8 << 40;
/// Alignment and granularity of regions.
pub const REGION_ALIGN: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("the pool drive is full: {wanted} bytes asked, {left} left")]
    Full { wanted: u64, left: u64 },
    #[error("an empty region was asked for")]
    Empty,
    #[error("{what} ({len} bytes) does not fit a region of {length} bytes")]
    TooBig { what: String, len: u64, length: u64 },
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    #[error("mkfs.ext4 into the pool failed: {0}")]
    Mkfs(String),
}

/// A byte range of the pool drive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Region {
    pub offset: u64,
    pub length: u64,
}

/// A VM's pool file and its allocator.
#[derive(Debug)]
pub struct Pool {
    path: PathBuf,
    file: File,
    size: u64,
    next: Mutex<u64>,
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> PoolError {
    let what = what.into();
    move |e| PoolError::Io(what, e)
}

impl Pool {
    /// Creates (or empties) the pool file at `path` with the default size.
    pub fn create(path: &Path) -> Result<Pool, PoolError> {
        Self::create_sized(path, POOL_SIZE)
    }

    /// Creates (or empties) a pool file of `size` bytes.
    pub fn create_sized(path: &Path, size: u64) -> Result<Pool, PoolError> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(path)
            .map_err(io(format!("creating {}", path.display())))?;
        file.set_len(size)
            .map_err(io(format!("sizing {}", path.display())))?;
        Ok(Pool {
            path: path.to_path_buf(),
            file,
            size,
            // The first MiB stays empty: nothing in the guest mistakes the pool for a
            // partitioned or formatted disk.
            next: Mutex::new(REGION_ALIGN),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The drive to attach at boot.
    pub fn drive(&self) -> Drive {
        Drive {
            id: POOL_DRIVE.into(),
            path: self.path.clone(),
            read_only: false,
        }
    }

    /// Bytes handed out so far (including the reserved first MiB).
    pub fn allocated(&self) -> u64 {
        *self.next.lock().unwrap()
    }

    /// A fresh region of at least `length` bytes (rounded up to 1 MiB).
    pub fn allocate(&self, length: u64) -> Result<Region, PoolError> {
        if length == 0 {
            return Err(PoolError::Empty);
        }
        let length = length.div_ceil(REGION_ALIGN) * REGION_ALIGN;
        let mut next = self.next.lock().unwrap();
        let left = self.size - *next;
        if length > left {
            return Err(PoolError::Full {
                wanted: length,
                left,
            });
        }
        let r = Region {
            offset: *next,
            length,
        };
        *next += length;
        Ok(r)
    }

    /// Copies the image file at `image` into `region`, leaving its holes as holes.
    pub fn copy_image(&self, region: Region, image: &Path) -> Result<(), PoolError> {
        let src = File::open(image).map_err(io(format!("opening {}", image.display())))?;
        let len = src
            .metadata()
            .map_err(io(format!("reading {}", image.display())))?
            .len();
        if len > region.length {
            return Err(PoolError::TooBig {
                what: image.display().to_string(),
                len,
                length: region.length,
            });
        }
        let what = format!("copying {} into the pool", image.display());
        let mut buf = vec![0u8; 1 << 20];
        let mut pos = 0u64;
        while pos < len {
            let Some((start, end)) = data_extent(&src, pos, len).map_err(io(what.clone()))? else {
                break;
            };
            let mut at = start;
            while at < end {
                let n = ((end - at) as usize).min(buf.len());
                let got = src.read_at(&mut buf[..n], at).map_err(io(what.clone()))?;
                if got == 0 {
                    break;
                }
                let chunk = &buf[..got];
                // Blocks of zeros inside data extents stay holes too.
                if chunk.iter().any(|b| *b != 0) {
                    self.file
                        .write_all_at(chunk, region.offset + at)
                        .map_err(io(what.clone()))?;
                }
                at += got as u64;
            }
            pos = end;
        }
        Ok(())
    }

    /// Makes an ext4 filesystem of the region's size in `region`, filled from `dir`.
    pub fn mkfs_ext4(&self, region: Region, dir: &Path) -> Result<(), PoolError> {
        let out = std::process::Command::new("mkfs.ext4")
            .args(["-q", "-F", "-F", "-O", "^has_journal", "-E"])
            .arg(format!(
                "offset={},nodiscard,root_owner=0:0,lazy_itable_init=1",
                region.offset
            ))
            .arg("-d")
            .arg(dir)
            .arg(&self.path)
            .arg(format!("{}k", region.length / 1024))
            .output()
            .map_err(|e| PoolError::Mkfs(format!("{e} (apt-get install e2fsprogs)")))?;
        if !out.status.success() {
            return Err(PoolError::Mkfs(
                String::from_utf8_lossy(&out.stderr).trim().to_string(),
            ));
        }
        Ok(())
    }

    /// Gives a region's space back to the host. Its offsets are never handed out again.
    pub fn release(&self, region: Region) -> Result<(), PoolError> {
        punch_hole(&self.file, region.offset, region.length)
            .map_err(io(format!("punching {region:?} out of the pool")))
    }
}

/// Deallocates `[offset, offset+length)` of `file`, keeping its size.
pub fn punch_hole(file: &File, offset: u64, length: u64) -> std::io::Result<()> {
    nix::fcntl::fallocate(
        file,
        nix::fcntl::FallocateFlags::FALLOC_FL_PUNCH_HOLE
            | nix::fcntl::FallocateFlags::FALLOC_FL_KEEP_SIZE,
        offset as i64,
        length as i64,
    )
    .map_err(std::io::Error::from)
}

/// The next data extent of `f` at or after `pos`, as [start, end), within `len`.
fn data_extent(f: &File, pos: u64, len: u64) -> std::io::Result<Option<(u64, u64)>> {
    use nix::unistd::{lseek, Whence};
    let start = match lseek(f, pos as i64, Whence::SeekData) {
        Ok(s) => s as u64,
        Err(nix::errno::Errno::ENXIO) => return Ok(None),
        // Filesystems without SEEK_DATA: everything is data.
        Err(nix::errno::Errno::EINVAL) => return Ok(Some((pos, len))),
        Err(e) => return Err(e.into()),
    };
    let end = match lseek(f, start as i64, Whence::SeekHole) {
        Ok(e) => (e as u64).min(len),
        Err(_) => len,
    };
    Ok(Some((start, end)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn allocated_bytes(p: &Path) -> u64 {
        std::fs::metadata(p).unwrap().blocks() * 512
    }

    #[test]
    fn regions_are_aligned_and_never_reused() {
        let d = tempfile::tempdir().unwrap();
        let pool = Pool::create_sized(&d.path().join("pool"), 8 << 20).unwrap();
        let a = pool.allocate(1).unwrap();
        let b = pool.allocate(REGION_ALIGN + 1).unwrap();
        assert_eq!(
            a,
            Region {
                offset: 1 << 20,
                length: 1 << 20
            }
        );
        assert_eq!(
            b,
            Region {
                offset: 2 << 20,
                length: 2 << 20
            }
        );
        pool.release(a).unwrap();
        let c = pool.allocate(1).unwrap();
        assert_eq!(c.offset, 4 << 20, "a released region was handed out again");
        assert!(matches!(
            pool.allocate(4 << 20),
            Err(PoolError::Full { .. })
        ));
        assert!(matches!(pool.allocate(0), Err(PoolError::Empty)));
        assert_eq!(pool.allocate(3 << 20).unwrap().offset, 5 << 20);
    }

    #[test]
    fn copies_keep_holes_and_release_punches() {
        let d = tempfile::tempdir().unwrap();
        let img = d.path().join("img");
        let f = File::create(&img).unwrap();
        f.set_len(64 << 20).unwrap();
        f.write_all_at(b"head", 0).unwrap();
        f.write_all_at(b"tail", (64 << 20) - 4).unwrap();
        drop(f);
        let pool = Pool::create(&d.path().join("pool")).unwrap();
        assert_eq!(std::fs::metadata(pool.path()).unwrap().len(), POOL_SIZE);
        let r = pool.allocate(64 << 20).unwrap();
        pool.copy_image(r, &img).unwrap();
        let mut b = [0u8; 4];
        pool.file.read_exact_at(&mut b, r.offset).unwrap();
        assert_eq!(&b, b"head");
        pool.file
            .read_exact_at(&mut b, r.offset + (64 << 20) - 4)
            .unwrap();
        assert_eq!(&b, b"tail");
        let used = allocated_bytes(pool.path());
        assert!(used < 1 << 20, "the copy filled holes: {used} bytes");
        pool.release(r).unwrap();
        assert_eq!(allocated_bytes(pool.path()), 0);
        let small = pool.allocate(1).unwrap();
        assert!(matches!(
            pool.copy_image(small, &img),
            Err(PoolError::TooBig { .. })
        ));
    }

    #[test]
    fn mkfs_writes_only_inside_its_region() {
        if std::process::Command::new("mkfs.ext4")
            .arg("-V")
            .output()
            .is_err()
        {
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let tree = d.path().join("tree");
        std::fs::create_dir_all(tree.join("etc")).unwrap();
        std::fs::write(tree.join("etc/hostname"), "x\n").unwrap();
        let pool = Pool::create(&d.path().join("pool")).unwrap();
        let r = pool.allocate(32 << 20).unwrap();
        pool.mkfs_ext4(r, &tree).unwrap();
        // The ext4 magic sits at byte 1080 of the filesystem.
        let mut magic = [0u8; 2];
        pool.file
            .read_exact_at(&mut magic, r.offset + 1080)
            .unwrap();
        assert_eq!(magic, [0x53, 0xef]);
        let first = data_extent(&pool.file, 0, POOL_SIZE).unwrap().unwrap();
        assert!(first.0 >= r.offset, "data before the region: {first:?}");
        let after = data_extent(&pool.file, r.offset + r.length, POOL_SIZE).unwrap();
        assert_eq!(after, None, "data after the region");
    }
}
