//! Where the `erofs` snapshotter keeps a snapshot's files, and how a VM runtime
//! recognises them in a snapshot's mounts ([`describe`]).
//!
//! ```text
//! <root>/snapshots/<id>/layer.erofs    committed: the layer as an EROFS image
//! <root>/snapshots/<id>/fs/            committed: layer.erofs mounted read-only (loop)
//! <root>/snapshots/<id>/rw.ext4        active: sparse ext4 image holding upper/ and work/
//! <root>/snapshots/<id>/rw.ext4.lock   active: flock(2) taken by whoever owns rw.ext4
//! <root>/snapshots/<id>/rw/            active: rw.ext4 mounted on the host (unless claimed)
//! ```

use std::path::{Path, PathBuf};

use crate::Mount;

/// The EROFS image of a committed snapshot.
pub const LAYER_IMAGE: &str = "layer.erofs";
/// The mount point of a committed snapshot's image.
pub const LAYER_MOUNT: &str = "fs";
/// The writable ext4 image of an active snapshot.
pub const UPPER_IMAGE: &str = "rw.ext4";
/// The lock file of an active snapshot's writable image.
pub const UPPER_LOCK: &str = "rw.ext4.lock";
/// The mount point of an active snapshot's writable image.
pub const UPPER_MOUNT: &str = "rw";

/// The block devices behind an `erofs` snapshot's mounts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErofsRootfs {
    /// The EROFS images (`<dir>/layer.erofs`) of the lower layers, topmost first.
    pub layers: Vec<PathBuf>,
    /// The writable ext4 image (`<dir>/rw.ext4`, holding `upper/` and `work/`) of
    /// an active snapshot; `None` for a read-only view.
    pub upper: Option<PathBuf>,
}

impl ErofsRootfs {
    /// The snapshot directory of the writable image.
    pub fn upper_dir(&self) -> Option<&Path> {
        self.upper.as_deref().and_then(Path::parent)
    }
}

/// `<dir>` of a lower directory `<dir>/fs` whose `<dir>/layer.erofs` exists.
fn layer_of_lower(lower: &Path) -> Option<PathBuf> {
    if lower.file_name()? != LAYER_MOUNT {
        return None;
    }
    let image = lower.parent()?.join(LAYER_IMAGE);
    image.is_file().then_some(image)
}

/// `<dir>/rw.ext4` of an upper directory `<dir>/rw/upper` whose image exists.
fn image_of_upper(upper: &Path) -> Option<PathBuf> {
    if upper.file_name()? != "upper" {
        return None;
    }
    let rw = upper.parent()?;
    if rw.file_name()? != UPPER_MOUNT {
        return None;
    }
    let image = rw.parent()?.join(UPPER_IMAGE);
    image.is_file().then_some(image)
}

fn option<'a>(m: &'a Mount, name: &str) -> Option<&'a str> {
    m.options
        .iter()
        .find_map(|o| o.strip_prefix(name).and_then(|v| v.strip_prefix('=')))
}

/// Recognises the mounts the `erofs` snapshotter returns and names the images
/// behind them. `None` when the mounts are anything else (another snapshotter's,
/// or an erofs snapshot whose files are gone).
///
/// * `overlay` with `lowerdir=<X>/fs:...` (each `<X>/layer.erofs` existing) and,
///   for an active snapshot, `upperdir=<Y>/rw/upper` (with `<Y>/rw.ext4`);
/// * `bind` of `<Y>/rw/upper`: an active snapshot without parents;
/// * `erofs` of `<X>/layer.erofs`: a view of a single layer.
pub fn describe(mounts: &[Mount]) -> Option<ErofsRootfs> {
    let [m] = mounts else { return None };
    match m.kind.as_str() {
        "overlay" => {
            let mut layers = Vec::new();
            for lower in option(m, "lowerdir")?.split(':') {
                layers.push(layer_of_lower(Path::new(lower))?);
            }
            let upper = match option(m, "upperdir") {
                Some(u) => Some(image_of_upper(Path::new(u))?),
                None => None,
            };
            Some(ErofsRootfs { layers, upper })
        }
        "bind" => {
            let source = Path::new(&m.source);
            if let Some(image) = image_of_upper(source) {
                return Some(ErofsRootfs {
                    layers: Vec::new(),
                    upper: Some(image),
                });
            }
            let layer = layer_of_lower(source)?;
            Some(ErofsRootfs {
                layers: vec![layer],
                upper: None,
            })
        }
        "erofs" => {
            let source = Path::new(&m.source);
            (source.file_name()? == LAYER_IMAGE && source.is_file()).then(|| ErofsRootfs {
                layers: vec![source.to_path_buf()],
                upper: None,
            })
        }
        _ => None,
    }
}

