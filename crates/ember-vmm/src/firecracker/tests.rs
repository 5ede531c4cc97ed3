//! Unit tests of the Firecracker backend that need no Firecracker binary.

use super::*;

pub(super) fn config(dir: &Path) -> VmConfig {
    let bin = dir.join("firecracker");
    let kernel = dir.join("vmlinux");
    std::fs::write(&bin, "").unwrap();
    std::fs::write(&kernel, "").unwrap();
    VmConfig {
        id: "t".into(),
        state_dir: dir.to_path_buf(),
        vmm_binary: bin,
        kernel,
        initrd: None,
        kernel_args: String::new(),
        vcpus: 1,
        memory_mib: 128,
        accel: Accel::Auto,
        drives: vec![],
        boot_timeout: Duration::from_secs(5),
        shared_dir: None,
        balloon: None,
        ..Default::default()
    }
}

#[test]
fn new_validates() {
    let dir = tempfile::tempdir().unwrap();
    let vm = FirecrackerVm::new(config(dir.path())).unwrap();
    assert_eq!(vm.accel(), Accel::Kvm);
    assert_eq!(vm.kind(), VmmKind::Firecracker);
    assert_eq!(vm.pid(), None);
    assert_eq!(vm.console_path(), dir.path().join("console.log"));

    let mut c = config(dir.path());
    c.accel = Accel::Tcg;
    assert!(matches!(
        FirecrackerVm::new(c),
        Err(Error::InvalidConfig(_))
    ));

    let mut c = config(dir.path());
    c.vmm_binary = dir.path().join("nope");
    match FirecrackerVm::new(c) {
        Err(Error::MissingFile { hint, .. }) => assert!(hint.contains("FIRECRACKER_BIN")),
        other => panic!("{other:?}"),
    }

    // The kernel and initramfs hints name the fix, as QEMU's do.
    let mut c = config(dir.path());
    c.initrd = Some(dir.path().join("nope"));
    match FirecrackerVm::new(c) {
        Err(Error::MissingFile {
            what: "guest initramfs",
            hint,
            ..
        }) => assert!(hint.contains("guest/build.sh"), "{hint}"),
        other => panic!("{other:?}"),
    }
    let mut c = config(dir.path());
    c.kernel = dir.path().join("nope");
    match FirecrackerVm::new(c) {
        Err(Error::MissingFile {
            what: "guest kernel",
            hint,
            ..
        }) => assert!(hint.contains("guest/build.sh"), "{hint}"),
        other => panic!("{other:?}"),
    }

    let mut c = config(dir.path());
    c.drives.push(Drive {
        id: "bad-id".into(),
        path: dir.path().join("vmlinux"),
        read_only: true,
    });
    assert!(matches!(
        FirecrackerVm::new(c),
        Err(Error::InvalidConfig(_))
    ));

    let mut c = config(dir.path());
    let d = Drive {
        id: "d0".into(),
        path: dir.path().join("vmlinux"),
        read_only: true,
    };
    c.drives = vec![d.clone(), d];
    assert!(matches!(
        FirecrackerVm::new(c),
        Err(Error::InvalidConfig(_))
    ));

    let mut c = config(dir.path());
    c.state_dir = dir.path().join("x".repeat(120));
    assert!(matches!(
        FirecrackerVm::new(c),
        Err(Error::InvalidConfig(_))
    ));
}

#[tokio::test]
async fn not_running_before_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut vm = FirecrackerVm::new(config(dir.path())).unwrap();
    assert!(matches!(vm.pause().await, Err(Error::NotRunning)));
    assert!(matches!(vm.stats(), Err(Error::NotRunning)));
    assert!(matches!(vm.wait().await, Err(Error::NotRunning)));
    assert!(matches!(
        vm.stop(Duration::from_millis(1)).await,
        Err(Error::NotRunning)
    ));
    assert!(vm.connect_agent(1024).await.is_err());
}

