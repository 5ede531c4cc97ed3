//! The Transfer service with containerd 1.7's `ctr` (`--local=false`, the way
//! ctr 2.x works by default): import of a docker archive, push into a real
//! `docker-registry` on loopback, removal, pull back (with progress), tag,
//! export, and a container run from the pulled image; the same flow against a
//! private containerd 1.7, whose images and digests must match. Then bad input:
//! a missing tag, a bad reference, a registry that is down.
//!
//! containerd 1.7's transfer service always speaks HTTPS to registries (ctr 1.7
//! sends no scheme), so its registry is a second `docker-registry` serving the
//! same storage over TLS with a self-signed certificate containerd trusts through
//! `SSL_CERT_FILE`; emberd gets the plain-HTTP one. Names are compared with the
//! registry address replaced.

mod common;

use std::path::Path;

use common::*;
use ember_registry::testing::{RegistryOptions, TestRegistry};

const CTR17: &str = "/opt/ember/trixie/usr/bin/ctr";
const CONTAINERD17: &str = "/opt/ember/trixie/usr/bin/containerd";
const NS: &str = "ember-transfer";
const LOCAL: &str = "docker.io/ember/busybox:latest";

fn ctr17(socket: &Path, args: &[&str]) -> Ctr {
    ctr_with(CTR17, socket, NS, args)
}

/// `(name, digest)` of each image, the registry address replaced by `REG`.
fn images(socket: &Path, host: &str) -> Vec<(String, String)> {
    let out = ctr17(socket, &["images", "ls"]);
    let mut v: Vec<(String, String)> = out
        .expect_ok()
        .lines()
        .skip(1)
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            Some((w.first()?.replace(host, "REG"), w.get(2)?.to_string()))
        })
        .collect();
    v.sort();
    v
}

/// `ctr images pull --local=false REF` on the daemon at `socket`.
fn pull(socket: &Path, reference: &str) -> Ctr {
    ctr17(socket, &["images", "pull", "--local=false", reference])
}

fn digests(socket: &Path) -> Vec<String> {
    let mut v: Vec<String> = ctr17(socket, &["content", "ls", "-q"])
        .expect_ok()
        .lines()
        .map(str::to_string)
        .collect();
    v.sort();
    v
}

/// What one daemon did with the flow.
struct Outcome {
    images: Vec<(String, String)>,
    exported: Vec<(String, String)>,
    pull_output: String,
}

/// import → push → rm → pull → tag → export on the daemon at `socket`, with the
/// registry at `host`.
fn flow(socket: &Path, host: &str, archive: &Path, work: &Path) -> Outcome {
    let imported = ctr17(
        socket,
        &[
            "images",
            "import",
            "--local=false",
            archive.to_str().unwrap(),
        ],
    );
    let out = imported.expect_ok();
    assert!(out.contains("saved"), "import output: {out}");
    let remote = format!("{host}/ember/busybox:latest");
    ctr17(
        socket,
        &[
            "images",
            "push",
            "--local=false",
            "--plain-http",
            &remote,
            LOCAL,
        ],
    )
    .expect_ok();
    ctr17(socket, &["images", "rm", "--sync", LOCAL]).expect_ok();
    let snaps = ctr17(socket, &["snapshots", "ls"]);
    assert!(
        !snaps.expect_ok().contains("Committed"),
        "left: {}",
        snaps.stdout
    );
    let pulled = ctr17(
        socket,
        &[
            "images",
            "pull",
            "--local=false",
            "--plain-http",
            "--platform",
            "linux/amd64",
            &remote,
        ],
    );
    let pull_output = pulled.expect_ok().to_string();
    // The daemon unpacked it (ctr run would otherwise unpack on its own).
    let snaps = ctr17(socket, &["snapshots", "ls"]);
    assert!(
        snaps.expect_ok().contains("Committed"),
        "not unpacked: {}",
        snaps.stdout
    );
    let tagged = format!("{host}/ember/busybox:v2");
    let t = ctr17(
        socket,
        &["images", "tag", "--local=false", &remote, &tagged],
    );
    assert_eq!(t.expect_ok().trim(), tagged);
    let out = work.join(format!("export-{}.tar", host.replace(':', "_")));
    ctr17(
        socket,
        &[
            "images",
            "export",
            "--local=false",
            out.to_str().unwrap(),
            &remote,
        ],
    )
    .expect_ok();
    let a = ember_images::Archive::open(&out, None).expect("the export is a readable archive");
    let mut exported: Vec<(String, String)> = a
        .images
        .iter()
        .map(|i| (i.name.replace(host, "REG"), i.target.digest.clone()))
        .collect();
    exported.sort();
    // Every blob the manifests name is in the archive.
    for i in &a.images {
        let m = ember_images::parse_manifest(&a.read(&i.target.digest).unwrap()).unwrap();
        a.read(&m.config.digest).unwrap();
        for l in &m.layers {
            assert!(a.reader(&l.digest).is_ok(), "layer {} missing", l.digest);
        }
    }
    Outcome {
        images: images(socket, host),
        exported,
        pull_output,
    }
}

