//! Handing a container's root filesystem to its microVM as a block device.
//!
//! containerd passes the snapshot as mounts. A single mount of a filesystem image
//! (`ext4`, `erofs`, … over a file or block device, as block snapshotters give) is handed
//! over as it is. Anything else (overlay from the default overlayfs snapshotter, bind
//! mounts, or a plain `rootfs/` directory in the bundle) is mounted on `bundle/rootfs`
//! and copied into a fresh sparse ext4 image with `mkfs.ext4 -d`; this copy is the
//! per-container cost of the default snapshotter.

pub mod erofs;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

use ember_sandbox::{Pool, Region};
use ember_shim_api::Mount;

/// Filesystem types handed to the guest without a copy.
const BLOCK_FS: &[&str] = &["ext4", "ext3", "ext2", "erofs", "xfs", "squashfs"];

#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error("mounting {what} on {target}: {source}")]
    Mount {
        what: String,
        target: PathBuf,
        source: nix::Error,
    },
    #[error("the container has no root filesystem: no mounts and no {0}")]
    Missing(PathBuf),
    #[error("building the rootfs image: {0}")]
    Image(String),
    #[error(transparent)]
    Pool(#[from] ember_sandbox::PoolError),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// The block device a container's rootfs travels on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockRootfs {
    pub image: PathBuf,
    pub fstype: String,
    pub read_only: bool,
    /// Whether `image` was made for this container (and is deleted with it).
    pub owned: bool,
    /// Time spent building the image (zero when handed over as is).
    pub build_time: Duration,
}

/// Prepares the block device for `mounts`; `scratch` is where a built image goes.
pub fn prepare(
    mounts: &[Mount],
    bundle: &Path,
    scratch: &Path,
) -> Result<BlockRootfs, RootfsError> {
    if let [m] = mounts {
        if BLOCK_FS.contains(&m.r#type.as_str()) {
            let ro = m.options.iter().any(|o| o == "ro");
            return Ok(BlockRootfs {
                image: PathBuf::from(&m.source),
                fstype: m.r#type.clone(),
                read_only: ro,
                owned: false,
                build_time: Duration::ZERO,
            });
        }
    }
    let started = Instant::now();
    let image = with_tree(mounts, bundle, |tree| {
        let image = scratch.join("rootfs.ext4");
        make_ext4(tree, &image)?;
        Ok(image)
    })?;
    Ok(BlockRootfs {
        image,
        fstype: "ext4".into(),
        read_only: false,
        owned: true,
        build_time: started.elapsed(),
    })
}

/// A container's root filesystem written into a region of a VM's pool drive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PooledRootfs {
    pub region: Region,
    pub fstype: String,
    pub read_only: bool,
    pub build_time: Duration,
}

/// Writes the rootfs of `mounts` into a fresh region of `pool`: a filesystem image
/// is copied in (holes stay holes), anything else is made into ext4 straight in the
/// region. On failure the region is given back.
pub fn place_in_pool(
    mounts: &[Mount],
    bundle: &Path,
    pool: &Pool,
) -> Result<PooledRootfs, RootfsError> {
    let started = Instant::now();
    if let [m] = mounts {
        if BLOCK_FS.contains(&m.r#type.as_str()) {
            let len = image_len(Path::new(&m.source))?;
            let region = pool.allocate(len)?;
            if let Err(e) = pool.copy_image(region, Path::new(&m.source)) {
                let _ = pool.release(region);
                return Err(e.into());
            }
            return Ok(PooledRootfs {
                region,
                fstype: m.r#type.clone(),
                read_only: m.options.iter().any(|o| o == "ro"),
                build_time: started.elapsed(),
            });
        }
    }
    let region = with_tree(mounts, bundle, |tree| {
        let region = pool.allocate(image_size_mib(tree) << 20)?;
        if let Err(e) = pool.mkfs_ext4(region, tree) {
            let _ = pool.release(region);
            return Err(e.into());
        }
        Ok(region)
    })?;
    Ok(PooledRootfs {
        region,
        fstype: "ext4".into(),
        read_only: false,
        build_time: started.elapsed(),
    })
}

