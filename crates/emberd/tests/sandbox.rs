//! containerd 1.7's sandbox store on emberd, compared call for call with
//! containerd 1.7 (Debian trixie's, unpacked aside; 1.6 has no sandbox API); the
//! sandbox controller's honest `UNIMPLEMENTED`; introspection's `PluginInfo`.

mod common;

use std::collections::HashMap;

use common::{can_run, req, Containerd, Emberd};
use containerd_client::services::v1::introspection_client::IntrospectionClient;
use containerd_client::services::v1::sandbox::controller_client::ControllerClient;
use containerd_client::services::v1::sandbox::store_client::StoreClient;
use containerd_client::services::v1::sandbox::*;
use containerd_client::services::v1::PluginInfoRequest;
use containerd_client::tonic::transport::Channel;
use containerd_client::tonic::{Code, Request};
use containerd_client::types::{sandbox::Runtime, Sandbox};

const CONTAINERD_17: &str = "/opt/ember/trixie/usr/bin/containerd";
const RUNC: &str = "io.containerd.runc.v2";

fn sandbox(id: &str, runtime: &str, labels: &[(&str, &str)]) -> Sandbox {
    Sandbox {
        sandbox_id: id.into(),
        runtime: Some(Runtime {
            name: runtime.into(),
            options: None,
        }),
        spec: Some(prost_types::Any {
            type_url: "types.containerd.io/opencontainers/runtime-spec/1/Spec".into(),
            value: b"{}".to_vec(),
        }),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        extensions: HashMap::from([(
            "ext".to_string(),
            prost_types::Any {
                type_url: "ember/test".into(),
                value: vec![1, 2, 3],
            },
        )]),
        ..Default::default()
    }
}

/// A sandbox as compared: what the store keeps, less its times.
fn shown(s: &Sandbox) -> String {
    let mut labels: Vec<_> = s.labels.iter().collect();
    labels.sort();
    format!(
        "{} runtime={} spec={} labels={labels:?} ext={} times={}",
        s.sandbox_id,
        s.runtime.as_ref().map(|r| r.name.as_str()).unwrap_or(""),
        s.spec.as_ref().map(|a| a.value.len()).unwrap_or(0),
        s.extensions.len(),
        s.created_at.is_some() && s.updated_at.is_some()
    )
}

fn outcome<T>(
    r: Result<T, containerd_client::tonic::Status>,
    show: impl Fn(T) -> String,
) -> String {
    match r {
        Ok(v) => format!("ok {}", show(v)),
        Err(e) => format!("{:?}", e.code()),
    }
}

