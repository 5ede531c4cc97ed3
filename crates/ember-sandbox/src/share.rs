//! The host side of a VM's shared directory.
//!
//! A VMM with a shared filesystem (QEMU's virtio-9p) exports one host directory per
//! VM, `<vm state>/shared`, which the guest mounts at
//! [`SHARED_GUEST_DIR`](ember_agent_api::SHARED_GUEST_DIR). The directory is made
//! before boot and bind-mounted onto itself as a *private* mount point, so the bind
//! mounts made inside it later never propagate to other mount namespaces. Each host
//! source a container asks for is bind-mounted (after boot: the VMM's file server sees
//! new mounts) at `<shared>/<container>/<index>`: a directory onto an empty
//! directory, a single file onto an empty file. Read-only sources are remounted
//! read-only on the host as well, so the guest cannot write whatever it asks for.
//!
//! Removal never deletes recursively: after the mounts are detached, only the empty
//! mount points made here are removed (`rmdir`, or `unlink` of an empty file), so a
//! mount that is somehow still there makes removal fail instead of deleting the
//! host's data behind it.

use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::statvfs::{statvfs, FsFlags};

/// Name of the shared directory inside a VM's state directory.
pub const DIR_NAME: &str = "shared";

/// Errors of the shared directory.
#[derive(Debug, thiserror::Error)]
pub enum ShareError {
    /// A container id or index that cannot name a directory.
    #[error("{0}")]
    Invalid(String),
    #[error("the host path {0} does not exist")]
    Missing(PathBuf),
    #[error("{what} {path}: {source}")]
    Mount {
        what: &'static str,
        path: PathBuf,
        source: nix::Error,
    },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("{0} is still mounted after unmounting it")]
    StillMounted(PathBuf),
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> ShareError {
    let path = path.to_path_buf();
    move |source| ShareError::Io { what, path, source }
}

fn mount_err(what: &'static str, path: &Path) -> impl FnOnce(nix::Error) -> ShareError {
    let path = path.to_path_buf();
    move |source| ShareError::Mount { what, path, source }
}

/// A VM's shared directory on the host, a private mount point.
#[derive(Debug, Clone)]
pub struct SharedDir {
    root: PathBuf,
}

impl SharedDir {
    /// Makes `<vm_state>/shared` and turns it into a private mount point. Call it
    /// before boot and hand [`SharedDir::path`] to the VMM as its shared directory.
    /// Whatever an earlier VM of this state directory left there is cleaned up
    /// first ([`cleanup`]).
    pub fn create(vm_state: &Path) -> Result<SharedDir, ShareError> {
        let root = vm_state.join(DIR_NAME);
        cleanup(&root)?;
        fs::create_dir_all(&root).map_err(io_err("creating", &root))?;
        let root = fs::canonicalize(&root).map_err(io_err("resolving", &root))?;
        mount(
            Some(&root),
            &root,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(mount_err("bind-mounting onto itself", &root))?;
        if let Err(e) = mount(
            None::<&str>,
            &root,
            None::<&str>,
            MsFlags::MS_PRIVATE,
            None::<&str>,
        ) {
            let _ = umount2(&root, MntFlags::MNT_DETACH);
            return Err(mount_err("making private", &root)(e));
        }
        Ok(SharedDir { root })
    }

    /// The host directory the VMM exports.
    pub fn path(&self) -> &Path {
        &self.root
    }

    /// Bind-mounts `host_src` (a directory or a single file; `recursive` takes its
    /// submounts along, as `rbind` does) at `<shared>/<container_id>/<index>` and
    /// returns the path under which the guest sees it. With `read_only` the bind
    /// (and every submount it took along) is read-only on the host too.
    pub fn share(
        &self,
        container_id: &str,
        index: usize,
        host_src: &Path,
        read_only: bool,
        recursive: bool,
    ) -> Result<String, ShareError> {
        check_name(container_id)?;
        let meta = match fs::metadata(host_src) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(ShareError::Missing(host_src.to_path_buf()))
            }
            Err(e) => return Err(io_err("reading", host_src)(e)),
        };
        if !meta.is_dir() && !meta.is_file() {
            return Err(ShareError::Invalid(format!(
                "{} is neither a directory nor a regular file: only those can be shared with a microVM",
                host_src.display()
            )));
        }
        let dir = self.root.join(container_id);
        fs::create_dir_all(&dir).map_err(io_err("creating", &dir))?;
        let target = dir.join(index.to_string());
        if meta.is_dir() {
            fs::create_dir(&target).map_err(io_err("creating", &target))?;
        } else {
            fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&target)
                .map_err(io_err("creating", &target))?;
        }
        let made = bind(host_src, &target, read_only, recursive);
        if let Err(e) = made {
            let _ = detach_all(&target);
            let _ = remove_mount_point(&target);
            return Err(e);
        }
        Ok(format!(
            "{}/{container_id}/{index}",
            ember_agent_api::SHARED_GUEST_DIR
        ))
    }

    /// Unmounts everything shared for `container_id` and removes its mount points.
    pub fn release(&self, container_id: &str) -> Result<(), ShareError> {
        check_name(container_id)?;
        let dir = self.root.join(container_id);
        if !dir.exists() {
            return Ok(());
        }
        detach_all(&dir)?;
        remove_container_dir(&dir)
    }
}

