//! The Firecracker backend against a real Firecracker, when `FIRECRACKER_BIN` names one,
//! booting the tiny guest of `firecracker_guest`.
//!
//! Without `FIRECRACKER_BIN` the tests that need it print a message and pass; the
//! configuration checks run always.

mod firecracker_guest;

use std::path::Path;
use std::time::{Duration, Instant};

use ember_vmm::firecracker::FirecrackerVm;
use ember_vmm::{Accel, Drive, Error, Vm, VmConfig};

use firecracker_guest::*;

fn assert_drained(vm: &FirecrackerVm) {
    let log = std::fs::read_to_string(vm.vmm_log_path()).unwrap();
    assert!(!log.trim().is_empty(), "vmm.log is empty");
    let metrics = std::fs::read_to_string(vm.metrics_path()).unwrap();
    let first = metrics.lines().next().expect("metrics.json is empty");
    let value: serde_json::Value = serde_json::from_str(first).expect("metrics line is JSON");
    assert!(value.is_object(), "{first}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_boot_pause_resume_exit() {
    let Some(bin) = firecracker_bin() else { return };
    let dir = tempfile::tempdir().unwrap();
    // 2^28 TSC ticks per dot: about 0.1 s at the TSC rates of current CPUs, so the
    // guest runs a few seconds: long enough to pause it half-way.
    let kernel = marching_guest(40, 1 << 28);
    let mut vm = FirecrackerVm::new(vm_config(dir.path(), bin, &kernel, "fc-life")).unwrap();
    assert_eq!(vm.accel(), Accel::Kvm);

    let t0 = Instant::now();
    vm.start().await.expect("start");
    eprintln!("started in {:?}", t0.elapsed());
    let pid = vm.pid().expect("pid while running");
    let stats = vm.stats().expect("stats while running");
    assert_eq!(stats.pid, pid);
    assert!(stats.rss_bytes > 0);

    console_until(&vm, Duration::from_secs(20), |c| {
        c.split_once(MARKER_1)
            .is_some_and(|(_, after)| after.contains(".."))
    })
    .await;
    vm.pause().await.expect("pause");
    assert_eq!(vm.instance_state().await.unwrap(), "Paused");
    let paused_len = console_len(&vm);
    tokio::time::sleep(Duration::from_millis(700)).await;
    let console = vm.console_tail(1 << 20);
    assert!(
        !console.contains(MARKER_2),
        "the guest finished before it could be paused; make it spin longer:\n{console}"
    );
    assert_eq!(
        console_len(&vm),
        paused_len,
        "the console progressed while paused"
    );
    let stats = vm.stats().expect("stats while paused");
    assert!(stats.cpu_time_ms > 0);

    vm.resume().await.expect("resume");
    assert_eq!(vm.instance_state().await.unwrap(), "Running");
    console_until(&vm, Duration::from_secs(60), |c| c.contains(MARKER_2)).await;
    eprintln!("guest ran to its end in {:?}", t0.elapsed());

    let exit = tokio::time::timeout(Duration::from_secs(20), vm.wait())
        .await
        .expect("firecracker exits after the guest resets")
        .expect("wait");
    assert!(exit.success(), "{exit:?}");
    assert_eq!(vm.pid(), None);
    assert!(process_gone(pid), "firecracker {pid} is still there");
    assert!(matches!(vm.stats(), Err(Error::NotRunning)));
    assert!(matches!(vm.pause().await, Err(Error::NotRunning)));
    // Waiting again, or stopping, reports the same end.
    assert_eq!(vm.wait().await.unwrap(), exit);
    assert_eq!(vm.stop(Duration::from_secs(1)).await.unwrap(), exit);
    assert!(!vm.api_socket_path().exists(), "API socket left behind");
    assert_drained(&vm);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_kills_a_guest_that_ignores_ctrl_alt_del() {
    let Some(bin) = firecracker_bin() else { return };
    let dir = tempfile::tempdir().unwrap();
    let placeholder = dir.path().join("placeholder.img");
    let real = dir.path().join("real.img");
    std::fs::write(&placeholder, vec![0u8; 4096]).unwrap();
    std::fs::write(&real, vec![1u8; 8192]).unwrap();
    let mut config = vm_config(dir.path(), bin, &spinning_guest(), "fc-stop");
    config.drives.push(Drive {
        id: "scratch_0".into(),
        path: placeholder,
        read_only: false,
    });
    let mut vm = FirecrackerVm::new(config).unwrap();
    vm.start().await.expect("start");
    let pid = vm.pid().unwrap();
    console_until(&vm, Duration::from_secs(20), |c| c.contains(MARKER_1)).await;

    // Placeholder swap of a configured drive; new drives cannot be hot-plugged.
    vm.attach_drive(Drive {
        id: "scratch_0".into(),
        path: real.clone(),
        read_only: false,
    })
    .await
    .expect("swap placeholder drive");
    assert!(matches!(
        vm.attach_drive(Drive {
            id: "new_1".into(),
            path: real,
            read_only: false,
        })
        .await,
        Err(Error::Unsupported(_))
    ));

    // Nothing in this guest listens on vsock.
    assert!(vm.connect_agent(1024).await.is_err());

    let grace = Duration::from_secs(1);
    let t0 = Instant::now();
    let exit = vm.stop(grace).await.expect("stop");
    let took = t0.elapsed();
    assert!(
        took >= grace,
        "stopped after {took:?}, before the grace ran out"
    );
    assert!(took < grace + Duration::from_secs(3), "stop took {took:?}");
    assert_eq!(exit.signal, Some(libc::SIGKILL), "{exit:?}");
    assert!(process_gone(pid), "firecracker {pid} is still there");
    assert_eq!(vm.pid(), None);
    assert_drained(&vm);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_kernel_fails_boot_with_fault_message() {
    let Some(bin) = firecracker_bin() else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut vm = FirecrackerVm::new(vm_config(
        dir.path(),
        bin,
        b"this is not an ELF kernel",
        "fc-bad",
    ))
    .unwrap();
    match vm.start().await {
        Err(Error::Boot { reason, .. }) => {
            eprintln!("boot error as expected: {reason}");
            assert!(
                reason.contains("InstanceStart") || reason.contains("/actions"),
                "{reason}"
            );
        }
        other => panic!("expected a boot error, got {other:?}"),
    }
    assert_eq!(vm.pid(), None);
    assert!(!vm.api_socket_path().exists());
}

#[test]
fn missing_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let kernel = dir.path().join("guest.elf");
    std::fs::write(&kernel, elf64(&[0xF4])).unwrap();
    let bin = dir.path().join("firecracker");
    std::fs::write(&bin, "").unwrap();
    let base = VmConfig {
        id: "fc-missing".into(),
        state_dir: dir.path().to_path_buf(),
        vmm_binary: bin,
        kernel,
        initrd: None,
        kernel_args: String::new(),
        vcpus: 1,
        memory_mib: 128,
        accel: Accel::Kvm,
        drives: vec![],
        boot_timeout: Duration::from_secs(5),
        shared_dir: None,
        balloon: None,
        ..Default::default()
    };
    FirecrackerVm::new(base.clone()).expect("complete config");

    let mut c = base.clone();
    c.vmm_binary = dir.path().join("no-firecracker");
    match FirecrackerVm::new(c) {
        Err(Error::MissingFile { path, hint, .. }) => {
            assert_eq!(path, dir.path().join("no-firecracker"));
            assert!(hint.contains("FIRECRACKER_BIN"), "{hint}");
        }
        other => panic!("{other:?}"),
    }

    let mut c = base.clone();
    c.kernel = dir.path().join("no-kernel");
    let err = FirecrackerVm::new(c).unwrap_err();
    assert!(
        matches!(&err, Error::MissingFile { what, .. } if what.contains("kernel")),
        "{err}"
    );

    let mut c = base.clone();
    c.drives.push(Drive {
        id: "d0".into(),
        path: dir.path().join("no-image"),
        read_only: true,
    });
    assert!(matches!(
        FirecrackerVm::new(c),
        Err(Error::MissingFile { .. })
    ));

    let mut c = base;
    c.accel = Accel::Tcg;
    assert!(matches!(
        FirecrackerVm::new(c),
        Err(Error::InvalidConfig(_))
    ));
}

#[test]
fn guest_image_layout() {
    let mut a = Asm::default();
    a.dots(2, 5);
    let expected: Vec<u8> = [
        &[0xBB, 2, 0, 0, 0][..],               // mov ebx, 2
        &[0x48, 0xB9, 5, 0, 0, 0, 0, 0, 0, 0], // mov rcx, 5
        &[0x0F, 0x31, 0x48, 0xC1, 0xE2, 0x20], // rdtsc; shl rdx, 32
        &[0x48, 0x09, 0xD0, 0x48, 0x89, 0xC6], // or rax, rdx; mov rsi, rax
        &[0x0F, 0x31, 0x48, 0xC1, 0xE2, 0x20], // again: rdtsc; shl rdx, 32
        &[0x48, 0x09, 0xD0, 0x48, 0x29, 0xF0], // or rax, rdx; sub rax, rsi
        &[0x48, 0x39, 0xC8, 0x72, 0xEF],       // cmp rax, rcx; jb again (-17)
        &[0x66, 0xBA, 0xF8, 0x03],             // mov dx, 0x3f8
        &[0xB0, b'.', 0xEE],                   // mov al, '.'; out dx, al
        &[0xFF, 0xCB, 0x75, 0xCE],             // dec ebx; jnz outer (-50)
    ]
    .concat();
    assert_eq!(a.code, expected);
    let image = marching_guest(1, 1);
    assert_eq!(&image[..4], b"\x7fELF");
    let filesz = u64::from_le_bytes(image[96..104].try_into().unwrap());
    assert_eq!(filesz, image.len() as u64 - CODE_OFFSET);
    let entry = u64::from_le_bytes(image[24..32].try_into().unwrap());
    assert_eq!(entry, LOAD_ADDR);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn balloon_configure_update_and_statistics() {
    let Some(bin) = firecracker_bin() else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut c = vm_config(dir.path(), bin, &spinning_guest(), "fc-balloon");
    let boot = ember_vmm::BalloonConfig {
        amount_mib: 16,
        deflate_on_oom: true,
        stats_interval_s: 1,
    };
    c.balloon = Some(boot);
    let mut vm = FirecrackerVm::new(c).unwrap();
    assert!(matches!(vm.balloon_config().await, Err(Error::NotRunning)));
    vm.start().await.expect("start");
    console_until(&vm, Duration::from_secs(20), |c| c.contains(MARKER_1)).await;

    // PUT /balloon before boot took effect: GET /balloon reports it.
    assert_eq!(vm.balloon_config().await.unwrap(), boot);
    // This guest has no virtio driver, so the device never activates: PATCH
    // /balloon and the statistics reach Firecracker, which answers with its reason,
    // and the configuration stays as it was.
    let e = vm.balloon_update(48).await.unwrap_err().to_string();
    assert!(
        e.contains("PATCH /balloon") && e.contains("not activated"),
        "{e}"
    );
    // GET /balloon/statistics answers with the target (MiB and 4 KiB pages) and
    // nothing from the driver.
    let s = vm.balloon_stats().await.expect("balloon statistics");
    assert_eq!((s.target_mib, s.target_pages), (16, 16 * 256));
    assert_eq!((s.actual_mib, s.free_memory), (0, 0));
    // PATCH /balloon/statistics needs no driver: GET /balloon shows the new interval.
    vm.balloon_update_stats(5)
        .await
        .expect("statistics interval");
    assert_eq!(vm.balloon_config().await.unwrap().stats_interval_s, 5);
    assert_eq!(vm.balloon_config().await.unwrap().amount_mib, 16);

    vm.stop(Duration::from_millis(200)).await.unwrap();
    assert!(matches!(vm.balloon_stats().await, Err(Error::NotRunning)));
}

#[test]
fn balloon_calls_need_a_balloon() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("fc"), "").unwrap();
    let vm = FirecrackerVm::new(vm_config(
        dir.path(),
        dir.path().join("fc"),
        &spinning_guest(),
        "fc-noballoon",
    ))
    .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let e = rt.block_on(vm.balloon_update(1)).unwrap_err();
    assert!(matches!(e, Error::NoBalloon), "{e}");
    assert!(e.to_string().contains("no memory balloon"), "{e}");
}

/// The inode of a namespace file, which identifies the namespace.
fn ns_inode(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).unwrap().ino()
}