#[test]
fn ctr17_import_push_pull_tag_export_run_against_emberd_and_containerd17() {
    if !can_run() {
        return;
    }
    for bin in [
        CTR17,
        ember_registry::testing::DOCKER_REGISTRY,
        "/usr/bin/openssl",
    ] {
        if !Path::new(bin).exists() {
            eprintln!("skipping: {bin} missing (scripts/deps.sh)");
            return;
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path();
    let archive = work.join("busybox.tar");
    ember_guest::busybox_docker_archive(&archive, LOCAL).unwrap();

    let plain = TestRegistry::start(&work.join("reg"), &RegistryOptions::default()).unwrap();
    std::fs::create_dir_all(work.join("emberd")).unwrap();
    let certs = work.join("certs.d");
    let d = Emberd::start_with_config(
        &work.join("emberd"),
        Some(&format!(
            "version = 2\n[plugins.\"io.containerd.grpc.v1.transfer\"]\n  config_path = \"{}\"\n",
            certs.display()
        )),
    );
    let ember = flow(&d.socket, &plain.host, &archive, work);
    eprintln!("emberd pull:\n{}", ember.pull_output);
    assert!(
        ember.pull_output.contains("saved") && ember.pull_output.contains("layer"),
        "pull progress: {}",
        ember.pull_output
    );
    assert_eq!(
        ember
            .images
            .iter()
            .map(|(n, _)| n.as_str())
            .collect::<Vec<_>>(),
        vec!["REG/ember/busybox:latest", "REG/ember/busybox:v2"],
        "{:?}",
        ember.images
    );
    assert_eq!(
        ember.exported,
        vec![(
            "REG/ember/busybox:latest".to_string(),
            ember.images[0].1.clone()
        )]
    );

    // The pulled image runs (Debian's ctr, runc).
    let remote = format!("{}/ember/busybox:latest", plain.host);
    let id = format!("transfer-{}", std::process::id());
    let run = ctr(
        &d.socket,
        NS,
        &[
            "run",
            "--rm",
            &remote,
            &id,
            "echo",
            "hello from the pulled image",
        ],
    );
    assert_eq!(
        run.stdout.trim(),
        "hello from the pulled image",
        "{}",
        run.stderr
    );

    // A registry asking for a password: refused without, pulled with --user.
    let secured = TestRegistry::start(
        &work.join("reg-auth"),
        &RegistryOptions {
            storage: Some(plain.storage.clone()),
            basic_auth: Some(("ember".into(), "s3cret".into())),
            ..Default::default()
        },
    )
    .unwrap();
    let sref = format!("{}/ember/busybox:latest", secured.host);
    let denied = pull(&d.socket, &sref);
    assert!(
        !denied.ok && denied.stderr.contains("unauthorized"),
        "{}",
        denied.stderr
    );
    let wrong = ctr17(
        &d.socket,
        &[
            "images",
            "pull",
            "--local=false",
            "--user",
            "ember:nope",
            &sref,
        ],
    );
    assert!(
        !wrong.ok && wrong.stderr.contains("unauthorized"),
        "{}",
        wrong.stderr
    );
    ctr17(
        &d.socket,
        &[
            "images",
            "pull",
            "--local=false",
            "--user",
            "ember:s3cret",
            &sref,
        ],
    )
    .expect_ok();
    let pushed = format!("{}/ember/pushed:1", secured.host);
    ctr17(
        &d.socket,
        &[
            "images",
            "push",
            "--local=false",
            "--user",
            "ember:s3cret",
            &pushed,
            &sref,
        ],
    )
    .expect_ok();

    // Bad input; nothing left half-recorded.
    let all: Vec<String> = images(&d.socket, &plain.host)
        .into_iter()
        .map(|(n, _)| n.replace("REG", &plain.host))
        .collect();
    let mut rm = vec!["images", "rm", "--sync"];
    rm.extend(all.iter().map(String::as_str));
    ctr17(&d.socket, &rm).expect_ok();
    let before = (images(&d.socket, &plain.host), digests(&d.socket));
    let missing = pull(&d.socket, &format!("{}/ember/busybox:nope", plain.host));
    assert_eq!(missing.class(), "not found", "{}", missing.stderr);
    let bad = pull(&d.socket, "UPPER/x:1");
    assert_eq!(bad.class(), "invalid argument", "{}", bad.stderr);
    let down = format!(
        "127.0.0.1:{}/ember/busybox:latest",
        ember_registry::testing::free_port()
    );
    let gone = pull(&d.socket, &down);
    assert_eq!(gone.class(), "unavailable", "{}", gone.stderr);
    assert!(gone.stderr.contains("refused"), "{}", gone.stderr);
    let missing_push = ctr17(
        &d.socket,
        &[
            "images",
            "push",
            "--local=false",
            &down,
            "docker.io/ember/none:latest",
        ],
    );
    assert_eq!(missing_push.class(), "not found", "{}", missing_push.stderr);
    let junk = work.join("junk.tar");
    std::fs::write(&junk, b"not an archive").unwrap();
    let bad_import = ctr17(
        &d.socket,
        &["images", "import", "--local=false", junk.to_str().unwrap()],
    );
    assert_eq!(
        bad_import.class(),
        "invalid argument",
        "{}",
        bad_import.stderr
    );
    // A registry that lost a layer: the pull fails after the manifest and config
    // arrived, and what it stored goes with its lease.
    let layer = {
        let a = ember_images::Archive::open(&archive, None).unwrap();
        let m = ember_images::parse_manifest(&a.read(&a.images[0].target.digest).unwrap()).unwrap();
        m.layers[0].digest.clone()
    };
    let hex = layer.trim_start_matches("sha256:");
    let data = plain.storage.join(format!(
        "docker/registry/v2/blobs/sha256/{}/{hex}/data",
        &hex[..2]
    ));
    std::fs::remove_file(&data).unwrap();
    let cut = pull(&d.socket, &remote);
    assert!(!cut.ok, "{}", cut.stdout);
    assert_eq!(images(&d.socket, &plain.host), before.0);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while digests(&d.socket) != before.1 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(
        digests(&d.socket),
        before.1,
        "a failed pull left content behind"
    );

    // The same flow against containerd 1.7.
    if !Path::new(CONTAINERD17).exists() {
        eprintln!("{CONTAINERD17} missing: not comparing");
        return;
    }
    let tls = TestRegistry::start(
        &work.join("reg-tls"),
        &RegistryOptions {
            storage: Some(work.join("reg-tls-storage")),
            tls: true,
            ..Default::default()
        },
    )
    .unwrap();
    let cert = tls.cert.clone().unwrap();
    let shim_dir = Path::new(CONTAINERD17)
        .parent()
        .unwrap()
        .display()
        .to_string();
    let path = format!("{shim_dir}:{}", std::env::var("PATH").unwrap_or_default());
    let c = Containerd::start_with(
        CONTAINERD17,
        &[("SSL_CERT_FILE", cert.to_str().unwrap()), ("PATH", &path)],
    )
    .unwrap();
    let theirs = flow(&c.socket, &tls.host, &archive, work);
    eprintln!(
        "emberd: {:?}\ncontainerd 1.7: {:?}",
        ember.images, theirs.images
    );
    eprintln!("containerd 1.7 pull:\n{}", theirs.pull_output);
    assert_eq!(
        ember.images, theirs.images,
        "images differ from containerd 1.7's"
    );
    assert_eq!(
        ember.exported, theirs.exported,
        "exports differ from containerd 1.7's"
    );
    let missing = pull(&c.socket, &format!("{}/ember/busybox:nope", tls.host));
    assert_eq!(
        missing.class(),
        "not found",
        "containerd: {}",
        missing.stderr
    );
    let gone = pull(&c.socket, &down);
    eprintln!(
        "containerd 1.7 on a registry that is down: {}",
        gone.stderr.trim()
    );

    // emberd over HTTPS too, with the registry's CA from its hosts directory.
    let host_dir = certs.join(&tls.host);
    std::fs::create_dir_all(&host_dir).unwrap();
    std::fs::write(
        host_dir.join("hosts.toml"),
        format!(
            "server = \"https://{}\"\nca = \"{}\"\n",
            tls.host,
            cert.display()
        ),
    )
    .unwrap();
    let over_tls = format!("{}/ember/busybox:latest", tls.host);
    pull(&d.socket, &over_tls).expect_ok();
    let got = images(&d.socket, &tls.host);
    assert!(
        got.contains(&(
            "REG/ember/busybox:latest".to_string(),
            ember.images[0].1.clone()
        )),
        "{got:?}"
    );
}
