//! Firecracker templates against a real Firecracker, when `FIRECRACKER_BIN` names one:
//! the tiny ticking guest of `firecracker_guest` is booted, saved as a snapshot,
//! killed, and restored as clones that must keep ticking.
//!
//! Without `FIRECRACKER_BIN` the tests that need it print a message and pass. The
//! tests print what they measure (save time, restore time, clone memory); run them
//! with `--nocapture` to see it.

mod firecracker_guest;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ember_vmm::firecracker::FirecrackerVm;
use ember_vmm::{Drive, Error, TemplateMode, Vm, VmConfig};

use firecracker_guest::*;

/// TSC ticks between two TICK lines: some tens of milliseconds.
const TICK_EVERY: u64 = 1 << 27;

/// A saved template: its files, and the directory holding them (and the drive file
/// the snapshot names, which must outlive every restore).
struct Template {
    dir: tempfile::TempDir,
    state: PathBuf,
    memory: PathBuf,
    kernel: Vec<u8>,
}

fn scratch_drive(dir: &Path, fill: u8) -> Drive {
    let path = dir.join("scratch.img");
    std::fs::write(&path, vec![fill; 64 << 10]).unwrap();
    Drive {
        id: "scratch_0".into(),
        path,
        read_only: false,
    }
}

/// Boots the ticking guest with a drive (and what `adjust` adds), lets it tick,
/// saves it and kills it.
async fn build_template(bin: &Path, adjust: impl FnOnce(&mut VmConfig)) -> Template {
    let dir = tempfile::tempdir().unwrap();
    let kernel = ticking_guest(TICK_EVERY);
    let (state, memory) = (dir.path().join("state"), dir.path().join("memory"));
    let mut config = vm_config(dir.path(), bin.to_path_buf(), &kernel, "fc-tpl");
    config.drives.push(scratch_drive(dir.path(), 0));
    config.template = Some(TemplateMode::Build {
        memory: Some(memory.clone()),
    });
    let mib = config.memory_mib;
    adjust(&mut config);
    let mut vm = FirecrackerVm::new(config).unwrap();
    vm.start().await.expect("boot the template");
    console_until(&vm, Duration::from_secs(20), |c| {
        c.matches(TICK).count() >= 2
    })
    .await;

    let t0 = Instant::now();
    vm.save_template(&state).await.expect("save the template");
    let took = t0.elapsed();
    eprintln!(
        "MEASURE save_template (pause + full snapshot of {mib} MiB + fsync + rename): {took:?}"
    );
    assert_eq!(vm.instance_state().await.unwrap(), "Paused");
    assert!(state.is_file(), "no state file");
    assert_eq!(
        std::fs::metadata(&memory).unwrap().len(),
        u64::from(mib) << 20
    );
    for leftover in ["state.partial", "memory.partial"] {
        assert!(
            !dir.path().join(leftover).exists(),
            "{leftover} left behind"
        );
    }
    // Paused: nothing more on the console.
    let len = std::fs::metadata(vm.console_path()).unwrap().len();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(std::fs::metadata(vm.console_path()).unwrap().len(), len);

    let pid = vm.pid().unwrap();
    vm.stop(Duration::from_millis(100)).await.expect("kill");
    assert!(process_gone(pid));
    Template {
        dir,
        state,
        memory,
        kernel,
    }
}

/// `vm_config` without writing a kernel file (a clone needs none).
fn clone_config(dir: &Path, bin: &Path, id: &str, tpl: &Template, state: &Path) -> VmConfig {
    let mut c = vm_config(dir, bin.to_path_buf(), &tpl.kernel, id);
    std::fs::remove_file(&c.kernel).unwrap();
    c.drives.push(scratch_drive(dir, 1));
    c.template = Some(TemplateMode::Restore {
        memory: Some(tpl.memory.clone()),
        state: state.to_path_buf(),
    });
    c
}

/// `Rss` and `Pss` of a process, kB, from `/proc/PID/smaps_rollup`.
fn rss_pss_kb(pid: u32) -> (u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap();
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in smaps_rollup:\n{text}"))
    };
    (field("Rss:"), field("Pss:"))
}

