//! The sandbox layer end to end: real QEMU microVMs booting the Ember guest, with
//! containers run by the agent from an ext4 busybox rootfs.

mod common;

use std::time::Duration;

use common::*;
use ember_agent_api::{OutputStream, StdioConfig};
use ember_sandbox::{read_all_output, Sandbox, SandboxConfig};
use tokio::io::AsyncWriteExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uname_exit_codes_and_stdin() {
    let dir = tempfile::tempdir().unwrap();
    let sb = boot(dir.path(), "basic", &["c1", "c2", "c3"]).await;

    let out = run(&sb, "uname", "c1", &["uname", "-r"], None).await;
    assert_eq!(
        out.status,
        0,
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let release = out.stdout_str().trim().to_string();
    let host = nix::sys::utsname::uname().unwrap();
    assert_ne!(
        release,
        host.release().to_string_lossy(),
        "ran on the host kernel?"
    );
    assert_eq!(release, sb.kernel_release());
    if let Some(built) = guest().kernel_release() {
        assert_eq!(release, built);
    }

    let out = run(
        &sb,
        "exit3",
        "c2",
        &["sh", "-c", "echo to-stderr >&2; exit 3"],
        None,
    )
    .await;
    assert_eq!(out.status, 3);
    assert_eq!(String::from_utf8_lossy(&out.stderr), "to-stderr\n");

    let input: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let out = run(&sb, "cat", "c3", &["cat"], Some(&input)).await;
    assert_eq!(out.status, 0);
    assert_eq!(out.stdout.len(), input.len());
    assert!(
        out.stdout == input,
        "stdin did not round-trip byte for byte"
    );

    shutdown(sb).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_mib_of_stdout_arrives_complete() {
    let dir = tempfile::tempdir().unwrap();
    let sb = boot(dir.path(), "bigout", &["c1"]).await;
    // Random bytes, checksummed in the guest as they are written: a lost, repeated or
    // reordered chunk changes the checksum.
    let script = "mkfifo /tmp/sum; md5sum < /tmp/sum >&2 & \
                  head -c 20971520 /dev/urandom | tee /tmp/sum; wait";
    let out = run(&sb, "big", "c1", &["sh", "-c", script], None).await;
    assert_eq!(
        out.status,
        0,
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        out.stdout.len(),
        20 << 20,
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let want = String::from_utf8_lossy(&out.stderr)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    let got = md5_hex(&out.stdout);
    assert_eq!(
        got, want,
        "stdout content differs from what the guest wrote"
    );
    shutdown(sb).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_kill_pause_and_stats() {
    let dir = tempfile::tempdir().unwrap();
    let sb = boot(dir.path(), "exec", &["c1"]).await;
    let agent = sb.agent();
    sb.create_container(
        "sleeper",
        spec(&["sh", "-c", "echo started; exec sleep 600"], false),
        "c1",
        "ext4",
        StdioConfig {
            terminal: false,
            stdin: false,
        },
    )
    .await
    .unwrap();
    let pid = agent.start_process("sleeper", "").await.unwrap();
    assert!(pid > 1);

    // exec into the running container: it sees the container's rootfs and pid namespace.
    let process = serde_json::json!({
        "args": ["sh", "-c", "cat /etc/hostname; ps -o pid,comm | grep -c sleep; exit 7"],
        "cwd": "/",
        "env": ["PATH=/bin:/usr/bin"],
        "user": {"uid": 0, "gid": 0}
    });
    agent
        .create_process(&ember_agent_api::CreateProcessRequest {
            container_id: "sleeper".into(),
            exec_id: "e1".into(),
            process_json: serde_json::to_vec(&process).unwrap(),
            stdio: Some(StdioConfig {
                terminal: false,
                stdin: false,
            }),
        })
        .await
        .unwrap();
    agent.start_process("sleeper", "e1").await.unwrap();
    let out = read_all_output(agent, "sleeper", "e1", OutputStream::Stdout)
        .await
        .unwrap();
    let st = agent.wait_process("sleeper", "e1").await.unwrap();
    assert_eq!(st.exit_status, 7);
    let text = String::from_utf8_lossy(&out);
    assert!(
        text.starts_with("ember"),
        "exec did not see the container rootfs: {text}"
    );

    let pids = agent.list_pids("sleeper").await.unwrap();
    assert!(pids.contains(&pid), "{pids:?} lacks {pid}");
    let stats = agent.stats("sleeper").await.unwrap();
    assert!(stats.memory_usage_bytes > 0);
    assert!(stats.pids_current >= 1);

    agent.pause_container("sleeper").await.unwrap();
    agent.resume_container("sleeper").await.unwrap();

    agent.signal_process("sleeper", "", 9, false).await.unwrap();
    let st = tokio::time::timeout(Duration::from_secs(30), agent.wait_process("sleeper", ""))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(st.exit_status, 137);
    let first = read_all_output(agent, "sleeper", "", OutputStream::Stdout)
        .await
        .unwrap();
    assert_eq!(first, b"started\n");
    agent.remove_container("sleeper").await.unwrap();

    // Unknown ids are clean errors, not crashes.
    let e = agent.wait_process("nope", "").await.unwrap_err();
    assert_eq!(e.code(), ember_ttrpc::Code::NotFound);
    shutdown(sb).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pty_resize_is_seen_by_stty() {
    let dir = tempfile::tempdir().unwrap();
    let sb = boot(dir.path(), "pty", &["c1"]).await;
    let agent = sb.agent();
    sb.create_container(
        "tty",
        spec(&["sh"], true),
        "c1",
        "ext4",
        StdioConfig {
            terminal: true,
            stdin: true,
        },
    )
    .await
    .unwrap();
    agent.resize_pty("tty", "", 80, 24).await.unwrap();
    agent.start_process("tty", "").await.unwrap();
    agent.resize_pty("tty", "", 123, 45).await.unwrap();
    agent
        .write_stdin("tty", "", b"stty size; tty; exit 5\n".to_vec())
        .await
        .unwrap();
    let out = read_all_output(agent, "tty", "", OutputStream::Stdout)
        .await
        .unwrap();
    let st = agent.wait_process("tty", "").await.unwrap();
    let text = String::from_utf8_lossy(&out);
    assert!(
        text.contains("45 123"),
        "stty size did not show the new size: {text:?}"
    );
    assert!(text.contains("/dev/pts/"), "not a terminal: {text:?}");
    assert_eq!(st.exit_status, 5);
    agent.remove_container("tty").await.unwrap();
    shutdown(sb).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_vms_at_once() {
    let d1 = tempfile::tempdir().unwrap();
    let d2 = tempfile::tempdir().unwrap();
    let (a, b) = tokio::join!(
        boot(d1.path(), "twin-a", &["c1"]),
        boot(d2.path(), "twin-b", &["c1"])
    );
    assert_ne!(a.vm().pid(), b.vm().pid());
    let (oa, ob) = tokio::join!(
        run(&a, "x", "c1", &["sh", "-c", "echo a"], None),
        run(&b, "x", "c1", &["sh", "-c", "echo b"], None)
    );
    assert_eq!(oa.stdout_str(), "a\n");
    assert_eq!(ob.stdout_str(), "b\n");
    shutdown(a).await;
    shutdown(b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_the_agent_channel_drops_the_connection_only() {
    let dir = tempfile::tempdir().unwrap();
    let mut sb = boot(dir.path(), "garbage", &["c1"]).await;
    let mut raw = sb.raw_agent_channel().await.unwrap();
    raw.write_all(b"\xff\xff\xff\xff this is not ttrpc at all\n")
        .await
        .unwrap();
    raw.write_all(&[0u8, 0, 0, 3, 0, 0, 0, 2, 9, 0, 1, 2, 3])
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(raw);
    sb.reconnect_agent(Duration::from_secs(30)).await.unwrap();
    let out = run(&sb, "after", "c1", &["sh", "-c", "echo alive"], None).await;
    assert_eq!(out.stdout_str(), "alive\n");
    shutdown(sb).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_and_broken_kernels_fail_clearly_and_leave_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    let mut cfg = SandboxConfig::new("broken", &guest(), state.clone());
    cfg.vmm = vmm();
    cfg.kernel = dir.path().join("no-such-vmlinux");
    let e = Sandbox::boot(cfg.clone()).await.err().unwrap().to_string();
    assert!(
        e.contains("guest kernel") && e.contains("guest/build.sh"),
        "{e}"
    );

    // A kernel with no usable init: the error carries the console tail, no VMM is left.
    let mut cfg = SandboxConfig::new("noinit", &guest(), state.clone());
    cfg.vmm = vmm();
    cfg.initrd = dir.path().join("empty.cpio");
    std::fs::write(&cfg.initrd, b"").unwrap();
    cfg.boot_timeout = Duration::from_secs(60);
    let e = Sandbox::boot(cfg).await.err().unwrap().to_string();
    assert!(e.contains("console tail"), "{e}");
    assert!(e.contains("Kernel panic") || e.contains("init"), "{e}");
    assert!(!vmm_running("noinit"), "a VMM outlived the failed boot");
}

fn md5_hex(data: &[u8]) -> String {
    let mut child = std::process::Command::new("md5sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        child.stdin.take().unwrap().write_all(data).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}