#[tokio::test]
async fn attach_drive_before_start_replaces_placeholder() {
    let dir = tempfile::tempdir().unwrap();
    let placeholder = dir.path().join("placeholder.img");
    let real = dir.path().join("real.img");
    std::fs::write(&placeholder, "").unwrap();
    std::fs::write(&real, "").unwrap();
    let mut c = config(dir.path());
    c.drives.push(Drive {
        id: "ctr_0".into(),
        path: placeholder,
        read_only: false,
    });
    let mut vm = FirecrackerVm::new(c).unwrap();
    vm.attach_drive(Drive {
        id: "ctr_0".into(),
        path: real.clone(),
        read_only: false,
    })
    .await
    .unwrap();
    assert_eq!(vm.config.drives[0].path, real);
    assert!(matches!(
        vm.attach_drive(Drive {
            id: "other".into(),
            path: real.clone(),
            read_only: false,
        })
        .await,
        Err(Error::Unsupported(_))
    ));
    assert!(matches!(
        vm.attach_drive(Drive {
            id: "ctr_0".into(),
            path: real,
            read_only: true,
        })
        .await,
        Err(Error::InvalidConfig(_))
    ));
}

/// A VM whose "firecracker" is the shell `script` (in `dir`).
fn scripted_vmm(dir: &std::path::Path, script: &str) -> FirecrackerVm {
    use std::os::unix::fs::PermissionsExt;
    let c = config(dir);
    std::fs::write(&c.vmm_binary, format!("#!/bin/sh\n{script}")).unwrap();
    std::fs::set_permissions(&c.vmm_binary, std::fs::Permissions::from_mode(0o755)).unwrap();
    FirecrackerVm::new(c).unwrap()
}

/// What a VMM printed just before it died reaches the boot error: the console is
/// copied to its end before the error quotes it (it was cut off under load).
#[tokio::test]
async fn start_failure_quotes_the_last_console_output() {
    let dir = tempfile::tempdir().unwrap();
    let mut vm = scripted_vmm(
        dir.path(),
        "i=0\nwhile [ $i -lt 3000 ]; do echo \"noise line $i\"; i=$((i+1)); done\necho last words\nexit 3\n",
    );
    match vm.start().await {
        Err(Error::Boot { console, .. }) => assert!(console.contains("last words"), "{console}"),
        other => panic!("{other:?}"),
    }
}

/// A "firecracker" that exits at once: start fails with a Boot error carrying what
/// it printed, and nothing is left running.
#[tokio::test]
async fn start_failure_reports_console() {
    let dir = tempfile::tempdir().unwrap();
    let mut vm = scripted_vmm(dir.path(), "echo \"fake firecracker $*\"\nexit 3\n");
    match vm.start().await {
        Err(Error::Boot { reason, console }) => {
            assert!(reason.contains("exit code 3"), "{reason}");
            assert!(console.contains("fake firecracker --api-sock"), "{console}");
            assert!(console.contains("--id t"), "{console}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(vm.pid(), None);
    assert!(matches!(vm.start().await, Err(Error::InvalidConfig(_))));
}

/// A "firecracker" that never opens its socket: start gives up at the boot timeout
/// and kills it.
#[tokio::test]
async fn start_times_out_and_kills() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.boot_timeout = Duration::from_millis(300);
    std::fs::write(&c.vmm_binary, "#!/bin/sh\necho stuck\nexec sleep 30\n").unwrap();
    std::fs::set_permissions(&c.vmm_binary, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut vm = FirecrackerVm::new(c).unwrap();
    let err = vm.start().await.unwrap_err();
    assert!(err.to_string().contains("boot timeout"), "{err}");
    assert!(err.to_string().contains("stuck"), "{err}");
    let exit = vm.exit.unwrap();
    assert_eq!(exit.signal, Some(libc::SIGKILL));
}

#[tokio::test]
async fn shared_dir_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.shared_dir = Some(dir.path().to_path_buf());
    let mut vm = FirecrackerVm::new(c).unwrap();
    match vm.start().await {
        Err(Error::Unsupported(what)) => assert!(what.contains("shared directory"), "{what}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(vm.pid(), None, "nothing may be started");
}

#[tokio::test]
async fn balloon_calls_without_a_balloon() {
    let dir = tempfile::tempdir().unwrap();
    let vm = FirecrackerVm::new(config(dir.path())).unwrap();
    assert!(matches!(vm.balloon_config().await, Err(Error::NoBalloon)));
    assert!(matches!(vm.balloon_update(1).await, Err(Error::NoBalloon)));
    let mut c = config(dir.path());
    c.balloon = Some(BalloonConfig::default());
    let vm = FirecrackerVm::new(c).unwrap();
    assert!(matches!(vm.balloon_stats().await, Err(Error::NotRunning)));
}
