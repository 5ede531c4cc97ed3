//! Unit tests of snapshot save and restore against a fake Firecracker API.

use super::*;
use crate::Vm;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

/// The backend tests' config, with 1 MiB of guest memory (the test memory files).
fn config(dir: &Path) -> VmConfig {
    VmConfig {
        memory_mib: 1,
        ..super::super::tests::config(dir)
    }
}

fn restore(dir: &Path) -> (VmConfig, PathBuf, PathBuf) {
    let (state, memory) = (dir.join("state"), dir.join("memory"));
    std::fs::write(&state, "state").unwrap();
    std::fs::write(&memory, vec![0u8; 1 << 20]).unwrap();
    let mut c = config(dir);
    c.template = Some(TemplateMode::Restore {
        memory: Some(memory.clone()),
        state: state.clone(),
    });
    (c, state, memory)
}

#[test]
fn template_configs_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.template = Some(TemplateMode::Build { memory: None });
    let e = FirecrackerVm::new(c.clone()).unwrap_err();
    assert!(
        matches!(&e, Error::InvalidConfig(m) if m.contains("memory file")),
        "{e}"
    );
    c.template = Some(TemplateMode::Build {
        memory: Some(dir.path().join("memory")),
    });
    FirecrackerVm::new(c.clone()).expect("a Build with a memory file");
    c.jail = Some(crate::jail::JailConfig::default());
    assert!(matches!(FirecrackerVm::new(c), Err(Error::Unsupported(_))));

    let (c, state, memory) = restore(dir.path());
    // A clone needs no kernel of its own.
    std::fs::remove_file(&c.kernel).unwrap();
    FirecrackerVm::new(c.clone()).expect("a complete Restore");
    let mut jailed = c.clone();
    jailed.jail = Some(crate::jail::JailConfig::default());
    assert!(matches!(
        FirecrackerVm::new(jailed),
        Err(Error::Unsupported(_))
    ));
    let mut wrong = c.clone();
    wrong.memory_mib = 2;
    let e = FirecrackerVm::new(wrong).unwrap_err().to_string();
    assert!(e.contains("not the VM's 2 MiB"), "{e}");
    let mut no_memory = c.clone();
    no_memory.template = Some(TemplateMode::Restore {
        memory: None,
        state: state.clone(),
    });
    assert!(matches!(
        FirecrackerVm::new(no_memory),
        Err(Error::InvalidConfig(_))
    ));
    std::fs::remove_file(&memory).unwrap();
    assert!(matches!(
        FirecrackerVm::new(c.clone()),
        Err(Error::MissingFile {
            what: "template memory",
            ..
        })
    ));
    std::fs::remove_file(&state).unwrap();
    match FirecrackerVm::new(c) {
        Err(Error::MissingFile { what, path, hint }) => {
            assert_eq!((what, path), ("template state", state));
            assert!(hint.contains("rebuild"), "{hint}");
        }
        other => panic!("{other:?}"),
    }
}

/// A fake Firecracker API on `sock`: records each request (`METHOD /path` and
/// JSON body) and answers with what `answer` returns for it.
fn fake_api(
    sock: &Path,
    answer: impl Fn(&str, &Value) -> (u16, String) + Send + 'static,
) -> std::sync::Arc<std::sync::Mutex<Vec<(String, Value)>>> {
    let listener = tokio::net::UnixListener::bind(sock).unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let mut r = tokio::io::BufReader::new(stream);
            let mut line = String::new();
            r.read_line(&mut line).await.unwrap();
            let mut len = 0;
            loop {
                let mut h = String::new();
                r.read_line(&mut h).await.unwrap();
                if h == "\r\n" {
                    break;
                }
                if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap();
                }
            }
            let mut body = vec![0u8; len];
            r.read_exact(&mut body).await.unwrap();
            let req = line.rsplit_once(' ').unwrap().0.to_owned();
            let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let (status, text) = answer(&req, &body);
            log.lock().unwrap().push((req, body));
            let resp = format!(
                "HTTP/1.1 {status} \r\nContent-Length: {}\r\n\r\n{text}",
                text.len()
            );
            r.get_mut().write_all(resp.as_bytes()).await.unwrap();
        }
    });
    seen
}

