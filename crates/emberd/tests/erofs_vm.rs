//! Images of the `erofs` snapshotter run in microVMs on emberd: Debian's `ctr run
//! --snapshotter erofs --runtime io.containerd.ember.v2`, the layers handed to the
//! VM as they are (no copy), what a task writes kept in its snapshot.

mod common;

use common::layered::{layered_image, sha256_hex, Unmount};
use common::{can_run, ctr, ctr_within, Emberd};

const NS: &str = "erofs-vm";
const IMAGE: &str = "docker.io/ember/layered:1";

#[test]
fn erofs_images_run_in_microvms_on_emberd() {
    if !can_run() || ember_snapshot::erofs::tool_available().is_none_or(|t| !t.reads_tar()) {
        eprintln!("skipping: needs root, ctr and mkfs.erofs 1.8 (scripts/trixie.sh)");
        return;
    }
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let _u = Unmount(dir.path().to_path_buf());
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let image = layered_image(&work);
    let random = std::fs::read(work.join("l3/blob/random")).unwrap();
    std::fs::create_dir_all(dir.path().join("ember")).unwrap();
    let d = Emberd::start(&dir.path().join("ember"));
    let s = d.socket.clone();
    let img = image.to_str().unwrap();
    ctr(&s, NS, &["images", "import", "--snapshotter", "erofs", img]).expect_ok();
    let run = |extra: &[&str], id: &str, script: &str| {
        let mut a = vec!["run"];
        a.extend_from_slice(extra);
        a.extend([
            "--snapshotter",
            "erofs",
            "--runtime",
            "io.containerd.ember.v2",
            IMAGE,
            id,
            "sh",
            "-c",
            script,
        ]);
        let out = ctr_within(240, &s, NS, &a);
        assert!(out.ok, "ctr run {id}: {}{}", out.stdout, out.stderr);
        out.stdout
    };

    // Every layer's content as the image has it: the last layer's bytes, a
    // whiteout and an opaque directory of the middle one.
    let out = run(
        &["--rm"],
        "ev-read",
        "sha256sum /blob/random; cat /etc/l2; echo; ls /data /data/old",
    );
    let mut words = out.split_whitespace();
    assert_eq!(words.next(), Some(sha256_hex(&random).as_str()), "{out}");
    assert!(out.contains("layer two"), "{out}");
    assert!(!out.contains("gone") && out.contains("keep"), "{out}");
    assert!(out.contains('b') && !out.contains("\na\n"), "{out}");

    // The snapshot's writable image holds what a task wrote: the container's next
    // task reads it back.
    let script = "if [ -f /kept ]; then cat /kept; else echo kept > /kept; echo first; fi";
    assert_eq!(run(&[], "ev-w", script).trim(), "first");
    let again = ctr_within(240, &s, NS, &["task", "start", "ev-w"]);
    assert!(again.ok, "{}", again.stderr);
    assert_eq!(again.stdout.trim(), "kept");
    // `ctr task start` deletes the task it waited for; a task still there goes now.
    let _ = ctr(&s, NS, &["tasks", "delete", "ev-w"]);
    ctr(&s, NS, &["containers", "rm", "ev-w"]).expect_ok();

    // Nothing is left running.
    let tasks = ctr(&s, NS, &["tasks", "ls", "-q"]).expect_ok().to_string();
    assert!(tasks.trim().is_empty(), "{tasks}");
}