/// The size of an image file or block device.
fn image_len(p: &Path) -> Result<u64, RootfsError> {
    use std::io::Seek;
    let mut f = std::fs::File::open(p)?;
    Ok(f.seek(std::io::SeekFrom::End(0))?)
}

/// Mounts `mounts` on `bundle/rootfs` (or takes the directory as it is when there
/// are none), runs `f` on the tree, unmounts.
fn with_tree<T>(
    mounts: &[Mount],
    bundle: &Path,
    f: impl FnOnce(&Path) -> Result<T, RootfsError>,
) -> Result<T, RootfsError> {
    let target = bundle.join("rootfs");
    std::fs::create_dir_all(&target)?;
    let mut mounted = 0;
    let result = (|| {
        if mounts.is_empty() && !has_entries(&target) {
            return Err(RootfsError::Missing(target.clone()));
        }
        for m in mounts {
            mount_one(m, &target)?;
            mounted += 1;
        }
        f(&target)
    })();
    for _ in 0..mounted {
        let _ = umount2(&target, MntFlags::MNT_DETACH);
    }
    result
}

fn has_entries(dir: &Path) -> bool {
    std::fs::read_dir(dir)
        .map(|mut d| d.next().is_some())
        .unwrap_or(false)
}

/// Splits mount(8)-style options into flags and the data string.
pub fn parse_options(options: &[String]) -> (MsFlags, String) {
    let mut flags = MsFlags::empty();
    let mut data = Vec::new();
    for o in options {
        let (set, clear) = match o.as_str() {
            "ro" => (MsFlags::MS_RDONLY, MsFlags::empty()),
            "rw" => (MsFlags::empty(), MsFlags::MS_RDONLY),
            "bind" => (MsFlags::MS_BIND, MsFlags::empty()),
            "rbind" => (MsFlags::MS_BIND | MsFlags::MS_REC, MsFlags::empty()),
            "nosuid" => (MsFlags::MS_NOSUID, MsFlags::empty()),
            "nodev" => (MsFlags::MS_NODEV, MsFlags::empty()),
            "noexec" => (MsFlags::MS_NOEXEC, MsFlags::empty()),
            "noatime" => (MsFlags::MS_NOATIME, MsFlags::empty()),
            "relatime" => (MsFlags::MS_RELATIME, MsFlags::empty()),
            "suid" | "dev" | "exec" | "defaults" | "atime" => continue,
            _ => {
                data.push(o.as_str());
                continue;
            }
        };
        flags.insert(set);
        flags.remove(clear);
    }
    (flags, data.join(","))
}

fn mount_one(m: &Mount, target: &Path) -> Result<(), RootfsError> {
    let (flags, data) = parse_options(&m.options);
    let fstype = if flags.contains(MsFlags::MS_BIND) {
        None
    } else {
        Some(m.r#type.as_str())
    };
    let data = (!data.is_empty()).then_some(data.as_str());
    mount(Some(m.source.as_str()), target, fstype, flags, data).map_err(|e| RootfsError::Mount {
        what: format!("{} ({})", m.source, m.r#type),
        target: target.to_path_buf(),
        source: e,
    })
}

/// Bytes used by a tree (regular files, rounded to 4 KiB blocks, plus inodes).
fn tree_size(dir: &Path) -> u64 {
    let mut total = 0u64;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let Ok(md) = e.path().symlink_metadata() else {
                continue;
            };
            total += 256;
            if md.is_dir() {
                stack.push(e.path());
            } else if md.is_file() {
                total += md.len().div_ceil(4096) * 4096;
            }
        }
    }
    total
}

/// The size of an ext4 image for the tree at `dir`: what it holds and a quarter
/// more, plus 1 GiB for the container's own writes (sparse: free until used).
fn image_size_mib(dir: &Path) -> u64 {
    let used = tree_size(dir);
    (used + used / 4) / (1 << 20) + 1024
}

