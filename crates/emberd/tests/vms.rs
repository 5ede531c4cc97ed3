//! VMs as objects of emberd: containers that name a VM share it, CreateVM makes
//! one that containers join, StopVM ends a VM with all its containers, a VM goes
//! with its last task when asked to, survives a `kill -9` of emberd, and its
//! record goes with a shim that dies. Debian's `ctr` 1.6 and the VM control API
//! against a private emberd; guests under QEMU.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::tasks::*;
use common::vms::*;
use common::*;
use containerd_client::tonic::Code;

const RUNTIME: &str = "io.containerd.ember.v2";
const ANNOTATION: &str = "aws.firecracker.vm.id";

/// `ctr run -d` of a container in VM `vm`, sleeping.
fn run_in_vm(s: &Path, ns: &str, vm: &str, id: &str) {
    let ann = format!("{ANNOTATION}={vm}");
    let out = ctr(
        s,
        ns,
        &[
            "run",
            "-d",
            "--runtime",
            RUNTIME,
            "--annotation",
            &ann,
            IMAGE,
            id,
            "sleep",
            "600",
        ],
    );
    assert!(out.ok, "ctr run {id} in {vm}: {}{}", out.stdout, out.stderr);
}

/// The ids of the tasks `ctr tasks ls` lists.
fn task_ids(s: &Path, ns: &str) -> Vec<String> {
    first_column(ctr(s, ns, &["tasks", "ls"]).expect_ok())
}

