//! Applying and computing layers on real directories.

use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;

use ember_diff::{apply, diff, ApplyOptions, Compression, DevicePolicy, Error};
use proptest::prelude::*;

fn root() -> bool {
    unsafe { libc::geteuid() == 0 }
}

/// One raw ustar header block plus data, names taken as given (no checks).
fn raw_entry(out: &mut Vec<u8>, name: &[u8], kind: u8, link: &[u8], data: &[u8], mode: u32) {
    let mut h = [0u8; 512];
    h[..name.len().min(100)].copy_from_slice(&name[..name.len().min(100)]);
    let oct = |v: u64, w: usize| format!("{:0w$o}\0", v, w = w - 1).into_bytes();
    h[100..108].copy_from_slice(&oct(mode as u64, 8));
    h[108..116].copy_from_slice(&oct(0, 8));
    h[116..124].copy_from_slice(&oct(0, 8));
    h[124..136].copy_from_slice(&oct(data.len() as u64, 12));
    h[136..148].copy_from_slice(&oct(1_600_000_000, 12));
    h[156] = kind;
    h[157..157 + link.len().min(100)].copy_from_slice(&link[..link.len().min(100)]);
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|b| *b as u32).sum();
    h[148..156].copy_from_slice(&format!("{:06o}\0 ", sum).into_bytes());
    out.extend_from_slice(&h);
    out.extend_from_slice(data);
    let pad = (512 - data.len() % 512) % 512;
    out.extend(std::iter::repeat_n(0u8, pad));
}

fn end(out: &mut Vec<u8>) {
    out.extend(std::iter::repeat_n(0u8, 1024));
}

fn tree(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    fn walk(base: &Path, d: &Path, out: &mut Vec<String>) {
        let mut names: Vec<_> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        names.sort();
        for p in names {
            let m = std::fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(base).unwrap().display().to_string();
            let ft = m.file_type();
            let what = if ft.is_dir() {
                "dir".to_string()
            } else if ft.is_symlink() {
                format!("link->{}", std::fs::read_link(&p).unwrap().display())
            } else if ft.is_file() {
                format!("file {:?}", std::fs::read(&p).unwrap())
            } else {
                format!("special {:o} {}", m.mode() & libc::S_IFMT, m.rdev())
            };
            out.push(format!(
                "{rel} {what} mode={:o} {}:{} mtime={}",
                m.mode() & 0o7777,
                m.uid(),
                m.gid(),
                if ft.is_symlink() || ft.is_dir() {
                    0
                } else {
                    m.mtime()
                }
            ));
            if ft.is_dir() {
                walk(base, &p, out);
            }
        }
    }
    walk(dir, dir, &mut out);
    out
}

fn sample_layer() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Directory);
    h.set_mode(0o750);
    h.set_uid(1000);
    h.set_gid(1001);
    h.set_mtime(1_500_000_000);
    h.set_size(0);
    b.append_data(&mut h, "etc/", std::io::empty()).unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o4755);
    h.set_uid(1000);
    h.set_gid(1001);
    h.set_mtime(1_500_000_001);
    h.set_size(5);
    b.append_pax_extensions([("SCHILY.xattr.user.ember", &b"yes"[..])])
        .unwrap();
    b.append_data(&mut h, "etc/tool", &b"hello"[..]).unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Link);
    h.set_size(0);
    h.set_mode(0o644);
    b.append_link(&mut h, "etc/tool2", "etc/tool").unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_size(0);
    h.set_mode(0o777);
    b.append_link(&mut h, "bin/sh", "/bin/busybox").unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Fifo);
    h.set_size(0);
    h.set_mode(0o600);
    b.append_data(&mut h, "run/fifo", std::io::empty()).unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Char);
    h.set_size(0);
    h.set_mode(0o666);
    h.set_device_major(1).unwrap();
    h.set_device_minor(3).unwrap();
    b.append_data(&mut h, "dev/null", std::io::empty()).unwrap();
    let long = format!("{}/file", "d".repeat(150));
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_size(1);
    h.set_mode(0o644);
    b.append_data(&mut h, &long, &b"x"[..]).unwrap();
    b.into_inner().unwrap()
}

