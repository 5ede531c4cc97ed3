//! A jailed QEMU microVM boots Ember's guest with its VMM confined: its own uid,
//! QEMU's seccomp filter, no_new_privs, no capabilities, a pivoted root, its own
//! namespaces and a cgroup with a memory limit; the guest's console is capped on the
//! host; teardown leaves no jail directory, cgroup or uid lock.
//!
//! Needs root, qemu-system-x86_64 and the guest image (`guest/build.sh`,
//! `EMBER_GUEST_DIR`).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ember_agent_api::AgentClient;
use ember_vmm::jail::{memory_limit_of, JailConfig};
use ember_vmm::qemu::QemuVm;
use ember_vmm::{Accel, Vm, VmConfig};

fn guest_dir() -> PathBuf {
    std::env::var_os("EMBER_GUEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/lib/ember/guest"))
}

fn status_field(pid: u32, key: &str) -> String {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}:")))
        .unwrap_or_else(|| panic!("{key} missing in /proc/{pid}/status"))
        .trim()
        .to_string()
}

/// Jail settings of a test: its own base, lock and cgroup names, so parallel test
/// binaries do not meet.
fn jail_config(base: &Path) -> JailConfig {
    JailConfig {
        base_dir: base.join("jails"),
        lock_dir: base.join("uids"),
        cgroup_parent: "ember-test-vmm".into(),
        uid_first: 300_000,
        uid_count: 1000,
        ..Default::default()
    }
}

fn vm_config(dir: &Path, id: &str, kernel_args: &str, jail: JailConfig) -> VmConfig {
    let guest = guest_dir();
    VmConfig {
        id: id.into(),
        state_dir: dir.to_path_buf(),
        vmm_binary: "qemu-system-x86_64".into(),
        kernel: guest.join("vmlinux"),
        initrd: Some(guest.join("initramfs.cpio")),
        kernel_args: kernel_args.into(),
        vcpus: 1,
        memory_mib: 128,
        accel: Accel::Tcg,
        boot_timeout: Duration::from_secs(60),
        jail: Some(jail),
        log_max_bytes: 16 * 1024,
        ..Default::default()
    }
}

async fn agent_ready(vm: &QemuVm) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if let Ok(s) = vm.connect_agent(1024).await {
            let c = AgentClient::new(s);
            if c.ping(Duration::from_secs(2)).await.is_ok() {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "agent never answered; console:\n{}\nlog:\n{}",
            vm.console_tail(2000),
            vm.log_tail(2000)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jailed_qemu_is_confined_and_its_console_capped() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("vm");
    std::fs::create_dir(&state).unwrap();
    let jc = jail_config(tmp.path());
    // Kernel messages at every level, with a line per initcall: a flood on the
    // serial console far past the 16 KiB cap.
    let cfg = vm_config(&state, "jailtest", "loglevel=8 initcall_debug", jc.clone());
    let mut vm = QemuVm::new(cfg).unwrap();
    vm.start().await.unwrap();
    agent_ready(&vm).await;

    let pid = vm.pid().unwrap();
    let jail = vm.jail().expect("jailed").record().clone();
    assert!(jail.uid >= 300_000 && jail.uid < 301_000, "{}", jail.uid);
    let uids = status_field(pid, "Uid");
    assert!(
        uids.split_whitespace().all(|u| u == jail.uid.to_string()),
        "{uids}"
    );
    assert!(status_field(pid, "Gid")
        .split_whitespace()
        .all(|g| g == jail.gid.to_string()));
    assert_eq!(status_field(pid, "Seccomp"), "2");
    assert_eq!(status_field(pid, "NoNewPrivs"), "1");
    for set in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(status_field(pid, set), "0000000000000000", "{set}");
    }
    // Its root is the jail directory, not the host's root (the link itself reads
    // "/": the root of a mount namespace the host cannot name).
    use std::os::unix::fs::MetadataExt;
    let id = |p: &Path| {
        let m = std::fs::metadata(p).unwrap();
        (m.dev(), m.ino())
    };
    let its_root = PathBuf::from(format!("/proc/{pid}/root/"));
    assert_ne!(id(&its_root), id(Path::new("/")));
    assert_eq!(id(&its_root), id(&jail.dir.join("root")));
    // What it sees there: nothing of the host but /usr and its own files.
    let seen: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/root"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    for absent in ["etc", "home", "root", "var", "proc", "sys"] {
        assert!(!seen.iter().any(|s| s == absent), "{absent} in {seen:?}");
    }
    // New namespaces: pid 1 of its own pid namespace, own mount, ipc and uts.
    for ns in ["pid", "mnt", "ipc", "uts"] {
        let ours = std::fs::read_link(format!("/proc/self/ns/{ns}")).unwrap();
        let its = std::fs::read_link(format!("/proc/{pid}/ns/{ns}")).unwrap();
        assert_ne!(ours, its, "{ns}");
    }
    let nspid = status_field(pid, "NSpid");
    assert_eq!(nspid.split_whitespace().last(), Some("1"), "NSpid {nspid}");
    // Its own cgroup, with guest memory plus overhead as its limit.
    let want = (128 + jc.memory_overhead_mib as u64) << 20;
    assert_eq!(memory_limit_of(pid), Some(want));
    let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    assert!(cg.contains("ember-test-vmm/jailtest-"), "{cg}");
    // No descriptor of ours leaked into it: stdio (the log pipes) and QEMU's own.
    for fd in std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap() {
        let target = std::fs::read_link(fd.unwrap().path()).unwrap();
        let t = target.to_string_lossy();
        assert!(
            !t.starts_with(tmp.path().to_str().unwrap()) || t.contains("/jails/"),
            "leaked {t}"
        );
    }
    // The console: capped, rotated once at least, still the latest text.
    let console = state.join("console.log");
    let rotated = state.join("console.log.1");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !rotated.exists() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(rotated.exists(), "the console never reached its cap");
    for f in [&console, &rotated] {
        let n = std::fs::metadata(f).unwrap().len();
        assert!(n <= 16 * 1024, "{} is {n} bytes", f.display());
    }
    assert!(std::fs::read_to_string(&rotated)
        .unwrap()
        .contains("initcall"));

    vm.stop(Duration::from_secs(1)).await.unwrap();
    assert!(!jail.dir.exists(), "jail directory left");
    for d in &jail.cgroup.dirs {
        assert!(!d.exists(), "cgroup {} left", d.display());
    }
    assert!(!jc.lock_dir.join(format!("{}.lock", jail.uid)).exists());
    assert!(!state.join(ember_vmm::jail::RECORD_FILE).exists());
}