/// Everything a shim left in a shared directory (its VM gone, or the shim itself
/// dead): unmounts every mount under `shared_dir` and the directory's own mount,
/// then removes the empty mount points and the directory. A directory that does
/// not exist is fine.
pub fn cleanup(shared_dir: &Path) -> Result<(), ShareError> {
    let root = match fs::canonicalize(shared_dir) {
        Ok(r) => r,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err("resolving", shared_dir)(e)),
    };
    detach_all(&root)?;
    for e in fs::read_dir(&root).map_err(io_err("reading", &root))? {
        let e = e.map_err(io_err("reading", &root))?;
        let p = e.path();
        if e.file_type().map_err(io_err("reading", &p))?.is_dir() {
            remove_container_dir(&p)?;
        } else {
            remove_mount_point(&p)?;
        }
    }
    fs::remove_dir(&root).map_err(io_err("removing", &root))
}

/// The mount points at or under `dir` (to check that nothing was left).
pub fn mounted_under(dir: &Path) -> Result<Vec<PathBuf>, ShareError> {
    let dir = fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    mount_points_under(&dir)
}

/// How host directories reach a guest on `vmm`, in words for `ember info`.
pub fn transport(vmm: ember_vmm::VmmKind) -> &'static str {
    match vmm {
        ember_vmm::VmmKind::Qemu => "virtio-9p (QEMU)",
        ember_vmm::VmmKind::Firecracker => "none: files copied in (Firecracker)",
    }
}

/// Container ids become one path component.
fn check_name(id: &str) -> Result<(), ShareError> {
    if id.is_empty() || id == "." || id == ".." || id.contains('/') || id.contains('\0') {
        return Err(ShareError::Invalid(format!(
            "container id {id:?} cannot name a shared directory"
        )));
    }
    Ok(())
}

