//! Network namespaces: a fresh one per VM (bind-mounted so it outlives its maker),
//! and running iproute2 inside a namespace.

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::NetError;

/// Where the shim keeps the network namespaces it makes, one file per VM.
pub const NETNS_DIR: &str = "/run/ember/netns";

/// The path of the namespace Ember makes for the VM whose state directory ends in
/// `key`.
pub fn fresh_path(key: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(key)
}

/// Makes a new, empty network namespace (only `lo`, down) and bind-mounts it at
/// `path`. A thread of its own unshares and exits afterwards, so no thread of the
/// shim changes namespace.
pub fn create(path: &Path) -> Result<(), NetError> {
    let fail = |e: String| NetError::Netns {
        path: path.to_path_buf(),
        why: e,
    };
    // A namespace left at this path by a VM of the same key is a leftover (boots of
    // one VM are serialised): it goes, rather than being mounted over.
    if path.exists() {
        remove(path);
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| fail(format!("making {}: {e}", dir.display())))?;
    }
    std::fs::File::create(path).map_err(|e| fail(format!("creating the mount point: {e}")))?;
    let target = path.to_path_buf();
    let made = std::thread::spawn(move || -> Result<(), String> {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|e| format!("unshare(CLONE_NEWNET): {e}"))?;
        nix::mount::mount(
            Some("/proc/thread-self/ns/net"),
            &target,
            None::<&str>,
            nix::mount::MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|e| format!("bind-mounting the namespace: {e}"))
    })
    .join()
    .unwrap_or_else(|_| Err("the namespace thread panicked".into()));
    if let Err(e) = made {
        let _ = std::fs::remove_file(path);
        return Err(fail(e));
    }
    // `lo` up: the host side of a guest never uses it, but CNI plugins expect it.
    let _ = run(path, "ip", &["link", "set", "lo", "up"]);
    Ok(())
}

/// Unmounts and removes a namespace made by [`create`]; the kernel frees it (and
/// the interfaces left in it) once no process holds it. Missing: nothing to do.
pub fn remove(path: &Path) {
    let _ = nix::mount::umount2(path, nix::mount::MntFlags::MNT_DETACH);
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!("removing {}: {e}", path.display()),
    }
}

/// Whether `path` is a network namespace (a bind mount of one, or /proc/PID/ns/net).
pub fn is_netns(path: &Path) -> bool {
    let Ok(f) = std::fs::File::open(path) else {
        return false;
    };
    // NS_GET_NSTYPE (_IO(0xb7, 0x3)) answers the namespace type of an nsfs file.
    const NS_GET_NSTYPE: libc::c_ulong = 0xb703;
    // SAFETY: the ioctl takes no argument and only reads the descriptor's inode.
    let t = unsafe { libc::ioctl(f.as_raw_fd(), NS_GET_NSTYPE as _) };
    t == libc::CLONE_NEWNET
}

/// Runs `program args` inside the namespace at `netns`; its stdout, or an error with
/// the command and its stderr.
pub fn run(netns: &Path, program: &str, args: &[&str]) -> Result<String, NetError> {
    let file = std::fs::File::open(netns).map_err(|e| NetError::Netns {
        path: netns.to_path_buf(),
        why: e.to_string(),
    })?;
    let fd: OwnedFd = file.into();
    let mut cmd = Command::new(program);
    cmd.args(args);
    let raw = fd.as_raw_fd();
    // SAFETY: between fork and exec the closure only calls setns(2), which is
    // async-signal-safe; `fd` outlives the spawn (it is dropped after `output`).
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(raw, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let shown = || format!("{program} {}", args.join(" "));
    let out = cmd.output().map_err(|e| NetError::Command {
        command: shown(),
        why: e.to_string(),
    })?;
    drop(fd);
    if !out.status.success() {
        return Err(NetError::Command {
            command: shown(),
            why: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fresh_namespace_has_only_lo_and_goes_on_remove() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("ns");
        create(&p).unwrap();
        assert!(is_netns(&p));
        let links = run(&p, "ip", &["-o", "link"]).unwrap();
        assert_eq!(links.lines().count(), 1, "{links}");
        assert!(links.contains("lo:"), "{links}");
        // Not the shim's own namespace.
        use std::os::unix::fs::MetadataExt;
        assert_ne!(
            std::fs::metadata(&p).unwrap().ino(),
            std::fs::metadata("/proc/self/ns/net").unwrap().ino()
        );
        // Made again at the same path: the leftover goes first (one mount, not two).
        create(&p).unwrap();
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let here = p.display().to_string();
        assert_eq!(
            mounts.lines().filter(|l| l.contains(&here)).count(),
            1,
            "{mounts}"
        );
        remove(&p);
        assert!(!p.exists());
        assert!(!is_netns(&p));
        remove(&p);
    }

    #[test]
    fn a_failing_command_names_itself_and_its_stderr() {
        let e = run(
            Path::new("/proc/self/ns/net"),
            "ip",
            &["link", "show", "nosuchdev0"],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("ip link show nosuchdev0"), "{e}");
        assert!(
            e.contains("nosuchdev0\" does not exist") || e.contains("not exist"),
            "{e}"
        );
        assert!(!is_netns(Path::new("/etc/hostname")));
    }
}