/// A jail whose VMM was killed with its owner (record left behind) is cleaned up
/// by `cleanup`; one whose uid is still held is left alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leftovers_of_a_killed_owner_are_cleaned() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("vm");
    std::fs::create_dir(&state).unwrap();
    let jc = jail_config(tmp.path());
    let mut vm = QemuVm::new(vm_config(&state, "jailkill", "", jc.clone())).unwrap();
    vm.start().await.unwrap();
    let pid = vm.pid().unwrap();
    let record = vm.jail().unwrap().record().clone();
    // While it runs, cleanup leaves it.
    ember_vmm::jail::cleanup(&state);
    assert!(record.dir.exists());
    // The VMM dies with the process that forked it (the keeper, which dies with
    // its owner): its parent-death signal survives the change of credentials.
    let keeper: i32 = status_field(pid, "PPid").parse().unwrap();
    assert_ne!(keeper as u32, std::process::id());
    // The keeper names itself; the VMM's command line names the VM's directory.
    let cmdline = |p: u32| {
        String::from_utf8_lossy(&std::fs::read(format!("/proc/{p}/cmdline")).unwrap())
            .replace('\0', " ")
    };
    assert_eq!(cmdline(keeper as u32).trim(), "ember-vmm-keeper");
    assert!(
        cmdline(pid).contains(&format!("[{}]", state.display())),
        "{}",
        cmdline(pid)
    );
    // SAFETY: kill(2) of the keeper process our VM started.
    unsafe { libc::kill(keeper, libc::SIGKILL) };
    let deadline = Instant::now() + Duration::from_secs(10);
    let alive = || {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .is_ok_and(|s| !s.contains("State:\tZ"))
    };
    while alive() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(Instant::now() < deadline, "the VMM outlived its keeper");
    let _ = vm.wait().await;
    // wait() tore the jail down itself; make the leftovers as a killed owner would.
    assert!(!record.dir.exists());
    std::fs::create_dir_all(record.dir.join("root/run")).unwrap();
    std::fs::write(
        state.join(ember_vmm::jail::RECORD_FILE),
        serde_json::to_vec(&record).unwrap(),
    )
    .unwrap();
    for d in &record.cgroup.dirs {
        std::fs::create_dir_all(d).unwrap();
    }
    ember_vmm::jail::cleanup(&state);
    assert!(!record.dir.exists());
    for d in &record.cgroup.dirs {
        assert!(!d.exists());
    }
    assert!(!state.join(ember_vmm::jail::RECORD_FILE).exists());

    // Leftovers without a record (their state directory went): the sweep of the
    // next jail's preparation finds them by their free uid.
    std::fs::create_dir_all(record.dir.join("root/run")).unwrap();
    for d in &record.cgroup.dirs {
        std::fs::create_dir_all(d).unwrap();
    }
    let held = ember_vmm::jail::UidLease::take(&jc.lock_dir, 300_999)
        .unwrap()
        .unwrap();
    let busy = jc.base_dir.join("busy-300999");
    std::fs::create_dir_all(busy.join("root")).unwrap();
    ember_vmm::jail::sweep(&jc);
    assert!(!record.dir.exists(), "stale jail kept");
    for d in &record.cgroup.dirs {
        assert!(!d.exists(), "stale cgroup {} kept", d.display());
    }
    assert!(busy.exists(), "the jail of a held uid was swept");
    drop(held);
}

