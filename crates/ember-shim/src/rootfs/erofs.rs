//! EROFS snapshots handed to the VM as they are: each layer image a read-only
//! drive (or a file in the VM's shared directory), the snapshot's writable ext4
//! image a read-write one; the agent assembles the overlay in the guest.
//!
//! The erofs snapshotter describes an active snapshot as one host overlay mount:
//! `lowerdir=<root>/snapshots/<L>/fs:…` (topmost first), `upperdir=<root>/snapshots/
//! <id>/rw/upper`, `workdir=…/rw/work`. A lowerdir `<X>/fs` with a sibling
//! `<X>/layer.erofs` is an EROFS layer; an upperdir `<Y>/rw/upper` with a sibling
//! `<Y>/rw.ext4` is the writable image (holding `upper/` and `work/`), which the
//! snapshotter mounts at `<Y>/rw` until a runtime claims it ([`claim_upper`]).
//! containerd 2.2's list shape is understood too: `erofs` mounts of the layer
//! images, an `ext4` mount of the writable image, and a last (`format/mkdir/`)
//! `overlay` mount naming them by `{{ mount N }}`.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use nix::mount::{umount2, MntFlags};
use sha2::{Digest, Sha256};

use ember_shim_api::Mount;

/// Name of a layer's image beside its `fs` directory.
pub const LAYER_IMAGE: &str = "layer.erofs";
/// Name of the writable image beside its `rw` directory.
pub const UPPER_IMAGE: &str = "rw.ext4";

/// A snapshot made of EROFS layers and, when writable, an ext4 upper image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layered {
    /// Layer images, topmost first.
    pub layers: Vec<PathBuf>,
    pub upper: Option<Upper>,
}

/// The writable image of a snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upper {
    /// `<Y>/rw.ext4`.
    pub image: PathBuf,
    /// `<Y>/rw`, where the snapshotter mounts the image on the host (None in
    /// containerd 2.2's list shape, where nothing is mounted).
    pub host_mount: Option<PathBuf>,
}

