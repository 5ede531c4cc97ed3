//! The jail directory: what the VMM sees after its pivot, and the mounts that put
//! it there. Placeholders (empty files and directories) are made on the host; the
//! bind mounts onto them happen in the VMM's own mount namespace, so the host sees
//! none of them.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::spawn::{DevNode, MountStep};
use super::{DriveExposePolicy, JailConfig};
use crate::{Accel, Error, VmConfig};

/// The VMM's writable directory (its sockets), relative to the jail root.
pub(crate) const RUN: &str = "run";

pub(crate) fn cstring(p: &Path) -> Result<CString, Error> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| Error::InvalidConfig(format!("path {} holds a NUL byte", p.display())))
}

/// The jail directory's name: the VM's id made safe, and its uid.
pub(crate) fn dir_name(config: &VmConfig, uid: u32) -> String {
    let id: String = config
        .id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .take(48)
        .collect();
    format!("{}-{uid}", id.trim_start_matches('.'))
}

struct Builder<'a> {
    root: PathBuf,
    mounts: Vec<MountStep>,
    uid: u32,
    gid: u32,
    jc: &'a JailConfig,
}

const RO: libc::c_ulong = libc::MS_NOSUID | libc::MS_NODEV;

impl Builder<'_> {
    fn bind(
        &mut self,
        src: &Path,
        rel: &str,
        read_only: bool,
        extra: libc::c_ulong,
    ) -> Result<PathBuf, Error> {
        let dst = self.root.join(rel);
        let meta = std::fs::metadata(src).map_err(|e| {
            Error::InvalidConfig(format!("{} for the VMM's jail: {e}", src.display()))
        })?;
        if let Some(parent) = dst.parent() {
            std::fs::create_dir_all(parent)?;
        }
        if meta.is_dir() {
            std::fs::create_dir_all(&dst)?;
        } else {
            std::fs::write(&dst, b"")?;
        }
        self.mounts.push(MountStep {
            src: cstring(src)?,
            dst: cstring(&dst)?,
            fstype: None,
            flags: libc::MS_BIND | extra,
            read_only,
        });
        Ok(Path::new("/").join(rel))
    }

    /// A read-only input (kernel, initrd, read-only drive): bound when the VMM's uid
    /// can read it, else (or with the copy policy) copied into the jail for it.
    fn input(&mut self, src: &Path, rel: &str, copy: bool) -> Result<PathBuf, Error> {
        let m = std::fs::metadata(src).map_err(|e| {
            Error::InvalidConfig(format!("{} for the VMM's jail: {e}", src.display()))
        })?;
        let readable = m.mode() & 0o004 != 0 || m.uid() == self.uid;
        if readable && !copy {
            return self.bind(src, rel, true, RO);
        }
        let dst = self.root.join(rel);
        if let Some(parent) = dst.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let st = std::process::Command::new("cp")
            .arg("--sparse=always")
            .arg("--reflink=auto")
            .arg(src)
            .arg(&dst)
            .status()?;
        if !st.success() {
            return Err(Error::InvalidConfig(format!(
                "copying {} into the VMM's jail failed ({st})",
                src.display()
            )));
        }
        std::os::unix::fs::chown(&dst, Some(self.uid), Some(self.gid))?;
        std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(0o400))?;
        Ok(Path::new("/").join(rel))
    }

    /// A writable drive: bound, owned by the VMM's uid.
    fn writable(&mut self, src: &Path, rel: &str) -> Result<PathBuf, Error> {
        let m = std::fs::metadata(src)?;
        if m.uid() != self.uid {
            std::os::unix::fs::chown(src, Some(self.uid), Some(self.gid))?;
        }
        if m.mode() & 0o600 != 0o600 {
            std::fs::set_permissions(src, std::fs::Permissions::from_mode(m.mode() | 0o600))?;
        }
        self.bind(src, rel, false, libc::MS_NOSUID | libc::MS_NODEV)
    }
}