/// An x86-64 ELF (entry at 1 MiB, Firecracker's kernel address) whose code writes
/// "EMBER-FLOOD\n" to COM1 forever.
fn flooding_guest() -> Vec<u8> {
    const LOAD: u64 = 0x10_0000;
    const OFFSET: u64 = 0x1000;
    let mut code = vec![0x66, 0xBA, 0xF8, 0x03]; // mov dx, 0x3f8
    let start = code.len();
    for b in b"EMBER-FLOOD\n" {
        code.extend_from_slice(&[0xB0, *b, 0xEE]); // mov al, b; out dx, al
    }
    let back = (code.len() + 2 - start) as i8;
    code.extend_from_slice(&[0xEB, (-back) as u8]); // jmp start
    let mut f = vec![0x7F, b'E', b'L', b'F', 2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    f.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    f.extend_from_slice(&0x3Eu16.to_le_bytes()); // x86-64
    f.extend_from_slice(&1u32.to_le_bytes());
    f.extend_from_slice(&LOAD.to_le_bytes()); // entry
    f.extend_from_slice(&64u64.to_le_bytes()); // program headers right after
    f.extend_from_slice(&0u64.to_le_bytes());
    f.extend_from_slice(&0u32.to_le_bytes());
    for v in [64u16, 56, 1, 64, 0, 0] {
        f.extend_from_slice(&v.to_le_bytes());
    }
    f.extend_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    f.extend_from_slice(&5u32.to_le_bytes()); // R + X
    for v in [
        OFFSET,
        LOAD,
        LOAD,
        code.len() as u64,
        code.len() as u64,
        0x1000,
    ] {
        f.extend_from_slice(&v.to_le_bytes());
    }
    f.resize(OFFSET as usize, 0);
    f.extend_from_slice(&code);
    f
}

/// Firecracker (when `FIRECRACKER_BIN` names one and /dev/kvm opens) runs jailed
/// with its own seccomp filters; a guest flooding its serial console leaves a
/// capped console log on the host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jailed_firecracker_is_confined_and_its_console_capped() {
    let Some(bin) = std::env::var_os("FIRECRACKER_BIN") else {
        eprintln!("FIRECRACKER_BIN is not set: skipping the jailed Firecracker test");
        return;
    };
    if std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_err()
    {
        eprintln!("/dev/kvm cannot be opened: skipping the jailed Firecracker test");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("vm");
    std::fs::create_dir(&state).unwrap();
    let kernel = tmp.path().join("guest.elf");
    std::fs::write(&kernel, flooding_guest()).unwrap();
    let jc = jail_config(tmp.path());
    let cfg = VmConfig {
        id: "fcjail".into(),
        state_dir: state.clone(),
        vmm_binary: bin.into(),
        kernel,
        vcpus: 1,
        memory_mib: 128,
        accel: Accel::Auto,
        boot_timeout: Duration::from_secs(20),
        jail: Some(jc.clone()),
        log_max_bytes: 16 * 1024,
        ..Default::default()
    };
    let mut vm = ember_vmm::firecracker::FirecrackerVm::new(cfg).unwrap();
    vm.start().await.unwrap();
    let pid = vm.pid().unwrap();
    let jail = vm.jail().expect("jailed").record().clone();
    let rotated = state.join("console.log.1");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !(rotated.exists() && status_field(pid, "Seccomp") == "2") && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        status_field(pid, "Uid")
            .split_whitespace()
            .all(|u| u == jail.uid.to_string()),
        "{}",
        status_field(pid, "Uid")
    );
    assert_eq!(status_field(pid, "Seccomp"), "2");
    assert_eq!(status_field(pid, "NoNewPrivs"), "1");
    for set in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(status_field(pid, set), "0000000000000000", "{set}");
    }
    use std::os::unix::fs::MetadataExt;
    let root = std::fs::metadata(format!("/proc/{pid}/root/")).unwrap();
    let jail_root = std::fs::metadata(jail.dir.join("root")).unwrap();
    assert_eq!((root.dev(), root.ino()), (jail_root.dev(), jail_root.ino()));
    assert_eq!(
        memory_limit_of(pid),
        Some((128 + jc.memory_overhead_mib as u64) << 20)
    );
    assert!(rotated.exists(), "the console never reached its cap");
    for f in [state.join("console.log"), rotated.clone()] {
        let n = std::fs::metadata(&f).unwrap().len();
        assert!(n <= 16 * 1024, "{} is {n} bytes", f.display());
    }
    assert!(std::fs::read_to_string(&rotated)
        .unwrap()
        .contains("EMBER-FLOOD"));
    // Its log and metrics arrive through the FIFOs in the jail.
    vm.flush_metrics().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::fs::metadata(vm.metrics_path()).unwrap().len() == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(std::fs::metadata(vm.metrics_path()).unwrap().len() > 0);
    vm.stop(Duration::from_millis(200)).await.unwrap();
    assert!(!jail.dir.exists(), "jail directory left");
    for d in &jail.cgroup.dirs {
        assert!(!d.exists(), "cgroup {} left", d.display());
    }
}
