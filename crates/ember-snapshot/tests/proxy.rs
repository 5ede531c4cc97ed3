//! `ember-snapshotter-proxy` serves a snapshotter that `ProxySnapshotter` drives over
//! its socket like a local one.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ember_snapshot::proxy::ProxySnapshotter;
use ember_snapshot::{Error, Kind, Labels, Snapshotter};

struct Server(std::process::Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(root: &Path, socket: &Path) -> Server {
    let child = Command::new(env!("CARGO_BIN_EXE_ember-snapshotter-proxy"))
        .arg("--root")
        .arg(root)
        .arg("--address")
        .arg(socket)
        .args(["--type", "native"])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::os::unix::net::UnixStream::connect(socket).is_err() {
        assert!(Instant::now() < deadline, "proxy did not come up");
        std::thread::sleep(Duration::from_millis(20));
    }
    Server(child)
}

#[tokio::test]
async fn proxy_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("proxy.sock");
    let mut server = start(&dir.path().join("root"), &socket);
    let s = ProxySnapshotter::new("remote", &socket);
    let mut labels = Labels::new();
    labels.insert("containerd.io/snapshot/x".into(), "1".into());
    let m = s.prepare("a", "", labels.clone()).await.unwrap();
    assert_eq!(m[0].kind, "bind");
    std::fs::write(Path::new(&m[0].source).join("f"), b"data").unwrap();
    s.commit("base", "a", Labels::new()).await.unwrap();
    let info = s.stat("base").await.unwrap();
    assert_eq!(info.kind, Kind::Committed);
    let m = s.view("v", "base", Labels::new()).await.unwrap();
    assert_eq!(
        std::fs::read(Path::new(&m[0].source).join("f")).unwrap(),
        b"data"
    );
    assert_eq!(s.mounts("v").await.unwrap(), m);
    assert!(s.usage("base").await.unwrap().inodes >= 2);
    let mut l = Labels::new();
    l.insert("k".into(), "v".into());
    let mut upd = info.clone();
    upd.labels = l.clone();
    assert_eq!(s.update(upd, &["labels.k".into()]).await.unwrap().labels, l);
    assert_eq!(s.walk().await.unwrap().len(), 2);
    // Errors keep their class across the wire.
    assert!(matches!(s.stat("nope").await, Err(Error::NotFound(_))));
    assert!(matches!(
        s.prepare("v", "", Labels::new()).await,
        Err(Error::AlreadyExists(_))
    ));
    assert!(matches!(
        s.remove("base").await,
        Err(Error::FailedPrecondition(_))
    ));
    s.remove("v").await.unwrap();
    s.remove("base").await.unwrap();
    s.cleanup().await.unwrap();

    // Restarting the server keeps the snapshots; the client reconnects.
    s.prepare("kept", "", Labels::new()).await.unwrap();
    drop(server);
    server = start(&dir.path().join("root"), &socket);
    // The same client reconnects (a call may fail while it does).
    let mut kind = s.stat("kept").await.map(|i| i.kind);
    if kind.is_err() {
        kind = s.stat("kept").await.map(|i| i.kind);
    }
    assert_eq!(kind.unwrap(), Kind::Active);
    drop(server);
    assert!(matches!(
        s.stat("kept").await,
        Err(Error::Unavailable(_)) | Err(Error::Internal(_))
    ));
}
