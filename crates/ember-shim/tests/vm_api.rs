//! The shim's VM control services (`Firecracker`, `ember.vm.v1.VMs`) driven over
//! ttrpc as emberd drives them: a shim started for a VM (bundle whose config.json
//! names it, `-id <vmid>`), CreateVM, containers joining under Debian's containerd
//! 1.6, metadata seen in a container, StopVM ending them with 137 and leaving no VMM.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

mod common;

use common::*;
use ember_ttrpc::Code;
use ember_vm_api::fc::*;
use ember_vm_api::VmClient;

/// Starts the shim of VM `vm` the way emberd does and returns its address.
fn start_vm_shim(c: &Containerd, vm: &str) -> String {
    let bundle = c.dir.path().join("ember.vm").join(vm);
    std::fs::create_dir_all(&bundle).unwrap();
    std::fs::write(
        bundle.join("config.json"),
        format!(r#"{{"ociVersion":"1.0.2","annotations":{{"io.ember.vm.id":"{vm}"}}}}"#),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_containerd-shim-ember-v2"))
        .args(["-namespace", "default", "-address"])
        .arg(&c.sock)
        .args(["-id", vm, "start"])
        .current_dir(&bundle)
        .env("TTRPC_ADDRESS", format!("{}.ttrpc", c.sock.display()))
        .env("EMBER_RUNTIME_CONFIG", c.dir.path().join("runtime.toml"))
        .output()
        .unwrap();
    assert!(out.status.success(), "start: {}", text(&out.stderr));
    let address = text(&out.stdout);
    assert_eq!(
        address.trim_start_matches("unix://"),
        vm_socket(&c.sock, vm).to_str().unwrap()
    );
    address
}

fn code<T>(r: ember_ttrpc::Result<T>) -> Code {
    match r {
        Ok(_) => Code::Ok,
        Err(e) => e.code(),
    }
}

fn create_req(vm: &str) -> CreateVmRequest {
    CreateVmRequest {
        vmid: vm.into(),
        machine_cfg: Some(FirecrackerMachineConfiguration {
            vcpu_count: 1,
            mem_size_mib: 256,
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[test]
fn create_vm_join_metadata_and_stop_vm() {
    let c = Containerd::start();
    let vm = "fcvm1";
    c.used_vms.lock().unwrap().push(vm.into());
    let address = start_vm_shim(&c, vm);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let client = rt.block_on(VmClient::connect(&address)).unwrap();
    let boot = Duration::from_secs(90);

    // Bad requests change nothing.
    let mut bad = create_req(vm);
    bad.kernel_image_path = "/nonexistent/vmlinux".into();
    assert_eq!(
        code(rt.block_on(client.create_vm(&bad, boot))),
        Code::InvalidArgument
    );
    assert_eq!(
        code(rt.block_on(client.create_vm(&create_req(""), boot))),
        Code::InvalidArgument
    );
    let mut net = create_req(vm);
    net.network_interfaces = vec![Default::default()];
    let e = rt.block_on(client.create_vm(&net, boot)).unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e}");
    assert!(c.vmms().is_empty(), "a refused CreateVM started a VMM");

    // A root drive and a drive mount, mounted by the agent (CreateVM fails if not).
    let img = |name: &str| {
        let p = c.dir.path().join(name);
        let out = Command::new("mkfs.ext4")
            .args(["-q", "-F"])
            .arg(&p)
            .arg("16M")
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
        p.display().to_string()
    };
    let mut req = create_req(vm);
    req.root_drive = Some(FirecrackerRootDrive {
        host_path: img("root.img"),
        ..Default::default()
    });
    req.drive_mounts = vec![FirecrackerDriveMount {
        host_path: img("data.img"),
        vm_path: "/data".into(),
        filesystem_type: "ext4".into(),
        is_writable: true,
        ..Default::default()
    }];
    let created = rt.block_on(client.create_vm(&req, boot)).unwrap();
    assert_eq!(created.vmid, vm);
    assert!(Path::new(&created.socket_path).exists(), "{created:?}");
    assert_eq!(
        code(rt.block_on(client.create_vm(&create_req(vm), boot))),
        Code::AlreadyExists
    );
    let info = rt
        .block_on(client.get_vm_info(&GetVmInfoRequest { vmid: vm.into() }))
        .unwrap();
    assert!(Path::new(&info.v_sock_path).exists(), "{info:?}");
    assert!(!info.cgroup_path.is_empty(), "{info:?}");
    assert_eq!(
        code(rt.block_on(client.get_vm_info(&GetVmInfoRequest {
            vmid: "other".into()
        }))),
        Code::NotFound
    );
    assert_eq!(
        code(rt.block_on(client.get_balloon_config(&GetBalloonConfigRequest { vmid: vm.into() }))),
        Code::FailedPrecondition
    );

    // Metadata: set, merge, read back; bad JSON refused and nothing lost.
    let set = |json: &str| SetVmMetadataRequest {
        vmid: vm.into(),
        metadata: json.into(),
    };
    rt.block_on(client.set_vm_metadata(&set(r#"{"a":1,"b":{"c":2}}"#)))
        .unwrap();
    rt.block_on(client.update_vm_metadata(&UpdateVmMetadataRequest {
        vmid: vm.into(),
        metadata: r#"{"b":{"c":null,"d":3}}"#.into(),
    }))
    .unwrap();
    assert_eq!(
        code(rt.block_on(client.set_vm_metadata(&set("{not json")))),
        Code::InvalidArgument
    );
    let doc = rt
        .block_on(client.get_vm_metadata(&GetVmMetadataRequest { vmid: vm.into() }))
        .unwrap()
        .metadata;
    let want = serde_json::json!({"a":1,"b":{"d":3}});
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&doc).unwrap(),
        want
    );

    // Containers join the VM; they see the metadata.
    let events = c.events();
    let ann = [format!("io.ember.vm.id={vm}")];
    let ann: Vec<&str> = ann.iter().map(String::as_str).collect();
    c.run_annotated("j1", &ann, &["sleep", "1000"]);
    c.run_annotated("j2", &ann, &["sleep", "1000"]);
    c.run_annotated("j3", &ann, &["sleep", "1000"]);
    assert_eq!(c.vmms().len(), 1);
    let seen = c.exec_ok("j2", "m", &["cat", "/run/ember/metadata/metadata.json"]);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&seen).unwrap(),
        want,
        "{seen}"
    );

    // The VM outlives its containers' Shutdown calls while it is explicit.
    c.kill_and_remove("j3");
    rt.block_on(client.pause_vm(&PauseVmRequest { vmid: vm.into() }))
        .unwrap();
    assert_eq!(rt.block_on(client.describe(vm)).unwrap().state, "paused");
    rt.block_on(client.resume_vm(&ResumeVmRequest { vmid: vm.into() }))
        .unwrap();
    let d = rt.block_on(client.describe(vm)).unwrap();
    assert!(d.explicit, "{d:?}");
    assert_eq!(d.containers, vec!["j1".to_string(), "j2".to_string()]);
    assert_eq!((d.vcpus, d.memory_mib), (1, 256));
    eprintln!("explicit VM: {d:?}");

    rt.block_on(client.stop_vm(
        &StopVmRequest {
            vmid: vm.into(),
            timeout_seconds: 5,
        },
        Duration::from_secs(30),
    ))
    .unwrap();
    assert!(c.vmms().is_empty(), "StopVM left the VMM");
    for id in ["j1", "j2"] {
        c.wait_stopped(id, 20);
    }
    // A stopping or stopped VM takes no new container, and nothing of it stays.
    let out = c.try_run_annotated("late", &ann, &["true"]);
    assert!(!out.status.success(), "a container joined a stopped VM");
    assert!(text(&out.stderr).contains(vm), "{}", text(&out.stderr));
    let _ = c.ctr(&["containers", "rm", "late"]);
    for id in ["j1", "j2"] {
        c.remove(id);
    }
    let log = Containerd::events_seen(events, Duration::from_millis(300));
    for id in ["j1", "j2"] {
        assert_eq!(exit_statuses(&log, id), vec![137], "{id}:\n{log}");
    }
    // With its containers gone the shim exits.
    let t = Instant::now();
    while !client.is_closed() {
        assert!(t.elapsed() < Duration::from_secs(10), "the shim stayed");
        std::thread::sleep(Duration::from_millis(100));
    }
    c.assert_clean();
}

#[test]
fn balloon_and_exit_after_all_tasks_deleted() {
    let c = Containerd::start();
    let vm = "fcvm2";
    c.used_vms.lock().unwrap().push(vm.into());
    let address = start_vm_shim(&c, vm);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let client = rt.block_on(VmClient::connect(&address)).unwrap();
    let mut req = create_req(vm);
    req.exit_after_all_tasks_deleted = true;
    let (log_fifo, metrics_fifo) = (c.dir.path().join("log.fifo"), c.dir.path().join("m.fifo"));
    req.log_fifo_path = log_fifo.display().to_string();
    req.metrics_fifo_path = metrics_fifo.display().to_string();
    req.balloon_device = Some(FirecrackerBalloonDevice {
        amount_mib: 16,
        deflate_on_oom: true,
        stats_polling_intervals: 1,
    });
    rt.block_on(client.create_vm(&req, Duration::from_secs(90)))
        .unwrap();
    assert_eq!(c.vmms().len(), 1);

    // The FIFOs: made by the shim; the metrics one carries lines about the VMM.
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    assert!(std::fs::metadata(&log_fifo).unwrap().file_type().is_fifo());
    let mut metrics = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&metrics_fifo)
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let mut buf = vec![0u8; 1 << 16];
    let n = std::io::Read::read(&mut metrics, &mut buf).unwrap();
    let first = text(&buf[..n])
        .lines()
        .next()
        .unwrap_or_default()
        .to_string();
    let m: serde_json::Value = serde_json::from_str(&first).unwrap();
    assert_eq!(m["vmm_pid"], c.vmms()[0], "{first}");
    let id = || vm.to_string();
    let cfg = rt
        .block_on(client.get_balloon_config(&GetBalloonConfigRequest { vmid: id() }))
        .unwrap()
        .balloon_config
        .unwrap();
    assert_eq!((cfg.amount_mib, cfg.deflate_on_oom), (16, true));
    rt.block_on(client.update_balloon(&UpdateBalloonRequest {
        vmid: id(),
        amount_mib: 32,
    }))
    .unwrap();
    assert_eq!(
        code(rt.block_on(client.update_balloon(&UpdateBalloonRequest {
            vmid: id(),
            amount_mib: -5,
        }))),
        Code::InvalidArgument
    );
    rt.block_on(client.update_balloon_stats(&UpdateBalloonStatsRequest {
        vmid: id(),
        stats_polling_intervals: 2,
    }))
    .unwrap();
    let stats = rt
        .block_on(client.get_balloon_stats(&GetBalloonStatsRequest { vmid: id() }))
        .unwrap();
    assert_eq!(stats.target_mib, 32, "{stats:?}");
    let cfg = rt
        .block_on(client.get_balloon_config(&GetBalloonConfigRequest { vmid: id() }))
        .unwrap()
        .balloon_config
        .unwrap();
    assert_eq!((cfg.amount_mib, cfg.stats_polling_intervals), (32, 2));
    c.used_ids.lock().unwrap().push("once".into());
    let out = c.ctr(&[
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        "--annotation",
        "io.ember.vm.id=fcvm2",
        IMAGE,
        "once",
        "sh",
        "-c",
        "echo ran",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "ran\n");
    let t = Instant::now();
    while !client.is_closed() {
        assert!(t.elapsed() < Duration::from_secs(20), "the shim stayed");
        std::thread::sleep(Duration::from_millis(100));
    }
    c.assert_clean();
}

#[test]
fn stop_vm_of_a_vm_its_containers_named() {
    let c = Containerd::start();
    let vm = "named";
    c.used_vms.lock().unwrap().push(vm.into());
    let events = c.events();
    for id in ["n1", "n2"] {
        c.run_annotated(id, &["io.ember.vm.id=named"], &["sleep", "1000"]);
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let sock = vm_socket(&c.sock, vm);
    let client = rt
        .block_on(VmClient::connect(sock.to_str().unwrap()))
        .unwrap();
    let d = rt.block_on(client.describe(vm)).unwrap();
    assert!(!d.explicit, "{d:?}");
    assert_eq!(
        code(rt.block_on(client.create_vm(&create_req(vm), Duration::from_secs(30)))),
        Code::AlreadyExists
    );
    rt.block_on(client.stop_vm(
        &StopVmRequest {
            vmid: vm.into(),
            timeout_seconds: 2,
        },
        Duration::from_secs(30),
    ))
    .unwrap();
    assert!(c.vmms().is_empty(), "StopVM left the VMM");
    for id in ["n1", "n2"] {
        c.wait_stopped(id, 20);
        c.remove(id);
    }
    let log = Containerd::events_seen(events, Duration::from_millis(300));
    for id in ["n1", "n2"] {
        assert_eq!(exit_statuses(&log, id), vec![137], "{id}:\n{log}");
    }
    c.assert_clean();
}