/// Firecracker runs in the VM's network namespace, accepts the network interface
/// and opens its tap there (the tiny guest has no virtio-net driver: the host side is
/// what is checked).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nic_on_a_tap_in_the_vms_network_namespace() {
    let Some(bin) = firecracker_bin() else { return };
    let ns = TestNetns::new("fcnic");
    run(
        "ip",
        &["-n", &ns.0, "tuntap", "add", "dev", "tap0", "mode", "tap"],
    );
    let dir = tempfile::tempdir().unwrap();
    let mut config = vm_config(dir.path(), bin, &spinning_guest(), "fc-nic");
    config.netns = Some(ns.path());
    config.nics = vec![ember_vmm::Nic {
        id: "eth0".into(),
        tap: "tap0".into(),
        mac: "02:00:0a:58:00:02".into(),
        mtu: 1500,
    }];
    let mut vm = FirecrackerVm::new(config).unwrap();
    vm.start().await.expect("start with a NIC");
    let pid = vm.pid().unwrap();
    console_until(&vm, Duration::from_secs(20), |c| c.contains(MARKER_1)).await;
    assert_eq!(
        ns_inode(Path::new(&format!("/proc/{pid}/ns/net"))),
        ns_inode(&ns.path()),
        "firecracker is not in the VM's network namespace"
    );
    // A tun/tap descriptor's fdinfo names its interface.
    let opened = std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .unwrap()
        .filter_map(|e| std::fs::read_to_string(e.unwrap().path()).ok())
        .any(|info| {
            info.lines()
                .any(|l| l.split_whitespace().eq(["iff:", "tap0"]))
        });
    assert!(opened, "firecracker holds no descriptor of tap0");
    // The tap is up in the namespace while the VMM holds it (carrier on).
    let link = std::process::Command::new("ip")
        .args(["-n", &ns.0, "-o", "link", "show", "tap0"])
        .output()
        .unwrap();
    let link = String::from_utf8_lossy(&link.stdout);
    assert!(!link.contains("NO-CARRIER"), "{link}");
    vm.stop(Duration::from_millis(200)).await.expect("stop");
    assert!(process_gone(pid));
}

/// A NIC that Firecracker cannot accept is refused before anything starts.
#[test]
fn a_bad_nic_is_refused_before_firecracker_starts() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = vm_config(
        dir.path(),
        "/nonexistent/firecracker".into(),
        &spinning_guest(),
        "fc-badnic",
    );
    config.nics = vec![ember_vmm::Nic {
        id: "eth-0".into(),
        tap: "tap0".into(),
        mac: "02:00:0a:58:00:02".into(),
        mtu: 0,
    }];
    let e = match FirecrackerVm::new(config) {
        Ok(_) => panic!("a NIC id with '-' was accepted"),
        Err(e) => e.to_string(),
    };
    assert!(e.contains("eth-0"), "{e}");
}
