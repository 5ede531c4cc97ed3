use std::fs;

use nix::mount::{mount, MsFlags};
use serde_json::json;

use super::*;

/// A bundle, a VM state directory with its shared directory, and a host volume
/// `vol/` holding `data`; every mount under it goes when the test ends.
struct Fixture {
    dir: tempfile::TempDir,
    shared: SharedDir,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let vm = dir.path().join("vm");
        fs::create_dir(&vm).unwrap();
        fs::create_dir(dir.path().join("vol")).unwrap();
        fs::write(dir.path().join("vol/data"), "host data").unwrap();
        fs::write(dir.path().join("hosts"), "127.0.0.1 localhost\n").unwrap();
        fs::set_permissions(dir.path().join("hosts"), fs::Permissions::from_mode(0o644)).unwrap();
        let shared = SharedDir::create(&vm).unwrap();
        Fixture { dir, shared }
    }

    fn path(&self, rel: &str) -> String {
        self.dir.path().join(rel).display().to_string()
    }

    fn share_view(&self, rel: &str) -> PathBuf {
        self.shared.path().join(rel)
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = ember_sandbox::share::cleanup(self.shared.path());
        let root = fs::canonicalize(self.dir.path()).unwrap();
        for p in ember_sandbox::share::mounted_under(&root).unwrap_or_default() {
            let _ = nix::mount::umount2(&p, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

/// The mounts `ctr run` puts in every spec: all made by the guest.
fn guest_mounts() -> Vec<Value> {
    vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc",
               "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
               "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts",
               "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
               "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
               "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs",
               "options": ["nosuid", "noexec", "nodev", "ro"]}),
        json!({"destination": "/run", "type": "tmpfs", "source": "tmpfs",
               "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
               "options": ["ro", "nosuid", "noexec", "nodev"]}),
    ]
}

fn spec_with(binds: Vec<Value>) -> Value {
    let mut mounts = guest_mounts();
    mounts.extend(binds);
    json!({"ociVersion": "1.0.2", "process": {"args": ["sh"]}, "mounts": mounts})
}

fn bind(src: &str, dst: &str, options: &[&str]) -> Value {
    json!({"destination": dst, "type": "bind", "source": src, "options": options})
}

fn source(spec: &Value, index: usize) -> &str {
    spec["mounts"][index]["source"].as_str().unwrap()
}

#[test]
fn guest_mounts_are_left_alone() {
    let f = Fixture::new();
    for transport in [Transport::Shared(&f.shared), Transport::CopyFiles] {
        let mut spec = spec_with(vec![]);
        let before = spec.clone();
        let v = prepare(&mut spec, f.dir.path(), "c1", transport).unwrap();
        assert_eq!(spec, before);
        assert!(v.files.is_empty());
        assert_eq!(v.shared, 0);
    }
    // A spec without mounts at all is fine too.
    let mut spec = json!({"ociVersion": "1.0.2"});
    assert_eq!(
        prepare(&mut spec, f.dir.path(), "c1", Transport::CopyFiles)
            .unwrap()
            .shared,
        0
    );
    assert!(!f.share_view("c1").exists());
}

#[test]
fn shared_directories_read_write_and_read_only() {
    let f = Fixture::new();
    let n = guest_mounts().len();
    let mut spec = spec_with(vec![
        bind(&f.path("vol"), "/rw", &["rbind", "rw"]),
        bind(&f.path("vol"), "/ro", &["rbind", "ro"]),
        // The last of rw/ro counts.
        bind(&f.path("vol"), "/ro2", &["rw", "rbind", "ro"]),
    ]);
    let before = spec.clone();
    let v = prepare(&mut spec, f.dir.path(), "c1", Transport::Shared(&f.shared)).unwrap();
    assert_eq!(v.shared, 3);
    assert!(v.files.is_empty());
    for i in 0..3 {
        assert_eq!(
            source(&spec, n + i),
            format!("/run/ember/shared/c1/{}", n + i)
        );
        // Only the source changes: type, destination and options stay for the guest.
        let (mut a, b) = (spec["mounts"][n + i].clone(), &before["mounts"][n + i]);
        a["source"] = b["source"].clone();
        assert_eq!(&a, b);
    }
    for i in 0..n {
        assert_eq!(spec["mounts"][i], before["mounts"][i]);
    }
    let rw = f.share_view(&format!("c1/{n}"));
    assert_eq!(fs::read_to_string(rw.join("data")).unwrap(), "host data");
    fs::write(rw.join("written"), "inside").unwrap();
    assert_eq!(fs::read_to_string(f.path("vol/written")).unwrap(), "inside");
    for i in [n + 1, n + 2] {
        let ro = f.share_view(&format!("c1/{i}"));
        let e = fs::write(ro.join("data"), "changed").unwrap_err();
        assert_eq!(e.raw_os_error(), Some(nix::Error::EROFS as i32), "{i}: {e}");
    }
    assert_eq!(fs::read_to_string(f.path("vol/data")).unwrap(), "host data");
    release(&f.shared, "c1").unwrap();
    assert!(!f.share_view("c1").exists());
    assert_eq!(fs::read_to_string(f.path("vol/written")).unwrap(), "inside");
}

