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