#[test]
fn applies_files_links_devices_and_metadata() {
    let d = tempfile::tempdir().unwrap();
    let layer = sample_layer();
    let a = apply(d.path(), &layer[..], &ApplyOptions::default()).unwrap();
    assert_eq!(a.size, layer.len() as u64);
    assert_eq!(a.compression, Compression::None);
    let tool = d.path().join("etc/tool");
    assert_eq!(std::fs::read(&tool).unwrap(), b"hello");
    let m = std::fs::metadata(&tool).unwrap();
    assert_eq!(m.mtime(), 1_500_000_001);
    assert_eq!(m.nlink(), 2);
    assert_eq!(
        std::fs::read_link(d.path().join("bin/sh")).unwrap(),
        Path::new("/bin/busybox")
    );
    assert!(std::fs::symlink_metadata(d.path().join("run/fifo"))
        .unwrap()
        .file_type()
        .is_fifo());
    assert!(d.path().join(format!("{}/file", "d".repeat(150))).exists());
    let etc = std::fs::metadata(d.path().join("etc")).unwrap();
    assert_eq!(etc.mtime(), 1_500_000_000, "directory times are set last");
    if root() {
        assert_eq!(m.mode() & 0o7777, 0o4755);
        assert_eq!((m.uid(), m.gid()), (1000, 1001));
        assert_eq!(etc.mode() & 0o7777, 0o750);
        let null = std::fs::symlink_metadata(d.path().join("dev/null")).unwrap();
        assert!(null.file_type().is_char_device());
        assert_eq!(null.rdev(), libc::makedev(1, 3));
        let x = ember_xattr(&tool, "user.ember");
        assert!(x.is_none() || x.as_deref() == Some(&b"yes"[..]));
    }
    // Compressed forms give the same diff id.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&layer).unwrap();
    let gz = gz.finish().unwrap();
    let d2 = tempfile::tempdir().unwrap();
    let b = apply(d2.path(), &gz[..], &ApplyOptions::default()).unwrap();
    assert_eq!(b.diff_id, a.diff_id);
    assert_eq!(b.compression, Compression::Gzip);
    let zs = zstd::encode_all(&layer[..], 3).unwrap();
    let d3 = tempfile::tempdir().unwrap();
    let c = apply(d3.path(), &zs[..], &ApplyOptions::default()).unwrap();
    assert_eq!(c.diff_id, a.diff_id);
    assert_eq!(tree(d.path()), tree(d3.path()));
}

