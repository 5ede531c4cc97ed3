//! EROFS snapshots reach the VM without a copy, driven through Debian's containerd:
//! snapshots laid out as the erofs snapshotter lays them out (`layer.erofs` beside
//! each layer's `fs`, `rw.ext4` beside the writable layer's `rw`, mounted on the
//! host as the snapshotter leaves them) are given to `Tasks.Create` as its rootfs.
//! The layers' content is read back byte-exact inside the VM, a container's writes
//! land in its `rw.ext4` and survive the task, two containers of a pod share one VM
//! (the second's images through the shared directory), a corrupt layer fails its
//! container alone, naming the layer.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;
use containerd_client::services::v1 as api;
use containerd_client::services::v1::tasks_client::TasksClient;
use containerd_client::tonic::transport::Channel;
use containerd_client::tonic::Request;
use containerd_client::types::Mount;

const NS: &str = "default";
/// Size of the random file of the test's biggest layer.
const BIG_MIB: usize = 48;

fn req<T>(msg: T) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut()
        .insert("containerd-namespace", NS.parse().unwrap());
    r
}

fn sh(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{cmd:?}: {}", text(&out.stderr));
    text(&out.stdout)
}

/// Snapshots laid out as the erofs snapshotter does, unmounted again on drop.
struct Snapshots {
    root: PathBuf,
}

impl Snapshots {
    fn dir(&self, n: &str) -> PathBuf {
        self.root.join("snapshots").join(n)
    }

    /// A layer `n` made from the tree `fill` writes: `layer.erofs`, mounted at `fs`.
    fn layer(&self, n: &str, fill: impl FnOnce(&Path)) -> PathBuf {
        let d = self.dir(n);
        let tree = d.join("tree");
        std::fs::create_dir_all(&tree).unwrap();
        std::fs::create_dir_all(d.join("fs")).unwrap();
        fill(&tree);
        sh(Command::new("mkfs.erofs")
            .arg("--quiet")
            .arg(d.join("layer.erofs"))
            .arg(&tree));
        std::fs::remove_dir_all(&tree).unwrap();
        sh(Command::new("mount")
            .args(["-t", "erofs", "-o", "ro,loop"])
            .arg(d.join("layer.erofs"))
            .arg(d.join("fs")));
        d.join("fs")
    }

    /// A corrupt layer: `layer.erofs` of random bytes (its `fs` left empty).
    fn corrupt_layer(&self, n: &str) -> PathBuf {
        let d = self.dir(n);
        std::fs::create_dir_all(d.join("fs")).unwrap();
        sh(Command::new("dd")
            .args(["if=/dev/urandom", "bs=64k", "count=16", "status=none"])
            .arg(format!("of={}", d.join("layer.erofs").display())));
        d.join("fs")
    }

    /// A writable layer `n`: a sparse `rw.ext4` with `upper/` and `work/`,
    /// mounted at `rw`. Returns the upperdir.
    fn upper(&self, n: &str) -> PathBuf {
        let d = self.dir(n);
        let tree = d.join("tree");
        std::fs::create_dir_all(tree.join("upper")).unwrap();
        std::fs::create_dir_all(tree.join("work")).unwrap();
        std::fs::create_dir_all(d.join("rw")).unwrap();
        sh(Command::new("mkfs.ext4")
            .args(["-q", "-F", "-E", "root_owner=0:0", "-d"])
            .arg(&tree)
            .arg(d.join("rw.ext4"))
            .arg("256M"));
        std::fs::remove_dir_all(&tree).unwrap();
        sh(Command::new("mount")
            .args(["-o", "loop"])
            .arg(d.join("rw.ext4"))
            .arg(d.join("rw")));
        d.join("rw/upper")
    }

    /// A file of writable layer `n`'s upper directory, read with the image
    /// mounted read-only aside.
    fn written(&self, n: &str, file: &str) -> Option<String> {
        let d = self.dir(n);
        let mnt = d.join("check");
        std::fs::create_dir_all(&mnt).unwrap();
        sh(Command::new("mount")
            .args(["-o", "ro,loop,noload"])
            .arg(d.join("rw.ext4"))
            .arg(&mnt));
        let s = std::fs::read_to_string(mnt.join("upper").join(file)).ok();
        sh(Command::new("umount").arg(&mnt));
        s
    }
}

