//! The `erofs` snapshotter on real loop mounts: lifecycle, host-mountable
//! overlays, whiteouts, VM claims, restart, corrupt layers.

use std::path::{Path, PathBuf};
use std::process::Command;

use ember_snapshot::erofs::{
    claim_upper, describe, ErofsConfig, ErofsSnapshotter, LAYER_IMAGE, SIZE_LABEL,
};
use ember_snapshot::{Error, Kind, Labels, Mount, Snapshotter};

/// Unmounts everything under a test root, then removes it.
struct Root(tempfile::TempDir);

impl Root {
    fn new() -> Root {
        Root(tempfile::tempdir_in("/var/tmp").unwrap())
    }
    fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for Root {
    fn drop(&mut self) {
        unmount_under(self.path());
    }
}

fn unmount_under(root: &Path) {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    let mut targets: Vec<&str> = mounts
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter(|t| t.starts_with(root.to_str().unwrap()))
        .collect();
    targets.sort_by_key(|t| std::cmp::Reverse(t.len()));
    for t in targets {
        let _ = Command::new("umount").arg(t).status();
    }
}

/// Root (loop mounts) and mkfs.erofs are needed; says why not.
fn can_run() -> bool {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipping: needs root");
        return false;
    }
    if ember_snapshot::erofs::tool_available().is_none() {
        eprintln!("skipping: mkfs.erofs missing (erofs-utils)");
        return false;
    }
    true
}

fn config() -> ErofsConfig {
    ErofsConfig {
        default_size: 256 << 20,
    }
}

/// Mounts `mounts` on `target` the way a host client does; unmounted on drop.
struct HostMount(PathBuf);

impl HostMount {
    fn new(mounts: &[Mount], target: &Path) -> HostMount {
        std::fs::create_dir_all(target).unwrap();
        let m = &mounts[0];
        let mut cmd = Command::new("mount");
        if m.kind == "bind" {
            cmd.arg("--bind");
        } else {
            cmd.args(["-t", &m.kind]);
        }
        let opts: Vec<&str> = m
            .options
            .iter()
            .map(String::as_str)
            .filter(|o| *o != "rbind")
            .collect();
        if !opts.is_empty() {
            cmd.arg("-o").arg(opts.join(","));
        }
        let out = cmd.arg(&m.source).arg(target).output().unwrap();
        assert!(out.status.success(), "mount {m:?}: {out:?}");
        HostMount(target.to_path_buf())
    }
}

impl Drop for HostMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

fn upper_of(m: &[Mount]) -> PathBuf {
    let m = &m[0];
    if m.kind == "bind" {
        return PathBuf::from(&m.source);
    }
    PathBuf::from(
        m.options
            .iter()
            .find_map(|o| o.strip_prefix("upperdir="))
            .unwrap(),
    )
}