/// Where a layer applied onto `mounts` goes as an EROFS image: `Some(Ok(path of
/// layer.erofs))` for an active erofs snapshot nothing was written to yet; `None`
/// when the mounts are another snapshotter's, or something was written into the
/// snapshot's upper directory already (the layer then goes there too, and Commit
/// builds the image); an error when the snapshot has its image already or its
/// writable image is not on the host (a VM holds it).
///
/// `None` too when the host's `mkfs.erofs` cannot read tar streams (before 1.8):
/// the layer is then unpacked into `upper/` and Commit builds the image.
pub fn layer_target(mounts: &[Mount]) -> Option<crate::Result<PathBuf>> {
    let rootfs = describe(mounts)?;
    if !super::tool_available().is_some_and(|t| t.reads_tar()) {
        return None;
    }
    let dir = rootfs.upper_dir()?.to_path_buf();
    let image = dir.join(LAYER_IMAGE);
    if image.exists() {
        return Some(Err(crate::Error::FailedPrecondition(format!(
            "a layer was applied to {} already",
            dir.display()
        ))));
    }
    let upper = dir.join(UPPER_MOUNT).join("upper");
    match std::fs::read_dir(&upper) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                None
            } else {
                Some(Ok(image))
            }
        }
        Err(_) => Some(Err(crate::Error::FailedPrecondition(format!(
            "{} is not mounted on the host (in use by a VM?)",
            dir.join(UPPER_MOUNT).display()
        )))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(p: &Path) {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, b"").unwrap();
    }

    #[test]
    fn recognises_erofs_mounts_only() {
        let d = tempfile::tempdir().unwrap();
        let s = d.path().join("snapshots");
        touch(&s.join("1/layer.erofs"));
        touch(&s.join("2/layer.erofs"));
        touch(&s.join("3/rw.ext4"));
        let overlay = Mount {
            kind: "overlay".into(),
            source: "overlay".into(),
            target: String::new(),
            options: vec![
                format!("workdir={}", s.join("3/rw/work").display()),
                format!("upperdir={}", s.join("3/rw/upper").display()),
                format!(
                    "lowerdir={}:{}",
                    s.join("2/fs").display(),
                    s.join("1/fs").display()
                ),
            ],
        };
        let r = describe(std::slice::from_ref(&overlay)).unwrap();
        assert_eq!(
            r.layers,
            vec![s.join("2/layer.erofs"), s.join("1/layer.erofs")]
        );
        assert_eq!(r.upper, Some(s.join("3/rw.ext4")));
        assert_eq!(r.upper_dir(), Some(s.join("3").as_path()));

        // A lower that is not an EROFS layer makes the whole thing foreign.
        let mut foreign = overlay.clone();
        foreign.options[2] = format!("lowerdir={}", s.join("9/fs").display());
        assert_eq!(describe(&[foreign]), None);

        let bind = Mount {
            kind: "bind".into(),
            source: s.join("3/rw/upper").display().to_string(),
            target: String::new(),
            options: vec!["rw".into(), "rbind".into()],
        };
        let r = describe(&[bind]).unwrap();
        assert!(r.layers.is_empty());
        assert_eq!(r.upper, Some(s.join("3/rw.ext4")));

        let view = Mount {
            kind: "erofs".into(),
            source: s.join("1/layer.erofs").display().to_string(),
            target: String::new(),
            options: vec!["ro".into(), "loop".into()],
        };
        let r = describe(&[view]).unwrap();
        assert_eq!(r.layers, vec![s.join("1/layer.erofs")]);
        assert_eq!(r.upper, None);

        let other = Mount {
            kind: "bind".into(),
            source: d.path().display().to_string(),
            target: String::new(),
            options: vec![],
        };
        assert_eq!(describe(&[other]), None);
        assert_eq!(describe(&[]), None);
    }
}
