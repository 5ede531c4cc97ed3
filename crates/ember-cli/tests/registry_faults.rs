//! `ember pull` from a registry that misbehaves: a proxy in front of a real
//! `docker-registry` serves a blob with a wrong byte, a blob cut short, a
//! connection reset halfway through a blob, and manifests with a media type that
//! is not one. Each pull fails with an error naming what went wrong, records no
//! image and keeps no unverified blob; once the proxy behaves, the next pull
//! completes and fetches less than the whole image, resuming what arrived
//! before.

mod common;
mod regkit;

use common::*;
use ember_registry::testing::{RegistryOptions, TestRegistry};
use regkit::layout::{self, Compression, Layout};
use regkit::proxy::{Fault, Proxy};

const NS: &str = "ember-cli-faults";

fn can_run() -> bool {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipping: needs root");
        return false;
    }
    if !ember_registry::testing::available() || !regkit::have_skopeo() {
        eprintln!("skipping: docker-registry or skopeo missing");
        return false;
    }
    if !emberd_bin().exists() {
        eprintln!("skipping: emberd not built (cargo build -p emberd)");
        return false;
    }
    true
}

#[test]
fn faulty_registry_clear_errors_nothing_recorded_then_resumed() {
    if !can_run() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path();
    let cfg = work.join("docker-config");
    let reg = TestRegistry::start(&work.join("reg"), &RegistryOptions::default()).unwrap();
    let proxy = Proxy::start(&reg.host);

    // An image of a large layer (random bytes) and a small one, pushed by skopeo
    // straight to the registry.
    let mut lay = Layout::new(&work.join("layout"));
    let big_tar = layout::tar_of(
        &work.join("scratch"),
        &[("data/big", &layout::random_bytes(6 << 20))],
    );
    // (skopeo would compress a plain tar layer on its way.)
    let big = lay.layer(&big_tar, Compression::Gzip);
    let small_tar = layout::tar_of(&work.join("scratch"), &[("data/small", b"small\n")]);
    let small = lay.layer(&small_tar, Compression::Gzip);
    let arch = ember_images::Platform::host().architecture;
    let image = lay.image(&arch, &[big.clone(), small.clone()]);
    lay.name("faults", &image);
    lay.skopeo_push("faults", &format!("{}/ember/faults:1", reg.host));
    let big_size = big.desc["size"].as_u64().unwrap();

    let d = Daemon::emberd(&work.join("emberd"));
    let e = |args: &[&str]| ember(&d.socket, NS, &cfg, args, "");
    let remote = format!("{}/ember/faults:1", proxy.host);
    let pull = || e(&["pull", "--plain-http", &remote]);
    let nothing_kept = |what: &str| {
        eprintln!("{what}: {}", proxy.take_requests().len());
        let images = e(&["images", "ls", "-q"]);
        assert!(
            !images.expect_ok().contains(&remote),
            "{what}: image recorded: {}",
            images.stdout
        );
        let blobs = e(&["content", "ls", "-q"]);
        assert!(
            !blobs.expect_ok().contains(&big.digest()),
            "{what}: unverified blob kept: {}",
            blobs.stdout
        );
    };

    // A changed byte: the digest check refuses it, naming the blob.
    proxy.set(Fault::Corrupt(big.digest()));
    let corrupt = pull();
    eprintln!("{}", corrupt.stderr.trim());
    assert_eq!(
        corrupt.code,
        Some(1),
        "{}\n{}\n{:?}",
        corrupt.stdout,
        corrupt.stderr,
        proxy.take_requests()
    );
    assert!(
        corrupt.stderr.contains(&big.digest()) && corrupt.stderr.contains("arrived with digest"),
        "{}",
        corrupt.stderr
    );
    nothing_kept("corrupt blob");

    // Half the bytes, again on every retry: the pull gives up, saying how much
    // came.
    proxy.set(Fault::Truncate(big.digest()));
    let short = pull();
    eprintln!("{}", short.stderr.trim());
    assert_eq!(short.code, Some(1), "{}", short.stderr);
    assert!(
        short.stderr.contains("download interrupted")
            && short.stderr.contains(&big.digest())
            && short.stderr.contains(&format!("of {big_size} bytes")),
        "{}",
        short.stderr
    );
    nothing_kept("truncated blob");

    // The connection reset in the middle of the blob.
    proxy.set(Fault::Drop(big.digest()));
    let dropped = pull();
    eprintln!("{}", dropped.stderr.trim());
    assert_eq!(dropped.code, Some(1), "{}", dropped.stderr);
    assert!(
        dropped.stderr.contains("download interrupted")
            && dropped.stderr.contains(&big.digest())
            && dropped.stderr.contains("unavailable"),
        "{}",
        dropped.stderr
    );
    nothing_kept("dropped connection");

    // A manifest that does not say it is one.
    proxy.set(Fault::ManifestType("text/html".into()));
    let html = pull();
    eprintln!("{}", html.stderr.trim());
    assert_eq!(html.code, Some(1), "{}", html.stderr);
    assert!(
        html.stderr.contains("media type \"text/html\" is neither")
            && !html.stderr.contains("no Transfer service"),
        "{}",
        html.stderr
    );
    nothing_kept("wrong media type");

    // Behaving again: the pull completes, and the big layer's earlier bytes
    // are not fetched again.
    proxy.set(Fault::None);
    proxy.take_blob_bytes();
    let out = pull();
    out.expect_ok();
    let fetched = proxy.take_blob_bytes();
    eprintln!("resumed pull fetched {fetched} blob bytes");
    let whole: u64 = big_size + small.desc["size"].as_u64().unwrap();
    assert!(
        fetched < whole - big_size / 2,
        "fetched {fetched} of {whole} bytes: nothing resumed"
    );
    let images = e(&["images", "ls", "-q"]);
    assert!(images.expect_ok().contains(&remote), "{}", images.stdout);
    let blobs = e(&["content", "ls", "-q"]);
    assert!(
        blobs.expect_ok().contains(&big.digest()),
        "{}",
        blobs.stdout
    );
    // The blob as stored is the one pushed.
    let got = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "DOCKER_CONFIG={} {} --address {} -n {NS} content get {} | sha256sum",
            cfg.display(),
            ember_bin().display(),
            d.socket.display(),
            big.digest()
        ))
        .output()
        .unwrap();
    let sum = String::from_utf8_lossy(&got.stdout);
    assert!(
        big.digest()
            .ends_with(sum.split_whitespace().next().unwrap_or("-")),
        "{sum}"
    );
}
