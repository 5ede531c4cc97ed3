//! Templates under real QEMU: concurrent first starts of a shape build one
//! template; clones of it differ in their random bytes and run their own drives,
//! shared directories, execs and pause/resume; another memory size gets another
//! template, and so does another kernel; a truncated or rewritten template is
//! rebuilt, not restored; a template that fails to restore is dropped after a boot.

mod common;
#[path = "common/features.rs"]
mod features;

use std::path::Path;
use std::time::{Duration, Instant};

use common::guest;
use ember_sandbox::template::{shape_of, TemplateStore, DEFAULT_MAX_BYTES};
use ember_sandbox::{Sandbox, SandboxConfig};
use ember_vmm::Drive;
use features::*;

const POOL: u64 = 1 << 30;

/// A sandbox with a pool drive whose first region holds a rootfs marked `id`, and
/// a shared directory holding `hello-<id>`.
fn config(d: &Path, id: &str, memory_mib: u32) -> SandboxConfig {
    let state = d.join(id);
    std::fs::create_dir_all(&state).unwrap();
    let pool = d.join(format!("{id}.pool"));
    sparse_file(&pool, POOL);
    mkfs_region(&pool, MIB, 16, &marked_rootfs(d, id));
    let shared = d.join(format!("{id}-shared"));
    std::fs::create_dir_all(&shared).unwrap();
    std::fs::write(shared.join("hello"), format!("hello-{id}")).unwrap();
    let mut c = SandboxConfig::new(id, &guest(), state);
    c.memory_mib = memory_mib;
    c.boot_timeout = Duration::from_secs(90);
    c.drives.push(Drive {
        id: "pool".into(),
        path: pool,
        read_only: false,
    });
    c.shared_dir = Some(shared);
    c
}

