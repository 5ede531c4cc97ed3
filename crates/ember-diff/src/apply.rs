//! Applying a layer tar onto a directory.
//!
//! Entries are created relative to directory descriptors: the parent of every
//! entry is opened with `openat2(RESOLVE_BENEATH)` from the root, so symlinks
//! already in the tree are followed only while they stay inside it, and the entry
//! itself is made with `mkdirat`, `openat(O_NOFOLLOW | O_EXCL)`, `symlinkat`,
//! `linkat`, `mknodat`, never through a symlink. Names that climb above the root,
//! parents that resolve outside it and hard links to outside targets are refused
//! with [`Error::Unsafe`] before anything is written for that entry.
//!
//! Whiteouts follow the OCI layer format: `.wh.NAME` deletes `NAME`,
//! `.wh..wh..opq` makes its directory opaque (hides what lower layers have in it).
//! Applied onto a plain directory (a full copy of the lower layers, or a mounted
//! view), they remove files; applied onto an overlayfs upper directory
//! ([`ApplyOptions::overlay`]) they become what overlayfs reads: a character device
//! 0:0 for a deleted name and `trusted.overlay.opaque=y` on an opaque directory.

use std::collections::HashSet;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use tar::EntryType;

use crate::compression::{decompress, Compression, HashReader};
use crate::sys;
use crate::Error;

/// What to do with device nodes (character and block devices) in a layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DevicePolicy {
    /// `mknod` them (needs root).
    Create,
    /// Leave them out.
    Skip,
    /// Refuse the layer.
    Reject,
}

#[derive(Debug, Clone)]
pub struct ApplyOptions {
    /// The target is an overlayfs upper directory: write whiteouts the overlayfs way.
    pub overlay: bool,
    /// With `overlay`: the lower directories, nearest first. A parent directory a
    /// layer does not list is created with the mode and owner it has below.
    pub parents: Vec<PathBuf>,
    pub devices: DevicePolicy,
}

impl Default for ApplyOptions {
    fn default() -> Self {
        ApplyOptions {
            overlay: false,
            parents: Vec::new(),
            devices: if is_root() {
                DevicePolicy::Create
            } else {
                DevicePolicy::Skip
            },
        }
    }
}

fn is_root() -> bool {
    // SAFETY: `geteuid` takes no arguments, cannot fail and touches no memory.
    unsafe { libc::geteuid() == 0 }
}

/// The outcome of applying a layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// The sha256 digest of the uncompressed tar (the layer's diff id).
    pub diff_id: String,
    /// The size of the uncompressed tar.
    pub size: u64,
    /// How the blob was compressed.
    pub compression: Compression,
}

/// Applies a layer blob (plain, gzip or zstd tar) read from `layer` onto `root`.
pub fn apply(root: &Path, layer: impl Read, opts: &ApplyOptions) -> Result<Applied, Error> {
    let (compression, tar) =
        decompress(layer).map_err(|e| Error::Invalid(format!("reading the layer: {e}")))?;
    let (diff_id, size) = apply_tar(root, tar, opts)?;
    Ok(Applied {
        diff_id,
        size,
        compression,
    })
}

/// Applies an uncompressed tar stream; returns its digest and size.
pub fn apply_tar(root: &Path, tar: impl Read, opts: &ApplyOptions) -> Result<(String, u64), Error> {
    let root_fd =
        sys::open_dir(root).map_err(|e| Error::io(format!("opening {}", root.display()), e))?;
    let mut lowers = Vec::new();
    if opts.overlay {
        for p in &opts.parents {
            lowers.push(
                sys::open_dir(p).map_err(|e| Error::io(format!("opening {}", p.display()), e))?,
            );
        }
    }
    let mut a = Applier {
        root: root_fd,
        opts,
        lowers,
        created: HashSet::new(),
        dir_times: Vec::new(),
        cache: None,
        root_user: is_root(),
    };
    let mut archive = tar::Archive::new(HashReader::new(tar));
    {
        let entries = archive
            .entries()
            .map_err(|e| Error::Invalid(format!("reading the layer: {e}")))?;
        for entry in entries {
            let entry = entry.map_err(|e| Error::Invalid(format!("reading the layer: {e}")))?;
            a.entry(entry)?;
        }
    }
    a.finish_dirs();
    archive
        .into_inner()
        .finish()
        .map_err(|e| Error::Invalid(format!("reading the end of the layer: {e}")))
}