fn bind(src: &Path, target: &Path, read_only: bool, recursive: bool) -> Result<(), ShareError> {
    let mut flags = MsFlags::MS_BIND;
    if recursive {
        flags |= MsFlags::MS_REC;
    }
    mount(Some(src), target, None::<&str>, flags, None::<&str>)
        .map_err(mount_err("bind-mounting onto", target))?;
    // The source's mounts may be shared with other namespaces; this copy is not.
    mount(
        None::<&str>,
        target,
        None::<&str>,
        MsFlags::MS_PRIVATE | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(mount_err("making private", target))?;
    if read_only {
        // A read-only remount applies to one mount: do the bind and each submount.
        let mut points = mount_points_under(target)?;
        points.sort_by_key(|p| p.components().count());
        for p in points {
            remount_read_only(&p)?;
        }
    }
    Ok(())
}

/// Makes the bind mount at `p` read-only, keeping its other per-mount flags (a
/// plain remount would drop nosuid, nodev, noexec).
fn remount_read_only(p: &Path) -> Result<(), ShareError> {
    let st = statvfs(p).map_err(mount_err("reading the mount flags of", p))?;
    let mut flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
    for (st_flag, ms_flag) in [
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
    ] {
        if st.flags().contains(st_flag) {
            flags |= ms_flag;
        }
    }
    mount(None::<&str>, p, None::<&str>, flags, None::<&str>)
        .map_err(mount_err("remounting read-only", p))
}

/// Detaches every mount at or under `dir`, deepest first, and checks none is left.
fn detach_all(dir: &Path) -> Result<(), ShareError> {
    // A mount stacked on another at the same point shows up once per layer.
    for _ in 0..16 {
        let mut points = mount_points_under(dir)?;
        if points.is_empty() {
            return Ok(());
        }
        points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        for p in &points {
            match umount2(p, MntFlags::MNT_DETACH) {
                // Gone already: detached with a parent.
                Ok(()) | Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => {}
                Err(e) => return Err(mount_err("unmounting", p)(e)),
            }
        }
    }
    match mount_points_under(dir)?.into_iter().next() {
        Some(p) => Err(ShareError::StillMounted(p)),
        None => Ok(()),
    }
}

/// Removes a container's directory of mount points, none of them mounted.
fn remove_container_dir(dir: &Path) -> Result<(), ShareError> {
    for e in fs::read_dir(dir).map_err(io_err("reading", dir))? {
        let e = e.map_err(io_err("reading", dir))?;
        remove_mount_point(&e.path())?;
    }
    fs::remove_dir(dir).map_err(io_err("removing", dir))
}

/// Removes an unmounted mount point made by [`SharedDir::share`]: an empty directory
/// or an empty file. Anything else is left where it is, with an error.
fn remove_mount_point(p: &Path) -> Result<(), ShareError> {
    let meta = match fs::symlink_metadata(p) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err("reading", p)(e)),
    };
    if meta.is_dir() {
        fs::remove_dir(p).map_err(io_err("removing", p))
    } else if meta.is_file() && meta.size() == 0 {
        fs::remove_file(p).map_err(io_err("removing", p))
    } else {
        Err(ShareError::Invalid(format!(
            "{} is not an empty mount point; left in place",
            p.display()
        )))
    }
}

/// Mount points at or under `dir` in this mount namespace.
fn mount_points_under(dir: &Path) -> Result<Vec<PathBuf>, ShareError> {
    let path = Path::new("/proc/self/mountinfo");
    let text = fs::read_to_string(path).map_err(io_err("reading", path))?;
    Ok(text
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|f| PathBuf::from(unescape(f)))
        .filter(|p| p.starts_with(dir))
        .collect())
}

