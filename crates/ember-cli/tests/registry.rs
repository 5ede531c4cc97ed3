//! The registry verbs against real daemons and a real `docker-registry` on
//! loopback: a busybox image imported into emberd, pushed (`--plain-http`),
//! removed and pulled back (plain progress lines, then JSON events), listed
//! with its size and age; bad references, missing tags and a registry that is
//! down; `ember login` against an htpasswd registry (a wrong password refused
//! and nothing stored, the right one kept in `config.json`), push and pull with
//! the stored credentials, `ember logout`; the same with a token server. Then push and pull through a private
//! containerd 1.7 (its registry over TLS with a certificate it trusts).

mod common;

use std::path::Path;

use common::*;
use ember_registry::testing::{free_port, RegistryOptions, TestRegistry};

const NS: &str = "ember-cli-registry";
const LOCAL: &str = "docker.io/ember/busybox:latest";
const CONTAINERD17: &str = "/opt/ember/trixie/usr/bin/containerd";

fn can_run() -> bool {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipping: needs root");
        return false;
    }
    if !ember_registry::testing::available() {
        eprintln!(
            "skipping: {} missing",
            ember_registry::testing::DOCKER_REGISTRY
        );
        return false;
    }
    if !emberd_bin().exists() {
        eprintln!(
            "skipping: {} not built (cargo build -p emberd)",
            emberd_bin().display()
        );
        return false;
    }
    true
}

/// The last line of a run's output: `NAME DIGEST`.
fn result_line(out: &str) -> (String, String) {
    let last = out.lines().last().unwrap_or_default();
    let (n, d) = last.split_once(' ').unwrap_or((last, ""));
    (n.to_string(), d.to_string())
}

/// Imports busybox, pushes it to `registry`, removes it and pulls it back with
/// plain progress; returns the pull's output.
fn push_rm_pull(
    socket: &Path,
    cfg: &Path,
    archive: &Path,
    remote: &str,
    scheme: &[&str],
) -> String {
    let e = |args: &[&str]| ember(socket, NS, cfg, args, "");
    e(&["images", "import", "-q", archive.to_str().unwrap()]).expect_ok();
    let mut push = vec!["push"];
    push.extend_from_slice(scheme);
    push.extend([remote, LOCAL]);
    let pushed = e(&push);
    let out = pushed.expect_ok();
    assert_eq!(result_line(out).0, LOCAL, "{out}");
    assert!(out.contains("layer sha256:"), "push progress: {out}");
    e(&["images", "rm", "--sync", LOCAL]).expect_ok();
    let mut pull = vec!["pull"];
    pull.extend_from_slice(scheme);
    pull.push(remote);
    let pulled = e(&pull);
    let out = pulled.expect_ok().to_string();
    let (name, digest) = result_line(&out);
    assert_eq!(name, remote, "{out}");
    assert!(digest.starts_with("sha256:"), "{out}");
    // Plain lines: one per state change of each blob, then the summary.
    assert!(
        out.lines()
            .any(|l| l.starts_with("layer sha256:") && l.contains("  done  ")),
        "pull progress: {out}"
    );
    assert!(
        out.lines()
            .any(|l| l.contains(" blobs, ") && l.contains("/s)")),
        "summary: {out}"
    );
    out
}