/// Makes the jail directory `dir` for `config` and returns the configuration as the
/// VMM sees it and the mounts its namespace needs.
pub(crate) fn build(
    config: &VmConfig,
    jc: &JailConfig,
    dir: &Path,
    uid: u32,
    gid: u32,
) -> Result<Built, Error> {
    if dir.exists() {
        remove_dir(dir)?;
    }
    let root = dir.join("root");
    std::fs::create_dir_all(&root)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711))?;
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755))?;
    let mut b = Builder {
        root: root.clone(),
        mounts: Vec::new(),
        uid,
        gid,
        jc,
    };
    let mut seen = config.clone();
    // The host's /usr, read-only: the VMM's libraries and firmware.
    b.bind(Path::new("/usr"), "usr", true, libc::MS_REC | RO)?;
    for top in ["bin", "sbin", "lib", "lib32", "lib64"] {
        let host = Path::new("/").join(top);
        match std::fs::symlink_metadata(&host) {
            Ok(m) if m.file_type().is_symlink() => {
                std::os::unix::fs::symlink(std::fs::read_link(&host)?, root.join(top))?;
            }
            Ok(m) if m.is_dir() => {
                b.bind(&host, top, true, libc::MS_REC | RO)?;
            }
            _ => {}
        }
    }
    // The jail's /dev (a tmpfs made in the VMM's namespace): the harmless nodes for
    // everyone, /dev/kvm (root's alone on the host) owned by the VMM's uid.
    std::fs::create_dir_all(root.join("dev"))?;
    let mut dev = Dev {
        root: root.clone(),
        dirs: Vec::new(),
        nodes: Vec::new(),
    };
    for d in ["null", "zero", "urandom", "random"] {
        dev.node(d, 0o666, 0, 0)?;
    }
    if config.accel != Accel::Tcg && Path::new("/dev/kvm").exists() {
        dev.node("kvm", 0o600, uid, gid)?;
    }
    if !config.nics.is_empty() {
        dev.dirs.push(cstring(&root.join("dev/net"))?);
        dev.node("net/tun", 0o666, 0, 0)?;
    }
    seen.vmm_binary = b.bind(&config.vmm_binary, "vmm", true, libc::MS_NODEV)?;
    seen.kernel = b.input(&config.kernel, "boot/kernel", false)?;
    if let Some(i) = &config.initrd {
        seen.initrd = Some(b.input(i, "boot/initrd", false)?);
    }
    let copy = b.jc.expose == DriveExposePolicy::Copy;
    for (i, d) in config.drives.iter().enumerate() {
        let rel = format!("drives/{i}");
        seen.drives[i].path = if d.read_only {
            b.input(&d.path, &rel, copy)?
        } else {
            b.writable(&d.path, &rel)?
        };
    }
    if config.shared_dir.is_some() {
        // The VMM cannot serve host files itself: a file server outside the jail
        // does (QEMU's virtfs-proxy-helper), the backend sets it up.
        return Err(Error::Unsupported(
            "a shared directory inside the jail (serve it from outside)",
        ));
    }
    for w in [RUN, "tmp"] {
        let p = root.join(w);
        std::fs::create_dir_all(&p)?;
        std::os::unix::fs::chown(&p, Some(uid), Some(gid))?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o700))?;
    }
    seen.state_dir = Path::new("/").join(RUN);
    Ok(Built {
        seen,
        mounts: b.mounts,
        dev: cstring(&root.join("dev"))?,
        dev_dirs: dev.dirs,
        dev_nodes: dev.nodes,
    })
}

/// What [`build`] made: the configuration as the VMM sees it and the mounts and
/// device nodes of its namespace.
pub(crate) struct Built {
    pub seen: VmConfig,
    pub mounts: Vec<MountStep>,
    pub dev: CString,
    pub dev_dirs: Vec<CString>,
    pub dev_nodes: Vec<DevNode>,
}

struct Dev {
    root: PathBuf,
    dirs: Vec<CString>,
    nodes: Vec<DevNode>,
}

impl Dev {
    /// The host's `/dev/<name>` again in the jail (skipped when the host has none).
    fn node(&mut self, name: &str, mode: libc::mode_t, uid: u32, gid: u32) -> Result<(), Error> {
        let Ok(m) = std::fs::metadata(Path::new("/dev").join(name)) else {
            return Ok(());
        };
        self.nodes.push(DevNode {
            path: cstring(&self.root.join("dev").join(name))?,
            rdev: m.rdev(),
            mode,
            uid,
            gid,
        });
        Ok(())
    }
}

/// Removes a jail directory: it holds placeholders, copies and the VMM's sockets,
/// never a host mount (refused if one is there).
pub(crate) fn remove_dir(dir: &Path) -> Result<(), Error> {
    let canon = std::fs::canonicalize(dir)?;
    let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for l in mi.lines() {
        if let Some(p) = l.split_whitespace().nth(4) {
            if Path::new(p).starts_with(&canon) {
                return Err(Error::InvalidConfig(format!(
                    "{p} is mounted inside the jail directory {}: not removing it",
                    dir.display()
                )));
            }
        }
    }
    std::fs::remove_dir_all(&canon)?;
    Ok(())
}