#[test]
fn rbind_takes_submounts_and_bind_does_not() {
    let f = Fixture::new();
    let sub = f.dir.path().join("vol/sub");
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
    let n = guest_mounts().len();
    let mut spec = spec_with(vec![
        bind(&f.path("vol"), "/r", &["rbind"]),
        bind(&f.path("vol"), "/b", &["bind"]),
        // type bind without either option: a plain bind, as runc makes it.
        json!({"destination": "/t", "type": "bind", "source": f.path("vol")}),
        // Old-style: type none with a bind option.
        json!({"destination": "/n", "type": "none", "source": f.path("vol"), "options": ["rbind", "ro"]}),
    ]);
    let v = prepare(&mut spec, f.dir.path(), "c1", Transport::Shared(&f.shared)).unwrap();
    assert_eq!(v.shared, 4);
    let inner = |i: usize| f.share_view(&format!("c1/{i}/sub/inner")).exists();
    assert!(inner(n));
    assert!(!inner(n + 1));
    assert!(!inner(n + 2));
    assert!(inner(n + 3));
    assert!(fs::write(f.share_view(&format!("c1/{}/sub/inner", n + 3)), "y").is_err());
    release(&f.shared, "c1").unwrap();
}

#[test]
fn single_files_are_shared_as_files() {
    let f = Fixture::new();
    let n = guest_mounts().len();
    // dockerd's and CRI's /etc/hosts.
    let mut spec = spec_with(vec![bind(
        &f.path("hosts"),
        "/etc/hosts",
        &["rbind", "rprivate", "rw"],
    )]);
    prepare(&mut spec, f.dir.path(), "c1", Transport::Shared(&f.shared)).unwrap();
    assert_eq!(source(&spec, n), format!("/run/ember/shared/c1/{n}"));
    let view = f.share_view(&format!("c1/{n}"));
    assert!(view.is_file());
    assert_eq!(fs::read_to_string(&view).unwrap(), "127.0.0.1 localhost\n");
    release(&f.shared, "c1").unwrap();
}

#[test]
fn relative_sources_are_taken_from_the_bundle() {
    let f = Fixture::new();
    let n = guest_mounts().len();
    let mut spec = spec_with(vec![bind("vol", "/v", &["rbind"])]);
    prepare(&mut spec, f.dir.path(), "c1", Transport::Shared(&f.shared)).unwrap();
    assert!(f.share_view(&format!("c1/{n}/data")).exists());
    release(&f.shared, "c1").unwrap();
}

#[test]
fn a_missing_source_is_named_and_nothing_is_left() {
    let f = Fixture::new();
    let missing = f.path("no-such-dir");
    for transport in [Transport::Shared(&f.shared), Transport::CopyFiles] {
        let mut spec = spec_with(vec![
            bind(&f.path("vol"), "/ok", &["rbind"]),
            bind(&missing, "/missing", &["rbind"]),
        ]);
        let before = spec.clone();
        let e = prepare(&mut spec, f.dir.path(), "c1", transport).unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(e.to_string().contains(&missing), "{e}");
        assert_eq!(spec, before);
        assert!(!f.share_view("c1").exists());
    }
    // A share that fails half-way (the second one's mount point is taken) releases
    // the first.
    let n = guest_mounts().len();
    fs::create_dir_all(f.share_view(&format!("c2/{}", n + 1))).unwrap();
    fs::write(f.share_view(&format!("c2/{}/x", n + 1)), "stray").unwrap();
    let mut spec = spec_with(vec![
        bind(&f.path("vol"), "/a", &["rbind"]),
        bind(&f.path("vol"), "/b", &["rbind"]),
    ]);
    let e = prepare(&mut spec, f.dir.path(), "c2", Transport::Shared(&f.shared)).unwrap_err();
    assert!(ember_sandbox::share::mounted_under(&f.share_view("c2"))
        .unwrap()
        .is_empty());
    assert_eq!(source(&spec, n), f.path("vol"), "{e}");
}

#[test]
fn bad_mounts_are_invalid_arguments() {
    let f = Fixture::new();
    let fifo = f.dir.path().join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let cases = [
        json!({"ociVersion": "1.0.2", "mounts": {"not": "a list"}}),
        spec_with(vec![
            json!({"destination": "/x", "type": "bind", "options": ["rbind"]}),
        ]),
        spec_with(vec![
            json!({"destination": "/x", "type": "bind", "source": f.path("vol"), "options": "rbind"}),
        ]),
        spec_with(vec![bind(&fifo.display().to_string(), "/x", &["rbind"])]),
    ];
    for (i, mut spec) in cases.into_iter().enumerate() {
        for transport in [Transport::Shared(&f.shared), Transport::CopyFiles] {
            let e = prepare(&mut spec, f.dir.path(), "c1", transport).unwrap_err();
            assert_eq!(e.code(), Code::InvalidArgument, "case {i}: {e}");
        }
    }
    let mut spec = spec_with(vec![bind(&f.path("vol"), "/x", &["rbind"])]);
    for id in ["", "..", "a/b"] {
        for transport in [Transport::Shared(&f.shared), Transport::CopyFiles] {
            let e = prepare(&mut spec, f.dir.path(), id, transport).unwrap_err();
            assert_eq!(e.code(), Code::InvalidArgument, "{id:?}: {e}");
        }
    }
}