fn requests(seen: &std::sync::Mutex<Vec<(String, Value)>>) -> Vec<String> {
    seen.lock()
        .unwrap()
        .iter()
        .map(|(r, _)| r.clone())
        .collect()
}

#[tokio::test]
async fn restore_loads_overrides_swaps_drives_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let (mut c, state, memory) = restore(dir.path());
    let disk = dir.path().join("clone.img");
    std::fs::write(&disk, "").unwrap();
    c.drives.push(crate::Drive {
        id: "rootfs".into(),
        path: disk.clone(),
        read_only: true,
    });
    let mut vm = FirecrackerVm::new(c).unwrap();
    // A leftover vsock socket goes before the load.
    std::fs::write(&vm.paths.vsock, "").unwrap();
    let seen = fake_api(&vm.paths.api_socket, |req, _| match req {
        "GET /version" => (200, r#"{"firecracker_version":"1.16.1"}"#.into()),
        _ => (204, String::new()),
    });
    vm.restore_snapshot(&state, Some(&memory)).await.unwrap();
    assert!(!vm.paths.vsock.exists());
    assert_eq!(
        requests(&seen),
        [
            "GET /version",
            "PUT /snapshot/load",
            "PATCH /drives/rootfs",
            "PATCH /vm"
        ]
    );
    let seen = seen.lock().unwrap();
    let load = &seen[1].1;
    assert_eq!(load["snapshot_path"], state.to_str().unwrap());
    assert_eq!(
        load["mem_backend"]["backend_path"],
        memory.to_str().unwrap()
    );
    assert_eq!(load["resume_vm"], false);
    assert_eq!(
        load["vsock_override"]["uds_path"],
        vm.paths.vsock.to_str().unwrap()
    );
    assert_eq!(seen[2].1["path_on_host"], disk.to_str().unwrap());
    assert_eq!(seen[3].1, serde_json::json!({"state": "Resumed"}));
}

#[tokio::test]
async fn restore_refuses_an_old_firecracker_before_loading() {
    let dir = tempfile::tempdir().unwrap();
    let (c, state, memory) = restore(dir.path());
    let mut vm = FirecrackerVm::new(c).unwrap();
    let seen = fake_api(&vm.paths.api_socket, |_, _| {
        (200, r#"{"firecracker_version":"1.15.0"}"#.into())
    });
    let e = vm
        .restore_snapshot(&state, Some(&memory))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Unsupported(w) if w.contains("1.16")));
    assert_eq!(requests(&seen), ["GET /version"]);
}

/// A VM that counts as booted, its API served by `fake_api`.
async fn booted_build(dir: &Path) -> (FirecrackerVm, PathBuf, PathBuf) {
    let mut c = config(dir);
    let (state, memory) = (dir.join("tpl-state"), dir.join("tpl-memory"));
    c.template = Some(TemplateMode::Build {
        memory: Some(memory.clone()),
    });
    let mut vm = FirecrackerVm::new(c).unwrap();
    let child = tokio::process::Command::new("sleep")
        .arg("30")
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    vm.child = Some(child);
    vm.booted = true;
    (vm, state, memory)
}

#[tokio::test]
async fn save_writes_through_partial_files() {
    let dir = tempfile::tempdir().unwrap();
    let (mut vm, state, memory) = booted_build(dir.path()).await;
    let seen = fake_api(&vm.paths.api_socket, |req, body| {
        if req == "PUT /snapshot/create" {
            for key in ["snapshot_path", "mem_file_path"] {
                let p = body[key].as_str().unwrap();
                assert!(p.ends_with(".partial"), "{p}");
                std::fs::write(p, key).unwrap();
            }
        }
        (204, String::new())
    });
    vm.save_template(&state).await.unwrap();
    assert_eq!(requests(&seen), ["PATCH /vm", "PUT /snapshot/create"]);
    assert_eq!(seen.lock().unwrap()[1].1["snapshot_type"], "Full");
    assert_eq!(std::fs::read_to_string(&state).unwrap(), "snapshot_path");
    assert_eq!(std::fs::read_to_string(&memory).unwrap(), "mem_file_path");
    assert!(!partial(&state).exists() && !partial(&memory).exists());
    vm.kill_and_reap().await.unwrap();
}