/// Undoes mountinfo's octal escapes (`\040` for a space, and so on).
fn unescape(field: &str) -> std::ffi::OsString {
    use std::os::unix::ffi::OsStringExt;
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let value = b
            .get(i + 1..i + 4)
            .filter(|d| b[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)))
            .and_then(|d| u8::from_str_radix(std::str::from_utf8(d).ok()?, 8).ok());
        match value {
            Some(v) => {
                out.push(v);
                i += 4;
            }
            _ => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    std::ffi::OsString::from_vec(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A temporary directory whose mounts go with it, also when a test fails.
    struct Scratch(tempfile::TempDir);

    impl Scratch {
        fn path(&self) -> &Path {
            self.0.path()
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = detach_all(&fs::canonicalize(self.0.path()).unwrap());
        }
    }

    /// A VM state directory and a host source directory holding `data`.
    fn setup() -> (Scratch, SharedDir, PathBuf) {
        let d = Scratch(tempfile::tempdir().unwrap());
        let vm = d.path().join("vm");
        fs::create_dir(&vm).unwrap();
        let src = d.path().join("src");
        fs::create_dir(&src).unwrap();
        fs::write(src.join("data"), "host data").unwrap();
        let shared = SharedDir::create(&vm).unwrap();
        (d, shared, src)
    }

    fn mountinfo_line(p: &Path) -> Option<String> {
        fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .find(|l| l.split(' ').nth(4).map(Path::new) == Some(p))
            .map(str::to_string)
    }

    #[test]
    fn shared_dir_is_a_private_mount_point() {
        // Under a parent whose mounts propagate (as /run often is under systemd).
        let d = tempfile::tempdir().unwrap();
        let parent = fs::canonicalize(d.path()).unwrap();
        let flags = MsFlags::MS_BIND;
        mount(Some(&parent), &parent, None::<&str>, flags, None::<&str>).unwrap();
        struct Unmount(PathBuf);
        impl Drop for Unmount {
            fn drop(&mut self) {
                let _ = detach_all(&self.0);
            }
        }
        let guard = Unmount(parent.clone());
        mount(
            None::<&str>,
            &parent,
            None::<&str>,
            MsFlags::MS_SHARED,
            None::<&str>,
        )
        .unwrap();
        let optional = |p: &Path| -> Vec<String> {
            let line = mountinfo_line(p).expect("a mount point");
            // Optional fields (shared:N, master:N) sit between field 6 and the "-".
            let head = line.split(" - ").next().unwrap().to_string();
            head.split(' ').skip(6).map(str::to_string).collect()
        };
        assert!(optional(&parent)[0].starts_with("shared:"));
        let vm = parent.join("vm");
        fs::create_dir(&vm).unwrap();
        let shared = SharedDir::create(&vm).unwrap();
        assert!(optional(shared.path()).is_empty(), "not private");
        // Creating it again (a VM booted again on the same state) starts afresh.
        let src = parent.join("src");
        fs::create_dir(&src).unwrap();
        fs::write(src.join("data"), "kept").unwrap();
        shared.share("old", 0, &src, false, true).unwrap();
        let shared = SharedDir::create(&vm).unwrap();
        assert_eq!(
            mounted_under(&vm).unwrap(),
            vec![shared.path().to_path_buf()]
        );
        assert!(!shared.path().join("old").exists());
        assert!(optional(shared.path()).is_empty(), "not private");
        assert_eq!(fs::read_to_string(src.join("data")).unwrap(), "kept");
        cleanup(shared.path()).unwrap();
        assert!(!shared.path().exists());
        drop(guard);
        assert!(mounted_under(&parent).unwrap().is_empty());
    }

    #[test]
    fn read_write_directory_both_ways() {
        let (_d, shared, src) = setup();
        let guest = shared.share("c1", 3, &src, false, true).unwrap();
        assert_eq!(guest, "/run/ember/shared/c1/3");
        let host_view = shared.path().join("c1/3");
        assert_eq!(
            fs::read_to_string(host_view.join("data")).unwrap(),
            "host data"
        );
        fs::write(host_view.join("new"), "from the share").unwrap();
        assert_eq!(
            fs::read_to_string(src.join("new")).unwrap(),
            "from the share"
        );
        shared.release("c1").unwrap();
        assert!(!shared.path().join("c1").exists());
        assert!(mounted_under(shared.path()).unwrap() == vec![shared.path().to_path_buf()]);
        // The host's data is untouched by the release.
        assert_eq!(fs::read_to_string(src.join("data")).unwrap(), "host data");
        assert_eq!(
            fs::read_to_string(src.join("new")).unwrap(),
            "from the share"
        );
        cleanup(shared.path()).unwrap();
    }

    #[test]
    fn read_only_holds_on_the_host_and_for_submounts() {
        let (_d, shared, src) = setup();
        let sub = src.join("sub");
        fs::create_dir(&sub).unwrap();
        mount(
            Some("tmpfs"),
            &sub,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("size=1m"),
        )
        .unwrap();
        fs::write(sub.join("inner"), "x").unwrap();
        shared.share("c1", 0, &src, true, true).unwrap();
        let view = shared.path().join("c1/0");
        let e = fs::write(view.join("data"), "changed").unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc_erofs()), "{e}");
        assert_eq!(fs::read_to_string(view.join("sub/inner")).unwrap(), "x");
        let e = fs::write(view.join("sub/inner"), "y").unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc_erofs()), "{e}");
        // The submount kept its nosuid/nodev next to the new ro.
        let st = statvfs(&view.join("sub")).unwrap();
        assert!(st
            .flags()
            .contains(FsFlags::ST_NOSUID | FsFlags::ST_NODEV | FsFlags::ST_RDONLY));
        // The source itself stays writable.
        fs::write(src.join("data"), "host again").unwrap();
        assert_eq!(fs::read_to_string(view.join("data")).unwrap(), "host again");
        shared.release("c1").unwrap();
        umount2(&sub, MntFlags::MNT_DETACH).unwrap();
        cleanup(shared.path()).unwrap();
    }

    #[test]
    fn plain_bind_leaves_submounts_out() {
        let (_d, shared, src) = setup();
        let sub = src.join("sub");
        fs::create_dir(&sub).unwrap();
        mount(
            Some("tmpfs"),
            &sub,
            Some("tmpfs"),
            MsFlags::empty(),
            Some("size=1m"),
        )
        .unwrap();
        fs::write(sub.join("inner"), "x").unwrap();
        shared.share("c1", 0, &src, false, false).unwrap();
        assert!(!shared.path().join("c1/0/sub/inner").exists());
        shared.release("c1").unwrap();
        umount2(&sub, MntFlags::MNT_DETACH).unwrap();
        cleanup(shared.path()).unwrap();
    }

    #[test]
    fn single_file() {
        let (_d, shared, src) = setup();
        let file = src.join("data");
        shared.share("c1", 1, &file, false, true).unwrap();
        let view = shared.path().join("c1/1");
        assert!(view.is_file());
        assert_eq!(fs::read_to_string(&view).unwrap(), "host data");
        fs::write(&view, "rewritten").unwrap();
        assert_eq!(fs::read_to_string(&file).unwrap(), "rewritten");
        shared.share("c1", 2, &file, true, true).unwrap();
        assert!(fs::write(shared.path().join("c1/2"), "no").is_err());
        shared.release("c1").unwrap();
        assert_eq!(fs::read_to_string(&file).unwrap(), "rewritten");
        cleanup(shared.path()).unwrap();
    }

    #[test]
    fn bad_input() {
        let (d, shared, src) = setup();
        let missing = d.path().join("nope");
        assert!(matches!(
            shared.share("c1", 0, &missing, false, true),
            Err(ShareError::Missing(p)) if p == missing
        ));
        for id in ["", ".", "..", "a/b"] {
            assert!(
                matches!(
                    shared.share(id, 0, &src, false, true),
                    Err(ShareError::Invalid(_))
                ),
                "{id:?}"
            );
        }
        let fifo = d.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        assert!(matches!(
            shared.share("c1", 0, &fifo, false, true),
            Err(ShareError::Invalid(_))
        ));
        // The same index twice is refused and the first bind stays.
        shared.share("c1", 0, &src, false, true).unwrap();
        assert!(shared.share("c1", 0, &src, false, true).is_err());
        assert!(shared.path().join("c1/0/data").exists());
        shared.release("c1").unwrap();
        cleanup(shared.path()).unwrap();
    }

    #[test]
    fn cleanup_after_a_dead_shim_keeps_the_host_data() {
        let (d, shared, src) = setup();
        shared.share("a", 0, &src, false, true).unwrap();
        shared.share("a", 1, &src.join("data"), true, true).unwrap();
        shared.share("b", 0, &src, true, true).unwrap();
        // Nothing released: as a shim killed with its VM leaves it.
        cleanup(shared.path()).unwrap();
        assert!(!shared.path().exists());
        assert!(mounted_under(d.path()).unwrap().is_empty());
        assert_eq!(fs::read_to_string(src.join("data")).unwrap(), "host data");
        cleanup(shared.path()).unwrap();
    }

    #[test]
    fn removal_refuses_what_it_did_not_make() {
        let (_d, shared, src) = setup();
        shared.share("a", 0, &src, false, true).unwrap();
        detach_all(&shared.path().join("a")).unwrap();
        // A stray non-empty file where a mount point was: left, with an error.
        fs::write(shared.path().join("a/9"), "keep").unwrap();
        assert!(shared.release("a").is_err());
        assert_eq!(
            fs::read_to_string(shared.path().join("a/9")).unwrap(),
            "keep"
        );
        fs::remove_file(shared.path().join("a/9")).unwrap();
        cleanup(shared.path()).unwrap();
    }

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape("/a\\040b\\011c\\134d"), "/a b\tc\\d");
        assert_eq!(unescape("/plain\\x"), "/plain\\x");
        assert_eq!(unescape("/end\\04"), "/end\\04");
        assert_eq!(unescape("/high\\777"), "/high\\777");
    }

    fn libc_erofs() -> i32 {
        nix::Error::EROFS as i32
    }
}
