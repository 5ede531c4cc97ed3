//! Drives a real `ember-agent` on the host over a unix socket with a busybox rootfs
//! (see `common` for the harness): processes, stdio, signals, cgroups, ptys.

#![deny(clippy::undocumented_unsafe_blocks)]

#[macro_use]
mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::*;
use ember_agent_api::*;
use ember_ttrpc::Code;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basics_and_errors() {
    require_root!();
    let h = Harness::start("basics").await;
    let ping = h.client.ping(Duration::from_secs(5)).await.unwrap();
    let uname = if h.vm.is_some() {
        ping.kernel_release.clone()
    } else {
        String::from_utf8(Command::new("uname").arg("-r").output().unwrap().stdout).unwrap()
    };
    assert_eq!(ping.kernel_release, uname.trim());

    let (st, out, _) = h.run("uname", &["uname", "-r"]).await;
    assert_eq!((st, out.trim()), (0, uname.trim()));

    let (st, _, _) = h.run("exit3", &["sh", "-c", "exit 3"]).await;
    assert_eq!(st, 3);

    let (st, out, err) = h
        .run(
            "env",
            &["sh", "-c", "hostname; echo oops >&2; pwd; ls /dev"],
        )
        .await;
    assert_eq!(st, 0);
    assert!(out.starts_with("ctr\n/\n"), "{out}");
    for d in ["null", "zero", "urandom", "tty", "pts", "shm", "ptmx", "fd"] {
        assert!(
            out.lines().any(|l| l.split_whitespace().any(|w| w == d)),
            "/dev lacks {d}: {out}"
        );
    }
    assert_eq!(err, "oops\n");

    // Errors.
    let e = h.client.start_process("nope", "").await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e}");
    let e = h.client.wait_process("nope", "").await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e}");
    let e = h
        .client
        .create_container(&CreateContainerRequest {
            container_id: "bad".into(),
            spec_json: b"{not json".to_vec(),
            rootfs: Some(h.rootfs()),
            stdio: None,
            files: Vec::new(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e}");
    let e = h
        .try_create("../x", spec(&["true"], false), StdioConfig::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e}");

    h.create("twice", &["true"], StdioConfig::default()).await;
    let e = h
        .try_create("twice", spec(&["true"], false), StdioConfig::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists, "{e}");
    h.client.start_process("twice", "").await.unwrap();
    let e = h.client.start_process("twice", "").await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e}");
    assert_eq!(
        h.client
            .wait_process("twice", "")
            .await
            .unwrap()
            .exit_status,
        0
    );
    // Several waiters, also after the exit.
    assert_eq!(
        h.client
            .wait_process("twice", "")
            .await
            .unwrap()
            .exit_status,
        0
    );
    let e = h
        .client
        .read_output("twice", "zz", OutputStream::Stdout, 10)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e}");
    h.client.remove_container("twice").await.unwrap();
    let e = h.client.remove_container("twice").await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e}");

    // A missing executable fails the create (as runc's does), with a clear error,
    // and leaves no container.
    for (id, exe, says) in [
        ("noexe", "/bin/does-not-exist", "no such file or directory"),
        ("nopath", "no-such-cmd", "not found in $PATH"),
    ] {
        let e = h
            .try_create(id, spec(&[exe], false), StdioConfig::default())
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition, "{e}");
        assert!(
            e.to_string().contains(exe) && e.to_string().contains(says),
            "{e}"
        );
        let e = h.client.start_process(id, "").await.unwrap_err();
        assert_eq!(e.code(), Code::NotFound, "{e}");
    }

    // Setup failures are clear errors and leave nothing behind.
    let mut sp = spec(&["true"], false);
    sp["mounts"].as_array_mut().unwrap().push(json!({
        "destination": "/data", "type": "bind", "source": "/nonexistent/src", "options": ["rbind"]
    }));
    let e = h
        .try_create("badmount", sp, StdioConfig::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e}");
    assert!(e.to_string().contains("/nonexistent/src"), "{e}");
    if h.vm.is_none() {
        assert!(!h.dir.join("state/badmount").exists());
    }
    h.client.list_pids("badmount").await.unwrap_err();

    // Read-only root, a read-only bind mount, rlimits, a non-root user.
    // (A directory of the agent's side with a known file in it.)
    let (data, file, content) = if h.vm.is_some() {
        (PathBuf::from("/proc/sys/kernel"), "ostype", "Linux")
    } else {
        let data = h.dir.join("data");
        std::fs::create_dir_all(&data).unwrap();
        std::fs::write(data.join("hello"), "hi\n").unwrap();
        (data, "hello", "hi")
    };
    let script = format!(
        "cat /data/{file}; touch /x 2>/dev/null && echo rw || echo ro; \
         touch /data/y 2>/dev/null && echo rw || echo ro; ulimit -n; id -u; id -G; \
         cat /proc/self/status | grep -E '^(NoNewPrivs|CapEff)'"
    );
    let mut sp = spec(&["sh", "-c", &script], false);
    sp["root"]["readonly"] = json!(true);
    sp["process"]["user"] = json!({"uid": 1000, "gid": 1000, "additionalGids": [10, 20]});
    sp["mounts"].as_array_mut().unwrap().push(json!({
        "destination": "/data", "type": "bind", "source": data, "options": ["rbind", "ro"]
    }));
    let (st, out, err) = h.run_spec("ro", sp).await;
    assert_eq!(st, 0, "{err}");
    assert_eq!(
        out,
        format!("{content}\nro\nro\n1024\n1000\n1000 10 20\nCapEff:\t0000000000000000\nNoNewPrivs:\t1\n")
    );

    // A removed-before-start container goes away cleanly.
    h.create("unstarted", &["true"], StdioConfig::default())
        .await;
    h.client.remove_container("unstarted").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdin_and_big_output() {
    require_root!();
    let h = Harness::start("io").await;
    h.create(
        "cat",
        &["cat"],
        StdioConfig {
            terminal: false,
            stdin: true,
        },
    )
    .await;
    let out = tokio::spawn(read_all(
        h.client.clone(),
        "cat".into(),
        "".into(),
        OutputStream::Stdout,
    ));
    h.client.start_process("cat", "").await.unwrap();
    let payload: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    for chunk in payload.chunks(100_000) {
        assert_eq!(
            h.client
                .write_stdin("cat", "", chunk.to_vec())
                .await
                .unwrap() as usize,
            chunk.len()
        );
    }
    h.client.close_stdin("cat", "").await.unwrap();
    assert_eq!(
        h.client.wait_process("cat", "").await.unwrap().exit_status,
        0
    );
    assert!(out.await.unwrap() == payload, "stdin round trip differs");
    let e = h
        .client
        .write_stdin("cat", "", b"x".to_vec())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    h.client.remove_container("cat").await.unwrap();

    let (st, out, _) = h
        .run(
            "big",
            &["sh", "-c", "head -c 20971520 /dev/zero; echo -n END"],
        )
        .await;
    assert_eq!(st, 0);
    assert_eq!(out.len(), 20971520 + 3);
    assert!(out.ends_with("END"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_signal_pause_stats() {
    require_root!();
    let h = Harness::start("exec").await;
    let pid = h
        .create("svc", &["sleep", "1000"], StdioConfig::default())
        .await;
    assert_eq!(h.client.start_process("svc", "").await.unwrap(), pid);

    h.client
        .create_process(&CreateProcessRequest {
            container_id: "svc".into(),
            exec_id: "e1".into(),
            process_json: process_json(
                &[
                    "sh",
                    "-c",
                    "pwd; cat /proc/1/cmdline; echo; hostname; exit 5",
                ],
                false,
            ),
            stdio: None,
        })
        .await
        .unwrap();
    let e = h
        .client
        .create_process(&CreateProcessRequest {
            container_id: "svc".into(),
            exec_id: "e1".into(),
            process_json: process_json(&["true"], false),
            stdio: None,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists);
    let e = h
        .client
        .create_process(&CreateProcessRequest {
            container_id: "svc".into(),
            exec_id: "bad".into(),
            process_json: b"[1,2".to_vec(),
            stdio: None,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    // An exec created and never started can be forgotten; its id is free again.
    let idle = CreateProcessRequest {
        container_id: "svc".into(),
        exec_id: "idle".into(),
        process_json: process_json(&["true"], false),
        stdio: None,
    };
    h.client.create_process(&idle).await.unwrap();
    h.client.remove_process("svc", "idle").await.unwrap();
    let e = h.client.start_process("svc", "idle").await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e}");
    h.client.create_process(&idle).await.unwrap();
    h.client.remove_process("svc", "idle").await.unwrap();
    let out = tokio::spawn(read_all(
        h.client.clone(),
        "svc".into(),
        "e1".into(),
        OutputStream::Stdout,
    ));
    h.client.start_process("svc", "e1").await.unwrap();
    assert_eq!(
        h.client
            .wait_process("svc", "e1")
            .await
            .unwrap()
            .exit_status,
        5
    );
    let out = String::from_utf8(out.await.unwrap()).unwrap();
    assert_eq!(out, "/tmp\nsleep\u{0}1000\u{0}\nctr\n");

    // A missing executable in an exec.
    h.client
        .create_process(&CreateProcessRequest {
            container_id: "svc".into(),
            exec_id: "e2".into(),
            process_json: process_json(&["nonexistent"], false),
            stdio: None,
        })
        .await
        .unwrap();
    let e = h.client.start_process("svc", "e2").await.unwrap_err();
    assert!(e.to_string().contains("nonexistent"), "{e}");

    // A long-running exec shows in the pids.
    h.client
        .create_process(&CreateProcessRequest {
            container_id: "svc".into(),
            exec_id: "e3".into(),
            process_json: process_json(&["sleep", "1000"], false),
            stdio: None,
        })
        .await
        .unwrap();
    let e3 = h.client.start_process("svc", "e3").await.unwrap();
    if h.has_cgroups() {
        let pids = h.client.list_pids("svc").await.unwrap();
        assert!(
            pids.contains(&pid) && pids.contains(&e3),
            "{pids:?} lacks {pid} or {e3}"
        );
        h.client.pause_container("svc").await.unwrap();
        if let Some(cgroot) = &h.cgroup {
            let cg = cgroot.join("ember/svc/cgroup.events");
            assert!(std::fs::read_to_string(cg).unwrap().contains("frozen 1"));
        }
        h.client.resume_container("svc").await.unwrap();
        let e = h.client.resume_container("svc").await.unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition);
        h.client
            .update_container("svc", br#"{"pids":{"limit":100}}"#.to_vec())
            .await
            .unwrap();
        let stats = h.client.stats("svc").await.unwrap();
        println!("stats: {stats:?}");
        if h.vm.is_some() {
            // All controllers are there in the guest.
            assert_eq!(stats.pids_limit, 100);
            assert_eq!(stats.pids_current, 2);
            assert!(
                stats.memory_usage_bytes > 0 && stats.cpu_usage_usec > 0,
                "{stats:?}"
            );
        }
        let e = h
            .client
            .update_container("svc", b"nope".to_vec())
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
    } else {
        eprintln!("no cgroup v2 on this host: pause/stats not tested");
    }
    // An exec that is never started: its waiters learn at removal.
    h.client
        .create_process(&CreateProcessRequest {
            container_id: "svc".into(),
            exec_id: "never".into(),
            process_json: process_json(&["true"], false),
            stdio: None,
        })
        .await
        .unwrap();
    let never = tokio::spawn({
        let c = h.client.clone();
        async move { c.wait_process("svc", "never").await }
    });
    // SIGKILL the init: 137, and the exec dies with it.
    h.client.signal_process("svc", "", 9, false).await.unwrap();
    assert_eq!(
        h.client.wait_process("svc", "").await.unwrap().exit_status,
        137
    );
    assert_eq!(
        h.client
            .wait_process("svc", "e3")
            .await
            .unwrap()
            .exit_status,
        137
    );
    let e = h
        .client
        .signal_process("svc", "", 15, false)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let e = h.client.start_process("svc", "never").await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e}");
    h.client.remove_container("svc").await.unwrap();
    assert_eq!(never.await.unwrap().unwrap().exit_status, 255);
    if h.vm.is_none() {
        assert!(!h.dir.join("state/svc").exists());
    }
}

/// Children of `pid` that are spawn helpers waiting for a process.
fn waiting_helpers(pid: u32) -> Vec<u32> {
    let mut v = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(child) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let stat = std::fs::read_to_string(format!("/proc/{child}/stat")).unwrap_or_default();
        // The parent pid is the second field after the ")" that ends the name.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        let cmdline = std::fs::read(format!("/proc/{child}/cmdline")).unwrap_or_default();
        if ppid == Some(pid) && cmdline.windows(9).any(|w| w == b"\0--ready\0") {
            v.push(child);
        }
    }
    v
}

/// Polls (bounded) until `pid` has one waiting helper other than `not`.
async fn wait_for_helper(pid: u32, not: Option<u32>) -> u32 {
    for _ in 0..100 {
        let w = waiting_helpers(pid);
        if let [one] = w.as_slice() {
            if Some(*one) != not {
                return *one;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "no waiting spawn helper under {pid}: {:?}",
        waiting_helpers(pid)
    );
}

/// A helper waits, already executed, for the next process: a create hands it the
/// process instead of forking the agent, and another one is started after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_helper_starts_processes_and_is_replaced() {
    require_root!();
    let h = Harness::start("ready").await;
    let Some(agent) = h.agent.as_ref().map(|c| c.id()) else {
        eprintln!("skipped: the agent runs in a VM");
        return;
    };
    let first = wait_for_helper(agent, None).await;
    let (st, out, _) = h.run("r1", &["sh", "-c", "echo one; echo two >&2"]).await;
    assert_eq!((st, out.as_str()), (0, "one\n"));
    assert!(
        !std::path::Path::new(&format!("/proc/{first}")).exists()
            || !waiting_helpers(agent).contains(&first),
        "the waiting helper {first} was not used"
    );
    let second = wait_for_helper(agent, Some(first)).await;
    // The replacement serves an exec as well.
    let pid = h
        .create("r2", &["sleep", "100"], StdioConfig::default())
        .await;
    if h.has_cgroups() {
        // Cloned straight into the container's cgroup.
        let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
        let unified = cg.lines().find(|l| l.starts_with("0::")).unwrap_or("");
        assert!(unified.ends_with("/r2"), "{cg}");
        // With a cgroup namespace of its own, rooted at that cgroup.
        let mut sp = spec(&["cat", "/proc/self/cgroup"], false);
        sp["linux"]["namespaces"]
            .as_array_mut()
            .unwrap()
            .push(json!({"type": "cgroup"}));
        let (st, out, err) = h.run_spec("r3", sp).await;
        let unified = out.lines().find(|l| l.starts_with("0::"));
        assert_eq!((st, unified), (0, Some("0::/")), "{out}{err}");
    }
    h.client.start_process("r2", "").await.unwrap();
    let third = wait_for_helper(agent, Some(second)).await;
    let (st, out, _) = h.exec("r2", "e1", &["echo", "in r2"]).await;
    assert_eq!((st, out.as_str()), (0, "in r2\n"));
    wait_for_helper(agent, Some(third)).await;
    h.client.signal_process("r2", "", 9, false).await.unwrap();
    h.client.wait_process("r2", "").await.unwrap();
    h.client.remove_container("r2").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_does_not_kill_the_agent() {
    require_root!();
    let mut h = Harness::start("garbage").await;
    let sock = match &h.vm {
        Some(vm) => {
            // One connection at a time on a serial port: let go of ours.
            let dead = AgentClient::new(tokio::io::duplex(1).0);
            drop(std::mem::replace(&mut h.client, dead));
            tokio::time::sleep(Duration::from_millis(300)).await;
            vm.sock.clone()
        }
        None => h.dir.join("agent.sock"),
    };
    {
        use tokio::io::AsyncWriteExt;
        let mut s = tokio::net::UnixStream::connect(&sock).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\n\r\n\x00\x00\x00\xff\xff\xff\xff\xff")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        // More garbage while the agent discards input.
        let _ = s.write_all(&[0xffu8; 100_000]).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A dropped connection with a pending long poll.
    {
        let c = match &h.vm {
            Some(vm) => connect_vm(vm).await,
            None => AgentClient::new(tokio::net::UnixStream::connect(&sock).await.unwrap()),
        };
        let _ = tokio::time::timeout(Duration::from_millis(200), c.wait_oom()).await;
    }
    let c = match &h.vm {
        Some(vm) => connect_vm(vm).await,
        None => AgentClient::new(tokio::net::UnixStream::connect(&sock).await.unwrap()),
    };
    c.ping(Duration::from_secs(5)).await.unwrap();
    if h.vm.is_none() {
        h.client.ping(Duration::from_secs(5)).await.unwrap();
    }
}

/// Shutdown: the agent cleans up and exits (powers off as PID 1). In VM mode only
/// with EMBER_AGENT_TEST_VM_SHUTDOWN=1, as it ends the VM (named to run last).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zz_shutdown() {
    require_root!();
    if vm().is_some() && std::env::var_os("EMBER_AGENT_TEST_VM_SHUTDOWN").is_none() {
        eprintln!("SKIPPED: shutdown would end the VM");
        return;
    }
    let mut h = Harness::start("shutdown").await;
    h.create("left", &["sleep", "1000"], StdioConfig::default())
        .await;
    h.client.start_process("left", "").await.unwrap();
    h.client.shutdown().await.unwrap();
    let Some(agent) = &mut h.agent else {
        // The VM powers off: the connection ends.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !h.client.is_closed() {
            assert!(std::time::Instant::now() < deadline, "VM did not power off");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        return;
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(st) = agent.try_wait().unwrap() {
            // As PID 1 of a pid namespace, reboot(POWER_OFF) ends it with SIGINT.
            use std::os::unix::process::ExitStatusExt;
            assert!(st.success() || st.signal() == Some(libc::SIGINT), "{st:?}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "agent did not exit");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!h.dir.join("state/left").exists());
}

/// OOM kills reach WaitOom and Stats (needs the memory controller: VM mode).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oom() {
    require_root!();
    if vm().is_none() {
        eprintln!("SKIPPED: no memory controller on the test host; run in VM mode");
        return;
    }
    let h = Harness::start("oom").await;
    let oom = tokio::spawn({
        let c = h.client.clone();
        async move { c.wait_oom().await }
    });
    let mut sp = spec(
        &[
            "sh",
            "-c",
            "x=$(head -c 200000000 /dev/zero | tr '\\0' a); echo survived",
        ],
        false,
    );
    sp["linux"]["resources"] = json!({"memory": {"limit": 33554432, "swap": 33554432}});
    let (st, out, _) = h.run_spec_keep("hog", sp).await;
    assert!(!out.contains("survived"), "{st} {out}");
    let ev = tokio::time::timeout(Duration::from_secs(5), oom)
        .await
        .expect("no OOM event")
        .unwrap()
        .unwrap();
    assert_eq!(ev.container_id, "hog");
    let stats = h.client.stats("hog").await.unwrap();
    assert!(stats.oom_kills >= 1, "{stats:?}");
    assert_eq!(stats.memory_limit_bytes, 33554432);
    h.client.remove_container("hog").await.unwrap();
}
