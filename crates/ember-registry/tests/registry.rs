//! The client against a real `docker-registry` on loopback: push and pull of a
//! busybox image between content stores, blobs skipped and mounted, resumed
//! downloads, platform selection from an index, basic auth, and errors for a
//! missing tag, a corrupt blob and a registry that is down.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use ember_images::{Descriptor, Platform};
use ember_registry::auth::{Anonymous, Static};
use ember_registry::progress::NoProgress;
use ember_registry::testing::{available, RegistryOptions, TestRegistry};
use ember_registry::{
    BlobWriter, ContentStore, Credentials, Error, HostsConfig, Progress, ProgressSink, PullOptions,
    Reference, Registry, Result,
};

/// A content store in memory: committed blobs with labels, and partial writes
/// that survive a dropped writer (as an on-disk ingest does).
type Blobs = Arc<Mutex<HashMap<String, (Vec<u8>, BTreeMap<String, String>)>>>;

#[derive(Default)]
struct MemStore {
    blobs: Blobs,
    partial: Arc<Mutex<HashMap<String, Vec<u8>>>>,
}

struct MemWriter {
    digest: String,
    size: i64,
    partial: Arc<Mutex<HashMap<String, Vec<u8>>>>,
    blobs: Blobs,
}

#[async_trait::async_trait]
impl BlobWriter for MemWriter {
    fn offset(&self) -> u64 {
        self.partial
            .lock()
            .unwrap()
            .get(&self.digest)
            .map_or(0, |v| v.len() as u64)
    }
    async fn write(&mut self, data: Bytes) -> Result<()> {
        self.partial
            .lock()
            .unwrap()
            .entry(self.digest.clone())
            .or_default()
            .extend_from_slice(&data);
        Ok(())
    }
    async fn reset(&mut self) -> Result<()> {
        self.partial.lock().unwrap().remove(&self.digest);
        Ok(())
    }
    async fn commit(self: Box<Self>, labels: BTreeMap<String, String>) -> Result<()> {
        let data = self
            .partial
            .lock()
            .unwrap()
            .remove(&self.digest)
            .unwrap_or_default();
        if data.len() as i64 != self.size || ember_images::sha256_digest(&data) != self.digest {
            return Err(Error::Invalid(format!(
                "{} failed verification",
                self.digest
            )));
        }
        self.blobs
            .lock()
            .unwrap()
            .insert(self.digest.clone(), (data, labels));
        Ok(())
    }
}

#[async_trait::async_trait]
impl ContentStore for MemStore {
    async fn exists(&self, digest: &str) -> Result<bool> {
        Ok(self.blobs.lock().unwrap().contains_key(digest))
    }
    async fn read(&self, digest: &str) -> Result<Vec<u8>> {
        self.blobs
            .lock()
            .unwrap()
            .get(digest)
            .map(|b| b.0.clone())
            .ok_or_else(|| Error::NotFound(digest.into()))
    }
    async fn reader(
        &self,
        digest: &str,
    ) -> Result<(Box<dyn tokio::io::AsyncRead + Send + Unpin>, i64)> {
        let data = self.read(digest).await?;
        let n = data.len() as i64;
        Ok((Box::new(std::io::Cursor::new(data)), n))
    }
    async fn writer(&self, desc: &Descriptor) -> Result<Option<Box<dyn BlobWriter>>> {
        if self.exists(&desc.digest).await? {
            return Ok(None);
        }
        Ok(Some(Box::new(MemWriter {
            digest: desc.digest.clone(),
            size: desc.size,
            partial: self.partial.clone(),
            blobs: self.blobs.clone(),
        })))
    }
    async fn labels(&self, digest: &str) -> Result<BTreeMap<String, String>> {
        Ok(self
            .blobs
            .lock()
            .unwrap()
            .get(digest)
            .map(|b| b.1.clone())
            .unwrap_or_default())
    }
    async fn add_labels(&self, digest: &str, labels: BTreeMap<String, String>) -> Result<()> {
        if let Some(b) = self.blobs.lock().unwrap().get_mut(digest) {
            b.1.extend(labels);
        }
        Ok(())
    }
}

impl MemStore {
    fn put(&self, data: Vec<u8>, labels: BTreeMap<String, String>) -> String {
        let d = ember_images::sha256_digest(&data);
        self.blobs.lock().unwrap().insert(d.clone(), (data, labels));
        d
    }
}