fn ember_xattr(p: &Path, name: &str) -> Option<Vec<u8>> {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    let n = std::ffi::CString::new(name).unwrap();
    let mut buf = vec![0u8; 256];
    let r = unsafe { libc::lgetxattr(c.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if r < 0 {
        return None;
    }
    buf.truncate(r as usize);
    Some(buf)
}

fn whiteout_layer() -> Vec<u8> {
    let mut t = Vec::new();
    raw_entry(&mut t, b"a/", b'5', b"", b"", 0o755);
    raw_entry(&mut t, b"a/.wh..wh..opq", b'0', b"", b"", 0o644);
    raw_entry(&mut t, b"a/new", b'0', b"", b"n", 0o644);
    raw_entry(&mut t, b".wh.gone", b'0', b"", b"", 0o644);
    raw_entry(&mut t, b"b/.wh.f", b'0', b"", b"", 0o644);
    end(&mut t);
    t
}

#[test]
fn whiteouts_on_a_plain_directory() {
    let d = tempfile::tempdir().unwrap();
    let r = d.path();
    std::fs::create_dir_all(r.join("a/sub")).unwrap();
    std::fs::write(r.join("a/old"), "o").unwrap();
    std::fs::create_dir_all(r.join("gone/deep")).unwrap();
    std::fs::create_dir_all(r.join("b")).unwrap();
    std::fs::write(r.join("b/f"), "f").unwrap();
    std::fs::write(r.join("b/keep"), "k").unwrap();
    apply(r, &whiteout_layer()[..], &ApplyOptions::default()).unwrap();
    assert!(!r.join("a/old").exists());
    assert!(!r.join("a/sub").exists());
    assert_eq!(std::fs::read(r.join("a/new")).unwrap(), b"n");
    assert!(!r.join("gone").exists());
    assert!(!r.join("b/f").exists());
    assert!(r.join("b/keep").exists());
    assert!(!r.join("a/.wh..wh..opq").exists());
}

#[test]
fn whiteouts_on_an_overlay_upper_directory() {
    if !root() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let lower = d.path().join("lower");
    let upper = d.path().join("upper");
    std::fs::create_dir_all(lower.join("b")).unwrap();
    std::fs::set_permissions(lower.join("b"), std::fs::Permissions::from_mode(0o710)).unwrap();
    std::fs::create_dir_all(&upper).unwrap();
    let opts = ApplyOptions {
        overlay: true,
        parents: vec![lower.clone()],
        ..Default::default()
    };
    apply(&upper, &whiteout_layer()[..], &opts).unwrap();
    let gone = std::fs::symlink_metadata(upper.join("gone")).unwrap();
    assert!(gone.file_type().is_char_device());
    assert_eq!(gone.rdev(), 0);
    assert!(std::fs::symlink_metadata(upper.join("b/f"))
        .unwrap()
        .file_type()
        .is_char_device());
    // The parent copied its mode from below.
    assert_eq!(
        std::fs::metadata(upper.join("b")).unwrap().mode() & 0o7777,
        0o710
    );
    let opq = ember_xattr(&upper.join("a"), "trusted.overlay.opaque");
    assert_eq!(opq.as_deref(), Some(&b"y"[..]));
    assert_eq!(std::fs::read(upper.join("a/new")).unwrap(), b"n");
}

/// Applies `layer` in `dir/root` and checks it fails as unsafe and leaves
/// `dir/outside` empty.
fn refused(layer: &[u8]) -> Error {
    let d = tempfile::tempdir().unwrap();
    let r = d.path().join("root");
    let outside = d.path().join("outside");
    std::fs::create_dir_all(&r).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("secret"), "s").unwrap();
    let e = apply(&r, layer, &ApplyOptions::default()).unwrap_err();
    let mut left: Vec<_> = std::fs::read_dir(&outside)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    left.sort();
    assert_eq!(left, vec![std::ffi::OsString::from("secret")]);
    assert_eq!(std::fs::read(outside.join("secret")).unwrap(), b"s");
    assert!(std::fs::read_dir(d.path())
        .unwrap()
        .all(|e| matches!(e.unwrap().file_name().to_str(), Some("root" | "outside"))));
    e
}

#[test]
fn refuses_escapes() {
    let mut t = Vec::new();
    raw_entry(&mut t, b"../outside/pwned", b'0', b"", b"x", 0o644);
    end(&mut t);
    let e = refused(&t);
    assert!(matches!(e, Error::Unsafe { .. }), "{e}");
    assert!(e.to_string().contains("climbs out"), "{e}");

    let mut t = Vec::new();
    raw_entry(&mut t, b"/../../outside/pwned", b'0', b"", b"x", 0o644);
    end(&mut t);
    assert!(matches!(refused(&t), Error::Unsafe { .. }));

    // A symlink to the outside, then a file through it.
    for target in [&b"../outside"[..], b"/tmp", b"../../../../../../"] {
        let mut t = Vec::new();
        raw_entry(&mut t, b"link", b'2', target, b"", 0o777);
        raw_entry(&mut t, b"link/pwned", b'0', b"", b"x", 0o644);
        end(&mut t);
        let e = refused(&t);
        assert!(matches!(e, Error::Unsafe { .. }), "{e}");
        assert!(e.to_string().contains("symlink"), "{e}");
    }
    // Replacing the symlink itself is fine: it is never followed.
    let d = tempfile::tempdir().unwrap();
    let mut t = Vec::new();
    raw_entry(&mut t, b"link", b'2', b"/etc/passwd", b"", 0o777);
    raw_entry(&mut t, b"link", b'0', b"", b"mine", 0o644);
    end(&mut t);
    apply(d.path(), &t[..], &ApplyOptions::default()).unwrap();
    assert_eq!(std::fs::read(d.path().join("link")).unwrap(), b"mine");

    // Hard links to the outside, directly or through a symlink.
    let mut t = Vec::new();
    raw_entry(&mut t, b"h", b'1', b"../outside/secret", b"", 0o644);
    end(&mut t);
    assert!(matches!(refused(&t), Error::Unsafe { .. }));
    let mut t = Vec::new();
    raw_entry(&mut t, b"l", b'2', b"../outside", b"", 0o777);
    raw_entry(&mut t, b"h", b'1', b"l/secret", b"", 0o644);
    end(&mut t);
    assert!(matches!(refused(&t), Error::Unsafe { .. }));

    // Device nodes where they are not allowed.
    let mut t = Vec::new();
    raw_entry(&mut t, b"sda", b'4', b"", b"", 0o600);
    end(&mut t);
    let d = tempfile::tempdir().unwrap();
    let opts = ApplyOptions {
        devices: DevicePolicy::Reject,
        ..Default::default()
    };
    assert!(matches!(
        apply(d.path(), &t[..], &opts),
        Err(Error::Unsafe { .. })
    ));
}

#[test]
fn truncated_and_garbage_layers_fail_cleanly() {
    let layer = sample_layer();
    for cut in [100, 600, 1100, layer.len() - 1500] {
        let d = tempfile::tempdir().unwrap();
        let e = apply(d.path(), &layer[..cut], &ApplyOptions::default());
        assert!(matches!(e, Err(Error::Invalid(_))), "cut {cut}: {e:?}");
    }
    let d = tempfile::tempdir().unwrap();
    let garbage: Vec<u8> = (0..4096u32).map(|i| (i * 7 + 3) as u8).collect();
    assert!(matches!(
        apply(d.path(), &garbage[..], &ApplyOptions::default()),
        Err(Error::Invalid(_))
    ));
    // A gzip header with nothing valid after it.
    assert!(apply(
        d.path(),
        &[0x1f, 0x8b, 8, 0, 1, 2][..],
        &ApplyOptions::default()
    )
    .is_err());
}

/// A tar number field: octal, or base-256 when octal does not fit.
fn num_field(field: &mut [u8; 12], v: u64) {
    if v < 0o77777777777 {
        field.copy_from_slice(format!("{v:011o}\0").as_bytes());
    } else {
        field.fill(0);
        field[0] = 0x80;
        field[4..].copy_from_slice(&v.to_be_bytes());
    }
}

/// A GNU sparse file entry of `size` bytes: `data` at `offset`, holes elsewhere.
fn sparse_entry(out: &mut Vec<u8>, name: &str, data: &[u8], offset: u64, size: u64) {
    let mut h = tar::Header::new_gnu();
    h.set_path(name).unwrap();
    h.set_entry_type(tar::EntryType::GNUSparse);
    h.set_mode(0o640);
    h.set_mtime(1_600_000_000);
    h.set_size(data.len() as u64);
    let g = h.as_gnu_mut().unwrap();
    num_field(&mut g.realsize, size);
    num_field(&mut g.sparse[0].offset, offset);
    num_field(&mut g.sparse[0].numbytes, data.len() as u64);
    // The hole after the data, as GNU tar writes it: an empty block at the end.
    num_field(&mut g.sparse[1].offset, size);
    num_field(&mut g.sparse[1].numbytes, 0);
    h.set_cksum();
    out.extend_from_slice(h.as_bytes());
    out.extend_from_slice(data);
    out.extend(std::iter::repeat_n(0u8, (512 - data.len() % 512) % 512));
}

/// A sparse file's holes stay holes: a 1 KiB layer declaring a 1 GiB file does
/// not write 1 GiB (nor take the time to), and one declaring more than a file can
/// hold is refused.
#[test]
fn sparse_files_are_written_sparse() {
    let d = tempfile::tempdir().unwrap();
    let size = 1 << 30;
    let mut t = Vec::new();
    sparse_entry(&mut t, "big", b"hello", 1 << 20, size);
    end(&mut t);
    apply(d.path(), &t[..], &ApplyOptions::default()).unwrap();
    let big = d.path().join("big");
    let m = std::fs::metadata(&big).unwrap();
    assert_eq!(m.len(), size);
    assert_eq!(m.mode() & 0o7777, 0o640);
    assert_eq!(m.mtime(), 1_600_000_000);
    assert!(m.blocks() * 512 < 1 << 20, "{} blocks written", m.blocks());
    let mut f = std::fs::File::open(&big).unwrap();
    let mut buf = [1u8; 8];
    std::io::Read::read_exact(&mut f, &mut buf).unwrap();
    assert_eq!(buf, [0; 8]);
    std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(1 << 20)).unwrap();
    std::io::Read::read_exact(&mut f, &mut buf[..5]).unwrap();
    assert_eq!(&buf[..5], b"hello");

    for size in [u64::MAX, 1 << 63] {
        let mut t = Vec::new();
        sparse_entry(&mut t, "huge", b"x", 0, size);
        end(&mut t);
        let e = apply(d.path(), &t[..], &ApplyOptions::default()).unwrap_err();
        assert!(matches!(e, Error::Invalid(_)), "{e}");
    }

    // Cut inside the data: the layer is invalid, not the host.
    let mut t = Vec::new();
    sparse_entry(&mut t, "cut", b"hello", 4096, 8192);
    t.truncate(514);
    let e = apply(d.path(), &t[..], &ApplyOptions::default()).unwrap_err();
    assert!(matches!(e, Error::Invalid(_)), "{e}");
}