/// `Rss`, `Pss` and `Private_Dirty` (kB) of the mapping of `file` in a process.
fn mapping_kb(pid: u32, file: &Path) -> (u64, u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap();
    let file = file.to_str().unwrap();
    let (mut rss, mut pss, mut dirty, mut inside) = (0, 0, 0, false);
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let first = words.next().unwrap_or_default();
        if !first.ends_with(':') {
            // A mapping's header line: `start-end perms offset dev inode [path]`.
            inside = line.ends_with(file);
            continue;
        }
        let kb: u64 = words.next().and_then(|v| v.parse().ok()).unwrap_or(0);
        match first {
            "Rss:" if inside => rss += kb,
            "Pss:" if inside => pss += kb,
            "Private_Dirty:" if inside => dirty += kb,
            _ => {}
        }
    }
    (rss, pss, dirty)
}

/// The taps a process holds descriptors of (a tun/tap descriptor's fdinfo names
/// its interface).
fn taps_held(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .unwrap()
        .filter_map(|e| std::fs::read_to_string(e.unwrap().path()).ok())
        .filter_map(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("iff:").map(|t| t.trim().to_owned()))
        })
        .collect()
}

/// What a process's descriptors point at.
fn open_files(pid: u32) -> Vec<PathBuf> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.unwrap().path()).ok())
        .collect()
}

