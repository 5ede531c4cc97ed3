//! Computing a layer from two directory trees.
//!
//! Both trees are walked side by side in name order. A name only in `upper` is
//! added (directories with everything below them), a name only in `lower` becomes
//! a whiteout `.wh.NAME`, a name in both is written again when its type, mode,
//! owner, size, modification time, symlink target, extended attributes or (for
//! files whose times cannot tell) contents differ. The directories above every
//! written entry are written too, so the layer applies on its own. Files with
//! several links are written once and hard-linked after.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs::Metadata;
use std::io::{self, Read, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::compression::{Compression, HashWriter};
use crate::sys;
use crate::Error;

/// The layer a diff produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// Digest and size of the uncompressed tar.
    pub diff_id: String,
    pub uncompressed_size: u64,
    /// Digest and size of the blob as written (compressed when asked).
    pub digest: String,
    pub size: u64,
    pub compression: Compression,
}

/// Writes the layer that turns `lower` into `upper` to `out`, compressed with
/// `compression` (`None` or `Gzip`; `Zstd` too).
pub fn diff<W: Write>(
    lower: &Path,
    upper: &Path,
    out: W,
    compression: Compression,
) -> Result<Written, Error> {
    let blob = HashWriter::new(out);
    let (diff_id, usize_, blob) = match compression {
        Compression::None => {
            let tar = HashWriter::new(blob);
            let tar = write_changes(lower, upper, tar)?;
            tar.finish()
        }
        Compression::Gzip => {
            let gz = flate2::write::GzEncoder::new(blob, flate2::Compression::fast());
            let tar = write_changes(lower, upper, HashWriter::new(gz))?;
            let (d, n, gz) = tar.finish();
            let blob = gz
                .finish()
                .map_err(|e| Error::io("compressing the layer", e))?;
            (d, n, blob)
        }
        Compression::Zstd => {
            let zs = zstd::stream::write::Encoder::new(blob, 3)
                .map_err(|e| Error::io("compressing the layer", e))?;
            let tar = write_changes(lower, upper, HashWriter::new(zs))?;
            let (d, n, zs) = tar.finish();
            let blob = zs
                .finish()
                .map_err(|e| Error::io("compressing the layer", e))?;
            (d, n, blob)
        }
    };
    let (digest, size, mut out) = blob.finish();
    out.flush().map_err(|e| Error::io("writing the layer", e))?;
    Ok(Written {
        diff_id,
        uncompressed_size: usize_,
        digest,
        size,
        compression,
    })
}

fn write_changes<W: Write>(lower: &Path, upper: &Path, out: W) -> Result<W, Error> {
    let mut w = Walker {
        builder: tar::Builder::new(out),
        pending: Vec::new(),
        links: HashMap::new(),
    };
    w.builder.mode(tar::HeaderMode::Complete);
    w.builder.follow_symlinks(false);
    w.walk(Some(lower), upper, PathBuf::new())?;
    w.builder
        .into_inner()
        .map_err(|e| Error::io("writing the layer", e))
}

struct Walker<W: Write> {
    builder: tar::Builder<W>,
    /// Directories entered but not written yet: written before their first change.
    pending: Vec<(PathBuf, PathBuf)>,
    /// (dev, inode) of multiply-linked files already written, with their names.
    links: HashMap<(u64, u64), PathBuf>,
}

fn names(dir: &Path) -> Result<Vec<OsString>, Error> {
    let mut v = Vec::new();
    for e in
        std::fs::read_dir(dir).map_err(|e| Error::io(format!("reading {}", dir.display()), e))?
    {
        v.push(
            e.map_err(|e| Error::io(format!("reading {}", dir.display()), e))?
                .file_name(),
        );
    }
    v.sort();
    Ok(v)
}

fn lstat(p: &Path) -> Result<Option<Metadata>, Error> {
    match std::fs::symlink_metadata(p) {
        Ok(m) => Ok(Some(m)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(format!("stat {}", p.display()), e)),
    }
}