/// A path thousands of directories deep is created, replaced and whited out
/// without recursion: on a thread with a small stack (tokio's blocking threads,
/// where emberd applies layers, have 2 MiB) the stack does not overflow.
#[test]
fn deep_paths_do_not_exhaust_the_stack() {
    let deep = |top: &str| format!("{top}/{}f", "d/".repeat(2000));
    let mut b = tar::Builder::new(Vec::new());
    let file = |b: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, path, data).unwrap();
    };
    file(&mut b, &deep("a"), b"1");
    file(&mut b, "a", b"2"); // replaces the whole tree
    file(&mut b, &deep("b"), b"3");
    let layer = b.into_inner().unwrap();
    let mut whiteout = tar::Builder::new(Vec::new());
    file(&mut whiteout, ".wh.b", b"");
    let whiteout = whiteout.into_inner().unwrap();

    let d = tempfile::tempdir().unwrap();
    let root = d.path().to_path_buf();
    std::thread::Builder::new()
        .stack_size(1 << 20)
        .spawn(move || {
            apply(&root, &layer[..], &ApplyOptions::default()).unwrap();
            assert_eq!(std::fs::read(root.join("a")).unwrap(), b"2");
            assert_eq!(std::fs::read(root.join(deep("b"))).unwrap(), b"3");
            apply(&root, &whiteout[..], &ApplyOptions::default()).unwrap();
            assert!(!root.join("b").exists());
        })
        .unwrap()
        .join()
        .unwrap();
}