#[tokio::test]
async fn erofs_lifecycle() {
    if !can_run() {
        return;
    }
    let root = Root::new();
    let s = ErofsSnapshotter::open(root.path(), config()).unwrap();

    // A base layer written through the bind mount of a parentless snapshot.
    let m = s.prepare("a", "", Labels::new()).await.unwrap();
    assert_eq!(m[0].kind, "bind");
    let rootfs = describe(&m).unwrap();
    assert!(rootfs.layers.is_empty());
    let up = upper_of(&m);
    std::fs::create_dir_all(up.join("etc")).unwrap();
    std::fs::write(up.join("etc/passwd"), b"root:x:0:0::/root:/bin/sh\n").unwrap();
    std::fs::create_dir_all(up.join("opq")).unwrap();
    std::fs::write(up.join("opq/old"), b"old").unwrap();
    std::fs::write(up.join("gone"), b"gone").unwrap();
    assert!(s.usage("a").await.unwrap().size > 0);
    s.commit("base", "a", Labels::new()).await.unwrap();
    assert!(matches!(s.stat("a").await, Err(Error::NotFound(_))));
    let info = s.stat("base").await.unwrap();
    assert_eq!(info.kind, Kind::Committed);
    let u = s.usage("base").await.unwrap();
    assert!(u.size >= 4096 && u.inodes >= 5, "{u:?}");

    // A second layer with a whiteout and an opaque directory (overlayfs form).
    let m = s.prepare("b", "base", Labels::new()).await.unwrap();
    assert_eq!(m[0].kind, "overlay");
    let merged = root.path().join("merged");
    {
        let _hm = HostMount::new(&m, &merged);
        assert_eq!(
            std::fs::read(merged.join("etc/passwd")).unwrap(),
            b"root:x:0:0::/root:/bin/sh\n"
        );
        std::fs::remove_file(merged.join("gone")).unwrap();
        std::fs::remove_dir_all(merged.join("opq")).unwrap();
        std::fs::create_dir(merged.join("opq")).unwrap();
        std::fs::write(merged.join("opq/new"), b"new").unwrap();
    }
    // While a VM holds the writable image, it is not mounted on the host and the
    // snapshot can be neither committed nor removed.
    let claim = claim_upper(&m).unwrap();
    assert!(claim.image().ends_with("rw.ext4"));
    assert!(!upper_of(&m).exists());
    for r in [
        s.commit("l2", "b", Labels::new()).await,
        s.remove("b").await,
    ] {
        assert!(
            matches!(r, Err(Error::FailedPrecondition(ref m)) if m.contains("in use by a VM")),
            "{r:?}"
        );
    }
    assert!(matches!(claim_upper(&m), Err(Error::FailedPrecondition(_))));
    // Mounts does not mount it back while claimed.
    assert_eq!(s.mounts("b").await.unwrap(), m);
    assert!(!upper_of(&m).exists());
    drop(claim);
    assert_eq!(s.mounts("b").await.unwrap(), m);
    assert!(upper_of(&m).join("opq/new").exists());
    // A host mount still in use keeps the VM from claiming it.
    {
        let _hm = HostMount::new(&m, &merged);
        let r = claim_upper(&m);
        assert!(
            matches!(r, Err(Error::FailedPrecondition(ref e)) if e.contains("busy")),
            "{r:?}"
        );
    }
    s.commit("l2", "b", Labels::new()).await.unwrap();

    // A view of the two layers shows the merged result.
    let v = s.view("v", "l2", Labels::new()).await.unwrap();
    assert_eq!(v[0].kind, "overlay");
    let r = describe(&v).unwrap();
    assert_eq!(r.layers.len(), 2);
    assert!(r.layers.iter().all(|p| p.ends_with(LAYER_IMAGE)));
    assert_eq!(r.upper, None);
    {
        let _hm = HostMount::new(&v, &merged);
        assert!(!merged.join("gone").exists());
        assert!(!merged.join("opq/old").exists());
        assert_eq!(std::fs::read(merged.join("opq/new")).unwrap(), b"new");
        assert!(merged.join("etc/passwd").exists());
    }
    let v1 = s.view("v1", "base", Labels::new()).await.unwrap();
    assert_eq!(describe(&v1).unwrap().layers.len(), 1);

    // containerd's error classes.
    assert!(matches!(
        s.remove("base").await,
        Err(Error::FailedPrecondition(_))
    ));
    assert!(matches!(
        s.prepare("v", "", Labels::new()).await,
        Err(Error::AlreadyExists(_))
    ));
    assert!(matches!(
        s.prepare("c", "nope", Labels::new()).await,
        Err(Error::NotFound(_))
    ));
    assert!(matches!(
        s.prepare("c", "v", Labels::new()).await,
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        s.mounts("l2").await,
        Err(Error::FailedPrecondition(_))
    ));
    let bad: Labels = [(SIZE_LABEL.to_string(), "lots".to_string())].into();
    assert!(matches!(
        s.prepare("c", "l2", bad).await,
        Err(Error::InvalidArgument(_))
    ));
    let sized: Labels = [(SIZE_LABEL.to_string(), "32M".to_string())].into();
    let m = s.prepare("small", "l2", sized).await.unwrap();
    let img = describe(&m).unwrap().upper.unwrap();
    assert_eq!(std::fs::metadata(&img).unwrap().len(), 32 << 20);

    // Labels.
    let mut upd = s.stat("l2").await.unwrap();
    upd.labels = [("k".to_string(), "v".to_string())].into();
    let got = s.update(upd, &["labels.k".into()]).await.unwrap();
    assert_eq!(got.labels.get("k").map(String::as_str), Some("v"));

    // Reopening keeps everything and mounts it again.
    drop(s);
    unmount_under(root.path());
    let s = ErofsSnapshotter::open(root.path(), config()).unwrap();
    assert_eq!(s.walk().await.unwrap().len(), 5);
    assert_eq!(
        s.stat("l2")
            .await
            .unwrap()
            .labels
            .get("k")
            .map(String::as_str),
        Some("v")
    );
    let v = s.mounts("v").await.unwrap();
    {
        let _hm = HostMount::new(&v, &merged);
        assert_eq!(std::fs::read(merged.join("opq/new")).unwrap(), b"new");
    }
    assert!(upper_of(&m).exists(), "active snapshot mounted again");

    // Removing leaves no directories behind.
    for k in ["small", "v", "v1", "l2", "base"] {
        s.remove(k).await.unwrap();
    }
    assert!(s.walk().await.unwrap().is_empty());
    s.cleanup().await.unwrap();
    let left: Vec<_> = std::fs::read_dir(root.path().join("snapshots"))
        .unwrap()
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test]
async fn corrupt_layer_is_a_clear_error_and_leftovers_go() {
    if !can_run() {
        return;
    }
    let root = Root::new();
    let s = ErofsSnapshotter::open(root.path(), config()).unwrap();
    let m = s.prepare("a", "", Labels::new()).await.unwrap();
    std::fs::write(upper_of(&m).join("f"), b"x").unwrap();
    s.commit("base", "a", Labels::new()).await.unwrap();
    drop(s);
    unmount_under(root.path());
    let base = root.path().join("snapshots/1");
    assert!(base.join(LAYER_IMAGE).exists());
    std::fs::write(base.join(LAYER_IMAGE), vec![0x5a; 8192]).unwrap();
    // Half-made snapshots of a crashed process.
    std::fs::create_dir_all(root.path().join("snapshots/tmp-77")).unwrap();
    std::fs::create_dir_all(root.path().join("snapshots/78/fs")).unwrap();
    let s = ErofsSnapshotter::open(root.path(), config()).unwrap();
    assert!(!root.path().join("snapshots/tmp-77").exists());
    assert!(!root.path().join("snapshots/78").exists());
    let err = s.view("v", "base", Labels::new()).await.unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("cannot be mounted") && msg.contains("layer.erofs"),
        "{msg}"
    );
    assert_eq!(s.walk().await.unwrap().len(), 1);
}