/// Starts a sleeper in the sandbox's first region and reads its marker, 32 random
/// bytes, the shared file and the hostname.
async fn probe(sb: &Sandbox, id: &str) -> (String, String, String) {
    let agent = sb.agent();
    let c = format!("c-{id}");
    create(
        agent,
        &c,
        region("pool", MIB, 16 * MIB),
        spec_with_mounts(
            &["sleep", "1000"],
            &[bind("/run/ember/shared", "/shared", true)],
        ),
        Vec::new(),
    )
    .await
    .unwrap_or_else(|e| panic!("create {c}: {e}"));
    agent.start_process(&c, "").await.unwrap();
    let marker = sh(agent, &c, "m", "cat /marker").await;
    let random = sh(
        agent,
        &c,
        "r",
        "head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \\n'",
    )
    .await;
    let shared = sh(agent, &c, "s", "cat /shared/hello").await;
    (marker, random, shared)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clones_are_their_own_and_templates_follow_their_inputs() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let store = TemplateStore::new(d.join("templates"), DEFAULT_MAX_BYTES);

    // Two first starts of one shape at once: one template, two clones.
    let (ca, cb) = (config(d, "a", 256), config(d, "b", 256));
    let key = shape_of(&ca).await.unwrap().key();
    assert_eq!(key, shape_of(&cb).await.unwrap().key());
    let t0 = Instant::now();
    let (a, b) = tokio::join!(
        Sandbox::start(ca, Some(&store)),
        Sandbox::start(cb, Some(&store))
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    eprintln!("first two starts (one template build): {:?}", t0.elapsed());
    assert_eq!(store.list().len(), 1, "{:?}", store.list());
    for sb in [&a, &b] {
        assert_eq!(sb.template(), Some(key.as_str()));
        assert!(sb.timings().from_template);
    }
    let (pa, pb) = tokio::join!(probe(&a, "a"), probe(&b, "b"));
    assert_eq!((pa.0.as_str(), pa.2.as_str()), ("a", "hello-a"));
    assert_eq!((pb.0.as_str(), pb.2.as_str()), ("b", "hello-b"));
    assert_eq!(pa.1.len(), 64, "{pa:?}");
    assert_ne!(pa.1, pb.1, "two clones read the same random bytes");

    // Pause and resume a clone; it goes on running its container.
    a.vm().pause().await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    a.vm().resume().await.unwrap();
    assert_eq!(
        sh(a.agent(), "c-a", "p", "echo after-resume").await.trim(),
        "after-resume"
    );
    common::shutdown(a).await;
    common::shutdown(b).await;

    // A later start restores without a build, quickly.
    let t0 = Instant::now();
    let c = Sandbox::start(config(d, "c", 256), Some(&store))
        .await
        .unwrap();
    let restore = t0.elapsed();
    assert_eq!(c.template(), Some(key.as_str()));
    eprintln!("restore: {restore:?} ({:?})", c.timings());
    assert_eq!(probe(&c, "c").await.0, "c");
    common::shutdown(c).await;

    // Another memory size is another shape: a second template.
    let e = Sandbox::start(config(d, "e", 320), Some(&store))
        .await
        .unwrap();
    let other = e.template().unwrap().to_string();
    assert_ne!(other, key);
    assert_eq!(store.list().len(), 2);
    assert_eq!(probe(&e, "e").await.0, "e");
    common::shutdown(e).await;

    // Another kernel (a rebuilt one: the same bytes in a new file) is another
    // shape too.
    let kernel = d.join("vmlinux-rebuilt");
    std::fs::copy(&guest().kernel, &kernel).unwrap();
    let mut ck = config(d, "k", 256);
    ck.kernel = kernel;
    let k = Sandbox::start(ck, Some(&store)).await.unwrap();
    let rebuilt = k.template().unwrap().to_string();
    assert!(rebuilt != key && rebuilt != other, "{rebuilt}");
    assert_eq!(store.list().len(), 3);
    assert_eq!(probe(&k, "k").await.0, "k");
    common::shutdown(k).await;
    assert_eq!(store.remove(&rebuilt).await.unwrap(), vec![rebuilt]);

    // A truncated state, then a rewritten memory file: rebuilt, then restored.
    let dir = store.path(&key);
    let state = std::fs::OpenOptions::new()
        .write(true)
        .open(dir.join("state"))
        .unwrap();
    state.set_len(100).unwrap();
    drop(state);
    assert!(!store
        .list()
        .iter()
        .find(|t| t.key == key)
        .unwrap()
        .problem
        .is_empty());
    let f = Sandbox::start(config(d, "f", 256), Some(&store))
        .await
        .unwrap();
    assert_eq!(f.template(), Some(key.as_str()));
    assert_eq!(probe(&f, "f").await.0, "f");
    common::shutdown(f).await;
    assert!(
        store.list().iter().all(|t| t.problem.is_empty()),
        "{:?}",
        store.list()
    );
    {
        use std::os::unix::fs::FileExt;
        let m = std::fs::OpenOptions::new()
            .write(true)
            .open(dir.join("memory"))
            .unwrap();
        m.write_all_at(&[0xff; 4096], 1 << 20).unwrap();
    }
    let g = Sandbox::start(config(d, "g", 256), Some(&store))
        .await
        .unwrap();
    assert_eq!(probe(&g, "g").await.0, "g");
    common::shutdown(g).await;

    // Removal by key prefix.
    let gone = store.remove(&other[..4]).await.unwrap();
    assert_eq!(gone, vec![other]);
    assert_eq!(store.list().len(), 1);
}

/// A template that passes every check but cannot be loaded (as after a VMM change
/// that kept the binary's identity): the start boots instead, and the template,
/// at fault, goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_that_fails_boots_instead_and_drops_the_template() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let store = TemplateStore::new(d.join("templates"), DEFAULT_MAX_BYTES);
    let first = Sandbox::start(config(d, "a", 256), Some(&store))
        .await
        .unwrap();
    let key = first.template().unwrap().to_string();
    common::shutdown(first).await;
    // Garbage of the same length, and a manifest that vouches for it.
    let dir = store.path(&key);
    let len = std::fs::metadata(dir.join("state")).unwrap().len();
    std::fs::write(dir.join("state"), vec![0x5a; len as usize]).unwrap();
    let mut m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    let meta = std::fs::metadata(dir.join("state")).unwrap();
    use std::os::unix::fs::MetadataExt;
    m["state_ctime_ns"] = (meta.ctime() * 1_000_000_000 + meta.ctime_nsec()).into();
    m["state_sha256"] = "".into();
    std::fs::write(dir.join("manifest.json"), m.to_string()).unwrap();
    assert!(store.list()[0].problem.is_empty(), "{:?}", store.list());

    let b = Sandbox::start(config(d, "b", 256), Some(&store))
        .await
        .unwrap();
    assert_eq!(b.template(), None, "the broken template was restored");
    assert!(!b.timings().from_template);
    assert_eq!(probe(&b, "b").await.0, "b");
    common::shutdown(b).await;
    assert!(store.list().is_empty(), "{:?}", store.list());
}