/// Progress events, kept.
#[derive(Default)]
struct Events(Mutex<Vec<Progress>>);

impl ProgressSink for Events {
    fn progress(&self, p: Progress) {
        self.0.lock().unwrap().push(p);
    }
}

impl Events {
    fn with(&self, event: &str) -> usize {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|p| p.event == event)
            .count()
    }
}

/// The busybox image in a store; returns its manifest descriptor.
fn busybox(dir: &std::path::Path, store: &MemStore) -> Descriptor {
    let tar = dir.join("busybox.tar");
    ember_guest::busybox_docker_archive(&tar, "docker.io/ember/busybox:latest").unwrap();
    let a = ember_images::Archive::open(&tar, None).unwrap();
    for b in &a.blobs {
        store.put(a.read(&b.digest).unwrap(), BTreeMap::new());
    }
    a.images[0].target.clone()
}

fn anonymous() -> Arc<Registry> {
    Registry::new(HostsConfig::default(), Arc::new(Anonymous))
}

/// A client with user `ember` and `secret`.
fn user(secret: &str) -> Arc<Registry> {
    Registry::new(
        HostsConfig::default(),
        Arc::new(Static(Credentials::Basic {
            username: "ember".into(),
            secret: secret.into(),
        })),
    )
}

/// `reg` asks for credentials: refused anonymously and with a wrong password;
/// with `password`, `ember/a:1` pulls and `push_to` takes a push.
async fn check_auth(
    reg: &TestRegistry,
    password: &str,
    local: &Arc<MemStore>,
    target: &Descriptor,
    push_to: &str,
) {
    let r = reference(&reg.host, "ember/a:1");
    for refused in [anonymous(), user("wrong")] {
        let e = refused
            .repository(&r, false)
            .unwrap()
            .resolve()
            .await
            .unwrap_err();
        assert!(matches!(e, Error::Auth(_)), "{e}");
    }
    let right = user(password);
    let repo = right.repository(&r, false).unwrap();
    let store = Arc::new(MemStore::default());
    let p = ember_registry::pull(&repo, store, &PullOptions::default(), &NoProgress)
        .await
        .unwrap();
    assert_eq!(p.target.digest, target.digest);
    let pushed = right
        .repository(&reference(&reg.host, push_to), true)
        .unwrap();
    ember_registry::push(&pushed, local.clone(), target, &NoProgress, 2)
        .await
        .unwrap();
}

