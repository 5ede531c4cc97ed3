//! emberd stops at SIGTERM even while a client holds a connection it no longer
//! serves (a process that stopped reading never answers the server's goodbye).

mod common;

use std::time::{Duration, Instant};

use common::{can_run, Emberd};

#[test]
fn sigterm_stops_emberd_despite_a_client_that_never_answers() {
    if !can_run() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut d = Emberd::start(dir.path());
    // The client's connection lives on a runtime that is never driven again.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let channel = rt.block_on(async {
        let ch = d.channel().await;
        let mut v = containerd_client::services::v1::version_client::VersionClient::new(ch.clone());
        v.version(()).await.unwrap();
        ch
    });
    let t = Instant::now();
    d.stop();
    let took = t.elapsed();
    assert!(
        took < Duration::from_secs(15),
        "emberd took {took:?} to stop"
    );
    drop(channel);
    drop(rt);
}