fn copy_tree(from: &Path, to: &Path) {
    let s = std::process::Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", from.display()))
        .arg(to)
        .status()
        .unwrap();
    assert!(s.success());
}

#[test]
fn diff_then_apply_reproduces_the_upper_tree() {
    let d = tempfile::tempdir().unwrap();
    let lower = d.path().join("lower");
    let upper = d.path().join("upper");
    std::fs::create_dir_all(lower.join("etc/conf.d")).unwrap();
    std::fs::write(lower.join("etc/a"), "a").unwrap();
    std::fs::write(lower.join("etc/b"), "b").unwrap();
    std::fs::write(lower.join("etc/conf.d/x"), "x").unwrap();
    std::fs::create_dir_all(lower.join("var/lib")).unwrap();
    std::fs::create_dir_all(&upper).unwrap();
    copy_tree(&lower, &upper);
    std::fs::write(upper.join("etc/a"), "changed").unwrap();
    std::fs::remove_file(upper.join("etc/b")).unwrap();
    std::fs::remove_dir_all(upper.join("etc/conf.d")).unwrap();
    std::fs::create_dir_all(upper.join("var/lib/new")).unwrap();
    std::fs::write(upper.join("var/lib/new/f"), "f").unwrap();
    std::fs::hard_link(upper.join("var/lib/new/f"), upper.join("var/lib/new/g")).unwrap();
    std::os::unix::fs::symlink("../etc/a", upper.join("var/ln")).unwrap();

    for c in [Compression::None, Compression::Gzip, Compression::Zstd] {
        let mut blob = Vec::new();
        let w = diff(&lower, &upper, &mut blob, c).unwrap();
        assert_eq!(w.size, blob.len() as u64);
        let target = d.path().join(format!("t{c:?}"));
        std::fs::create_dir_all(&target).unwrap();
        copy_tree(&lower, &target);
        let a = apply(&target, &blob[..], &ApplyOptions::default()).unwrap();
        assert_eq!(a.diff_id, w.diff_id);
        assert_eq!(a.size, w.uncompressed_size);
        assert_eq!(tree(&target), tree(&upper), "{c:?}");
        assert_eq!(
            std::fs::metadata(target.join("var/lib/new/g"))
                .unwrap()
                .ino(),
            std::fs::metadata(target.join("var/lib/new/f"))
                .unwrap()
                .ino()
        );
    }
    // Nothing changed: an empty layer.
    let mut blob = Vec::new();
    diff(&lower, &lower, &mut blob, Compression::None).unwrap();
    let n = tar::Archive::new(&blob[..]).entries().unwrap().count();
    assert_eq!(n, 0);
}

