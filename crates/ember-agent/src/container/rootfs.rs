//! The container's root: its mounts, devices, pivot_root, read-only and masked paths.

use std::io;
use std::os::fd::RawFd;
use std::path::{Component, Path, PathBuf};

use oci_spec::runtime::Spec;

use super::devices::{create_default_devices, create_device};
use super::mounts::do_mount;
use super::{container_pty, err, session};
use crate::sys::{self, check};

pub(super) fn setup_init(
    spec: &Spec,
    rootfs: &Path,
    metadata_dir: Option<&Path>,
    name_files: &[crate::network::files::NameFile],
    terminal: bool,
    report_fd: RawFd,
    console_fd: RawFd,
) -> io::Result<()> {
    // Nothing we mount may propagate back to the agent's namespace.
    sys::mount(
        None,
        Path::new("/"),
        None,
        libc::MS_REC | libc::MS_PRIVATE,
        None,
    )
    .map_err(|e| err("making / private", e))?;
    // pivot_root needs the new root to be a mount point.
    let root_str = rootfs.to_str().unwrap_or("");
    sys::mount(
        Some(root_str),
        rootfs,
        None,
        libc::MS_BIND | libc::MS_REC,
        None,
    )
    .map_err(|e| err(format!("bind-mounting rootfs {}", rootfs.display()), e))?;

    let mounts = spec.mounts().clone().unwrap_or_default();
    let mut dev_is_tmpfs = false;
    for m in &mounts {
        if m.destination() == Path::new("/dev") && m.typ().as_deref() == Some("tmpfs") {
            dev_is_tmpfs = true;
        }
        do_mount(rootfs, m, report_fd)?;
    }
    if let Some(src) = metadata_dir {
        // After the spec's mounts, so that a tmpfs on /run does not hide it.
        bind_metadata(rootfs, src, report_fd);
    }
    crate::network::files::bind(rootfs, name_files, report_fd);
    if dev_is_tmpfs {
        create_default_devices(rootfs)?;
    }
    let linux = spec.linux().clone().unwrap_or_default();
    for d in linux.devices().clone().unwrap_or_default() {
        create_device(rootfs, &d)?;
    }

    pivot_root(rootfs)?;

    if let Some(sysctl) = linux.sysctl() {
        for (k, v) in sysctl {
            let p = PathBuf::from("/proc/sys").join(k.replace('.', "/"));
            std::fs::write(&p, v).map_err(|e| err(format!("sysctl {k}"), e))?;
        }
    }
    for p in linux.readonly_paths().clone().unwrap_or_default() {
        let p = Path::new(&p);
        if p.exists() {
            let ctx = |e| err(format!("read-only path {}", p.display()), e);
            sys::mount(p.to_str(), p, None, libc::MS_BIND | libc::MS_REC, None).map_err(ctx)?;
            sys::mount(
                None,
                p,
                None,
                libc::MS_BIND
                    | libc::MS_REMOUNT
                    | libc::MS_RDONLY
                    | libc::MS_REC
                    | libc::MS_NOSUID
                    | libc::MS_NODEV
                    | libc::MS_NOEXEC,
                None,
            )
            .map_err(ctx)?;
        }
    }
    for p in linux.masked_paths().clone().unwrap_or_default() {
        let p = Path::new(&p);
        let ctx = |e| err(format!("masked path {}", p.display()), e);
        match std::fs::metadata(p) {
            Ok(md) if md.is_dir() => {
                sys::mount(Some("tmpfs"), p, Some("tmpfs"), libc::MS_RDONLY, None).map_err(ctx)?
            }
            Ok(_) => sys::mount(Some("/dev/null"), p, None, libc::MS_BIND, None).map_err(ctx)?,
            Err(_) => {}
        }
    }
    if spec
        .root()
        .as_ref()
        .and_then(|r| r.readonly())
        .unwrap_or(false)
    {
        sys::mount(
            None,
            Path::new("/"),
            None,
            libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY,
            None,
        )
        .map_err(|e| err("remounting / read-only", e))?;
    }
    if let Some(h) = spec.hostname().as_deref().filter(|h| !h.is_empty()) {
        nix::unistd::sethostname(h).map_err(|e| err("sethostname", e.into()))?;
    }
    if let Some(d) = spec.domainname().as_deref().filter(|h| !h.is_empty()) {
        // SAFETY: the pointer and length describe the live bytes of `d`, which
        // setdomainname only reads (no NUL terminator needed with a length).
        check(unsafe { libc::setdomainname(d.as_ptr() as *const libc::c_char, d.len()) })
            .map_err(|e| err("setdomainname", e))?;
    }
    if terminal {
        let n = container_pty(console_fd, None);
        if dev_is_tmpfs {
            // /dev/console is the container's terminal.
            let console = Path::new("/dev/console");
            let target = match n {
                Some(n) => format!("/dev/pts/{n}"),
                None => "/proc/self/fd/0".to_string(),
            };
            if std::fs::File::create(console).is_ok() {
                let _ = sys::mount(Some(&target), console, None, libc::MS_BIND, None);
            }
        }
    }
    session(terminal)?;
    Ok(())
}

