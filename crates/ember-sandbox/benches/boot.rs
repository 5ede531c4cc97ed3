//! Boot benchmark: a bare guest (init prints and powers off) vs boot to agent-ready vs
//! first output of a container, under the accelerator Ember picks (TCG here), median of
//! N runs; `runc run` of the same busybox bundle on the host as the reference; RSS of an
//! idle QEMU with a 128 MiB guest; the guest kernel's build time and size.
//!
//! Run: `cargo bench -p ember-sandbox --bench boot` (EMBER_BENCH_RUNS, default 5).
//! Prints a markdown table for docs/benchmarks.md.

use std::process::Command;
use std::time::{Duration, Instant};

use ember_agent_api::{OutputStream, StdioConfig, MAX_IO_CHUNK};
use ember_guest::{BusyboxBundle, GuestImage};
use ember_sandbox::{Sandbox, SandboxConfig};
use ember_vmm::{qemu::QemuVm, Drive, Vm};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

#[tokio::main]
async fn main() {
    let runs: usize = std::env::var("EMBER_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let guest = GuestImage::locate().expect("guest image (run guest/build.sh)");
    let work = tempfile::tempdir().unwrap();
    let bundle = BusyboxBundle::create(&work.path().join("bundle"), &["sh"]).unwrap();
    let state = work.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    let base = |id: &str| {
        let mut c = SandboxConfig::new(id, &guest, state.clone());
        c.memory_mib = 128;
        c
    };

    // Bare and full boots alternate, so both see the same load on the host.
    let mut bare = Vec::new();
    let mut ready = Vec::new();
    let mut first = Vec::new();
    let mut teardown = Vec::new();
    let mut accel = String::new();
    for i in 0..runs {
        // 1. Bare boot: the agent sees ember.probe=..., prints it and powers off.
        let mut c = base(&format!("bare{i}"));
        c.kernel_args = "ember.probe=bare".into();
        let mut vm = QemuVm::new(c.vm_config()).unwrap();
        let t = Instant::now();
        vm.start().await.unwrap();
        let exit = vm.wait().await.unwrap();
        bare.push(t.elapsed());
        assert!(
            exit.success(),
            "bare boot failed: {}",
            vm.console_tail(2000)
        );
        assert!(vm.console_tail(4096).contains("ember-probe: bare"));
        accel = format!("{:?}", vm.accel());

        // 2. Boot to agent-ready, 3. first output of a container, 4. teardown.
        let image = work.path().join(format!("r{i}.ext4"));
        std::fs::copy(&bundle.image, &image).unwrap();
        let mut c = base(&format!("full{i}"));
        c.drives.push(Drive {
            id: "rootfs".into(),
            path: image,
            read_only: false,
        });
        let t = Instant::now();
        let sb = Sandbox::boot(c).await.unwrap();
        ready.push(t.elapsed());
        let spec = serde_json::to_vec(&ember_guest::default_spec(&["echo", "hi"], false)).unwrap();
        sb.create_container("c", spec, "rootfs", "ext4", StdioConfig::default())
            .await
            .unwrap();
        sb.agent().start_process("c", "").await.unwrap();
        let out = sb
            .agent()
            .read_output("c", "", OutputStream::Stdout, MAX_IO_CHUNK)
            .await
            .unwrap();
        first.push(t.elapsed());
        assert_eq!(out.data, b"hi\n");
        let t2 = Instant::now();
        sb.agent().wait_process("c", "").await.unwrap();
        sb.agent().remove_container("c").await.unwrap();
        sb.shutdown().await.unwrap();
        teardown.push(t2.elapsed());
    }

    // 5. Idle RSS of QEMU with a 128 MiB guest.
    let sb = Sandbox::boot(base("rss")).await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss = sb.vm().stats().unwrap().rss_bytes;
    let anon_kib: u64 = std::fs::read_to_string(format!("/proc/{}/status", sb.vm().pid().unwrap()))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("RssAnon:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    sb.shutdown().await.unwrap();

    // Reference: runc runs the same bundle on the host.
    let runc = runc_first_output(&bundle, runs);

    let (b, r, f) = (median(bare), median(ready), median(first));
    let overhead = (r.as_secs_f64() - b.as_secs_f64()) / b.as_secs_f64() * 100.0;
    println!("| measure ({accel}, median of {runs}) | value |");
    println!("| --- | --- |");
    println!(
        "| bare boot: QEMU start → init prints → power-off → QEMU exit | {} |",
        ms(b)
    );
    println!("| boot to agent-ready (first ttrpc answer) | {} |", ms(r));
    println!(
        "| boot to first output of a container (`echo hi`) | {} |",
        ms(f)
    );
    println!(
        "| container exit + remove + guest power-off | {} |",
        ms(median(teardown))
    );
    println!("| Ember overhead beyond the bare boot (agent-ready vs bare) | {overhead:+.0}% |");
    if let Some(runc) = runc {
        println!(
            "| reference: `runc run` of the same bundle on the host, to exit | {} |",
            ms(runc)
        );
        println!(
            "| first output: microVM / runc | {:.1}× |",
            f.as_secs_f64() / runc.as_secs_f64()
        );
    }
    println!(
        "| QEMU RSS, 128 MiB guest, idle (of which anonymous) | {:.1} MiB ({:.1} MiB) |",
        rss as f64 / (1 << 20) as f64,
        anon_kib as f64 / 1024.0
    );
    let size = std::fs::metadata(&guest.kernel)
        .map(|m| m.len())
        .unwrap_or(0);
    println!(
        "| guest vmlinux size | {:.1} MiB |",
        size as f64 / (1 << 20) as f64
    );
    if let Some(secs) = kernel_build_seconds() {
        println!("| guest kernel build (`make -j2 vmlinux`, recorded by the build) | {secs} s |");
    }
}

fn kernel_build_seconds() -> Option<String> {
    let cache = std::path::Path::new("/var/cache/ember/kernel");
    let mut newest: Option<(std::time::SystemTime, String)> = None;
    for e in std::fs::read_dir(cache).ok()?.flatten() {
        let p = e.path().join("build-seconds");
        if let (Ok(m), Ok(s)) = (std::fs::metadata(&p), std::fs::read_to_string(&p)) {
            let t = m.modified().ok()?;
            if newest.as_ref().map(|(n, _)| t > *n).unwrap_or(true) {
                newest = Some((t, s.trim().to_string()));
            }
        }
    }
    newest.map(|(_, s)| s)
}

fn runc_first_output(bundle: &BusyboxBundle, runs: usize) -> Option<Duration> {
    if Command::new("runc").arg("--version").output().is_err() {
        return None;
    }
    let spec = ember_guest::default_spec(&["echo", "hi"], false);
    std::fs::write(
        bundle.dir.join("config.json"),
        serde_json::to_vec(&spec).unwrap(),
    )
    .ok()?;
    let mut v = Vec::new();
    for i in 0..runs {
        let t = Instant::now();
        let out = Command::new("runc")
            .args(["run", "--bundle"])
            .arg(&bundle.dir)
            .arg(format!("ember-bench-{}-{i}", std::process::id()))
            .output()
            .ok()?;
        if !out.status.success() || out.stdout != b"hi\n" {
            eprintln!(
                "runc reference failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            return None;
        }
        v.push(t.elapsed());
    }
    Some(median(v))
}