fn boot_id(s: &Path, ns: &str, id: &str) -> String {
    let out = ctr(
        s,
        ns,
        &[
            "tasks",
            "exec",
            "--exec-id",
            &format!("b{id}"),
            id,
            "cat",
            "/proc/sys/kernel/random/boot_id",
        ],
    );
    out.expect_ok().trim().to_string()
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// What is in emberd's VM state for namespace `ns`.
fn vm_bundles(d: &Emberd, ns: &str) -> Vec<String> {
    std::fs::read_dir(d.dir.join("state/ember.vm").join(ns))
        .map(|r| {
            r.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn the_vm_services_are_plugins() {
    if !can_run() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = Emberd::start(dir.path());
    let out = ctr(&d.socket, "default", &["plugins", "ls"]);
    let rows: Vec<Vec<String>> = out
        .expect_ok()
        .lines()
        .map(|l| l.split_whitespace().map(str::to_string).collect())
        .collect();
    for (t, id) in [
        ("io.containerd.service.v1", "fc-control"),
        ("io.containerd.grpc.v1", "fc-control"),
        ("io.containerd.grpc.v1", "vms"),
    ] {
        let row = rows.iter().find(|r| r[0] == t && r[1] == id);
        let row = row.unwrap_or_else(|| panic!("{t} {id} missing:\n{}", out.stdout));
        assert_eq!(row.last().map(String::as_str), Some("ok"), "{row:?}");
    }
}

/// A shim binary (the configured runtime) that fails, or starts and serves
/// nothing: CreateVM says why, and no record, bundle or shim stays.
#[test]
fn a_vm_shim_that_fails_leaves_nothing() {
    if !can_run() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let fails = dir.path().join("fails.sh");
    std::fs::write(&fails, "#!/bin/sh\necho 'no VMs today' >&2\nexit 3\n").unwrap();
    let mute = dir.path().join("mute.sh");
    // Prints an address nobody listens on.
    std::fs::write(
        &mute,
        format!(
            "#!/bin/sh\ncase \"$*\" in *start) echo unix://{}/nobody.sock;; esac\n",
            dir.path().display()
        ),
    )
    .unwrap();
    for f in [&fails, &mute] {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    for (shim, message) in [(&fails, "no VMs today"), (&mute, "nobody.sock")] {
        let work = tempfile::tempdir().unwrap();
        let config = format!(
            "version = 2\n[plugins.\"io.containerd.service.v1.fc-control\"]\n  runtime = \"{}\"\n",
            shim.display()
        );
        let d = Emberd::start_with_config(work.path(), Some(&config));
        rt().block_on(async {
            let mut c = fc(&d).await;
            for _ in 0..2 {
                let e = c
                    .create_vm(ns_req(
                        "fail",
                        ember_vm_api::fc::CreateVmRequest {
                            vmid: "vmf".into(),
                            ..Default::default()
                        },
                    ))
                    .await
                    .unwrap_err();
                // Never AlreadyExists: the failed VM left no record.
                assert_ne!(e.code(), Code::AlreadyExists, "{e}");
                assert!(e.message().contains(message), "{e}");
                assert_eq!(vm_info(&mut c, "fail", "vmf").await, Err(Code::NotFound));
                assert!(vm_bundles(&d, "fail").is_empty(), "a VM bundle was left");
            }
        });
    }
}

/// A boot that fails in the shim (no such kernel, a kernel file that is no
/// kernel): the shim's error reaches the client, and the shim and bundle are gone.
#[test]
fn a_vm_that_fails_to_boot_leaves_no_shim() {
    if !can_run_vms() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = Emberd::start(dir.path());
    let vm = format!("vmb{}", std::process::id());
    let _g = VmGuard(d.socket.clone(), vec![vm.clone()]);
    let garbage = dir.path().join("vmlinux");
    std::fs::write(&garbage, vec![0u8; 1 << 16]).unwrap();
    let kernels = [
        (
            "/nonexistent/vmlinux".to_string(),
            Some(Code::InvalidArgument),
        ),
        (garbage.display().to_string(), None),
    ];
    for (kernel, code) in kernels {
        let t = Instant::now();
        rt().block_on(async {
            let mut c = fc(&d).await;
            let e = c
                .create_vm(ns_req(
                    "boot",
                    ember_vm_api::fc::CreateVmRequest {
                        vmid: vm.clone(),
                        kernel_image_path: kernel.clone(),
                        timeout_seconds: 10,
                        ..Default::default()
                    },
                ))
                .await
                .unwrap_err();
            eprintln!("{kernel}: {e:?} after {:?}", t.elapsed());
            if let Some(code) = code {
                assert_eq!(e.code(), code, "{e:?}");
                assert!(e.message().contains(&kernel), "{e:?}");
            }
            assert_eq!(vm_info(&mut c, "boot", &vm).await, Err(Code::NotFound));
        });
        wait_vm_shim_gone(&d.socket, &vm);
        assert!(vm_bundles(&d, "boot").is_empty(), "a VM bundle was left");
    }
}

#[test]
fn containers_naming_a_vm_share_it_until_stopvm() {
    if !can_run_vms() {
        return;
    }
    let ns = "group";
    let work = tempfile::tempdir().unwrap();
    let d = Emberd::start(work.path());
    let vm = format!("vmg{}", std::process::id());
    let _g = VmGuard(d.socket.clone(), vec![vm.clone()]);
    let s = d.socket.clone();
    import_busybox(&s, ns, work.path());
    let ids: Vec<String> = (1..=3).map(|i| format!("g{i}")).collect();
    for id in &ids {
        run_in_vm(&s, ns, &vm, id);
    }
    let shims = vm_shim_pids(&s, &vm);
    assert_eq!(shims.len(), 1, "one shim for the VM: {shims:?}");
    assert_eq!(vmm_pids(&shims).len(), 1, "one VMM for three containers");
    let boots: Vec<String> = ids.iter().map(|id| boot_id(&s, ns, id)).collect();
    assert!(boots[0].len() == 36, "{boots:?}");
    assert!(boots.iter().all(|b| b == &boots[0]), "{boots:?}");

    let events = Events::start(&s, ns, work.path());
    rt().block_on(async {
        let mut c = fc(&d).await;
        // An implicit VM: known through its containers.
        assert_eq!(vm_info(&mut c, ns, &vm).await, Ok(vm.clone()));
        let listed = vm_list(&d)
            .await
            .list(ns_req(ns, ember_vm_api::ember::ListVMsRequest {}))
            .await
            .unwrap()
            .into_inner()
            .vms;
        assert_eq!(listed.len(), 1, "{listed:?}");
        assert_eq!(listed[0].vm_id, vm);
        assert!(!listed[0].explicit);
        let mut members = listed[0].containers.clone();
        members.sort();
        assert_eq!(members, ids);
        // Creating it again is refused while containers use it.
        let e = c
            .create_vm(ns_req(
                ns,
                ember_vm_api::fc::CreateVmRequest {
                    vmid: vm.clone(),
                    ..Default::default()
                },
            ))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::AlreadyExists, "{e}");
        let t = Instant::now();
        stop_vm(&mut c, ns, &vm).await.unwrap();
        eprintln!("StopVM of 3 containers took {:?}", t.elapsed());
        assert_eq!(vm_info(&mut c, ns, &vm).await, Err(Code::NotFound));
    });
    assert!(task_ids(&s, ns).is_empty(), "{:?}", task_ids(&s, ns));
    assert_eq!(events.exits(3).len(), 3, "{}", events.text());
    // Container records stay.
    let containers = first_column(ctr(&s, ns, &["containers", "ls"]).expect_ok());
    assert_eq!(containers, ids);
    wait_vm_shim_gone(&s, &vm);
    assert!(vmm_pids(&shims).is_empty());
}

#[test]
fn a_created_vm_takes_sixteen_containers_and_stopvm_ends_them() {
    if !can_run_vms() {
        return;
    }
    let ns = "sixteen";
    let work = tempfile::tempdir().unwrap();
    let d = Emberd::start(work.path());
    let vm = format!("vmx{}", std::process::id());
    let _g = VmGuard(d.socket.clone(), vec![vm.clone()]);
    let s = d.socket.clone();
    import_busybox(&s, ns, work.path());
    let rt = rt();
    let mut c = rt.block_on(fc(&d));
    let t = Instant::now();
    rt.block_on(create_vm(&mut c, ns, &vm, false));
    eprintln!("CreateVM took {:?}", t.elapsed());
    assert_eq!(vm_bundles(&d, ns), std::slice::from_ref(&vm));
    let shims = vm_shim_pids(&s, &vm);
    assert_eq!(shims.len(), 1, "{shims:?}");
    let ids: Vec<String> = (1..=16).map(|i| format!("x{i:02}")).collect();
    let t = Instant::now();
    for id in &ids {
        run_in_vm(&s, ns, &vm, id);
    }
    eprintln!("16 containers started in {:?}", t.elapsed());
    assert_eq!(task_ids(&s, ns), ids);
    assert_eq!(vmm_pids(&shims).len(), 1, "one VMM for sixteen containers");
    assert_eq!(vm_shim_pids(&s, &vm), shims, "one shim");

    let events = Events::start(&s, ns, work.path());
    let t = Instant::now();
    rt.block_on(stop_vm(&mut c, ns, &vm)).unwrap();
    eprintln!("StopVM of 16 containers took {:?}", t.elapsed());
    assert!(task_ids(&s, ns).is_empty(), "{:?}", task_ids(&s, ns));
    let exits = events.exits(16);
    assert_eq!(exits.len(), 16, "{}", events.text());
    for id in &ids {
        assert!(
            exits.iter().any(|l| l.contains(&format!("\"{id}\""))),
            "no exit of {id}:\n{}",
            events.text()
        );
    }
    assert_eq!(
        first_column(ctr(&s, ns, &["containers", "ls"]).expect_ok()),
        ids
    );
    wait_vm_shim_gone(&s, &vm);
    assert!(vmm_pids(&shims).is_empty(), "the VMM outlived StopVM");
    assert!(vm_bundles(&d, ns).is_empty(), "the VM bundle stayed");
    assert_eq!(rt.block_on(vm_info(&mut c, ns, &vm)), Err(Code::NotFound));
}

#[test]
fn a_vm_that_exits_after_all_tasks_goes_with_its_last_one() {
    if !can_run_vms() {
        return;
    }
    let ns = "lastone";
    let work = tempfile::tempdir().unwrap();
    let d = Emberd::start(work.path());
    let vm = format!("vme{}", std::process::id());
    let _g = VmGuard(d.socket.clone(), vec![vm.clone()]);
    let s = d.socket.clone();
    import_busybox(&s, ns, work.path());
    let rt = rt();
    let mut c = rt.block_on(fc(&d));
    rt.block_on(create_vm(&mut c, ns, &vm, true));
    run_in_vm(&s, ns, &vm, "e1");
    run_in_vm(&s, ns, &vm, "e2");
    for id in ["e1", "e2"] {
        ctr(&s, ns, &["tasks", "kill", "-s", "KILL", id]).expect_ok();
        wait_status(&s, ns, id, "STOPPED");
    }
    ctr(&s, ns, &["tasks", "rm", "e1"]).expect_ok();
    // Still there with one task left.
    assert_eq!(rt.block_on(vm_info(&mut c, ns, &vm)), Ok(vm.clone()));
    ctr(&s, ns, &["tasks", "rm", "e2"]).expect_ok();
    rt.block_on(wait_vm_gone(&mut c, ns, &vm, 20));
    wait_vm_shim_gone(&s, &vm);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !vm_bundles(&d, ns).is_empty() {
        assert!(Instant::now() < deadline, "the VM bundle stayed");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_vm_survives_a_kill_9_of_emberd() {
    if !can_run_vms() {
        return;
    }
    let ns = "survive";
    let work = tempfile::tempdir().unwrap();
    let mut d = Emberd::start(work.path());
    let vm = format!("vmk{}", std::process::id());
    let _g = VmGuard(d.socket.clone(), vec![vm.clone()]);
    let s = d.socket.clone();
    // A runtime per step: its connections close with it, before emberd stops.
    rt().block_on(async {
        let mut c = fc(&d).await;
        create_vm(&mut c, ns, &vm, false).await;
        // VMs are per namespace.
        assert_eq!(vm_info(&mut c, "elsewhere", &vm).await, Err(Code::NotFound));
        assert_eq!(stop_vm(&mut c, "elsewhere", &vm).await, Err(Code::NotFound));
    });
    import_busybox(&s, ns, work.path());
    run_in_vm(&s, ns, &vm, "k1");
    let before = boot_id(&s, ns, "k1");
    let shims = vm_shim_pids(&s, &vm);
    d.kill9();
    assert_eq!(vm_shim_pids(&s, &vm), shims, "the VM died with emberd");
    d.start_again();
    // The container runs on in the same guest.
    assert_eq!(task_status(&s, ns, "k1").as_deref(), Some("RUNNING"));
    assert_eq!(boot_id(&s, ns, "k1"), before);
    rt().block_on(async {
        let mut c = fc(&d).await;
        assert_eq!(vm_info(&mut c, ns, &vm).await, Ok(vm.clone()));
        stop_vm(&mut c, ns, &vm).await.unwrap();
        assert_eq!(vm_info(&mut c, ns, &vm).await, Err(Code::NotFound));
    });
    // StopVM found the adopted task through its shim.
    assert!(task_ids(&s, ns).is_empty(), "{:?}", task_ids(&s, ns));
    wait_vm_shim_gone(&s, &vm);
    assert!(vm_bundles(&d, ns).is_empty());
    // A bundle whose shim is gone is cleaned up at the next start.
    let stale = d.dir.join("state/ember.vm").join(ns).join("stale");
    std::fs::create_dir_all(&stale).unwrap();
    std::fs::write(stale.join("address"), "unix:///nonexistent.sock").unwrap();
    std::fs::write(stale.join("runtime"), RUNTIME).unwrap();
    d.restart();
    assert!(vm_bundles(&d, ns).is_empty(), "{:?}", vm_bundles(&d, ns));
}

#[test]
fn a_killed_vm_shim_takes_its_tasks_and_record() {
    if !can_run_vms() {
        return;
    }
    let ns = "shimkill";
    let work = tempfile::tempdir().unwrap();
    let d = Emberd::start(work.path());
    let vm = format!("vms{}", std::process::id());
    let _g = VmGuard(d.socket.clone(), vec![vm.clone()]);
    let s = d.socket.clone();
    import_busybox(&s, ns, work.path());
    let rt = rt();
    let mut c = rt.block_on(fc(&d));
    rt.block_on(create_vm(&mut c, ns, &vm, false));
    run_in_vm(&s, ns, &vm, "k1");
    run_in_vm(&s, ns, &vm, "k2");
    let events = Events::start(&s, ns, work.path());
    let shims = vm_shim_pids(&s, &vm);
    assert_eq!(shims.len(), 1, "{shims:?}");
    let vmms = vmm_pids(&shims);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(shims[0]),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let exits = events.exits(2);
    assert_eq!(exits.len(), 2, "{}", events.text());
    assert!(
        exits.iter().all(|l| l.contains("exit_status\":255")),
        "{}",
        events.text()
    );
    rt.block_on(wait_vm_gone(&mut c, ns, &vm, 20));
    assert!(task_ids(&s, ns).is_empty());
    let deadline = Instant::now() + Duration::from_secs(10);
    while !vm_bundles(&d, ns).is_empty()
        || vmms
            .iter()
            .any(|p| Path::new(&format!("/proc/{p}")).exists())
    {
        assert!(Instant::now() < deadline, "the VM bundle or its VMM stayed");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_vm_whose_vmm_dies_goes_once_its_tasks_are_deleted() {
    if !can_run_vms() {
        return;
    }
    let ns = "vmmkill";
    let work = tempfile::tempdir().unwrap();
    let d = Emberd::start(work.path());
    let vm = format!("vmq{}", std::process::id());
    let _g = VmGuard(d.socket.clone(), vec![vm.clone()]);
    let s = d.socket.clone();
    import_busybox(&s, ns, work.path());
    let rt = rt();
    let mut c = rt.block_on(fc(&d));
    rt.block_on(create_vm(&mut c, ns, &vm, false));
    run_in_vm(&s, ns, &vm, "q1");
    let shims = vm_shim_pids(&s, &vm);
    let vmms = vmm_pids(&shims);
    assert_eq!(vmms.len(), 1, "{vmms:?}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(vmms[0]),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    wait_status(&s, ns, "q1", "STOPPED");
    ctr(&s, ns, &["tasks", "rm", "q1"]).expect_ok();
    rt.block_on(wait_vm_gone(&mut c, ns, &vm, 20));
    wait_vm_shim_gone(&s, &vm);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !vm_bundles(&d, ns).is_empty() {
        assert!(Instant::now() < deadline, "the VM bundle stayed");
        std::thread::sleep(Duration::from_millis(100));
    }
}