/// Splits a tar name into clean components; `..` may not climb above the root.
/// A leading `/` is dropped, as tar does.
pub fn clean_path(name: &[u8]) -> Result<Vec<Vec<u8>>, &'static str> {
    let mut out: Vec<Vec<u8>> = Vec::new();
    for c in name.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                if out.pop().is_none() {
                    return Err("path climbs out of the root");
                }
            }
            c => out.push(c.to_vec()),
        }
    }
    Ok(out)
}

fn join(comps: &[Vec<u8>]) -> Vec<u8> {
    comps.join(&b'/')
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

type Time = (i64, u32);

/// What a PAX header adds to an entry.
#[derive(Default)]
struct Pax {
    uid: Option<u32>,
    gid: Option<u32>,
    mtime: Option<Time>,
    atime: Option<Time>,
    xattrs: Vec<(String, Vec<u8>)>,
}

fn parse_time(s: &str) -> Option<Time> {
    let (sec, frac) = match s.split_once('.') {
        Some((a, b)) => (a, b),
        None => (s, ""),
    };
    let sec: i64 = sec.parse().ok()?;
    let mut ns = 0u32;
    if !frac.is_empty() {
        let digits: String = frac.chars().take(9).collect();
        let n: u32 = digits.parse().ok()?;
        ns = n * 10u32.pow(9 - digits.len() as u32);
    }
    Some((sec, ns))
}

/// Writes a GNU sparse file entry as `name` in `dir`, its holes left as holes.
///
/// Reading such an entry yields every byte of the size its header declares, the
/// holes as zeros, and nothing bounds that size: a few hundred bytes of layer can
/// declare terabytes. tar's own unpacking seeks over the holes instead, so writing
/// the file costs what the layer stores. It gets the name through the directory's
/// descriptor ([`sys::fd_path`]) and creates it with `O_EXCL`, so never through a
/// symlink.
fn sparse_file<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    dir: &OwnedFd,
    name: &[u8],
    raw: &[u8],
) -> Result<std::fs::File, Error> {
    let size = entry.size();
    if i64::try_from(size).is_err() {
        return Err(Error::Invalid(format!(
            "sparse file {} declares {size} bytes, more than a file can have",
            lossy(raw)
        )));
    }
    if raw.ends_with(b"/") {
        // tar would unpack it as a directory.
        return Err(Error::Invalid(format!(
            "sparse file {} is named as a directory",
            lossy(raw)
        )));
    }
    match entry.unpack(sys::fd_path(dir, name)) {
        Ok(tar::Unpacked::File(f)) => Ok(f),
        Ok(_) => Err(Error::Invalid(format!(
            "sparse file {} was not unpacked as a file",
            lossy(raw)
        ))),
        // A system call failing (no space left, ...) is the host's problem; tar's
        // own complaints (the layer ends inside the file) are the layer's.
        Err(e) if os_error(&e) => Err(Error::io(format!("writing {}", lossy(raw)), e)),
        Err(e) => Err(Error::Invalid(format!("sparse file {}: {e}", lossy(raw)))),
    }
}

/// Whether an error is, or was caused by, a failed system call.
fn os_error(e: &io::Error) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cur {
        if c.downcast_ref::<io::Error>()
            .is_some_and(|e| e.raw_os_error().is_some())
        {
            return true;
        }
        cur = c.source();
    }
    false
}

struct Applier<'o> {
    root: OwnedFd,
    opts: &'o ApplyOptions,
    lowers: Vec<OwnedFd>,
    /// Paths this layer created (plain mode: opaque directories keep them).
    created: HashSet<Vec<u8>>,
    dir_times: Vec<(Vec<u8>, Time, Time)>,
    /// The last parent directory opened.
    cache: Option<(Vec<u8>, Rc<OwnedFd>)>,
    root_user: bool,
}