#[derive(Debug, Clone)]
enum Node {
    File(Vec<u8>, u32),
    Dir(u32),
    Link(String),
}

fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("a".to_string()),
        Just("b".to_string()),
        Just("c d".to_string()),
        Just(".wh.b".to_string()),
        Just("..".to_string()),
        Just(".".to_string()),
        Just("".to_string()),
        "[a-z]{1,3}",
    ]
}

fn raw_layer() -> impl Strategy<Value = Vec<(Vec<String>, u8, String, Vec<u8>)>> {
    let kind = prop_oneof![Just(b'0'), Just(b'1'), Just(b'2'), Just(b'5'), Just(b'6')];
    let link = prop_oneof![
        Just("../x".to_string()),
        Just("/".to_string()),
        Just("a".to_string()),
        Just("a/b".to_string()),
        Just("..".to_string()),
        "[a-z/.]{0,6}",
    ];
    proptest::collection::vec(
        (
            proptest::collection::vec(name(), 1..4),
            kind,
            link,
            proptest::collection::vec(any::<u8>(), 0..40),
        ),
        0..12,
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, .. ProptestConfig::default() })]

    /// Whatever the entries, applying never panics and never writes next to the root.
    #[test]
    fn random_layers_stay_inside(entries in raw_layer(), cut in any::<Option<u16>>()) {
        let d = tempfile::tempdir().unwrap();
        let r = d.path().join("root");
        std::fs::create_dir_all(&r).unwrap();
        std::fs::create_dir_all(d.path().join("x")).unwrap();
        let mut t = Vec::new();
        for (parts, kind, link, data) in &entries {
            let n = parts.join("/");
            let data: &[u8] = if *kind == b'0' { data } else { b"" };
            raw_entry(&mut t, n.as_bytes(), *kind, link.as_bytes(), data, 0o755);
        }
        end(&mut t);
        if let Some(c) = cut {
            t.truncate(c as usize % (t.len() + 1));
        }
        let _ = apply(&r, &t[..], &ApplyOptions::default());
        let _ = apply(&r, &t[..], &ApplyOptions { overlay: true, ..Default::default() });
        let mut names: Vec<_> = std::fs::read_dir(d.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        names.sort();
        prop_assert_eq!(names, vec![std::ffi::OsString::from("root"), std::ffi::OsString::from("x")]);
        prop_assert_eq!(std::fs::read_dir(d.path().join("x")).unwrap().count(), 0);
    }

    /// diff(empty, tree) applied onto an empty directory gives the tree back.
    #[test]
    fn diff_apply_round_trip(nodes in proptest::collection::vec((proptest::collection::vec("[a-c]{1,2}", 1..4), prop_oneof![
        (proptest::collection::vec(any::<u8>(), 0..64), 0o600u32..0o777).prop_map(|(d, m)| Node::File(d, m)),
        (0o700u32..0o777).prop_map(Node::Dir),
        "[a-z/]{1,8}".prop_map(Node::Link),
    ]), 0..16)) {
        let d = tempfile::tempdir().unwrap();
        let empty = d.path().join("empty");
        let upper = d.path().join("upper");
        std::fs::create_dir_all(&empty).unwrap();
        std::fs::create_dir_all(&upper).unwrap();
        for (parts, node) in &nodes {
            let p = upper.join(parts.join("/"));
            if std::fs::create_dir_all(p.parent().unwrap()).is_err() || std::fs::symlink_metadata(&p).is_ok() {
                continue;
            }
            match node {
                Node::File(data, mode) => {
                    std::fs::write(&p, data).unwrap();
                    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(*mode)).unwrap();
                }
                Node::Dir(mode) => {
                    std::fs::create_dir(&p).unwrap();
                    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(*mode)).unwrap();
                }
                Node::Link(t) => std::os::unix::fs::symlink(t, &p).unwrap(),
            }
        }
        let mut blob = Vec::new();
        let w = diff(&empty, &upper, &mut blob, Compression::Gzip).unwrap();
        let target = d.path().join("target");
        std::fs::create_dir_all(&target).unwrap();
        let a = apply(&target, &blob[..], &ApplyOptions::default()).unwrap();
        prop_assert_eq!(a.diff_id, w.diff_id);
        prop_assert_eq!(tree(&target), tree(&upper));
    }
}
