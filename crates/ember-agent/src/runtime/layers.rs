//! A layered container rootfs assembled in the guest: read-only image layers
//! (EROFS, by drive serial or loop-mapped image file) under an overlay whose upper
//! and work directories live on a writable filesystem (ext4) of their own.
//!
//! Everything sits under the container's state directory: `l<N>` per layer,
//! `upper` for the writable filesystem, `overlay/root` for the overlay (deeper than
//! the rest, so removal, which unmounts deepest first, takes it down before the
//! filesystems under it).

use std::path::{Path, PathBuf};

use ember_agent_api::BlockRootfs;
use ember_ttrpc::Status;

use super::rootfs::unmount_all_under;
use super::{block, internal, R};
use crate::sys;

/// The overlay's mount point under the state directory.
const OVERLAY_DIR: &str = "overlay/root";
/// The writable filesystem's mount point under the state directory.
const UPPER_DIR: &str = "upper";

/// How a layer is named in errors: its place and where it comes from.
fn describe(what: &str, r: &BlockRootfs) -> String {
    if !r.file.is_empty() {
        format!("{what} (image file {})", r.file)
    } else {
        format!("{what} (drive {})", r.serial)
    }
}

/// The overlay's mount data: lower directories topmost first, and the upper and
/// work directories when the rootfs is writable.
fn overlay_data(lowers: &[PathBuf], upper: Option<&Path>) -> R<String> {
    let mut parts = Vec::with_capacity(lowers.len());
    for l in lowers {
        let s = l
            .to_str()
            .filter(|s| !s.contains([':', ',']))
            .ok_or_else(|| {
                Status::invalid_argument(format!("layer path {} cannot be a lowerdir", l.display()))
            })?;
        parts.push(s.to_string());
    }
    let mut data = format!("lowerdir={}", parts.join(":"));
    if let Some(u) = upper {
        let u = u.display();
        data.push_str(&format!(",upperdir={u}/upper,workdir={u}/work"));
    }
    Ok(data)
}

/// Mounts the layers and the upper filesystem and the overlay over them; returns
/// the rootfs directory and the loop devices made. On failure everything made is
/// undone and the error names the layer (or the upper) that failed. Blocking.
pub(super) fn prepare_layered(
    layers: &[BlockRootfs],
    upper: Option<&BlockRootfs>,
    state_dir: &Path,
) -> R<(PathBuf, Vec<u32>)> {
    let mut loops = Vec::new();
    let res = assemble(layers, upper, state_dir, &mut loops);
    if res.is_err() {
        unmount_all_under(state_dir);
        for n in loops.drain(..) {
            block::release_loop(Some(n));
        }
    }
    res.map(|root| (root, loops))
}

fn assemble(
    layers: &[BlockRootfs],
    upper: Option<&BlockRootfs>,
    state_dir: &Path,
    loops: &mut Vec<u32>,
) -> R<PathBuf> {
    if layers.is_empty() {
        return Err(Status::invalid_argument("a layered rootfs needs a layer"));
    }
    let mkdir = |p: &Path| {
        std::fs::create_dir_all(p).map_err(|e| internal(&format!("creating {}", p.display()), e))
    };
    let n = layers.len();
    let mut lowers = Vec::with_capacity(n);
    for (i, l) in layers.iter().enumerate() {
        let what = describe(&format!("layer {} of {n}", i + 1), l);
        let mut l = l.clone();
        // Layers are shared: never writable, whatever the request says.
        l.read_only = true;
        if l.fstype.is_empty() {
            l.fstype = "erofs".into();
        }
        let mnt = state_dir.join(format!("l{i}"));
        mkdir(&mnt)?;
        let m = block::mount(&l, &mnt).map_err(|e| named(&what, e))?;
        loops.extend(m.loop_number);
        lowers.push(mnt);
    }
    let upper_mnt = match upper {
        Some(u) => {
            let what = describe("the writable layer", u);
            let mut u = u.clone();
            if u.fstype.is_empty() {
                u.fstype = "ext4".into();
            }
            if u.read_only {
                return Err(Status::invalid_argument(format!("{what} is read-only")));
            }
            let mnt = state_dir.join(UPPER_DIR);
            mkdir(&mnt)?;
            let m = block::mount(&u, &mnt).map_err(|e| named(&what, e))?;
            loops.extend(m.loop_number);
            for d in ["upper", "work"] {
                let p = mnt.join(d);
                match std::fs::symlink_metadata(&p) {
                    Ok(m) if m.is_dir() => {}
                    Ok(_) => {
                        return Err(Status::invalid_argument(format!(
                            "{what}: {d} is not a directory"
                        )))
                    }
                    Err(_) => std::fs::create_dir(&p)
                        .map_err(|e| internal(&format!("{what}: creating {d}"), e))?,
                }
            }
            Some(mnt)
        }
        None => None,
    };
    // A read-only overlay needs two lower layers; one alone is the rootfs as it is.
    if upper_mnt.is_none() && lowers.len() == 1 {
        return Ok(lowers.remove(0));
    }
    let root = state_dir.join(OVERLAY_DIR);
    mkdir(&root)?;
    let data = overlay_data(&lowers, upper_mnt.as_deref())?;
    let flags = if upper_mnt.is_none() {
        libc::MS_RDONLY
    } else {
        0
    };
    sys::mount(Some("overlay"), &root, Some("overlay"), flags, Some(&data)).map_err(|e| {
        Status::invalid_argument(format!("mounting the overlay of {n} layers: {e}"))
    })?;
    Ok(root)
}

/// `e` with `what` in front, its code kept.
fn named(what: &str, e: Status) -> Status {
    Status::new(e.code(), format!("{what}: {}", e.message()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlay_data_lists_layers_topmost_first() {
        let lowers = [PathBuf::from("/s/c/l0"), PathBuf::from("/s/c/l1")];
        assert_eq!(
            overlay_data(&lowers, Some(Path::new("/s/c/upper"))).unwrap(),
            "lowerdir=/s/c/l0:/s/c/l1,upperdir=/s/c/upper/upper,workdir=/s/c/upper/work"
        );
        assert_eq!(
            overlay_data(&lowers, None).unwrap(),
            "lowerdir=/s/c/l0:/s/c/l1"
        );
        assert!(overlay_data(&[PathBuf::from("/a:b")], None).is_err());
    }

    #[test]
    fn errors_name_the_layer() {
        let r = BlockRootfs {
            serial: "layer0a1b".into(),
            ..Default::default()
        };
        assert_eq!(
            describe("layer 2 of 3", &r),
            "layer 2 of 3 (drive layer0a1b)"
        );
        let f = BlockRootfs {
            file: "/run/ember/shared/c@rootfs/0".into(),
            ..Default::default()
        };
        let e = named(
            &describe("layer 1 of 1", &f),
            Status::invalid_argument("bad"),
        );
        assert_eq!(
            e.message(),
            "layer 1 of 1 (image file /run/ember/shared/c@rootfs/0): bad"
        );
    }

    #[test]
    fn an_empty_layer_list_is_refused() {
        let e = prepare_layered(&[], None, Path::new("/nonexistent/state")).unwrap_err();
        assert!(e.message().contains("needs a layer"), "{}", e.message());
    }
}