/// The same calls against one daemon; their outcomes in order.
async fn session(channel: Channel) -> Vec<String> {
    let mut store = StoreClient::new(channel);
    let mut out = Vec::new();
    let create = |s: Sandbox| req("sb", StoreCreateRequest { sandbox: Some(s) });
    macro_rules! call {
        ($e:expr, $show:expr) => {
            out.push(outcome($e.await.map(|r| r.into_inner()), $show))
        };
    }
    let sb = |r: StoreCreateResponse| shown(&r.sandbox.unwrap());
    call!(store.create(create(sandbox("s1", RUNC, &[("a", "1")]))), sb);
    call!(store.create(create(sandbox("s2", RUNC, &[("a", "2")]))), sb);
    call!(store.create(create(sandbox("s1", RUNC, &[]))), sb);
    call!(store.create(create(sandbox("bad id", RUNC, &[]))), sb);
    call!(store.create(create(sandbox("s3", "", &[]))), sb);
    call!(
        store.create(Request::new(StoreCreateRequest {
            sandbox: Some(sandbox("s4", RUNC, &[]))
        })),
        sb
    );
    let get = |id: &str| {
        req(
            "sb",
            StoreGetRequest {
                sandbox_id: id.into(),
            },
        )
    };
    let got = |r: StoreGetResponse| shown(&r.sandbox.unwrap());
    call!(store.get(get("s1")), got);
    call!(store.get(get("nope")), got);
    // Namespaced.
    call!(
        store.get(req(
            "other",
            StoreGetRequest {
                sandbox_id: "s1".into()
            }
        )),
        got
    );

    let update = |s: Sandbox, fields: &[&str]| {
        req(
            "sb",
            StoreUpdateRequest {
                sandbox: Some(s),
                fields: fields.iter().map(|f| f.to_string()).collect(),
            },
        )
    };
    let up = |r: StoreUpdateResponse| shown(&r.sandbox.unwrap());
    call!(
        store.update(update(sandbox("s1", RUNC, &[("b", "2")]), &["labels.b"])),
        up
    );
    call!(
        store.update(update(sandbox("s2", RUNC, &[("c", "3")]), &[])),
        up
    );
    call!(
        store.update(update(sandbox("s2", "other.runtime", &[]), &[])),
        up
    );
    call!(
        store.update(update(sandbox("s2", RUNC, &[]), &["sandbox_id"])),
        up
    );
    call!(store.update(update(sandbox("nope", RUNC, &[]), &[])), up);

    let list = |filters: &[&str]| {
        req(
            "sb",
            StoreListRequest {
                filters: filters.iter().map(|f| f.to_string()).collect(),
            },
        )
    };
    let ids = |r: StoreListResponse| {
        let mut v: Vec<String> = r.list.iter().map(shown).collect();
        v.sort();
        v.join("; ")
    };
    call!(store.list(list(&[])), ids);
    call!(store.list(list(&["labels.b==2"])), ids);
    call!(store.list(list(&["labels.c"])), ids);
    call!(store.list(list(&[&format!("runtime.name=={RUNC}")])), ids);
    call!(store.list(list(&["id~=|^s[12]$|", "labels.a==1"])), ids);
    call!(store.list(list(&["id==s1,labels.a==2"])), ids);
    call!(store.list(list(&["labels.b=="])), ids);

    let delete = |id: &str| {
        req(
            "sb",
            StoreDeleteRequest {
                sandbox_id: id.into(),
            },
        )
    };
    call!(store.delete(delete("s1")), |_| String::new());
    call!(store.get(get("s1")), got);
    call!(store.list(list(&[])), ids);
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn sandbox_store_behaves_as_containerd_17s() {
    if !can_run() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let emberd = Emberd::start(dir.path());
    let channel = emberd.channel().await;
    let on_ember = session(channel.clone()).await;
    for o in &on_ember {
        eprintln!("emberd: {o}");
    }
    assert!(
        on_ember[0].starts_with("ok s1 runtime=io.containerd.runc.v2 spec=2"),
        "{on_ember:?}"
    );
    assert_eq!(on_ember[2], "AlreadyExists");
    assert_eq!(on_ember[3], "InvalidArgument");
    assert_eq!(on_ember[7], "NotFound");

    // The controller says plainly that emberd runs no sandboxes.
    let mut controller = ControllerClient::new(channel.clone());
    let e = controller
        .status(req(
            "sb",
            ControllerStatusRequest {
                sandbox_id: "s2".into(),
                verbose: false,
                sandboxer: String::new(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unimplemented);
    assert!(e.message().contains("no sandboxer"), "{}", e.message());

    // Introspection's PluginInfo (containerd 2.x).
    let mut intro = IntrospectionClient::new(channel);
    let p = intro
        .plugin_info(Request::new(PluginInfoRequest {
            r#type: "io.containerd.grpc.v1".into(),
            id: "sandboxes".into(),
            options: None,
        }))
        .await
        .unwrap()
        .into_inner()
        .plugin
        .unwrap();
    assert_eq!(
        (p.r#type.as_str(), p.id.as_str()),
        ("io.containerd.grpc.v1", "sandboxes")
    );
    assert!(p.init_err.is_none());
    let e = intro
        .plugin_info(Request::new(PluginInfoRequest {
            r#type: "io.containerd.grpc.v1".into(),
            id: "nope".into(),
            options: None,
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);

    let Some(containerd) = Containerd::start_with(CONTAINERD_17, &[]) else {
        return;
    };
    let channel = containerd_client::connect(&containerd.socket)
        .await
        .unwrap();
    let on_containerd = session(channel).await;
    assert_eq!(on_ember, on_containerd);
}