#[test]
fn without_a_shared_filesystem_files_are_copied_and_directories_refused() {
    let f = Fixture::new();
    let n = guest_mounts().len();
    let mut spec = spec_with(vec![
        bind(&f.path("hosts"), "/etc/hosts", &["rbind", "rprivate", "ro"]),
        bind(&f.path("vol/data"), "/data", &["rbind", "rw"]),
    ]);
    let v = prepare(&mut spec, f.dir.path(), "c1", Transport::CopyFiles).unwrap();
    assert_eq!(v.shared, 0);
    assert_eq!(v.files.len(), 2);
    assert_eq!(v.files[0].path, format!("/run/ember/files/c1/{n}"));
    assert_eq!(v.files[0].content, b"127.0.0.1 localhost\n");
    assert_eq!(v.files[0].mode, 0o644);
    assert_eq!(v.files[1].path, format!("/run/ember/files/c1/{}", n + 1));
    assert_eq!(v.files[1].content, b"host data");
    assert_eq!(source(&spec, n), v.files[0].path);
    assert_eq!(source(&spec, n + 1), v.files[1].path);
    assert_eq!(
        spec["mounts"][n]["options"],
        json!(["rbind", "rprivate", "ro"])
    );
    assert!(!f.share_view("c1").exists());

    let mut spec = spec_with(vec![bind(&f.path("vol"), "/vol", &["rbind"])]);
    let e = prepare(&mut spec, f.dir.path(), "c1", Transport::CopyFiles).unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let msg = e.to_string();
    assert!(
        msg.contains(&f.path("vol")) && msg.contains("no shared filesystem"),
        "{msg}"
    );
}

#[test]
fn copied_files_have_size_limits() {
    let f = Fixture::new();
    let big = f.dir.path().join("big");
    let at_limit = f.dir.path().join("at-limit");
    fs::write(&big, vec![7u8; MAX_COPIED_FILE as usize + 1]).unwrap();
    fs::write(&at_limit, vec![7u8; MAX_COPIED_FILE as usize]).unwrap();
    let p = |p: &Path| p.display().to_string();
    let mut spec = spec_with(vec![bind(&p(&big), "/big", &["rbind"])]);
    let e = prepare(&mut spec, f.dir.path(), "c1", Transport::CopyFiles).unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.to_string().contains(&p(&big)), "{e}");
    let mut spec = spec_with(vec![bind(&p(&at_limit), "/a", &["rbind"])]);
    let v = prepare(&mut spec, f.dir.path(), "c1", Transport::CopyFiles).unwrap();
    assert_eq!(v.files[0].content.len() as u64, MAX_COPIED_FILE);
    // Each within the limit, too many together.
    let mut spec = spec_with(vec![
        bind(&p(&at_limit), "/a", &["rbind"]),
        bind(&p(&at_limit), "/b", &["rbind"]),
        bind(&p(&at_limit), "/c", &["rbind"]),
    ]);
    let e = prepare(&mut spec, f.dir.path(), "c1", Transport::CopyFiles).unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e}");
    // The large file is fine through a shared directory.
    let mut spec = spec_with(vec![bind(&p(&big), "/big", &["rbind"])]);
    prepare(&mut spec, f.dir.path(), "c1", Transport::Shared(&f.shared)).unwrap();
    release(&f.shared, "c1").unwrap();
}

#[test]
fn check_refuses_early_and_makes_nothing() {
    let f = Fixture::new();
    let dir = bind(&f.path("vol"), "/vol", &["rbind"]);
    let file = bind(&f.path("hosts"), "/etc/hosts", &["rbind", "ro"]);
    let missing = bind(&f.path("gone"), "/gone", &["rbind"]);
    let ok = spec_with(vec![dir.clone(), file.clone()]);
    check(&ok, f.dir.path(), true).unwrap();
    let e = check(&ok, f.dir.path(), false).unwrap_err();
    assert!(e.to_string().contains("no shared filesystem"), "{e}");
    check(&spec_with(vec![file]), f.dir.path(), false).unwrap();
    for can_share in [true, false] {
        let e = check(
            &spec_with(vec![dir.clone(), missing.clone()]),
            f.dir.path(),
            can_share,
        )
        .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(e.to_string().contains(&f.path("gone")), "{e}");
    }
    assert!(!f.share_view("c1").exists());
    assert_eq!(
        ember_sandbox::share::mounted_under(f.shared.path()).unwrap(),
        vec![f.shared.path().to_path_buf()]
    );
}