fn reference(host: &str, repo: &str) -> Reference {
    Reference::parse(&format!("{host}/{repo}")).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_pull_mount_resume_platforms_auth_and_errors() {
    if !available() || !std::path::Path::new("/bin/busybox").exists() {
        eprintln!("skipping: docker-registry or busybox missing");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let reg = TestRegistry::start(&dir.path().join("reg"), &RegistryOptions::default()).unwrap();
    let local = Arc::new(MemStore::default());
    let target = busybox(dir.path(), &local);
    let client = anonymous();

    // Push, then pull into an empty store: same digests, blobs verified.
    let a = client
        .repository(&reference(&reg.host, "ember/a:1"), true)
        .unwrap();
    let ev = Events::default();
    ember_registry::push(&a, local.clone(), &target, &ev, 2)
        .await
        .unwrap();
    assert!(ev.with("complete") >= 3, "{:?}", ev.0.lock().unwrap());
    let fresh = Arc::new(MemStore::default());
    let a = client
        .repository(&reference(&reg.host, "ember/a:1"), false)
        .unwrap();
    let pulled = ember_registry::pull(&a, fresh.clone(), &PullOptions::default(), &NoProgress)
        .await
        .unwrap();
    assert_eq!(pulled.target.digest, target.digest);
    assert_eq!(pulled.name, format!("{}/ember/a:1", reg.host));
    let mut want: Vec<String> = local.blobs.lock().unwrap().keys().cloned().collect();
    let mut got: Vec<String> = fresh.blobs.lock().unwrap().keys().cloned().collect();
    want.sort();
    got.sort();
    assert_eq!(got, want);
    // The manifest keeps its children; blobs remember where they came from.
    let labels = fresh.labels(&target.digest).await.unwrap();
    assert!(
        labels.contains_key("containerd.io/gc.ref.content.config"),
        "{labels:?}"
    );
    assert!(
        labels.contains_key("containerd.io/gc.ref.content.l.0"),
        "{labels:?}"
    );
    let source = format!("containerd.io/distribution.source.{}", reg.host);
    assert_eq!(labels[&source], "ember/a");

    // Pushing again skips every blob; into another repository, blobs mount.
    let ev = Events::default();
    let a = client
        .repository(&reference(&reg.host, "ember/a:2"), true)
        .unwrap();
    ember_registry::push(&a, fresh.clone(), &target, &ev, 2)
        .await
        .unwrap();
    assert_eq!(ev.with("uploading"), 0);
    assert!(ev.with("already exists") >= 2);
    let ev = Events::default();
    let b = client
        .repository(&reference(&reg.host, "ember/b:1"), true)
        .unwrap();
    ember_registry::push(&b, fresh.clone(), &target, &ev, 2)
        .await
        .unwrap();
    assert!(ev.with("mounted") >= 2, "{:?}", ev.0.lock().unwrap());
    assert_eq!(ev.with("uploading"), 0);

    // An interrupted download resumes from where it stopped.
    let m = ember_images::parse_manifest(&local.read(&target.digest).await.unwrap()).unwrap();
    let layer = m.layers[0].clone();
    let data = local.read(&layer.digest).await.unwrap();
    let resumed = Arc::new(MemStore::default());
    resumed
        .partial
        .lock()
        .unwrap()
        .insert(layer.digest.clone(), data[..data.len() / 2].to_vec());
    let b = client
        .repository(&reference(&reg.host, "ember/b:1"), false)
        .unwrap();
    ember_registry::pull(&b, resumed.clone(), &PullOptions::default(), &NoProgress)
        .await
        .unwrap();
    assert_eq!(resumed.read(&layer.digest).await.unwrap(), data);
    // A corrupt partial write fails verification instead of being stored.
    let corrupt = Arc::new(MemStore::default());
    corrupt
        .partial
        .lock()
        .unwrap()
        .insert(layer.digest.clone(), vec![0u8; 16]);
    let e = ember_registry::pull(&b, corrupt.clone(), &PullOptions::default(), &NoProgress)
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Invalid(_)), "{e}");
    assert!(!corrupt.exists(&layer.digest).await.unwrap());

    // An index with two platforms: only the wanted one's layers come.
    let other = {
        let mut m2 = m.clone();
        let cfg =
            br#"{"architecture":"arm64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#
                .to_vec();
        m2.config.digest = local.put(cfg.clone(), BTreeMap::new());
        m2.config.size = cfg.len() as i64;
        let big = vec![7u8; 4096];
        let d = local.put(big.clone(), BTreeMap::new());
        m2.layers = vec![Descriptor {
            media_type: ember_images::MEDIA_TYPE_DOCKER_LAYER.into(),
            digest: d,
            size: big.len() as i64,
            ..Default::default()
        }];
        let bytes = serde_json::to_vec(&m2).unwrap();
        Descriptor {
            media_type: target.media_type.clone(),
            size: bytes.len() as i64,
            digest: local.put(bytes, BTreeMap::new()),
            platform: Some(Platform {
                architecture: "arm64".into(),
                os: "linux".into(),
                variant: "v8".into(),
            }),
            ..Default::default()
        }
    };
    let mut host_manifest = target.clone();
    host_manifest.platform = Some(Platform::host());
    let index = ember_images::Index {
        schema_version: 2,
        media_type: ember_images::MEDIA_TYPE_OCI_INDEX.into(),
        manifests: vec![other.clone(), host_manifest],
        annotations: Default::default(),
    };
    let bytes = serde_json::to_vec(&index).unwrap();
    let index_desc = Descriptor {
        media_type: ember_images::MEDIA_TYPE_OCI_INDEX.into(),
        size: bytes.len() as i64,
        digest: local.put(bytes, BTreeMap::new()),
        ..Default::default()
    };
    let c = client
        .repository(&reference(&reg.host, "ember/multi:1"), true)
        .unwrap();
    ember_registry::push(&c, local.clone(), &index_desc, &NoProgress, 3)
        .await
        .unwrap();
    let only_host = Arc::new(MemStore::default());
    let c = client
        .repository(&reference(&reg.host, "ember/multi:1"), false)
        .unwrap();
    let p = ember_registry::pull(&c, only_host.clone(), &PullOptions::default(), &NoProgress)
        .await
        .unwrap();
    assert_eq!(p.target.digest, index_desc.digest);
    assert_eq!(p.manifests.len(), 1);
    assert_eq!(p.manifests[0].digest, target.digest);
    assert!(!only_host.exists(&other.digest).await.unwrap());
    let all = Arc::new(MemStore::default());
    let opts = PullOptions {
        platforms: Vec::new(),
        ..Default::default()
    };
    let p = ember_registry::pull(&c, all.clone(), &opts, &NoProgress)
        .await
        .unwrap();
    assert_eq!(p.manifests.len(), 2);
    assert!(all.exists(&other.digest).await.unwrap());
    // By digest as well.
    let by_digest =
        Reference::parse(&format!("{}/ember/multi@{}", reg.host, index_desc.digest)).unwrap();
    let c = client.repository(&by_digest, false).unwrap();
    assert_eq!(c.resolve().await.unwrap().digest, index_desc.digest);

    // Errors: a missing tag, a registry that is down.
    let missing = client
        .repository(&reference(&reg.host, "ember/a:nope"), false)
        .unwrap();
    let e = missing.resolve().await.unwrap_err();
    assert!(matches!(e, Error::NotFound(_)), "{e}");
    let down = format!("127.0.0.1:{}", ember_registry::testing::free_port());
    let r = client.repository(&reference(&down, "x:1"), false).unwrap();
    let e = r.resolve().await.unwrap_err();
    assert!(matches!(e, Error::Unavailable(_)), "{e}");
    assert!(e.to_string().contains("refused"), "{e}");

    // Basic auth: refused without credentials and with wrong ones.
    let secured = TestRegistry::start(
        &dir.path().join("auth"),
        &RegistryOptions {
            storage: Some(reg.storage.clone()),
            basic_auth: Some(("ember".into(), "s3cret".into())),
            ..Default::default()
        },
    )
    .unwrap();
    check_auth(&secured, "s3cret", &local, &target, "ember/c:1").await;

    // TLS: an unknown issuer is refused; the host's CA file from hosts.toml, or
    // skip_verify, lets the pull through.
    let tls = TestRegistry::start(
        &dir.path().join("tls"),
        &RegistryOptions {
            storage: Some(reg.storage.clone()),
            tls: true,
            ..Default::default()
        },
    )
    .unwrap();
    let r = reference(&tls.host, "ember/a:1");
    let https = Registry::new(
        HostsConfig {
            default_scheme: "https".into(),
            ..Default::default()
        },
        Arc::new(Anonymous),
    );
    let e = https
        .repository(&r, false)
        .unwrap()
        .resolve()
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Unavailable(_)), "{e}");
    assert!(e.to_string().contains("certificate"), "{e}");
    let hosts = dir.path().join("certs.d");
    let host_dir = hosts.join(&tls.host);
    std::fs::create_dir_all(&host_dir).unwrap();
    let cert = tls.cert.clone().unwrap();
    for extra in [
        format!("ca = \"{}\"", cert.display()),
        "skip_verify = true".to_string(),
    ] {
        std::fs::write(
            host_dir.join("hosts.toml"),
            format!("server = \"https://{}\"\n{extra}\n", tls.host),
        )
        .unwrap();
        let configured = Registry::new(
            HostsConfig {
                dir: Some(hosts.clone()),
                ..Default::default()
            },
            Arc::new(Anonymous),
        );
        let store = Arc::new(MemStore::default());
        let repo = configured.repository(&r, false).unwrap();
        let p = ember_registry::pull(&repo, store, &PullOptions::default(), &NoProgress)
            .await
            .unwrap();
        assert_eq!(p.target.digest, target.digest, "{extra}");
    }

    // Docker token auth: the challenge's realm gives a bearer token for the
    // user's password; none without it.
    let tokens = TestRegistry::start(
        &dir.path().join("token"),
        &RegistryOptions {
            storage: Some(reg.storage.clone()),
            token_auth: Some(("ember".into(), "t0ken".into())),
            ..Default::default()
        },
    )
    .unwrap();
    check_auth(&tokens, "t0ken", &local, &target, "ember/t:1").await;
    let log = std::fs::read_to_string(tokens.dir.join("token.log")).unwrap();
    assert!(
        log.contains("GET /token?service=ember-test&scope=repository%3Aember%2Fa%3Apull "),
        "{log}"
    );
    assert!(
        log.contains("scope=repository%3Aember%2Ft%3Apull%2Cpush"),
        "{log}"
    );
}