fn make_ext4(dir: &Path, image: &Path) -> Result<(), RootfsError> {
    // Sparse: room for the container's own writes costs nothing until used.
    let size_mib = image_size_mib(dir);
    let _ = std::fs::remove_file(image);
    let out = std::process::Command::new("mkfs.ext4")
        .args([
            "-q",
            "-F",
            "-E",
            "root_owner=0:0,lazy_itable_init=1",
            "-O",
            "^has_journal",
            "-d",
        ])
        .arg(dir)
        .arg(image)
        .arg(format!("{size_mib}M"))
        .output()
        .map_err(|e| RootfsError::Image(format!("mkfs.ext4: {e} (apt-get install e2fsprogs)")))?;
    if !out.status.success() {
        return Err(RootfsError::Image(format!(
            "mkfs.ext4 failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_split_into_flags_and_data() {
        let (f, d) = parse_options(&[
            "ro".into(),
            "nosuid".into(),
            "lowerdir=/a:/b".into(),
            "upperdir=/u".into(),
        ]);
        assert!(f.contains(MsFlags::MS_RDONLY | MsFlags::MS_NOSUID));
        assert_eq!(d, "lowerdir=/a:/b,upperdir=/u");
        let (f, _) = parse_options(&["rbind".into(), "rw".into()]);
        assert!(f.contains(MsFlags::MS_BIND | MsFlags::MS_REC));
        assert!(!f.contains(MsFlags::MS_RDONLY));
    }

    #[test]
    fn block_images_are_handed_over_without_copy() {
        let m = Mount {
            r#type: "ext4".into(),
            source: "/var/lib/x/snap.img".into(),
            target: String::new(),
            options: vec!["ro".into()],
        };
        let r = prepare(&[m], Path::new("/nonexistent"), Path::new("/nonexistent")).unwrap();
        assert_eq!(r.image, PathBuf::from("/var/lib/x/snap.img"));
        assert!(r.read_only && !r.owned);
    }

    #[test]
    fn bundle_directory_is_copied_into_an_image() {
        if nix::unistd::geteuid().as_raw() != 0 {
            return;
        }
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("rootfs/etc")).unwrap();
        std::fs::write(d.path().join("rootfs/etc/hostname"), "x\n").unwrap();
        let r = prepare(&[], d.path(), d.path()).unwrap();
        assert!(r.owned);
        assert_eq!(r.fstype, "ext4");
        assert!(r.image.is_file());
        let empty = tempfile::tempdir().unwrap();
        assert!(matches!(
            prepare(&[], empty.path(), empty.path()),
            Err(RootfsError::Missing(_))
        ));
    }

    #[test]
    fn rootfs_trees_and_images_go_into_pool_regions() {
        if nix::unistd::geteuid().as_raw() != 0 {
            return;
        }
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("rootfs/etc")).unwrap();
        std::fs::write(d.path().join("rootfs/etc/hostname"), "x\n").unwrap();
        let pool = Pool::create(&d.path().join("pool")).unwrap();
        let a = place_in_pool(&[], d.path(), &pool).unwrap();
        assert_eq!((a.fstype.as_str(), a.read_only), ("ext4", false));
        assert!(a.region.length >= 1 << 30, "{:?}", a.region);
        let image = prepare(&[], d.path(), d.path()).unwrap();
        let m = Mount {
            r#type: "ext4".into(),
            source: image.image.display().to_string(),
            target: String::new(),
            options: vec!["ro".into()],
        };
        let b = place_in_pool(&[m], d.path(), &pool).unwrap();
        assert!(b.read_only);
        assert_eq!(b.region.offset, a.region.offset + a.region.length);
        let missing = Mount {
            r#type: "ext4".into(),
            source: d.path().join("none.img").display().to_string(),
            target: String::new(),
            options: vec![],
        };
        assert!(place_in_pool(&[missing], d.path(), &pool).is_err());
        assert_eq!(pool.allocated(), b.region.offset + b.region.length);
    }
}