#[tokio::test]
async fn failed_save_leaves_the_old_template_and_no_partials() {
    let dir = tempfile::tempdir().unwrap();
    let (mut vm, state, memory) = booted_build(dir.path()).await;
    std::fs::write(&state, "old").unwrap();
    let _seen = fake_api(&vm.paths.api_socket, |req, body| {
        if req == "PUT /snapshot/create" {
            // Half written, then the failure.
            std::fs::write(body["snapshot_path"].as_str().unwrap(), "half").unwrap();
            return (400, r#"{"fault_message":"disk full"}"#.into());
        }
        (204, String::new())
    });
    let e = vm.save_template(&state).await.unwrap_err().to_string();
    assert!(e.contains("disk full"), "{e}");
    assert_eq!(std::fs::read_to_string(&state).unwrap(), "old");
    assert!(!memory.exists());
    assert!(!partial(&state).exists() && !partial(&memory).exists());
    vm.kill_and_reap().await.unwrap();
}

#[tokio::test]
async fn only_a_running_build_can_be_saved() {
    let dir = tempfile::tempdir().unwrap();
    let mut vm = FirecrackerVm::new(config(dir.path())).unwrap();
    let e = vm.save_template(&dir.path().join("s")).await.unwrap_err();
    assert!(matches!(e, Error::InvalidConfig(_)), "{e}");
    let mut c = config(dir.path());
    c.template = Some(TemplateMode::Build {
        memory: Some(dir.path().join("m")),
    });
    let mut vm = FirecrackerVm::new(c).unwrap();
    let e = vm.save_template(&dir.path().join("s")).await.unwrap_err();
    assert!(matches!(e, Error::NotRunning), "{e}");
}

#[test]
fn versions() {
    assert_eq!(parse_version("1.16.1"), Some((1, 16)));
    assert_eq!(parse_version("v1.17.0-dev"), Some((1, 17)));
    assert_eq!(parse_version("2.0"), Some((2, 0)));
    assert_eq!(parse_version("weird"), None);
    assert!(check_version("1.16.0", true).is_ok());
    assert!(check_version("2.1.0", false).is_ok());
    assert!(check_version("", true).is_ok());
    assert!(matches!(
        check_version("1.15.1", false),
        Err(Error::Unsupported(_))
    ));
}

#[test]
fn partial_names_append() {
    assert_eq!(
        partial(Path::new("/t/state")),
        Path::new("/t/state.partial")
    );
    assert_eq!(
        partial(Path::new("/t/mem.img")),
        Path::new("/t/mem.img.partial")
    );
    assert_eq!(parent_dir(Path::new("state")), Path::new("."));
    assert_eq!(parent_dir(Path::new("/t/state")), Path::new("/t"));
}

#[test]
fn commit_moves_both_into_place() {
    let dir = tempfile::tempdir().unwrap();
    let (state, memory) = (dir.path().join("state"), dir.path().join("memory"));
    std::fs::write(&state, "old state").unwrap();
    std::fs::write(&memory, "old memory").unwrap();
    std::fs::write(partial(&state), "new state").unwrap();
    std::fs::write(partial(&memory), "new memory").unwrap();
    commit(&state, &memory).unwrap();
    assert_eq!(std::fs::read_to_string(&state).unwrap(), "new state");
    assert_eq!(std::fs::read_to_string(&memory).unwrap(), "new memory");
    assert!(!partial(&state).exists() && !partial(&memory).exists());
    // Nothing to commit: an error, and the template in place stays.
    assert!(commit(&state, &memory).is_err());
    assert_eq!(std::fs::read_to_string(&state).unwrap(), "new state");
}