#[test]
fn pull_push_login_against_emberd_and_containerd() {
    if !can_run() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path();
    let cfg = work.join("docker-config");
    let archive = work.join("busybox.tar");
    ember_guest::busybox_docker_archive(&archive, LOCAL).unwrap();
    let reg = TestRegistry::start(&work.join("reg"), &RegistryOptions::default()).unwrap();
    let d = Daemon::emberd(&work.join("emberd"));
    let s = d.socket.as_path();
    let e = |args: &[&str]| ember(s, NS, &cfg, args, "");

    let remote = format!("{}/ember/busybox:latest", reg.host);
    let out = push_rm_pull(s, &cfg, &archive, &remote, &["--plain-http"]);
    eprintln!("ember pull:\n{out}");

    // JSON events, one per line, the last naming the image.
    e(&["images", "rm", "--sync", &remote]).expect_ok();
    let json = e(&["--json", "pull", "--plain-http", &remote]);
    let events: Vec<serde_json::Value> = json
        .expect_ok()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect();
    assert!(
        events.iter().any(|v| v["state"] == "done"
            && v["name"]
                .as_str()
                .unwrap_or_default()
                .starts_with("layer-sha256:")
            && v["progress"] == v["total"]),
        "{events:?}"
    );
    let last = events.last().unwrap();
    assert_eq!(last["event"], "done");
    assert_eq!(last["name"], remote.as_str());
    let digest = last["digest"].as_str().unwrap().to_string();
    // Quiet: only the name and digest.
    let quiet = e(&["pull", "-q", "--plain-http", &remote]);
    assert_eq!(quiet.expect_ok().trim(), format!("{remote} {digest}"));
    // `ember run` pulls an image it does not have, then runs it.
    e(&["images", "rm", "--sync", &remote]).expect_ok();
    let ran = e(&[
        "run",
        "--rm",
        "--runtime",
        "runc",
        "--plain-http",
        &remote,
        "echo",
        "pulled and run",
    ]);
    assert!(
        ran.expect_ok().ends_with("pulled and run\n"),
        "{}",
        ran.stdout
    );
    assert!(ran.stderr.contains("pulling"), "{}", ran.stderr);

    // A platform asked for by name; a malformed one refused before any call.
    let host = format!("linux/{}", ember_images::Platform::host().architecture);
    let with_platform = e(&["pull", "-q", "--plain-http", "--platform", &host, &remote]);
    assert_eq!(
        with_platform.expect_ok().trim(),
        format!("{remote} {digest}")
    );
    let bad_platform = e(&["pull", "--plain-http", "--platform", "linux", &remote]);
    assert_eq!(bad_platform.code, Some(1), "{}", bad_platform.stderr);
    assert!(
        bad_platform.stderr.contains("os/arch"),
        "{}",
        bad_platform.stderr
    );

    // Listed with its size (manifest, config, layers) and age.
    let ls = e(&["images"]);
    let table = ls.expect_ok();
    let header = table.lines().next().unwrap();
    assert!(
        header.contains("SIZE") && header.contains("CREATED"),
        "{table}"
    );
    let row = table.lines().find(|l| l.starts_with(&remote)).unwrap();
    assert!(row.contains("ago") || row.contains("just now"), "{table}");
    let v: serde_json::Value = serde_json::from_str(e(&["--json", "images"]).expect_ok()).unwrap();
    let img = v
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == remote.as_str())
        .unwrap()
        .clone();
    let layers: u64 = {
        let a = ember_images::Archive::open(&archive, None).unwrap();
        a.blobs.iter().map(|b| b.size as u64).sum()
    };
    assert_eq!(img["size"].as_u64().unwrap(), layers, "{img}");
    assert!(img["created"].as_str().unwrap().ends_with('Z'), "{img}");

    // Bad input: exit 1 with a clear message; nothing recorded.
    let bad = e(&["pull", "UPPER/x:1"]);
    assert_eq!(bad.code, Some(1), "{}", bad.stderr);
    assert!(bad.stderr.contains("invalid reference"), "{}", bad.stderr);
    let missing_ref = format!("{}/ember/busybox:nope", reg.host);
    let missing = e(&["pull", "--plain-http", &missing_ref]);
    assert_eq!(missing.code, Some(1), "{}", missing.stderr);
    assert!(
        missing.stderr.contains("not found") && missing.stderr.contains(&missing_ref),
        "{}",
        missing.stderr
    );
    let down = format!("127.0.0.1:{}/ember/busybox:latest", free_port());
    let gone = e(&["pull", "--plain-http", &down]);
    assert_eq!(gone.code, Some(1), "{}", gone.stderr);
    assert!(
        gone.stderr.contains("unreachable") && gone.stderr.contains("refused"),
        "{}",
        gone.stderr
    );
    let names = e(&["images", "ls", "-q"]);
    assert!(!names.expect_ok().contains("nope"), "{}", names.stdout);

    // Credentials: an htpasswd registry on the same storage.
    let secured = TestRegistry::start(
        &work.join("reg-auth"),
        &RegistryOptions {
            storage: Some(reg.storage.clone()),
            basic_auth: Some(("ember".into(), "s3cret".into())),
            ..Default::default()
        },
    )
    .unwrap();
    let sref = format!("{}/ember/busybox:latest", secured.host);
    let denied = e(&["pull", "--plain-http", &sref]);
    assert!(
        !denied.ok
            && denied.stderr.contains("unauthorized")
            && denied.stderr.contains("ember login"),
        "{}",
        denied.stderr
    );
    let login = |password: &str| {
        ember(
            s,
            NS,
            &cfg,
            &[
                "login",
                &secured.host,
                "-u",
                "ember",
                "--password-stdin",
                "--plain-http",
            ],
            password,
        )
    };
    let wrong = login("nope\n");
    assert_eq!(wrong.code, Some(1), "{}", wrong.stderr);
    assert!(wrong.stderr.contains("refused"), "{}", wrong.stderr);
    assert!(
        !cfg.join("config.json").exists(),
        "a refused login was stored"
    );
    let right = login("s3cret\n");
    assert!(right.expect_ok().contains("Login Succeeded"));
    let stored: serde_json::Value =
        serde_json::from_slice(&std::fs::read(cfg.join("config.json")).unwrap()).unwrap();
    // base64("ember:s3cret")
    assert_eq!(
        stored["auths"][secured.host.as_str()]["auth"],
        "ZW1iZXI6czNjcmV0"
    );
    e(&["pull", "--plain-http", &sref]).expect_ok();
    let pushed = format!("{}/ember/pushed:1", secured.host);
    e(&["push", "--plain-http", &pushed, &sref]).expect_ok();
    // --user wins over what is stored.
    let wrong_user = e(&["pull", "--plain-http", "-u", "ember:nope", &pushed]);
    assert!(
        !wrong_user.ok && wrong_user.stderr.contains("unauthorized"),
        "{}",
        wrong_user.stderr
    );
    let logout = e(&["logout", &secured.host]);
    assert!(logout.expect_ok().contains(&secured.host));
    let stored: serde_json::Value =
        serde_json::from_slice(&std::fs::read(cfg.join("config.json")).unwrap()).unwrap();
    assert!(
        stored["auths"].get(secured.host.as_str()).is_none(),
        "{stored}"
    );
    let after = e(&["pull", "--plain-http", &pushed]);
    assert!(
        !after.ok && after.stderr.contains("unauthorized"),
        "{}",
        after.stderr
    );

    // A registry with token auth: the password goes to its token server.
    let token = TestRegistry::start(
        &work.join("reg-token"),
        &RegistryOptions {
            storage: Some(reg.storage.clone()),
            token_auth: Some(("ember".into(), "t0ken".into())),
            ..Default::default()
        },
    )
    .unwrap();
    let token_login = |password: &str| {
        let args = [
            "login",
            &token.host,
            "-u",
            "ember",
            "--password-stdin",
            "--plain-http",
        ];
        ember(s, NS, &cfg, &args, password)
    };
    let wrong = token_login("s3cret\n");
    assert_eq!(wrong.code, Some(1), "{}", wrong.stderr);
    let stored: serde_json::Value =
        serde_json::from_slice(&std::fs::read(cfg.join("config.json")).unwrap()).unwrap();
    assert!(
        stored["auths"].get(token.host.as_str()).is_none(),
        "{stored}"
    );
    token_login("t0ken\n").expect_ok();
    let tref = format!("{}/ember/busybox:latest", token.host);
    e(&["pull", "--plain-http", &tref]).expect_ok();
    e(&["logout", &token.host]).expect_ok();

    // The same verbs through containerd 1.7 (HTTPS to a registry whose CA it
    // trusts).
    if !Path::new(CONTAINERD17).exists() {
        eprintln!("{CONTAINERD17} missing: not checking containerd 1.7");
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
    let c = Daemon::containerd(
        CONTAINERD17,
        &work.join("containerd"),
        &[("SSL_CERT_FILE", cert.to_str().unwrap())],
    );
    let tref = format!("{}/ember/busybox:latest", tls.host);
    let theirs = push_rm_pull(&c.socket, &cfg, &archive, &tref, &[]);
    eprintln!("ember pull through containerd 1.7:\n{theirs}");
    let digest17 = result_line(&theirs).1;
    assert_eq!(digest17, digest, "containerd 1.7 pulled another digest");
    let missing = ember(
        &c.socket,
        NS,
        &cfg,
        &["pull", &format!("{}/ember/busybox:nope", tls.host)],
        "",
    );
    assert!(
        !missing.ok && missing.stderr.contains("not found"),
        "{}",
        missing.stderr
    );
}