fn same_contents(a: &Path, b: &Path) -> Result<bool, Error> {
    let mut fa = std::fs::File::open(a).map_err(|e| Error::io(a.display().to_string(), e))?;
    let mut fb = std::fs::File::open(b).map_err(|e| Error::io(b.display().to_string(), e))?;
    let mut ba = vec![0u8; 64 << 10];
    let mut bb = vec![0u8; 64 << 10];
    loop {
        let n = fa
            .read(&mut ba)
            .map_err(|e| Error::io(a.display().to_string(), e))?;
        if n == 0 {
            return Ok(fb
                .read(&mut bb[..1])
                .map_err(|e| Error::io(b.display().to_string(), e))?
                == 0);
        }
        fb.read_exact(&mut bb[..n]).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                Error::Invalid("size changed".into())
            } else {
                Error::io(b.display().to_string(), e)
            }
        })?;
        if ba[..n] != bb[..n] {
            return Ok(false);
        }
    }
}

/// Whether `u` (upper) differs from `l` (lower), both of the same path.
fn changed(lp: &Path, l: &Metadata, up: &Path, u: &Metadata) -> Result<bool, Error> {
    if l.dev() == u.dev() && l.ino() == u.ino() {
        return Ok(false);
    }
    if l.mode() != u.mode() || l.uid() != u.uid() || l.gid() != u.gid() || l.rdev() != u.rdev() {
        return Ok(true);
    }
    let ft = u.file_type();
    if !ft.is_dir()
        && (l.size() != u.size() || l.mtime() != u.mtime() || l.mtime_nsec() != u.mtime_nsec())
    {
        return Ok(true);
    }
    if sys::lxattrs(lp).unwrap_or_default() != sys::lxattrs(up).unwrap_or_default() {
        return Ok(true);
    }
    if ft.is_symlink() {
        return Ok(std::fs::read_link(lp).ok() != std::fs::read_link(up).ok());
    }
    if ft.is_file() && u.mtime_nsec() == 0 {
        // Times without sub-second precision cannot tell edits apart.
        return Ok(!same_contents(lp, up)?);
    }
    Ok(false)
}

impl<W: Write> Walker<W> {
    fn walk(&mut self, lower: Option<&Path>, upper: &Path, rel: PathBuf) -> Result<(), Error> {
        let unames = names(upper)?;
        let lnames = match lower {
            Some(l) if lstat(l)?.is_some_and(|m| m.is_dir()) => names(l)?,
            _ => Vec::new(),
        };
        let (mut i, mut j) = (0, 0);
        while i < unames.len() || j < lnames.len() {
            let (name, in_u, in_l) = match (unames.get(i), lnames.get(j)) {
                (Some(u), Some(l)) if u == l => {
                    i += 1;
                    j += 1;
                    (u.clone(), true, true)
                }
                (Some(u), Some(l)) if u < l => {
                    i += 1;
                    (u.clone(), true, false)
                }
                (Some(u), None) => {
                    i += 1;
                    (u.clone(), true, false)
                }
                (_, Some(l)) => {
                    j += 1;
                    (l.clone(), false, true)
                }
                (None, None) => unreachable!(),
            };
            let r = rel.join(&name);
            let up = upper.join(&name);
            if !in_u {
                let mut wh = OsString::from(".wh.");
                wh.push(&name);
                self.flush_pending()?;
                self.whiteout(&rel.join(wh))?;
                continue;
            }
            let um =
                lstat(&up)?.ok_or_else(|| Error::Invalid(format!("{} vanished", up.display())))?;
            let lp = lower.map(|l| l.join(&name));
            let lm = match (&lp, in_l) {
                (Some(lp), true) => lstat(lp)?,
                _ => None,
            };
            let is_dir = um.is_dir();
            let differs = match &lm {
                None => true,
                Some(lm) => {
                    lm.file_type() != um.file_type()
                        || changed(lp.as_deref().unwrap(), lm, &up, &um)?
                }
            };
            if differs {
                self.flush_pending()?;
                self.add(&up, &um, &r)?;
            } else if is_dir {
                self.pending.push((up.clone(), r.clone()));
            }
            if is_dir {
                let lower_child = match &lm {
                    Some(m) if m.is_dir() => lp.as_deref(),
                    _ => None,
                };
                self.walk(lower_child, &up, r.clone())?;
                if !differs {
                    // Nothing below changed: forget it.
                    if self.pending.last().is_some_and(|(_, p)| *p == r) {
                        self.pending.pop();
                    }
                }
            }
        }
        Ok(())
    }