/// Pids of the processes whose command line names `needle`.
fn processes_naming(needle: &Path) -> Vec<u32> {
    let needle = needle.as_os_str().as_encoded_bytes();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.windows(needle.len()).any(|w| w == needle))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn save_a_template_and_restore_two_clones_from_it() {
    let Some(bin) = firecracker_bin() else { return };
    let tpl = build_template(&bin, |_| {}).await;

    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    // A socket left at the first clone's vsock path (as a crashed VM leaves it):
    // it must not make the load fail.
    let stale = std::os::unix::net::UnixListener::bind(dirs[0].path().join("vsock.sock")).unwrap();
    drop(stale);
    let mut clones = Vec::new();
    for (i, dir) in dirs.iter().enumerate() {
        let config = clone_config(dir.path(), &bin, &format!("fc-clone-{i}"), &tpl, &tpl.state);
        let mut vm = FirecrackerVm::new(config).unwrap();
        let t0 = Instant::now();
        vm.start().await.expect("restore a clone");
        let resumed = t0.elapsed();
        console_until(&vm, Duration::from_secs(20), |c| c.contains(TICK)).await;
        eprintln!(
            "MEASURE clone {i}: start to resumed {resumed:?}, to its first new console line {:?}",
            t0.elapsed()
        );
        assert_eq!(vm.instance_state().await.unwrap(), "Running");
        clones.push(vm);
    }

    // Both run at once, each on its own files.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for (vm, dir) in clones.iter().zip(&dirs) {
        let pid = vm.pid().unwrap();
        let console = vm.console_tail(1 << 20);
        // It went on from the snapshot: no boot banner, only ticks, and more of them.
        assert!(
            !console.contains(MARKER_1),
            "the clone booted afresh:\n{console}"
        );
        let ticks = console.matches(TICK).count();
        console_until(vm, Duration::from_secs(20), |c| {
            c.matches(TICK).count() > ticks
        })
        .await;
        // The vsock socket is the clone's own (vsock_override).
        assert!(
            dir.path().join("vsock.sock").exists(),
            "no vsock socket of its own"
        );
        // Its drive is its own file (PATCH /drives after the load), not the template's.
        let files = open_files(pid);
        assert!(
            files.contains(&dir.path().join("scratch.img")),
            "the clone does not hold its drive: {files:?}"
        );
        assert!(
            !files.contains(&tpl.dir.path().join("scratch.img")),
            "the clone still holds the template's drive: {files:?}"
        );
        // Guest memory is the template's file, mapped (privately).
        let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
        assert!(
            maps.lines()
                .any(|l| l.ends_with(tpl.memory.to_str().unwrap()) && l.contains(" rw-p ")),
            "the template memory is not mapped privately:\n{maps}"
        );
    }
    assert!(
        !tpl.dir.path().join("vsock.sock").exists(),
        "a clone bound the template's vsock path"
    );
    for (i, vm) in clones.iter().enumerate() {
        let pid = vm.pid().unwrap();
        let (rss, pss) = rss_pss_kb(pid);
        let stats = vm.stats().unwrap();
        let (mem_rss, mem_pss, mem_dirty) = mapping_kb(pid, &tpl.memory);
        eprintln!(
            "MEASURE clone {i} (pid {pid}): RSS {rss} kB, PSS {pss} kB (VmStats rss {} kB); \
             template memory mapping: RSS {mem_rss} kB, PSS {mem_pss} kB, private dirty {mem_dirty} kB",
            stats.rss_bytes >> 10
        );
        assert_eq!(stats.rss_bytes >> 10, rss);
    }
    for mut vm in clones {
        let pid = vm.pid().unwrap();
        vm.stop(Duration::from_millis(100)).await.expect("stop");
        assert!(process_gone(pid));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_state_fails_with_a_clear_error_and_leaves_nothing() {
    let Some(bin) = firecracker_bin() else { return };
    let tpl = build_template(&bin, |_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state-truncated");
    let whole = std::fs::read(&tpl.state).unwrap();
    std::fs::write(&state, &whole[..whole.len() / 2]).unwrap();
    let config = clone_config(dir.path(), &bin, "fc-trunc", &tpl, &state);
    let mut vm = FirecrackerVm::new(config).unwrap();
    match vm.start().await {
        Err(Error::Boot { reason, .. }) => {
            eprintln!("truncated state refused as expected: {reason}");
            assert!(
                reason.contains("restoring the template") && reason.contains("/snapshot/load"),
                "{reason}"
            );
        }
        Ok(()) => panic!("a truncated state was restored"),
        Err(e) => panic!("expected a boot error, got {e}"),
    }
    assert_eq!(vm.pid(), None);
    assert!(!vm.api_socket_path().exists(), "API socket left behind");
    let left = processes_naming(vm.api_socket_path());
    assert!(left.is_empty(), "firecracker left running: {left:?}");

    // The same template, whole, still restores in this directory.
    let config = clone_config(dir.path(), &bin, "fc-after", &tpl, &tpl.state);
    let mut vm = FirecrackerVm::new(config).unwrap();
    vm.start().await.expect("restore after a failed one");
    console_until(&vm, Duration::from_secs(20), |c| c.contains(TICK)).await;
    vm.stop(Duration::from_millis(100)).await.unwrap();
}

/// The snapshot names the template's tap; a clone opens its own
/// (`network_overrides`), in its network namespace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clone_opens_its_own_tap() {
    let Some(bin) = firecracker_bin() else { return };
    let ns = TestNetns::new("fcsnap");
    for tap in ["tpl0", "cln0"] {
        run(
            "ip",
            &["-n", &ns.0, "tuntap", "add", "dev", tap, "mode", "tap"],
        );
    }
    let nic = |tap: &str| ember_vmm::Nic {
        id: "n0".into(),
        tap: tap.into(),
        mac: "02:00:0a:58:00:02".into(),
        mtu: 1500,
    };
    let tpl = build_template(&bin, |c| {
        c.netns = Some(ns.path());
        c.nics = vec![nic("tpl0")];
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = clone_config(dir.path(), &bin, "fc-nic-clone", &tpl, &tpl.state);
    config.netns = Some(ns.path());
    config.nics = vec![nic("cln0")];
    let mut vm = FirecrackerVm::new(config).unwrap();
    vm.start().await.expect("restore a clone with a NIC");
    console_until(&vm, Duration::from_secs(20), |c| c.contains(TICK)).await;
    let pid = vm.pid().unwrap();
    assert_eq!(taps_held(pid), ["cln0"]);
    vm.stop(Duration::from_millis(100)).await.unwrap();
    assert!(process_gone(pid));
}

#[test]
fn a_clone_of_a_missing_template_is_refused_before_starting() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("fc"), "").unwrap();
    let mut c = vm_config(dir.path(), dir.path().join("fc"), &[], "fc-none");
    let state = dir.path().join("no-state");
    c.template = Some(TemplateMode::Restore {
        memory: Some(dir.path().join("no-memory")),
        state: state.clone(),
    });
    match FirecrackerVm::new(c) {
        Err(Error::MissingFile { what, path, .. }) => {
            assert_eq!((what, path), ("template state", state));
        }
        other => panic!("{other:?}"),
    }
}
