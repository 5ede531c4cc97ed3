//! VM templates under Debian's containerd with the shim's default configuration:
//! `ctr run --rm` restores a saved guest instead of booting one, faster than a boot
//! in the same containerd (and measured against runc there); the CLI sees and builds the shim's templates; a shim
//! killed with SIGKILL in the middle of a restore leaves no VMM behind.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

mod common;

use common::*;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// How the VMs of the creates the shims recorded (`EMBER_SHIM_TIMINGS`) came up:
/// (restored from a template, booted).
fn restores(c: &Containerd) -> (usize, usize) {
    let text = std::fs::read_to_string(c.dir.path().join("timings.jsonl")).unwrap_or_default();
    let fresh: Vec<serde_json::Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(|v: &serde_json::Value| v["phase"] == "create" && v["joined"] == false)
        .collect();
    let restored = fresh.iter().filter(|v| v["from_template"] == true).count();
    (restored, fresh.len() - restored)
}

/// A first run, which builds the template of the default shape if there is none.
fn warm_up(c: &Containerd) {
    let out = c.run("warm", &["true"]);
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out.stderr),
        c.shim_logs()
    );
}

#[test]
fn ctr_run_restores_a_template_faster_than_a_boot() {
    let c = Containerd::start();
    let config = c.dir.path().join("runtime.toml");
    let defaults = std::fs::read_to_string(&config).unwrap();
    // The first start of the shape builds the template; runc warms up too.
    warm_up(&c);
    let runc = |id: &str| {
        c.ctr(&[
            "run",
            "--rm",
            "--runtime",
            "io.containerd.runc.v2",
            IMAGE,
            id,
            "true",
        ])
    };
    assert!(runc("warm-runc").status.success());
    let timed = |id: String, f: &dyn Fn(&str) -> std::process::Output| {
        let t = Instant::now();
        let out = f(&id);
        assert!(
            out.status.success(),
            "{id}: {}\n{}",
            text(&out.stderr),
            c.shim_logs()
        );
        t.elapsed()
    };
    let ember = |id: &str| c.run(id, &["true"]);
    let (mut restored, mut booted, mut native) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..5 {
        native.push(timed(format!("r{i}"), &runc));
        restored.push(timed(format!("e{i}"), &ember));
        // Each shim reads the configuration as it starts.
        std::fs::write(&config, format!("{defaults}templates = false\n")).unwrap();
        booted.push(timed(format!("b{i}"), &ember));
        std::fs::write(&config, &defaults).unwrap();
    }
    assert_eq!(
        restores(&c),
        (6, 5),
        "the starts were not restored and booted as configured"
    );
    let (e, b, r) = (
        median(restored.clone()),
        median(booted.clone()),
        median(native.clone()),
    );
    eprintln!(
        "ctr run --rm true: restored {e:?} {restored:?}, booted {b:?} {booted:?}, runc {r:?} {native:?}; \
         restored/runc {:.1}x, booted/runc {:.1}x",
        e.as_secs_f64() / r.as_secs_f64(),
        b.as_secs_f64() / r.as_secs_f64()
    );
    assert!(
        e < b,
        "a restore ({e:?}) is no faster than a boot ({b:?}); the shims' timings:\n{}",
        std::fs::read_to_string(c.dir.path().join("timings.jsonl")).unwrap_or_default()
    );

    // The CLI reads the same settings: it lists the shim's template and `build`
    // finds it rather than making another.
    let ember_bin = Path::new(env!("CARGO_BIN_EXE_containerd-shim-ember-v2"))
        .parent()
        .unwrap()
        .join("ember");
    if !ember_bin.exists() {
        assert!(
            std::env::var("CI").is_err(),
            "{} is not built",
            ember_bin.display()
        );
        eprintln!("skipping the CLI checks: build the ember binary");
    } else {
        let cli = |args: &[&str]| {
            let out = Command::new(&ember_bin)
                .args(args)
                .env("EMBER_RUNTIME_CONFIG", c.dir.path().join("runtime.toml"))
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "ember {args:?}: {}",
                text(&out.stderr)
            );
            text(&out.stdout)
        };
        let keys = |json: String| -> Vec<String> {
            let v: Vec<serde_json::Value> = serde_json::from_str(&json).unwrap();
            v.iter()
                .map(|t| t["key"].as_str().unwrap().to_string())
                .collect()
        };
        let before = keys(cli(&["--json", "vm", "template", "ls"]));
        let key = cli(&["vm", "template", "build"]).trim().to_string();
        assert_eq!(key.len(), 16, "{key:?}");
        assert!(
            before.contains(&key),
            "the shim's template is not {key}: {before:?}"
        );
        assert_eq!(keys(cli(&["--json", "vm", "template", "ls"])), before);
    }
    c.assert_clean();
}

#[test]
fn sigkill_of_the_shim_during_a_restore_leaves_no_vmm() {
    let c = Containerd::start();
    warm_up(&c);
    let dir = c.dir.path().display().to_string();
    let mut run = c
        .cmd()
        .args([
            "run",
            "-d",
            "--runtime",
            RUNTIME,
            IMAGE,
            "victim",
            "sleep",
            "100",
        ])
        .spawn()
        .unwrap();
    // The clone's QEMU waits for its state (`-incoming`) while the shim restores.
    let t = Instant::now();
    let vmm = loop {
        let found = pids_matching(&["qemu-system", &dir, "-incoming"]);
        if let Some(p) = found.first() {
            break *p;
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "no restoring VMM seen"
        );
        std::thread::sleep(Duration::from_millis(2));
    };
    let shims = pids_matching(&["containerd-shim-ember-v2", &dir]);
    assert!(!shims.is_empty(), "no shim");
    for s in &shims {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(*s), nix::sys::signal::SIGKILL);
    }
    let t = Instant::now();
    while Path::new(&format!("/proc/{vmm}")).exists() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "VMM {vmm} outlived its killed shim"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = run.wait();
    // What the killed shim left is cleaned up, and the next container runs.
    let _ = c.ctr(&["tasks", "delete", "--force", "victim"]);
    let _ = c.ctr(&["containers", "rm", "victim"]);
    let out = c.run("after", &["echo", "ok"]);
    assert_eq!(
        text(&out.stdout),
        "ok\n",
        "{}\n{}",
        text(&out.stderr),
        c.shim_logs()
    );
    c.assert_clean();
}
