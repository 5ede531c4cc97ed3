//! Content written again while the namespace still holds it (an image removed and
//! imported again before collection ran): the commit answers `AlreadyExists` and the
//! client's lease keeps the blob. Compared with a private containerd.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use common::tasks::{import_busybox, IMAGE};
use common::*;
use containerd_client::services::v1 as api;
use containerd_client::services::v1::content_client::ContentClient;
use containerd_client::services::v1::leases_client::LeasesClient;
use containerd_client::services::v1::WriteAction;
use containerd_client::tonic::transport::Channel;
use containerd_client::tonic::{Code, Request};
use sha2::Digest as _;

const NS: &str = "rewrite";
const BLOBS: usize = 12;

fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(data)))
}

fn leased<T>(lease: &str, msg: T) -> Request<T> {
    let mut r = req(NS, msg);
    r.metadata_mut()
        .insert("containerd-lease", lease.parse().unwrap());
    r
}

/// Writes `data` under `lease` the two ways containerd's clients do: announced (the
/// digest and size come with the first message, as a pull's writer negotiates) or
/// not (the digest is known only once all is written, as when compressing on the
/// way); returns the status code of the write.
async fn write_blob(
    ch: &Channel,
    lease: &str,
    reference: &str,
    data: &[u8],
    announce: bool,
) -> Code {
    let msg = |action: WriteAction| api::WriteContentRequest {
        action: action as i32,
        r#ref: reference.into(),
        ..Default::default()
    };
    let (total, digest) = (data.len() as i64, sha256(data));
    let stat = if announce {
        api::WriteContentRequest {
            total,
            expected: digest.clone(),
            ..msg(WriteAction::Stat)
        }
    } else {
        msg(WriteAction::Stat)
    };
    let write = api::WriteContentRequest {
        data: data.to_vec(),
        ..msg(WriteAction::Write)
    };
    let commit = api::WriteContentRequest {
        total,
        offset: total,
        expected: if announce { digest } else { String::new() },
        ..msg(WriteAction::Commit)
    };
    let stream = futures::stream::iter(vec![stat, write, commit]);
    let mut client = ContentClient::new(ch.clone());
    let run = async {
        let mut responses = client.write(leased(lease, stream)).await?.into_inner();
        while responses.message().await?.is_some() {}
        Ok::<_, containerd_client::tonic::Status>(())
    };
    match run.await {
        Ok(()) => Code::Ok,
        Err(s) => s.code(),
    }
}

/// Writes blobs under lease `first`, again under lease `second`, removes `first`
/// with a synchronous collection; returns the codes of the second writes and how
/// many blobs the daemon lost.
async fn rewrite_and_collect(ch: Channel) -> (Vec<Code>, usize) {
    let mut leases = LeasesClient::new(ch.clone());
    for id in ["first", "second"] {
        leases
            .create(req(
                NS,
                api::CreateRequest {
                    id: id.into(),
                    labels: HashMap::new(),
                },
            ))
            .await
            .unwrap();
    }
    let blobs: Vec<Vec<u8>> = (0..BLOBS)
        .map(|i| format!("layer {i} of an image").into_bytes())
        .collect();
    for (i, b) in blobs.iter().enumerate() {
        let code = write_blob(&ch, "first", &format!("a{i}"), b, false).await;
        assert_eq!(code, Code::Ok);
    }
    let mut codes = vec![];
    for (i, b) in blobs.iter().enumerate() {
        codes.push(write_blob(&ch, "second", &format!("b{i}"), b, i % 2 == 0).await);
    }
    leases
        .delete(req(
            NS,
            api::DeleteRequest {
                id: "first".into(),
                sync: true,
            },
        ))
        .await
        .unwrap();
    let mut lost = 0;
    let mut content = ContentClient::new(ch);
    for b in &blobs {
        let info = content
            .info(req(NS, api::InfoRequest { digest: sha256(b) }))
            .await;
        if info.is_err() {
            lost += 1;
        }
    }
    (codes, lost)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_written_again_stays_in_the_new_lease() {
    if !can_run() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = Emberd::start(dir.path());
    let (codes, lost) = rewrite_and_collect(d.channel().await).await;
    assert_eq!(codes, vec![Code::AlreadyExists; BLOBS]);
    assert_eq!(lost, 0, "emberd lost {lost} of {BLOBS} blobs");
    if let Some(c) = Containerd::start() {
        let ch = containerd_client::connect(&c.socket).await.unwrap();
        assert_eq!(
            rewrite_and_collect(ch).await,
            (codes, lost),
            "containerd differs"
        );
    }
}

/// Imports, removes and imports the image again `rounds` times; returns the
/// failures and the content left in the end.
fn reimport(socket: &Path, work: &Path, rounds: usize) -> (Vec<String>, String) {
    let mut failures = vec![];
    import_busybox(socket, NS, work);
    for round in 0..rounds {
        ctr(socket, NS, &["images", "rm", IMAGE]).expect_ok();
        let archive = work.join("busybox.tar");
        let out = ctr(socket, NS, &["images", "import", archive.to_str().unwrap()]);
        if !out.ok {
            failures.push(format!("round {round}: {}", out.stderr.trim()));
        }
        // Let a collection started by the removal finish.
        std::thread::sleep(Duration::from_millis(300));
        let check = ctr(socket, NS, &["images", "check"]);
        if !check.stdout.contains("complete") {
            failures.push(format!("round {round}: {}", check.stdout.trim()));
        }
    }
    let content = ctr(socket, NS, &["content", "ls", "-q"]).stdout;
    (failures, content)
}

#[test]
fn images_removed_and_imported_again_keep_their_content() {
    if !can_run() || !Path::new("/bin/busybox").exists() {
        return;
    }
    const ROUNDS: usize = 6;
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("emberd");
    std::fs::create_dir_all(&root).unwrap();
    let d = Emberd::start(&root);
    let (failures, content) = reimport(&d.socket, work.path(), ROUNDS);
    assert!(failures.is_empty(), "emberd: {failures:#?}");
    if let Some(c) = Containerd::start() {
        let (cf, cc) = reimport(&c.socket, work.path(), ROUNDS);
        assert!(cf.is_empty(), "containerd: {cf:#?}");
        assert_eq!(content, cc, "different content after the rounds");
    }
}
