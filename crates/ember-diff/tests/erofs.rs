//! Layers straight to EROFS: the image mounted read-only holds what the
//! overlay-mode directory applier writes, escaping entries are refused and leave
//! nothing, truncated layers fail cleanly.

use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::process::Command;

use ember_diff::erofs::{erofs_tool, temp_path, write_layer};
use ember_diff::{apply, ApplyOptions, Error};

fn usable() -> bool {
    let ok = erofs_tool().is_some_and(|t| t.reads_tar()) && nix_root();
    if !ok {
        eprintln!("skipping: needs root and mkfs.erofs 1.8 (scripts/trixie.sh erofs-utils)");
    }
    ok
}

fn nix_root() -> bool {
    // SAFETY: `geteuid` takes no arguments and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn entry(b: &mut tar::Builder<Vec<u8>>, name: &str, kind: tar::EntryType, link: &str, data: &[u8]) {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(if kind == tar::EntryType::Directory {
        0o755
    } else {
        0o644
    });
    h.set_size(data.len() as u64);
    h.set_mtime(1_700_000_000);
    h.set_uid(0);
    h.set_gid(0);
    // Raw names: the builder's own path checks would refuse the malicious ones.
    let n = name.as_bytes();
    h.as_old_mut().name[..n.len()].copy_from_slice(n);
    if !link.is_empty() {
        let l = link.as_bytes();
        h.as_old_mut().linkname[..l.len()].copy_from_slice(l);
    }
    h.set_cksum();
    b.append(&h, data).unwrap();
}