impl Upper {
    /// The lock file whose exclusive `flock` claims the image.
    pub fn lock_path(&self) -> PathBuf {
        let mut s = self.image.clone().into_os_string();
        s.push(".lock");
        PathBuf::from(s)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    #[error("the writable layer {image} is in use: {why}")]
    InUse { image: PathBuf, why: String },
    #[error("claiming the writable layer {image}: {source}")]
    Io {
        image: PathBuf,
        source: std::io::Error,
    },
}

/// The claim on a writable image: held (an exclusive `flock` on its lock file)
/// until dropped. A shim killed with -9 loses it with its VM.
#[derive(Debug)]
pub struct UpperClaim {
    pub image: PathBuf,
    _lock: Flock<File>,
}

/// Recognises the mounts of an EROFS snapshot; None for anything else (the copy
/// path handles it).
pub fn describe(mounts: &[Mount]) -> Option<Layered> {
    match mounts {
        [m] if is_overlay(&m.r#type) => describe_overlay(m),
        [.., last] if mounts.len() > 1 && is_overlay(&last.r#type) => describe_list(mounts),
        _ => None,
    }
}

fn is_overlay(t: &str) -> bool {
    // A transform chain ends in its mount type: `format/mkdir/overlay`.
    t == "overlay" || t.ends_with("/overlay")
}

fn option<'a>(m: &'a Mount, key: &str) -> Option<&'a str> {
    m.options
        .iter()
        .find_map(|o| o.strip_prefix(key).and_then(|rest| rest.strip_prefix('=')))
}

/// The snapshotter's single overlay mount.
fn describe_overlay(m: &Mount) -> Option<Layered> {
    let lower = option(m, "lowerdir")?;
    let mut layers = Vec::new();
    for dir in lower.split(':') {
        let dir = Path::new(dir);
        if dir.file_name()? != "fs" {
            return None;
        }
        let image = dir.parent()?.join(LAYER_IMAGE);
        if !image.is_file() {
            return None;
        }
        layers.push(image);
    }
    let upper = match option(m, "upperdir") {
        None => None,
        Some(u) => {
            let u = Path::new(u);
            let rw = u.parent()?;
            if u.file_name()? != "upper" || rw.file_name()? != "rw" {
                return None;
            }
            let image = rw.parent()?.join(UPPER_IMAGE);
            if !image.is_file() {
                return None;
            }
            Some(Upper {
                image,
                host_mount: Some(rw.to_path_buf()),
            })
        }
    };
    Some(Layered { layers, upper })
}

/// The index `N` of `{{ mount N }}` (spaces optional), with what follows it.
fn mount_ref(s: &str) -> Option<(usize, &str)> {
    let inner = s.strip_prefix("{{")?;
    let (inner, rest) = inner.split_once("}}")?;
    let n = inner.trim().strip_prefix("mount")?.trim().parse().ok()?;
    Some((n, rest))
}

/// containerd 2.2's list: image mounts first, then the overlay over them.
fn describe_list(mounts: &[Mount]) -> Option<Layered> {
    let (overlay, images) = mounts.split_last()?;
    let source = |n: usize, fstype: &str| {
        let m = images.get(n)?;
        (m.r#type == fstype).then(|| PathBuf::from(&m.source))
    };
    let mut layers = Vec::new();
    for part in option(overlay, "lowerdir")?.split(':') {
        let (n, rest) = mount_ref(part)?;
        if !rest.is_empty() {
            return None;
        }
        layers.push(source(n, "erofs")?);
    }
    let upper = match option(overlay, "upperdir") {
        None => None,
        Some(u) => {
            let (n, rest) = mount_ref(u)?;
            if rest != "/upper" {
                return None;
            }
            Some(Upper {
                image: source(n, "ext4")?,
                host_mount: None,
            })
        }
    };
    Some(Layered { layers, upper })
}

/// Claims the writable image for a VM: takes the exclusive lock (retrying until
/// `wait` has passed) and takes the image's host mount down. A mount something
/// on the host still uses fails the claim with "in use on the host".
pub fn claim_upper(u: &Upper, wait: Duration) -> Result<UpperClaim, ClaimError> {
    let io = |source| ClaimError::Io {
        image: u.image.clone(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(u.lock_path())
        .map_err(io)?;
    let deadline = Instant::now() + wait;
    let lock = loop {
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(l) => break l,
            Err((f, Errno::EWOULDBLOCK)) if Instant::now() < deadline => {
                file = f;
                std::thread::sleep(Duration::from_millis(50));
            }
            Err((_, Errno::EWOULDBLOCK)) => {
                return Err(ClaimError::InUse {
                    image: u.image.clone(),
                    why: "another runtime holds its lock".into(),
                })
            }
            Err((_, e)) => return Err(io(e.into())),
        }
    };
    if let Some(dir) = &u.host_mount {
        // Stacked mounts come off one by one; EINVAL: no (more) mount there.
        for _ in 0..8 {
            match umount2(dir, MntFlags::empty()) {
                Ok(()) => continue,
                Err(Errno::EINVAL) | Err(Errno::ENOENT) => break,
                Err(Errno::EBUSY) => {
                    return Err(ClaimError::InUse {
                        image: u.image.clone(),
                        why: format!("in use on the host (mounted at {})", dir.display()),
                    })
                }
                Err(e) => return Err(io(e.into())),
            }
        }
    }
    Ok(UpperClaim {
        image: u.image.clone(),
        _lock: lock,
    })
}

/// The drive id (virtio-blk serial, at most 20 bytes; letters and digits, as
/// Firecracker wants) of a layer image: the same image is the same drive.
pub fn layer_drive_id(image: &Path) -> String {
    let h = Sha256::digest(image.as_os_str().as_encoded_bytes());
    let hex: String = h.iter().take(6).map(|b| format!("{b:02x}")).collect();
    format!("layer{hex}")
}

/// Drive id of the writable image of a VM's first container.
pub const UPPER_DRIVE: &str = "upper";

/// Which distinct layers of `layers` become drives when `slots` drives are free:
/// the first `slots` distinct images (topmost first), the rest go through the
/// shared directory. Returns the drive images and the images left over.
pub fn plan_drives(layers: &[PathBuf], slots: usize) -> (Vec<PathBuf>, Vec<PathBuf>) {
    let mut distinct: Vec<PathBuf> = Vec::new();
    for l in layers {
        if !distinct.contains(l) {
            distinct.push(l.clone());
        }
    }
    let rest = distinct.split_off(slots.min(distinct.len()));
    (distinct, rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mount(t: &str, source: &str, options: &[&str]) -> Mount {
        Mount {
            r#type: t.into(),
            source: source.into(),
            target: String::new(),
            options: options.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// `<root>/snapshots/<n>/` as the snapshotter lays it out.
    fn snapshot(root: &Path, n: &str, layer: bool, rw: bool) -> PathBuf {
        let d = root.join("snapshots").join(n);
        std::fs::create_dir_all(d.join("fs")).unwrap();
        if layer {
            std::fs::write(d.join(LAYER_IMAGE), b"img").unwrap();
        }
        if rw {
            std::fs::create_dir_all(d.join("rw/upper")).unwrap();
            std::fs::write(d.join(UPPER_IMAGE), b"ext4").unwrap();
        }
        d
    }

    #[test]
    fn the_snapshotters_overlay_becomes_layers_and_an_upper() {
        let t = tempfile::tempdir().unwrap();
        let (l1, l2) = (
            snapshot(t.path(), "1", true, false),
            snapshot(t.path(), "2", true, false),
        );
        let top = snapshot(t.path(), "3", false, true);
        let lower = format!(
            "lowerdir={}:{}",
            l2.join("fs").display(),
            l1.join("fs").display()
        );
        let upper = format!("upperdir={}", top.join("rw/upper").display());
        let work = format!("workdir={}", top.join("rw/work").display());
        let m = mount("overlay", "overlay", &["index=off", &lower, &upper, &work]);
        let d = describe(&[m]).unwrap();
        assert_eq!(d.layers, vec![l2.join(LAYER_IMAGE), l1.join(LAYER_IMAGE)]);
        let u = d.upper.unwrap();
        assert_eq!(u.image, top.join(UPPER_IMAGE));
        assert_eq!(u.host_mount, Some(top.join("rw")));
        assert_eq!(u.lock_path(), top.join("rw.ext4.lock"));
        // A view: no upper.
        let ro = mount("overlay", "overlay", &[&lower]);
        assert_eq!(describe(&[ro]).unwrap().upper, None);
    }

    #[test]
    fn overlays_of_other_snapshotters_are_not_layered() {
        let t = tempfile::tempdir().unwrap();
        let plain = snapshot(t.path(), "1", false, false);
        let layer = snapshot(t.path(), "2", true, false);
        let lower = format!(
            "lowerdir={}:{}",
            layer.join("fs").display(),
            plain.join("fs").display()
        );
        assert_eq!(describe(&[mount("overlay", "overlay", &[&lower])]), None);
        // An upper without rw.ext4 beside it (overlayfs' own layout).
        let lower = format!("lowerdir={}", layer.join("fs").display());
        let upper = format!("upperdir={}", plain.join("fs").display());
        assert_eq!(
            describe(&[mount("overlay", "overlay", &[&lower, &upper])]),
            None
        );
        assert_eq!(describe(&[mount("ext4", "/x.img", &["rw"])]), None);
        assert_eq!(describe(&[]), None);
    }

    #[test]
    fn containerd_2_2_lists_are_layered() {
        let ms = [
            mount("erofs", "/s/2/layer.erofs", &["ro", "loop"]),
            mount("erofs", "/s/1/layer.erofs", &["ro", "loop"]),
            mount("ext4", "/s/3/rw.ext4", &["rw", "loop"]),
            mount(
                "format/mkdir/overlay",
                "overlay",
                &[
                    "X-containerd.mkdir.path={{ mount 2 }}/upper:0755",
                    "lowerdir={{ mount 0 }}:{{mount 1}}",
                    "upperdir={{ mount 2 }}/upper",
                    "workdir={{ mount 2 }}/work",
                ],
            ),
        ];
        let d = describe(&ms).unwrap();
        assert_eq!(
            d.layers,
            vec![
                PathBuf::from("/s/2/layer.erofs"),
                PathBuf::from("/s/1/layer.erofs")
            ]
        );
        assert_eq!(
            d.upper,
            Some(Upper {
                image: "/s/3/rw.ext4".into(),
                host_mount: None
            })
        );
        // A reference to a mount of the wrong type, or past the list.
        let mut bad = ms.clone();
        bad[3].options[1] = "lowerdir={{ mount 2 }}".into();
        assert_eq!(describe(&bad), None);
        bad[3].options[1] = "lowerdir={{ mount 7 }}".into();
        assert_eq!(describe(&bad), None);
    }

    #[test]
    fn drives_are_deduplicated_and_capped() {
        let l = |s: &str| PathBuf::from(s);
        let layers = [l("/a"), l("/b"), l("/a"), l("/c")];
        assert_eq!(
            plan_drives(&layers, 8),
            (vec![l("/a"), l("/b"), l("/c")], vec![])
        );
        assert_eq!(
            plan_drives(&layers, 2),
            (vec![l("/a"), l("/b")], vec![l("/c")])
        );
        assert_eq!(
            plan_drives(&layers, 0),
            (vec![], vec![l("/a"), l("/b"), l("/c")])
        );
        let id = layer_drive_id(Path::new("/var/lib/x/snapshots/1/layer.erofs"));
        assert!(
            id.len() <= 20 && id.chars().all(|c| c.is_ascii_alphanumeric()),
            "{id}"
        );
        assert_ne!(
            id,
            layer_drive_id(Path::new("/var/lib/x/snapshots/2/layer.erofs"))
        );
    }

    #[test]
    fn a_claim_is_exclusive_and_takes_the_host_mount_down() {
        if nix::unistd::geteuid().as_raw() != 0 {
            return;
        }
        let t = tempfile::tempdir().unwrap();
        let top = snapshot(t.path(), "3", false, true);
        let rw = top.join("rw");
        nix::mount::mount(
            Some("tmpfs"),
            &rw,
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .unwrap();
        let u = Upper {
            image: top.join(UPPER_IMAGE),
            host_mount: Some(rw.clone()),
        };
        // Busy on the host: refused, and the mount stays.
        let busy = File::open(&rw).unwrap();
        let e = claim_upper(&u, Duration::ZERO).unwrap_err();
        drop(busy);
        assert!(e.to_string().contains("in use on the host"), "{e}");
        let claim = claim_upper(&u, Duration::ZERO).unwrap();
        assert!(!is_mount_point(&rw));
        let e = claim_upper(&u, Duration::from_millis(100)).unwrap_err();
        assert!(
            e.to_string().contains("another runtime holds its lock"),
            "{e}"
        );
        drop(claim);
        claim_upper(&u, Duration::ZERO).unwrap();
    }

    pub(super) fn is_mount_point(p: &Path) -> bool {
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        info.lines()
            .any(|l| l.split(' ').nth(4) == Some(p.to_str().unwrap()))
    }
}