    fn flush_pending(&mut self) -> Result<(), Error> {
        for (full, rel) in std::mem::take(&mut self.pending) {
            let m = lstat(&full)?
                .ok_or_else(|| Error::Invalid(format!("{} vanished", full.display())))?;
            self.add(&full, &m, &rel)?;
        }
        Ok(())
    }

    fn header(m: &Metadata) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_mode(m.mode() & 0o7777);
        h.set_uid(m.uid() as u64);
        h.set_gid(m.gid() as u64);
        h.set_mtime(m.mtime().max(0) as u64);
        h.set_size(0);
        h
    }

    fn add(&mut self, full: &Path, m: &Metadata, rel: &Path) -> Result<(), Error> {
        let ctx = |e: io::Error| Error::io(format!("writing {} to the layer", rel.display()), e);
        let xattrs = sys::lxattrs(full).unwrap_or_default();
        let xattrs: Vec<(String, Vec<u8>)> = xattrs
            .into_iter()
            .filter(|(k, _)| !k.starts_with("trusted.overlay."))
            .map(|(k, v)| (format!("SCHILY.xattr.{k}"), v))
            .collect();
        let mut h = Self::header(m);
        let ft = m.file_type();
        if m.mtime_nsec() != 0 || !xattrs.is_empty() {
            let mut pax: Vec<(String, Vec<u8>)> = xattrs;
            if m.mtime_nsec() != 0 {
                pax.push((
                    "mtime".into(),
                    format!("{}.{:09}", m.mtime(), m.mtime_nsec()).into_bytes(),
                ));
            }
            self.builder
                .append_pax_extensions(pax.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
                .map_err(ctx)?;
        }
        if ft.is_dir() {
            h.set_entry_type(tar::EntryType::Directory);
            let mut name = rel.as_os_str().as_bytes().to_vec();
            name.push(b'/');
            let name = PathBuf::from(OsString::from_vec(name));
            self.builder
                .append_data(&mut h, name, io::empty())
                .map_err(ctx)?;
        } else if ft.is_symlink() {
            h.set_entry_type(tar::EntryType::Symlink);
            let target = std::fs::read_link(full).map_err(ctx)?;
            let tb = target.as_os_str().as_bytes();
            if tb.len() <= 100 {
                // Literally: symlink targets are not paths to normalise.
                h.set_link_name_literal(tb).map_err(ctx)?;
                self.builder
                    .append_data(&mut h, rel, io::empty())
                    .map_err(ctx)?;
            } else {
                self.builder.append_link(&mut h, rel, target).map_err(ctx)?;
            }
        } else if ft.is_file() {
            if m.nlink() > 1 {
                let key = (m.dev(), m.ino());
                if let Some(first) = self.links.get(&key).cloned() {
                    h.set_entry_type(tar::EntryType::Link);
                    self.builder.append_link(&mut h, rel, first).map_err(ctx)?;
                    return Ok(());
                }
                self.links.insert(key, rel.to_path_buf());
            }
            h.set_entry_type(tar::EntryType::Regular);
            h.set_size(m.size());
            let f = std::fs::File::open(full).map_err(ctx)?;
            self.builder
                .append_data(&mut h, rel, f.take(m.size()))
                .map_err(ctx)?;
        } else if ft.is_char_device() && m.rdev() == 0 {
            // An overlayfs whiteout in an upper directory.
            let mut wh = OsString::from(".wh.");
            wh.push(rel.file_name().unwrap_or_default());
            let p = rel.parent().unwrap_or(Path::new("")).join(wh);
            self.whiteout(&p)?;
        } else if ft.is_char_device() || ft.is_block_device() || ft.is_fifo() {
            h.set_entry_type(if ft.is_char_device() {
                tar::EntryType::Char
            } else if ft.is_block_device() {
                tar::EntryType::Block
            } else {
                tar::EntryType::Fifo
            });
            let rdev = m.rdev();
            h.set_device_major(libc::major(rdev)).map_err(ctx)?;
            h.set_device_minor(libc::minor(rdev)).map_err(ctx)?;
            self.builder
                .append_data(&mut h, rel, io::empty())
                .map_err(ctx)?;
        }
        // Sockets are not part of layers.
        Ok(())
    }

    fn whiteout(&mut self, rel: &Path) -> Result<(), Error> {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_size(0);
        self.builder
            .append_data(&mut h, rel, io::empty())
            .map_err(|e| Error::io(format!("writing {} to the layer", rel.display()), e))
    }
}
