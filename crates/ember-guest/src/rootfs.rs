//! Small root filesystems built from Debian's static busybox, for tests and demos.

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::Error;

/// Applets linked in the busybox rootfs.
const APPLETS: &[&str] = &[
    "sh",
    "ls",
    "cat",
    "echo",
    "head",
    "tail",
    "wc",
    "sleep",
    "uname",
    "stty",
    "true",
    "false",
    "ps",
    "kill",
    "env",
    "id",
    "hostname",
    "mount",
    "umount",
    "mkdir",
    "rm",
    "cp",
    "mv",
    "dd",
    "yes",
    "sync",
    "seq",
    "top",
    "grep",
    "sed",
    "awk",
    "tr",
    "date",
    "touch",
    "ln",
    "chmod",
    "stat",
    "df",
    "free",
    "uptime",
    "tty",
    "md5sum",
    "sha256sum",
    "nproc",
    "test",
    "[",
    "printf",
    "pwd",
    "whoami",
    "vi",
    "less",
    "more",
    "du",
    "find",
    "xargs",
    "sort",
    "uniq",
    "cut",
    "od",
];

/// Where Debian's `busybox-static` installs busybox.
pub const BUSYBOX: &str = "/bin/busybox";

/// Fills `dir` with a minimal busybox rootfs (`/bin/busybox` plus applet links, /etc
/// files a container expects, and the empty mount points).
pub fn busybox_rootfs(dir: &Path) -> Result<(), Error> {
    let bb = Path::new(BUSYBOX);
    if !bb.is_file() {
        return Err(Error::Tool(format!(
            "{BUSYBOX} not found: apt-get install busybox-static"
        )));
    }
    for d in [
        "bin", "sbin", "etc", "dev", "proc", "sys", "tmp", "root", "run", "var", "usr/bin",
    ] {
        std::fs::create_dir_all(dir.join(d))?;
    }
    std::fs::copy(bb, dir.join("bin/busybox"))?;
    for a in APPLETS {
        let link = dir.join("bin").join(a);
        if !link.exists() {
            symlink("busybox", link)?;
        }
    }
    std::fs::write(
        dir.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
    )?;
    std::fs::write(dir.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n")?;
    std::fs::write(dir.join("etc/hostname"), "ember\n")?;
    std::fs::write(
        dir.join("etc/os-release"),
        "NAME=\"Ember test busybox\"\nID=busybox\n",
    )?;
    Ok(())
}

/// Makes an ext4 image of `size_mib` MiB holding the contents of `dir` (mkfs.ext4 -d).
pub fn make_ext4(dir: &Path, image: &Path, size_mib: u32) -> Result<(), Error> {
    let _ = std::fs::remove_file(image);
    let out = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-E", "root_owner=0:0", "-d"])
        .arg(dir)
        .arg(image)
        .arg(format!("{size_mib}M"))
        .output()
        .map_err(|e| Error::Tool(format!("mkfs.ext4: {e} (apt-get install e2fsprogs)")))?;
    if !out.status.success() {
        return Err(Error::Tool(format!(
            "mkfs.ext4 failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(())
}

/// The default OCI runtime spec (as `runc spec` makes it) running `args`.
pub fn default_spec(args: &[&str], terminal: bool) -> oci_spec::runtime::Spec {
    let mut spec = oci_spec::runtime::Spec::default();
    spec.set_hostname(Some("ember".into()));
    if let Some(root) = spec.root_mut() {
        root.set_readonly(Some(false));
    }
    if let Some(p) = spec.process_mut() {
        p.set_args(Some(args.iter().map(|s| s.to_string()).collect()));
        p.set_terminal(Some(terminal));
    }
    spec
}

/// An OCI bundle on disk whose rootfs is also an ext4 image.
#[derive(Debug, Clone)]
pub struct BusyboxBundle {
    /// The bundle directory (holds `config.json` and `rootfs/`).
    pub dir: PathBuf,
    /// The ext4 image of `rootfs/`.
    pub image: PathBuf,
}

impl BusyboxBundle {
    /// Creates a bundle in `dir` running `args`, with an ext4 image of its rootfs.
    pub fn create(dir: &Path, args: &[&str]) -> Result<Self, Error> {
        let rootfs = dir.join("rootfs");
        std::fs::create_dir_all(&rootfs)?;
        busybox_rootfs(&rootfs)?;
        let spec = default_spec(args, false);
        std::fs::write(
            dir.join("config.json"),
            serde_json::to_vec_pretty(&spec).map_err(|e| Error::Tool(e.to_string()))?,
        )?;
        let image = dir.join("rootfs.ext4");
        make_ext4(&rootfs, &image, 16)?;
        Ok(BusyboxBundle {
            dir: dir.to_path_buf(),
            image,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_runs_the_given_args() {
        let s = default_spec(&["uname", "-r"], true);
        let p = s.process().as_ref().unwrap();
        assert_eq!(
            p.args().as_ref().unwrap(),
            &["uname".to_string(), "-r".into()]
        );
        assert_eq!(p.terminal(), Some(true));
    }

    #[test]
    fn bundle_with_image() {
        if !Path::new(BUSYBOX).is_file() || Command::new("mkfs.ext4").arg("-V").output().is_err() {
            eprintln!("skipping: busybox-static or e2fsprogs missing");
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let b = BusyboxBundle::create(d.path(), &["true"]).unwrap();
        assert!(b.image.metadata().unwrap().len() >= 16 << 20);
        assert!(d.path().join("rootfs/bin/sh").symlink_metadata().is_ok());
        let cfg: serde_json::Value =
            serde_json::from_slice(&std::fs::read(d.path().join("config.json")).unwrap()).unwrap();
        assert_eq!(cfg["process"]["args"][0], "true");
    }
}
