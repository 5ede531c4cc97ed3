//! The runtime configuration and VM sizing under Debian's containerd 1.6, as `ctr`
//! users meet them: a broken `runtime.toml` named (file, line, key) in ctr's error
//! within seconds, VMs sized from `ctr run --cpus/--memory-limit`, sizes the host
//! cannot give refused before anything boots, unknown `io.ember.*` annotations
//! warned about in the shim's log.

mod common;

use std::time::{Duration, Instant};

use common::*;

/// Host CPUs, as the shim counts them.
fn host_cpus() -> u64 {
    // SAFETY: sysconf only reads a system value.
    unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) as u64 }
}

fn runtime_toml(c: &Containerd) -> std::path::PathBuf {
    c.dir.path().join("runtime.toml")
}

/// `ctr run -d` that must fail within five seconds; returns ctr's error output.
fn fails_fast(c: &Containerd, id: &str, annotations: &[&str], flags: &[&str]) -> String {
    let t = Instant::now();
    let out = c.try_run_with(id, annotations, flags, &["true"]);
    let took = t.elapsed();
    assert!(!out.status.success(), "{id} ran:\n{}", c.shim_logs());
    assert!(took < Duration::from_secs(5), "{id} took {took:?} to fail");
    let _ = c.ctr(&["containers", "rm", id]);
    text(&out.stderr)
}