impl Drop for Snapshots {
    fn drop(&mut self) {
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let root = self.root.display().to_string();
        let mut points: Vec<&str> = info
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|p| p.starts_with(&root))
            .collect();
        points.sort_by_key(|p| std::cmp::Reverse(p.len()));
        for p in points {
            let _ = Command::new("umount").arg(p).status();
        }
    }
}

fn is_mounted(p: &Path) -> bool {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let p = p.display().to_string();
    info.lines()
        .any(|l| l.split(' ').nth(4) == Some(p.as_str()))
}

/// Whether some process holds the claim on writable layer `dir`'s image.
fn claimed(dir: &Path) -> bool {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(dir.join("rw.ext4.lock"))
        .unwrap();
    nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock).is_err()
}

/// The erofs snapshotter's mount of an active snapshot.
fn overlay(lowers: &[&Path], upper: &Path) -> Mount {
    let lower: Vec<String> = lowers.iter().map(|l| l.display().to_string()).collect();
    Mount {
        r#type: "overlay".into(),
        source: "overlay".into(),
        target: String::new(),
        options: vec![
            "index=off".into(),
            format!("lowerdir={}", lower.join(":")),
            format!("upperdir={}", upper.display()),
            format!("workdir={}", upper.with_file_name("work").display()),
        ],
    }
}

struct Client {
    tasks: TasksClient<Channel>,
}

impl Client {
    async fn create(&mut self, id: &str, mounts: Vec<Mount>) -> Result<u32, String> {
        self.tasks
            .create(req(api::CreateTaskRequest {
                container_id: id.into(),
                rootfs: mounts,
                ..Default::default()
            }))
            .await
            .map(|r| r.into_inner().pid)
            .map_err(|e| e.message().to_string())
    }

    async fn start(&mut self, id: &str) {
        self.tasks
            .start(req(api::StartRequest {
                container_id: id.into(),
                exec_id: String::new(),
            }))
            .await
            .unwrap();
    }

    /// Starts `id`'s task and waits for its exit status.
    async fn run(&mut self, id: &str) -> u32 {
        self.start(id).await;
        let w = self.tasks.wait(req(api::WaitRequest {
            container_id: id.into(),
            exec_id: String::new(),
        }));
        tokio::time::timeout(Duration::from_secs(120), w)
            .await
            .expect("the task did not end")
            .unwrap()
            .into_inner()
            .exit_status
    }

    async fn status(&mut self, id: &str) -> i32 {
        self.tasks
            .get(req(api::GetRequest {
                container_id: id.into(),
                exec_id: String::new(),
            }))
            .await
            .unwrap()
            .into_inner()
            .process
            .unwrap()
            .status
    }

    async fn kill(&mut self, id: &str) {
        self.tasks
            .kill(req(api::KillRequest {
                container_id: id.into(),
                signal: 9,
                ..Default::default()
            }))
            .await
            .unwrap();
    }

    async fn delete(&mut self, id: &str) {
        self.tasks
            .delete(req(api::DeleteTaskRequest {
                container_id: id.into(),
            }))
            .await
            .unwrap();
    }
}

fn container(c: &Containerd, id: &str, annotations: &[&str], script: &str) {
    c.used_ids.lock().unwrap().push(id.to_string());
    let mut a = vec!["containers", "create", "--runtime", RUNTIME];
    for an in annotations {
        a.extend_from_slice(&["--annotation", an]);
    }
    a.extend_from_slice(&[IMAGE, id, "--", "sh", "-c", script]);
    let out = c.ctr(&a);
    assert!(out.status.success(), "{}", text(&out.stderr));
}