/// Binds the guest's metadata directory read-only at the same path in the
/// container. A rootfs where the mount point cannot be made (read-only) goes
/// without, with a warning.
fn bind_metadata(rootfs: &Path, src: &Path, report_fd: RawFd) {
    let guest = Path::new(ember_agent_api::METADATA_GUEST_PATH)
        .parent()
        .unwrap_or(Path::new("/run/ember/metadata"));
    let res = secure_join(rootfs, guest).and_then(|dest| {
        std::fs::create_dir_all(&dest).map_err(|e| err("creating the mount point", e))?;
        sys::bind_read_only(src, &dest)
    });
    if let Err(e) = res {
        crate::spawn::report(
            report_fd,
            "log",
            &format!("metadata not mounted at {}: {e}", guest.display()),
        );
    }
}

fn pivot_root(rootfs: &Path) -> io::Result<()> {
    std::env::set_current_dir(rootfs).map_err(|e| err("chdir rootfs", e))?;
    nix::unistd::pivot_root(".", ".").map_err(|e| err("pivot_root", e.into()))?;
    // The old root is stacked under the new one at "."; detach it.
    sys::umount(Path::new("."), libc::MNT_DETACH).map_err(|e| err("umount old root", e))?;
    std::env::set_current_dir("/")?;
    Ok(())
}

/// Joins `path` to `root` resolving symlinks as if `root` were `/`, so that
/// nothing in the container's rootfs can point a mount outside of it.
pub fn secure_join(root: &Path, path: &Path) -> io::Result<PathBuf> {
    let mut todo: Vec<std::ffi::OsString> = path
        .components()
        .rev()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(s.to_os_string()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect();
    let mut resolved: Vec<std::ffi::OsString> = Vec::new();
    let mut links = 0;
    while let Some(c) = todo.pop() {
        if c == ".." {
            resolved.pop();
            continue;
        }
        let mut cand = root.to_path_buf();
        cand.extend(&resolved);
        cand.push(&c);
        match std::fs::symlink_metadata(&cand) {
            Ok(md) if md.file_type().is_symlink() => {
                links += 1;
                if links > 255 {
                    return Err(io::Error::other(format!(
                        "too many symlinks resolving {}",
                        path.display()
                    )));
                }
                let target = std::fs::read_link(&cand)?;
                if target.is_absolute() {
                    resolved.clear();
                }
                for tc in target.components().rev() {
                    match tc {
                        Component::Normal(s) => todo.push(s.to_os_string()),
                        Component::ParentDir => todo.push("..".into()),
                        _ => {}
                    }
                }
            }
            _ => resolved.push(c),
        }
    }
    let mut out = root.to_path_buf();
    out.extend(&resolved);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn join_stays_inside() {
        let dir = std::env::temp_dir().join(format!("ember-sj-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("a")).unwrap();
        let _ = std::fs::remove_file(dir.join("a/escape"));
        symlink("/../../etc", dir.join("a/escape")).unwrap();
        let _ = std::fs::remove_file(dir.join("rel"));
        symlink("a/../a", dir.join("rel")).unwrap();
        assert_eq!(
            secure_join(&dir, Path::new("/../../x")).unwrap(),
            dir.join("x")
        );
        assert_eq!(
            secure_join(&dir, Path::new("/a/escape/passwd")).unwrap(),
            dir.join("etc/passwd")
        );
        assert_eq!(
            secure_join(&dir, Path::new("rel/f")).unwrap(),
            dir.join("a/f")
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