#[test]
fn a_broken_runtime_config_is_named_in_ctrs_error_within_seconds() {
    let c = Containerd::start();
    let path = runtime_toml(&c);
    let good = std::fs::read_to_string(&path).unwrap();
    let line = good.lines().count() + 1;
    let cases = [
        (
            "memroy_mib = 512\n",
            format!(
                "{}:{line}: unknown key `memroy_mib` (did you mean `memory_mib`?)",
                path.display()
            ),
        ),
        (
            "vcpus = \"two\"\n",
            format!(
                "{}:{line}: key `vcpus`: invalid type: string \"two\"",
                path.display()
            ),
        ),
        (
            "this is not toml\n",
            format!("{}:{line}: not valid TOML", path.display()),
        ),
        (
            "vcpus = 0\n",
            format!(
                "{}:{line}: vcpus = 0: a VM needs at least 1 vCPU",
                path.display()
            ),
        ),
    ];
    for (i, (bad, want)) in cases.iter().enumerate() {
        std::fs::write(&path, format!("{good}{bad}")).unwrap();
        let id = format!("badcfg{i}");
        let t = Instant::now();
        let out = c.run(&id, &["true"]);
        let took = t.elapsed();
        let err = text(&out.stderr);
        assert!(!out.status.success(), "{bad:?} ran");
        assert!(took < Duration::from_secs(5), "{bad:?}: {took:?} to fail");
        assert!(err.contains(want.as_str()), "{bad:?}: ctr said {err}");
        assert!(!err.contains("ttrpc: closed"), "{err}");
        // One line: the shim's message, then containerd's ": exit status 1".
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        assert!(err.contains(": exit status 1"), "{err}");
        let _ = c.ctr(&["containers", "rm", &id]);
    }
    // Mended, the same runtime runs containers again; nothing was left behind.
    std::fs::write(&path, &good).unwrap();
    let out = c.run("mended", &["true"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    c.assert_clean();
}

#[test]
fn containerd_1_7_shows_the_config_error_too() {
    let c = Containerd::start_release(&TRIXIE);
    let path = runtime_toml(&c);
    let good = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, format!("{good}vcpu = 2\n")).unwrap();
    let t = Instant::now();
    let out = c.run("badcfg", &["true"]);
    let err = text(&out.stderr);
    assert!(!out.status.success() && t.elapsed() < Duration::from_secs(5));
    let want = format!(
        "{}:{}: unknown key `vcpu` (did you mean `vcpus`?)",
        path.display(),
        good.lines().count() + 1
    );
    assert!(err.contains(&want), "ctr said {err}");
    let _ = c.ctr(&["containers", "rm", "badcfg"]);
    std::fs::write(&path, &good).unwrap();
    c.assert_clean();
}

/// MemTotal in the guest of container `id`, in MiB.
fn guest_mem_total_mib(c: &Containerd, id: &str) -> u64 {
    let meminfo = c.exec_ok(id, "meminfo", &["cat", "/proc/meminfo"]);
    let kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{meminfo}"));
    kib / 1024
}

/// The memory limit of container `id`'s cgroup in the guest (`ctr task metrics`).
fn cgroup_memory_limit(c: &Containerd, id: &str) -> u64 {
    let out = text(&c.ctr(&["task", "metrics", id]).stdout);
    out.lines()
        .find_map(|l| l.strip_prefix("memory.usage_limit"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no memory.usage_limit in {out}"))
}

#[test]
fn ctr_cpu_and_memory_limits_size_the_vm() {
    let c = Containerd::start();
    c.used_vms.lock().unwrap().push("sized".into());
    let out = c.try_run_with(
        "first",
        &["io.ember.vm.id=sized"],
        &["--memory-limit", "300000000", "--cpus", "2"],
        &["sleep", "1000"],
    );
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out.stderr),
        c.shim_logs()
    );
    assert_eq!(c.exec_ok("first", "nproc", &["nproc"]).trim(), "2");
    // 300000000 bytes is 286.1 MiB; the VM has 287 + 64 MiB, of which the guest
    // kernel keeps some 20 MiB for itself (MemTotal 328 MiB).
    let total = guest_mem_total_mib(&c, "first");
    assert!(
        (300..=351).contains(&total),
        "MemTotal {total} MiB in a VM for a 286 MiB limit"
    );
    // The container's own limit holds inside the guest (rounded down to pages).
    assert_eq!(cgroup_memory_limit(&c, "first"), 299_999_232);

    // A container joining the VM leaves it as it is: its limits are its cgroup's.
    let out = c.try_run_with(
        "second",
        &["io.ember.vm.id=sized"],
        &["--memory-limit", "100000000", "--cpus", "1"],
        &["sleep", "1000"],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(c.exec_ok("second", "nproc", &["nproc"]).trim(), "2");
    assert_eq!(guest_mem_total_mib(&c, "second"), total);
    assert_eq!(cgroup_memory_limit(&c, "second"), 99_999_744);
    c.kill_and_remove("second");
    c.kill_and_remove("first");
    c.assert_clean();
}

#[test]
fn sizes_the_host_cannot_give_fail_fast_naming_value_and_limit() {
    let c = Containerd::start();
    let e = fails_fast(&c, "zero", &["io.ember.vm.vcpus=0"], &[]);
    assert!(
        e.contains("annotation io.ember.vm.vcpus=\"0\": a VM needs at least 1 vCPU"),
        "{e}"
    );
    let many = host_cpus() + 1;
    let e = fails_fast(&c, "many", &[&format!("io.ember.vm.vcpus={many}")], &[]);
    assert!(
        e.contains(&format!(
            "{many} vCPUs is more than the host's {} CPUs",
            many - 1
        )),
        "{e}"
    );
    let e = fails_fast(&c, "small", &["io.ember.vm.memory_mib=16"], &[]);
    assert!(
        e.contains("16 MiB is below the 48 MiB the guest needs to boot"),
        "{e}"
    );
    let cpus = (host_cpus() + 2).to_string();
    let e = fails_fast(&c, "limit", &[], &["--cpus", &cpus]);
    assert!(e.contains("the container's CPU limit"), "{e}");
    assert!(e.contains("more than the host's"), "{e}");
    let e = fails_fast(&c, "huge", &[], &["--memory-limit", "100000000000000"]);
    assert!(
        e.contains("the container's memory limit (100000000000000 bytes) + 64 MiB for the guest: "),
        "{e}"
    );
    assert!(e.contains("MiB of memory"), "{e}");
    c.assert_clean();
}

#[test]
fn an_unknown_ember_annotation_is_warned_about_and_the_container_runs() {
    let c = Containerd::start();
    c.run_annotated("unk", &["io.ember.vm.vpcus=2"], &["sleep", "1000"]);
    assert_eq!(c.exec_ok("unk", "e", &["echo", "up"]), "up\n");
    let log = c.shim_logs();
    let warning = log
        .lines()
        .find(|l| l.contains("unknown annotation io.ember.vm.vpcus"))
        .unwrap_or_else(|| panic!("no warning in the shim log:\n{log}"));
    assert!(warning.contains("WARN"), "{warning}");
    assert!(
        warning.contains("did you mean io.ember.vm.vcpus?"),
        "{warning}"
    );
    assert!(warning.contains("io.ember.vm.memory_mib"), "{warning}");
    c.kill_and_remove("unk");
    c.assert_clean();
}