impl Applier<'_> {
    fn unsafe_entry(path: &[u8], reason: impl Into<String>) -> Error {
        Error::Unsafe {
            path: lossy(path),
            reason: reason.into(),
        }
    }

    fn resolve_err(path: &[u8], e: io::Error) -> Error {
        match e.raw_os_error() {
            Some(libc::EXDEV) => Self::unsafe_entry(
                path,
                "its parent resolves through a symlink outside the root",
            ),
            Some(libc::ELOOP) => Self::unsafe_entry(path, "too many levels of symlinks"),
            _ => Error::io(format!("resolving the parent of {}", lossy(path)), e),
        }
    }

    /// Opens (creating what is missing) the directory at `comps`.
    fn dir(&mut self, comps: &[Vec<u8>], entry: &[u8]) -> Result<Rc<OwnedFd>, Error> {
        let rel = join(comps);
        if let Some((k, fd)) = &self.cache {
            if *k == rel {
                return Ok(fd.clone());
            }
        }
        let fd = Rc::new(self.ensure_dir(comps, entry)?);
        self.cache = Some((rel, fd.clone()));
        Ok(fd)
    }

    /// Opens the directory at `comps`, first creating the missing ones on the way
    /// down from the nearest that exists. A loop, not recursion, and every prefix
    /// a slice of one joined path: a layer's path can be thousands of directories
    /// deep.
    fn ensure_dir(&mut self, comps: &[Vec<u8>], entry: &[u8]) -> Result<OwnedFd, Error> {
        let path = join(comps);
        // `path[..ends[n]]` is the path of the first `n` components.
        let mut ends = vec![0];
        for (i, c) in comps.iter().enumerate() {
            ends.push(ends[i] + usize::from(i > 0) + c.len());
        }
        let mut have = comps.len();
        let mut fd = loop {
            match sys::open_beneath(
                &self.root,
                &path[..ends[have]],
                libc::O_RDONLY | libc::O_DIRECTORY,
            ) {
                Ok(fd) => break fd,
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) && have > 0 => have -= 1,
                Err(e) => return Err(Self::resolve_err(entry, e)),
            }
        };
        for depth in have + 1..=comps.len() {
            let rel = &path[..ends[depth]];
            let name = &comps[depth - 1];
            let below = self.lower_dir(rel);
            let mode = below.map(|s| s.st_mode & 0o7777).unwrap_or(0o755);
            match sys::mkdir_at(&fd, name, mode) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
                Err(e) => return Err(Error::io(format!("creating {}", lossy(rel)), e)),
            }
            fd = sys::open_at(&fd, name, libc::O_RDONLY | libc::O_DIRECTORY, 0)
                .map_err(|e| Self::resolve_err(entry, e))?;
            if let Some(st) = below {
                if self.root_user {
                    let _ = sys::fchown(&fd, st.st_uid, st.st_gid);
                }
                let _ = sys::fchmod(&fd, st.st_mode & 0o7777);
            }
            self.created.insert(rel.to_vec());
        }
        Ok(fd)
    }

    /// The directory at `rel` in the nearest lower layer that has one.
    fn lower_dir(&self, rel: &[u8]) -> Option<libc::stat> {
        for l in &self.lowers {
            if let Ok(fd) = sys::open_beneath(l, rel, libc::O_PATH | libc::O_NOFOLLOW) {
                if let Ok(st) = sys::fstat(&fd) {
                    if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
                        return Some(st);
                    }
                    return None;
                }
            }
        }
        None
    }

    fn entry<R: Read>(&mut self, mut entry: tar::Entry<'_, R>) -> Result<(), Error> {
        let raw = entry.path_bytes().into_owned();
        let etype = entry.header().entry_type();
        if matches!(
            etype,
            EntryType::XGlobalHeader
                | EntryType::XHeader
                | EntryType::GNULongName
                | EntryType::GNULongLink
        ) {
            return Ok(());
        }
        let comps = clean_path(&raw).map_err(|r| Self::unsafe_entry(&raw, r))?;
        if comps.is_empty() {
            // The root itself: left as it is.
            return Ok(());
        }
        let pax = self.pax(&mut entry, &raw)?;
        let hdr = entry.header();
        let uid = pax.uid.unwrap_or_else(|| hdr.uid().unwrap_or(0) as u32);
        let gid = pax.gid.unwrap_or_else(|| hdr.gid().unwrap_or(0) as u32);
        let mode = hdr.mode().unwrap_or(0o644) & 0o7777;
        let mtime = pax
            .mtime
            .unwrap_or_else(|| (hdr.mtime().unwrap_or(0) as i64, 0));
        let atime = pax.atime.unwrap_or(mtime);
        let rel = join(&comps);
        let base = comps[comps.len() - 1].clone();
        let parent_comps = &comps[..comps.len() - 1];

        if let Some(name) = base.strip_prefix(b".wh.") {
            let parent = self.dir(parent_comps, &raw)?;
            return self.whiteout(&parent, parent_comps, name, &raw, uid, gid);
        }

        let parent = self.dir(parent_comps, &raw)?;
        let is_dir = etype.is_dir();
        if let Some(st) = sys::stat_at(&*parent, &base).map_err(|e| Error::io(lossy(&rel), e))? {
            let existing_dir = st.st_mode & libc::S_IFMT == libc::S_IFDIR;
            if !(existing_dir && is_dir) {
                sys::remove_all_at(&*parent, &base)
                    .map_err(|e| Error::io(format!("replacing {}", lossy(&rel)), e))?;
                self.cache = None;
            }
        }
        let ctx = |what: &str| format!("{what} {}", lossy(&rel));
        match etype {
            EntryType::GNUSparse => {
                let f = sparse_file(&mut entry, &parent, &base, &raw)?;
                self.owner_mode_xattrs(&f, uid, gid, mode, &pax.xattrs, &rel)?;
                sys::futimes(&f, atime, mtime)
                    .map_err(|e| Error::io(ctx("setting times of"), e))?;
            }
            EntryType::Regular | EntryType::Continuous => {
                let fd = sys::open_at(
                    &*parent,
                    &base,
                    libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL,
                    0o600,
                )
                .map_err(|e| Error::io(ctx("creating"), e))?;
                let mut f = std::fs::File::from(fd);
                let want = entry.size();
                let n = io::copy(&mut entry, &mut f).map_err(|e| {
                    if e.kind() == io::ErrorKind::UnexpectedEof {
                        Error::Invalid(format!("layer ends inside {}", lossy(&raw)))
                    } else {
                        Error::io(ctx("writing"), e)
                    }
                })?;
                if n != want {
                    return Err(Error::Invalid(format!(
                        "layer ends inside {} ({n} of {want} bytes)",
                        lossy(&raw)
                    )));
                }
                self.owner_mode_xattrs(&f, uid, gid, mode, &pax.xattrs, &rel)?;
                sys::futimes(&f, atime, mtime)
                    .map_err(|e| Error::io(ctx("setting times of"), e))?;
            }
            EntryType::Directory => {
                match sys::mkdir_at(&*parent, &base, 0o700) {
                    Ok(()) => {}
                    Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
                    Err(e) => return Err(Error::io(ctx("creating"), e)),
                }
                let fd = sys::open_at(&*parent, &base, libc::O_RDONLY | libc::O_DIRECTORY, 0)
                    .map_err(|e| Error::io(ctx("opening"), e))?;
                self.owner_mode_xattrs(&fd, uid, gid, mode, &pax.xattrs, &rel)?;
                self.dir_times.push((rel.clone(), atime, mtime));
            }
            EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| {
                        Error::Invalid(format!("symlink {} has no target", lossy(&raw)))
                    })?
                    .into_owned();
                sys::symlink_at(&target, &*parent, &base)
                    .map_err(|e| Error::io(ctx("creating symlink"), e))?;
                self.link_meta(&parent, &base, uid, gid, &pax.xattrs, atime, mtime, &rel)?;
            }
            EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| {
                        Error::Invalid(format!("hard link {} has no target", lossy(&raw)))
                    })?
                    .into_owned();
                let tcomps = clean_path(&target).map_err(|_| {
                    Self::unsafe_entry(
                        &raw,
                        format!("hard link target {} is outside the root", lossy(&target)),
                    )
                })?;
                if tcomps.is_empty() {
                    return Err(Self::unsafe_entry(&raw, "hard link to the root"));
                }
                let tparent = sys::open_beneath(
                    &self.root,
                    &join(&tcomps[..tcomps.len() - 1]),
                    libc::O_RDONLY | libc::O_DIRECTORY,
                )
                .map_err(|e| match e.raw_os_error() {
                    Some(libc::EXDEV) | Some(libc::ELOOP) => Self::unsafe_entry(
                        &raw,
                        format!(
                            "hard link target {} resolves outside the root",
                            lossy(&target)
                        ),
                    ),
                    _ => Error::io(format!("hard link target {}", lossy(&target)), e),
                })?;
                let tname = &tcomps[tcomps.len() - 1];
                sys::link_at(&tparent, tname, &*parent, &base).map_err(|e| {
                    if e.raw_os_error() == Some(libc::ENOENT) {
                        Error::Invalid(format!(
                            "hard link {} to {}, which the layer does not have",
                            lossy(&raw),
                            lossy(&target)
                        ))
                    } else {
                        Error::io(ctx("linking"), e)
                    }
                })?;
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                let kind = match etype {
                    EntryType::Char => libc::S_IFCHR,
                    EntryType::Block => libc::S_IFBLK,
                    _ => libc::S_IFIFO,
                };
                if kind != libc::S_IFIFO {
                    match self.opts.devices {
                        DevicePolicy::Create => {}
                        DevicePolicy::Skip => return Ok(()),
                        DevicePolicy::Reject => {
                            return Err(Self::unsafe_entry(
                                &raw,
                                "device nodes are not allowed here",
                            ))
                        }
                    }
                }
                let major = hdr.device_major().ok().flatten().unwrap_or(0);
                let minor = hdr.device_minor().ok().flatten().unwrap_or(0);
                let dev = libc::makedev(major, minor);
                sys::mknod_at(&*parent, &base, kind | mode, dev)
                    .map_err(|e| Error::io(ctx("creating node"), e))?;
                if self.root_user {
                    sys::lchown_at(&*parent, &base, uid, gid)
                        .map_err(|e| Error::io(ctx("chown"), e))?;
                }
                sys::chmod_at(&*parent, &base, mode).map_err(|e| Error::io(ctx("chmod"), e))?;
                self.link_meta(&parent, &base, uid, gid, &pax.xattrs, atime, mtime, &rel)?;
            }
            other => {
                return Err(Error::Invalid(format!(
                    "entry {} has an unsupported type {:?}",
                    lossy(&raw),
                    other
                )))
            }
        }
        self.created.insert(rel);
        Ok(())
    }

    fn pax<R: Read>(&self, entry: &mut tar::Entry<'_, R>, raw: &[u8]) -> Result<Pax, Error> {
        let mut p = Pax::default();
        let exts = entry
            .pax_extensions()
            .map_err(|e| Error::Invalid(format!("PAX header of {}: {e}", lossy(raw))))?;
        let Some(exts) = exts else { return Ok(p) };
        for ext in exts {
            let ext =
                ext.map_err(|e| Error::Invalid(format!("PAX header of {}: {e}", lossy(raw))))?;
            let Ok(key) = ext.key() else { continue };
            let val = ext.value_bytes();
            let sval = std::str::from_utf8(val).unwrap_or("");
            match key {
                "uid" => p.uid = sval.parse().ok(),
                "gid" => p.gid = sval.parse().ok(),
                "mtime" => p.mtime = parse_time(sval),
                "atime" => p.atime = parse_time(sval),
                k => {
                    if let Some(name) = k.strip_prefix("SCHILY.xattr.") {
                        p.xattrs.push((name.to_string(), val.to_vec()));
                    }
                }
            }
        }
        Ok(p)
    }

    fn xattr_result(&self, r: io::Result<()>, name: &str, rel: &[u8]) -> Result<(), Error> {
        match r {
            Ok(()) => Ok(()),
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTSUP) | Some(libc::EPERM)) => {
                tracing::warn!(path = %lossy(rel), xattr = name, error = %e, "ignoring extended attribute");
                Ok(())
            }
            Err(e) => Err(Error::io(format!("setting {name} on {}", lossy(rel)), e)),
        }
    }

    fn owner_mode_xattrs(
        &self,
        fd: &impl AsRawFd,
        uid: u32,
        gid: u32,
        mode: u32,
        xattrs: &[(String, Vec<u8>)],
        rel: &[u8],
    ) -> Result<(), Error> {
        if self.root_user {
            sys::fchown(fd, uid, gid).map_err(|e| Error::io(format!("chown {}", lossy(rel)), e))?;
        }
        sys::fchmod(fd, mode).map_err(|e| Error::io(format!("chmod {}", lossy(rel)), e))?;
        for (k, v) in xattrs {
            self.xattr_result(sys::fsetxattr(fd, k, v), k, rel)?;
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn link_meta(
        &self,
        parent: &OwnedFd,
        base: &[u8],
        uid: u32,
        gid: u32,
        xattrs: &[(String, Vec<u8>)],
        atime: Time,
        mtime: Time,
        rel: &[u8],
    ) -> Result<(), Error> {
        if self.root_user {
            sys::lchown_at(parent, base, uid, gid)
                .map_err(|e| Error::io(format!("chown {}", lossy(rel)), e))?;
        }
        for (k, v) in xattrs {
            self.xattr_result(sys::lsetxattr_at(parent, base, k, v), k, rel)?;
        }
        sys::lutimes_at(parent, base, atime, mtime)
            .map_err(|e| Error::io(format!("setting times of {}", lossy(rel)), e))
    }

    fn whiteout(
        &mut self,
        parent: &OwnedFd,
        parent_comps: &[Vec<u8>],
        name: &[u8],
        raw: &[u8],
        uid: u32,
        gid: u32,
    ) -> Result<(), Error> {
        if name == b".wh..opq" {
            if self.opts.overlay {
                return self.xattr_result(
                    sys::fsetxattr(parent, "trusted.overlay.opaque", b"y"),
                    "trusted.overlay.opaque",
                    raw,
                );
            }
            for child in sys::list_dir(parent).map_err(|e| Error::io(lossy(raw), e))? {
                let mut rel = parent_comps.to_vec();
                rel.push(child.clone());
                if !self.created.contains(&join(&rel)) {
                    sys::remove_all_at(parent, &child)
                        .map_err(|e| Error::io(format!("removing {}", lossy(&join(&rel))), e))?;
                }
            }
            self.cache = None;
            return Ok(());
        }
        if name.is_empty() || name == b"." || name == b".." {
            return Err(Self::unsafe_entry(raw, "whiteout of an invalid name"));
        }
        sys::remove_all_at(parent, name)
            .map_err(|e| Error::io(format!("whiteout {}", lossy(raw)), e))?;
        self.cache = None;
        if self.opts.overlay {
            sys::mknod_at(parent, name, libc::S_IFCHR, libc::makedev(0, 0))
                .map_err(|e| Error::io(format!("whiteout {}", lossy(raw)), e))?;
            if self.root_user {
                let _ = sys::lchown_at(parent, name, uid, gid);
            }
        }
        Ok(())
    }

    /// Sets directory times last: creating entries inside changes them.
    fn finish_dirs(&mut self) {
        self.cache = None;
        for (rel, atime, mtime) in std::mem::take(&mut self.dir_times).into_iter().rev() {
            if let Ok(fd) = sys::open_beneath(
                &self.root,
                &rel,
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
            ) {
                let _ = sys::futimes(&fd, atime, mtime);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cleaning() {
        assert_eq!(
            clean_path(b"./a/b/").unwrap(),
            vec![b"a".to_vec(), b"b".to_vec()]
        );
        assert_eq!(clean_path(b"/a/../b").unwrap(), vec![b"b".to_vec()]);
        assert!(clean_path(b"../x").is_err());
        assert!(clean_path(b"a/../../x").is_err());
        assert!(clean_path(b"./").unwrap().is_empty());
        assert_eq!(parse_time("12.5"), Some((12, 500_000_000)));
        assert_eq!(parse_time("7"), Some((7, 0)));
    }
}