fn layer(entries: &[(&str, tar::EntryType, &str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (n, k, l, d) in entries {
        entry(&mut b, n, *k, l, d);
    }
    b.into_inner().unwrap()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

struct Mounted(std::path::PathBuf);

impl Mounted {
    fn erofs(image: &Path, at: &Path) -> Mounted {
        std::fs::create_dir_all(at).unwrap();
        let out = Command::new("mount")
            .args(["-t", "erofs", "-o", "ro,loop"])
            .arg(image)
            .arg(at)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        Mounted(at.to_path_buf())
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

fn opaque(p: &Path) -> bool {
    let path = std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
    let name = c"trusted.overlay.opaque";
    let mut buf = [0u8; 8];
    // SAFETY: both strings are NUL-terminated and outlive the call; the buffer's
    // length is passed with it.
    let n = unsafe {
        libc::lgetxattr(
            path.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    n == 1 && buf[0] == b'y'
}

/// Paths with kind, mode, contents and overlay marks.
fn tree(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let md = std::fs::symlink_metadata(&p).unwrap();
        let rel = p.strip_prefix(root).unwrap().display().to_string();
        let ft = md.file_type();
        let what = if ft.is_dir() {
            for e in std::fs::read_dir(&p).unwrap() {
                stack.push(e.unwrap().path());
            }
            format!("dir opaque={}", opaque(&p))
        } else if ft.is_symlink() {
            format!("link {}", std::fs::read_link(&p).unwrap().display())
        } else if ft.is_char_device() {
            format!("chr {}", md.rdev())
        } else {
            format!(
                "file {:o} {:?}",
                md.mode() & 0o7777,
                std::fs::read(&p).unwrap()
            )
        };
        out.push(format!("{rel}: {what}"));
    }
    out.sort();
    out
}

#[test]
fn whiteouts_and_opaque_dirs_match_the_overlay_applier() {
    if !usable() {
        return;
    }
    use tar::EntryType::*;
    let tar = layer(&[
        ("etc/", Directory, "", b""),
        ("etc/hosts", Regular, "", b"127.0.0.1 localhost\n"),
        ("etc/.wh.gone", Regular, "", b""),
        ("opq/", Directory, "", b""),
        ("opq/.wh..wh..opq", Regular, "", b""),
        ("opq/new", Regular, "", b"new"),
        ("bin/", Directory, "", b""),
        ("bin/sh", Symlink, "busybox", b""),
        ("bin/busybox", Regular, "", b"\x7fELF"),
        ("bin/ash", Link, "bin/busybox", b""),
    ]);
    let d = tempfile::tempdir_in("/var/tmp").unwrap();
    let image = d.path().join("layer.erofs");
    let applied = write_layer(&image, gzip(&tar).as_slice()).unwrap();
    assert_eq!(
        applied.diff_id,
        format!(
            "sha256:{}",
            hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&tar))
        )
    );
    assert_eq!(applied.size, tar.len() as u64);
    assert!(!temp_path(&image).exists());

    let dir = d.path().join("dir");
    std::fs::create_dir_all(&dir).unwrap();
    let opts = ApplyOptions {
        overlay: true,
        ..Default::default()
    };
    apply(&dir, tar.as_slice(), &opts).unwrap();
    let m = Mounted::erofs(&image, &d.path().join("mnt"));
    let ours = tree(&m.0);
    let theirs = tree(&dir);
    assert!(ours.contains(&"etc/gone: chr 0".to_string()), "{ours:#?}");
    assert!(
        ours.contains(&"opq: dir opaque=true".to_string()),
        "{ours:#?}"
    );
    // The root directory's own entry differs (a mount root vs a plain directory).
    let strip = |v: Vec<String>| -> Vec<String> {
        v.into_iter().filter(|l| !l.starts_with(": ")).collect()
    };
    assert_eq!(strip(ours), strip(theirs));
    // The hard link is one inode in the image.
    let a = std::fs::metadata(m.0.join("bin/ash")).unwrap();
    let b = std::fs::metadata(m.0.join("bin/busybox")).unwrap();
    assert_eq!(a.ino(), b.ino());
}

#[test]
fn escaping_layers_leave_nothing() {
    if !usable() {
        return;
    }
    use tar::EntryType::*;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "climbing name",
            layer(&[("a", Regular, "", b"a"), ("../../x", Regular, "", b"x")]),
        ),
        (
            "hard link out",
            layer(&[("l", Link, "../../etc/passwd", b"")]),
        ),
        ("hard link to the root", layer(&[("l", Link, "./", b"")])),
        (
            "below a symlink of the layer",
            layer(&[
                ("etc", Symlink, "/etc", b""),
                ("etc/passwd", Regular, "", b"x"),
            ]),
        ),
    ];
    let d = tempfile::tempdir_in("/var/tmp").unwrap();
    for (what, tar) in cases {
        let image = d.path().join("layer.erofs");
        let err = write_layer(&image, tar.as_slice()).unwrap_err();
        assert!(matches!(err, Error::Unsafe { .. }), "{what}: {err}");
        assert!(!image.exists(), "{what}");
        assert!(!temp_path(&image).exists(), "{what}");
    }
    // A truncated layer is invalid, and also leaves nothing.
    let tar = layer(&[("big", Regular, "", &[7u8; 100_000])]);
    let image = d.path().join("layer.erofs");
    let err = write_layer(&image, &tar[..50_000]).unwrap_err();
    assert!(!image.exists() && !temp_path(&image).exists(), "{err}");
    assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 0);
}

#[test]
fn a_full_disk_fails_cleanly_and_can_be_retried() {
    if !usable() {
        return;
    }
    let d = tempfile::tempdir_in("/var/tmp").unwrap();
    let small = d.path().join("small");
    std::fs::create_dir_all(&small).unwrap();
    let out = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=4m", "tmpfs"])
        .arg(&small)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let _m = Mounted(small.clone());
    // Incompressible data, more than the filesystem holds.
    let mut data = vec![0u8; 8 << 20];
    let mut x: u64 = 0x9e3779b97f4a7c15;
    for b in data.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    use tar::EntryType::*;
    let tar = layer(&[("big", Regular, "", &data)]);
    let image = small.join("layer.erofs");
    let err = write_layer(&image, tar.as_slice()).unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err}");
    let msg = format!("{err}: {:?}", std::error::Error::source(&err));
    assert!(msg.contains("no space left"), "{msg}");
    assert!(!image.exists() && !temp_path(&image).exists(), "{err}");
    // With room, the same layer goes through.
    let image = d.path().join("layer.erofs");
    write_layer(&image, tar.as_slice()).unwrap();
    let m = Mounted::erofs(&image, &d.path().join("mnt"));
    assert_eq!(std::fs::read(m.0.join("big")).unwrap(), data);
}
