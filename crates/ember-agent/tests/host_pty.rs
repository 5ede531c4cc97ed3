//! Ptys of a host agent (see `common`): terminal processes, window sizes, ^D.

#![deny(clippy::undocumented_unsafe_blocks)]

#[macro_use]
mod common;

use std::time::Duration;

use common::*;
use ember_agent_api::*;
use ember_ttrpc::Code;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pty_resize() {
    require_root!();
    let h = Harness::start("pty").await;
    let stdio = StdioConfig {
        terminal: true,
        stdin: true,
    };
    h.create(
        "tty",
        &[
            "sh",
            "-c",
            "stty size; read x; stty size; tty; ls -l /dev/console",
        ],
        stdio.clone(),
    )
    .await;
    h.client.resize_pty("tty", "", 100, 40).await.unwrap();
    let out = tokio::spawn(read_all(
        h.client.clone(),
        "tty".into(),
        "".into(),
        OutputStream::Stdout,
    ));
    h.client.start_process("tty", "").await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    h.client.resize_pty("tty", "", 132, 50).await.unwrap();
    h.client
        .write_stdin("tty", "", b"go\n".to_vec())
        .await
        .unwrap();
    assert_eq!(
        h.client.wait_process("tty", "").await.unwrap().exit_status,
        0
    );
    let out = String::from_utf8_lossy(&out.await.unwrap()).into_owned();
    assert!(out.contains("40 100"), "{out:?}");
    assert!(out.contains("50 132"), "{out:?}");
    // The terminal lives in the container's devpts: ttyname() works there.
    assert!(out.contains("/dev/pts/"), "{out:?}");
    // stderr of a terminal process is empty and ended.
    let r = h
        .client
        .read_output("tty", "", OutputStream::Stderr, 10)
        .await
        .unwrap();
    assert!(r.eof && r.data.is_empty());
    let e = h.client.resize_pty("tty", "x", 1, 1).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    h.client.remove_container("tty").await.unwrap();

    // Without a devpts in the container the agent's own pty serves (fallback).
    let mut sp = spec(&["sh", "-c", "stty size"], true);
    sp["mounts"]
        .as_array_mut()
        .unwrap()
        .retain(|m| m["type"] != "devpts");
    sp["process"]["consoleSize"] = json!({"height": 33, "width": 77});
    h.try_create("nopts", sp, stdio.clone()).await.unwrap();
    let out = tokio::spawn(read_all(
        h.client.clone(),
        "nopts".into(),
        "".into(),
        OutputStream::Stdout,
    ));
    h.client.start_process("nopts", "").await.unwrap();
    assert_eq!(
        h.client
            .wait_process("nopts", "")
            .await
            .unwrap()
            .exit_status,
        0
    );
    let out = String::from_utf8_lossy(&out.await.unwrap()).into_owned();
    assert!(out.contains("33 77"), "{out:?}");
    h.client.remove_container("nopts").await.unwrap();

    // An exec with a terminal.
    h.create("host", &["sleep", "1000"], StdioConfig::default())
        .await;
    h.client.start_process("host", "").await.unwrap();
    h.client
        .create_process(&CreateProcessRequest {
            container_id: "host".into(),
            exec_id: "t".into(),
            process_json: process_json(&["sh", "-c", "stty size; tty"], true),
            stdio: Some(stdio),
        })
        .await
        .unwrap();
    h.client.resize_pty("host", "t", 81, 21).await.unwrap();
    let out = tokio::spawn(read_all(
        h.client.clone(),
        "host".into(),
        "t".into(),
        OutputStream::Stdout,
    ));
    h.client.start_process("host", "t").await.unwrap();
    assert_eq!(
        h.client
            .wait_process("host", "t")
            .await
            .unwrap()
            .exit_status,
        0
    );
    let out = String::from_utf8_lossy(&out.await.unwrap()).into_owned();
    assert!(out.contains("21 81"), "{out:?}");
    assert!(out.contains("/dev/pts/"), "{out:?}");
    h.client.remove_container("host").await.unwrap();
}