fn host_sha256(p: &Path) -> String {
    sh(Command::new("sha256sum").arg(p))
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// Files named `rootfs.ext4` (the copy path's images) under `dir`.
fn copies_under(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() && !p.is_symlink() {
                stack.push(p);
            } else if p.file_name().is_some_and(|n| n == "rootfs.ext4") {
                found.push(p);
            }
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erofs_snapshots_reach_the_vm_as_drives_and_shared_files() {
    if nix::unistd::geteuid().as_raw() != 0 {
        eprintln!("skipped: needs root");
        return;
    }
    let c = Containerd::start();
    let snaps = Snapshots {
        root: c.dir.path().join("erofs"),
    };
    let base = snaps.layer("1", |t| ember_guest::busybox_rootfs(t).unwrap());
    let big = snaps.layer("2", |t| {
        std::fs::create_dir_all(t.join("data")).unwrap();
        std::fs::create_dir_all(t.join("etc")).unwrap();
        std::fs::write(t.join("etc/layer2"), "second layer\n").unwrap();
        // Shadows the first layer's file.
        std::fs::write(t.join("etc/hostname"), "layered\n").unwrap();
        sh(Command::new("dd")
            .args(["if=/dev/urandom", "bs=1M", "status=none"])
            .arg(format!("count={BIG_MIB}"))
            .arg(format!("of={}", t.join("data/big").display())));
    });
    let big_sum = host_sha256(&big.join("data/big"));
    let ch = containerd_client::connect(&c.sock).await.unwrap();
    let mut cl = Client {
        tasks: TasksClient::new(ch),
    };

    // One container, two tasks on its snapshot: the layers read back byte-exact,
    // the first task's write is there for the second.
    let up = snaps.upper("3");
    let rw3 = snaps.dir("3");
    container(
        &c,
        "erofs-a",
        &[],
        "if [ -f /written ]; then cat /written > /again; else \
         sha256sum /data/big > /sum; cat /etc/layer2 /etc/hostname >> /sum; \
         echo persisted > /written; fi",
    );
    let mounts = vec![overlay(&[&big, &base], &up)];
    for round in 0..2 {
        cl.create("erofs-a", mounts.clone())
            .await
            .unwrap_or_else(|e| panic!("round {round}: {e}\n{}", c.shim_logs()));
        assert!(claimed(&rw3), "the writable image is not claimed");
        assert!(
            !is_mounted(&rw3.join("rw")),
            "rw.ext4 is still mounted on the host"
        );
        assert_eq!(
            copies_under(&c.dir.path().join("shim-state")),
            Vec::<PathBuf>::new()
        );
        assert_eq!(cl.run("erofs-a").await, 0, "{}", c.shim_logs());
        cl.delete("erofs-a").await;
        assert!(!claimed(&rw3), "the claim outlived the task");
    }
    assert_eq!(
        snaps.written("3", "sum").unwrap(),
        format!("{big_sum}  /data/big\nsecond layer\nlayered\n")
    );
    assert_eq!(snaps.written("3", "again").unwrap(), "persisted\n");

    // A pod: the first container boots the VM with its layers as drives, the
    // second joins with one more layer and its writable image through the shared
    // directory; a third on a corrupt layer fails alone.
    let pod = "io.ember.vm.id=erofs-pod";
    let extra = snaps.layer("4", |t| {
        std::fs::create_dir_all(t.join("extra")).unwrap();
        std::fs::write(t.join("extra/file"), "only in the joining container\n").unwrap();
    });
    let (up5, up6, up7) = (snaps.upper("5"), snaps.upper("6"), snaps.upper("7"));
    let bad = snaps.corrupt_layer("8");
    container(&c, "erofs-p1", &[pod], "echo first > /p1; exec sleep 600");
    container(
        &c,
        "erofs-p2",
        &[pod],
        "sha256sum /data/big > /sum; cat /extra/file /etc/hostname >> /sum",
    );
    container(&c, "erofs-p3", &[pod], "true");
    cl.create("erofs-p1", vec![overlay(&[&big, &base], &up5)])
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", c.shim_logs()));
    cl.start("erofs-p1").await;
    // Loop devices of the guest, seen from the running container (sysfs).
    let loops = |n: &str| {
        c.exec_ok(
            "erofs-p1",
            n,
            &["sh", "-c", "ls -d /sys/block/loop* 2>/dev/null | wc -l"],
        )
        .trim()
        .parse::<u32>()
        .unwrap()
    };
    let before = loops("l0");
    cl.create("erofs-p2", vec![overlay(&[&extra, &big, &base], &up6)])
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", c.shim_logs()));
    assert_eq!(c.vmms().len(), 1, "the pod runs in one VM");
    assert_eq!(cl.run("erofs-p2").await, 0, "{}", c.shim_logs());
    // Its extra layer and its writable image are loop-mapped shared files.
    assert_eq!(loops("lp2"), before + 2);
    cl.delete("erofs-p2").await;
    assert_eq!(
        snaps.written("6", "sum").unwrap(),
        format!("{big_sum}  /data/big\nonly in the joining container\nlayered\n")
    );
    let e = cl
        .create("erofs-p3", vec![overlay(&[&bad, &base], &up7)])
        .await
        .unwrap_err();
    assert!(e.contains("layer 1 of 2"), "{e}");
    assert!(!claimed(&snaps.dir("7")), "a failed create kept its claim");
    // A corrupt writable image fails its container alone too, naming it.
    let d9 = snaps.dir("9");
    std::fs::create_dir_all(&d9).unwrap();
    sh(Command::new("dd")
        .args(["if=/dev/urandom", "bs=64k", "count=16", "status=none"])
        .arg(format!("of={}", d9.join("rw.ext4").display())));
    container(&c, "erofs-p4", &[pod], "true");
    let e = cl
        .create(
            "erofs-p4",
            vec![overlay(&[&big, &base], &d9.join("rw/upper"))],
        )
        .await
        .unwrap_err();
    assert!(e.contains("the writable layer"), "{e}");
    // The joining containers' loop devices (their shared images) are gone.
    let mut after = loops("l1");
    for i in 0..50 {
        if after == before {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
        after = loops(&format!("l{}", i + 2));
    }
    assert_eq!(after, before, "loop devices left in the guest");
    // The pod's first container runs on.
    assert_eq!(cl.status("erofs-p1").await, 2, "erofs-p1 is not running");
    cl.kill("erofs-p1").await;
    let w = cl.tasks.wait(req(api::WaitRequest {
        container_id: "erofs-p1".into(),
        exec_id: String::new(),
    }));
    tokio::time::timeout(Duration::from_secs(60), w)
        .await
        .unwrap()
        .unwrap();
    cl.delete("erofs-p1").await;
    assert_eq!(snaps.written("5", "p1").unwrap(), "first\n");
    for id in ["erofs-a", "erofs-p1", "erofs-p2", "erofs-p3", "erofs-p4"] {
        c.ctr(&["containers", "rm", id]);
    }
    c.assert_clean();
}

/// A docker archive of `name` whose layers are the trees `layers` (bottom first).
fn docker_archive(work: &Path, name: &str, layers: &[PathBuf]) -> PathBuf {
    use sha2::{Digest, Sha256};
    let stage = work.join("archive");
    std::fs::create_dir_all(&stage).unwrap();
    let (mut files, mut diffs) = (Vec::new(), Vec::new());
    for (i, l) in layers.iter().enumerate() {
        let tar = stage.join(format!("l{i}.tar"));
        sh(Command::new("tar")
            .args(["--numeric-owner", "--sort=name", "-C"])
            .arg(l)
            .arg("-cf")
            .arg(&tar)
            .arg("."));
        let d = hex(&Sha256::digest(std::fs::read(&tar).unwrap()));
        std::fs::create_dir_all(stage.join(&d)).unwrap();
        std::fs::rename(&tar, stage.join(&d).join("layer.tar")).unwrap();
        files.push(format!("{d}/layer.tar"));
        diffs.push(format!("sha256:{d}"));
    }
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Env": ["PATH=/bin"], "Cmd": ["sh"]},
        "rootfs": {"type": "layers", "diff_ids": diffs},
    })
    .to_string();
    let cd = hex(&Sha256::digest(config.as_bytes()));
    std::fs::write(stage.join(format!("{cd}.json")), &config).unwrap();
    let manifest = serde_json::json!([{
        "Config": format!("{cd}.json"), "RepoTags": [name], "Layers": files,
    }]);
    std::fs::write(stage.join("manifest.json"), manifest.to_string()).unwrap();
    let out = work.join("image.tar");
    sh(Command::new("tar")
        .arg("-C")
        .arg(&stage)
        .arg("-cf")
        .arg(&out)
        .arg("."));
    out
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Kills the snapshotter proxy on drop.
struct Proxy(std::process::Child);

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `ctr run` with the erofs snapshotter and Ember's runtime; its output.
fn run_erofs(c: &Containerd, flags: &[&str], image: &str, id: &str, args: &[&str]) -> String {
    c.used_ids.lock().unwrap().push(id.to_string());
    let mut a = vec!["run", "--snapshotter", "erofs", "--runtime", RUNTIME];
    a.extend_from_slice(flags);
    a.extend_from_slice(&[image, id]);
    a.extend_from_slice(args);
    let out = c.ctr(&a);
    assert!(
        out.status.success(),
        "ctr {a:?}: {}\n{}",
        text(&out.stderr),
        c.shim_logs()
    );
    text(&out.stdout)
}

/// Debian's ctr and containerd with the erofs snapshotter as a proxy plugin: images
/// imported into it run in Ember's VMs straight from their EROFS layers.
#[test]
fn ctr_runs_images_of_the_erofs_snapshotter() {
    if nix::unistd::geteuid().as_raw() != 0 {
        eprintln!("skipped: needs root");
        return;
    }
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let _snaps = Snapshots {
        root: dir.path().join("erofs"),
    };
    let bin = Path::new(env!("CARGO_BIN_EXE_containerd-shim-ember-v2"))
        .with_file_name("ember-snapshotter-proxy");
    assert!(
        bin.exists(),
        "{}: cargo build -p ember-snapshot",
        bin.display()
    );
    let sock = dir.path().join("erofs.sock");
    let _proxy = Proxy(
        Command::new(&bin)
            .arg("--root")
            .arg(dir.path().join("erofs"))
            .arg("--address")
            .arg(&sock)
            .args(["--type", "erofs", "--default-size", "1G"])
            .stderr(std::fs::File::create(dir.path().join("proxy.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::os::unix::net::UnixStream::connect(&sock).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "the proxy did not come up"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let extra = format!(
        "[proxy_plugins.erofs]\n  type = \"snapshot\"\n  address = \"{}\"\n",
        sock.display()
    );
    let c = Containerd::start_configured(&DEBIAN, &extra);
    let bb = c.dir.path().join("busybox.tar");
    let import = |archive: &Path| {
        let out = c.ctr(&[
            "images",
            "import",
            "--snapshotter",
            "erofs",
            archive.to_str().unwrap(),
        ]);
        assert!(out.status.success(), "import: {}", text(&out.stderr));
    };
    import(&bb);
    // busybox + two layers of random data (200 MiB in all).
    let work = dir.path().join("image");
    let (l0, l1, l2) = (work.join("l0"), work.join("l1/data"), work.join("l2/data"));
    for d in [&l0, &l1, &l2] {
        std::fs::create_dir_all(d).unwrap();
    }
    ember_guest::busybox_rootfs(&l0).unwrap();
    for (d, f) in [(&l1, "a"), (&l2, "b")] {
        sh(Command::new("dd")
            .args(["if=/dev/urandom", "bs=1M", "count=100", "status=none"])
            .arg(format!("of={}", d.join(f).display())));
    }
    let last_sum = host_sha256(&l2.join("b"));
    let big = "docker.io/ember/big:latest";
    import(&docker_archive(
        &work,
        big,
        &[l0.clone(), work.join("l1"), work.join("l2")],
    ));

    assert_eq!(
        run_erofs(&c, &["--rm"], IMAGE, "e2e-bb", &["cat", "/etc/hostname"]).trim(),
        "ember"
    );
    // The last layer's content, read inside the VM.
    let inside = run_erofs(&c, &["--rm"], big, "e2e-big", &["sha256sum", "/data/b"]);
    assert_eq!(inside.split_whitespace().next(), Some(last_sum.as_str()));
    // A write survives its task: the next task of the container reads it.
    let script = "if [ -f /kept ]; then cat /kept; else echo kept > /kept; echo first; fi";
    assert_eq!(
        run_erofs(&c, &[], big, "e2e-w", &["sh", "-c", script]).trim(),
        "first"
    );
    let again = c.ctr(&["task", "start", "e2e-w"]);
    assert!(again.status.success(), "{}", text(&again.stderr));
    assert_eq!(text(&again.stdout).trim(), "kept");
    c.ctr(&["tasks", "delete", "e2e-w"]);
    let rm = c.ctr(&["containers", "rm", "e2e-w"]);
    assert!(rm.status.success(), "{}", text(&rm.stderr));
    // Two containers of the image in one VM: the second's writable image goes
    // through the shared directory.
    let pod = "io.ember.vm.id=e2e-pod";
    run_erofs(
        &c,
        &["-d", "--annotation", pod],
        big,
        "e2e-p1",
        &["sleep", "600"],
    );
    let second = run_erofs(
        &c,
        &["--rm", "--annotation", pod],
        big,
        "e2e-p2",
        &["sh", "-c", "sha256sum /data/b; echo x > /w; cat /w"],
    );
    assert_eq!(
        second.split_whitespace().collect::<Vec<_>>(),
        [last_sum.as_str(), "/data/b", "x"]
    );
    assert_eq!(c.vmms().len(), 1, "the pod runs in one VM");
    // No copy: the running VM's rootfs is its layers, not a built image.
    assert_eq!(
        copies_under(&c.dir.path().join("shim-state")),
        Vec::<PathBuf>::new()
    );
    assert!(
        c.shim_logs().contains("EROFS rootfs handed over as drives"),
        "{}",
        c.shim_logs()
    );
    c.kill_and_remove("e2e-p1");
    c.assert_clean();
}
