//! `ember pull` / `ember push`: images moved between a registry and the daemon's
//! image store by the daemon's Transfer service (`OCIRegistry` ↔ `ImageStore`),
//! as `ctr` 2.x does, so the registry work happens in the daemon and the verbs
//! work against emberd and containerd 1.7 alike.
//!
//! Two streams are opened first on the Streaming service: one the daemon sends
//! progress on, one it asks for credentials on (`AuthRequest`), answered from
//! `--user` or the credentials `ember login` stored.

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use containerd_client::services::v1 as api;
use containerd_client::services::v1::images_client::ImagesClient;
use containerd_client::services::v1::streaming_client::StreamingClient;
use containerd_client::services::v1::transfer_client::TransferClient;
use containerd_client::tonic::transport::Channel;
use containerd_client::tonic::Code;
use containerd_client::types::transfer as tt;
use containerd_client::types::Platform as WirePlatform;
use ember_registry::Reference;
use prost::{Message, Name};
use prost_types::Any;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::progress::{Mode, TransferView};
use super::{login, rpc, ClientOpts};

/// Options pull and push share.
#[derive(clap::Args, Debug, Clone)]
pub struct RegistryOpts {
    /// Speak plain HTTP to registries without host configuration.
    #[arg(long)]
    plain_http: bool,
    /// `USER[:PASSWORD]` for the registry (otherwise what `ember login` stored).
    #[arg(short = 'u', long = "user")]
    user: Option<String>,
    /// Print only the image's name and digest.
    #[arg(short, long)]
    quiet: bool,
}

#[derive(clap::Args, Debug)]
#[command(about = "Pull an image from a registry and unpack it")]
pub struct PullArgs {
    reference: String,
    #[command(flatten)]
    registry: RegistryOpts,
    /// Platform to pull (`os/arch[/variant]`); this host's by default.
    #[arg(long, conflicts_with = "all_platforms")]
    platform: Option<String>,
    /// Pull every platform of an index.
    #[arg(long)]
    all_platforms: bool,
    /// Snapshotter to unpack into; the daemon's default when omitted.
    #[arg(long, default_value = "")]
    snapshotter: String,
}

#[derive(clap::Args, Debug)]
#[command(about = "Push an image to a registry")]
pub struct PushArgs {
    /// Where to push (`registry/repository:tag`).
    reference: String,
    /// The local image to push; the reference's own name by default.
    local: Option<String>,
    #[command(flatten)]
    registry: RegistryOpts,
}

fn pack<M: Message + Name>(m: &M) -> Any {
    Any {
        type_url: M::full_name(),
        value: m.encode_to_vec(),
    }
}

fn unpack<M: Message + Name + Default>(a: &Any) -> Option<M> {
    (a.type_url.rsplit('/').next() == Some(M::full_name().as_str()))
        .then(|| M::decode(a.value.as_slice()).ok())
        .flatten()
}

/// `os/arch[/variant]`.
pub fn parse_platform(s: &str) -> Result<WirePlatform> {
    let parts: Vec<&str> = s.split('/').collect();
    if parts.len() < 2 || parts.len() > 3 || parts.iter().any(|p| p.is_empty()) {
        bail!("platform {s:?} is not os/arch[/variant]");
    }
    Ok(WirePlatform {
        os: parts[0].into(),
        architecture: parts[1].into(),
        variant: parts.get(2).map(|v| v.to_string()).unwrap_or_default(),
        os_version: String::new(),
    })
}

fn host_platform() -> WirePlatform {
    let p = ember_images::Platform::host();
    WirePlatform {
        os: p.os,
        architecture: p.architecture,
        variant: p.variant,
        os_version: String::new(),
    }
}

/// A stream registered with the daemon: what we send, what it sends.
struct OpenStream {
    id: String,
    tx: mpsc::Sender<Any>,
    rx: containerd_client::tonic::Streaming<Any>,
}

async fn open_stream(opts: &ClientOpts, channel: &Channel, what: &str) -> Result<OpenStream> {
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let id = format!("ember-{what}-{}-{}", std::process::id(), t.as_nanos());
    let (tx, rx) = mpsc::channel(16);
    tx.send(pack(&api::StreamInit { id: id.clone() }))
        .await
        .map_err(|_| anyhow!("opening the {what} stream"))?;
    let mut rx = StreamingClient::new(channel.clone())
        .stream(opts.req(ReceiverStream::new(rx)))
        .await
        .map_err(rpc)
        .with_context(|| format!("opening the {what} stream"))?
        .into_inner();
    // The daemon acknowledges the stream before anything else.
    rx.message()
        .await
        .map_err(rpc)
        .with_context(|| format!("opening the {what} stream"))?;
    Ok(OpenStream { id, tx, rx })
}

/// Credentials for `host`: `--user`, else what `ember login` stored.
fn credentials_for(user: &Option<(String, String)>, host: &str) -> tt::AuthResponse {
    let found = match user {
        Some(u) => Some(u.clone()),
        None => login::stored(host).unwrap_or_else(|e| {
            eprintln!("ember: {e:#}");
            None
        }),
    };
    match found {
        Some((username, secret)) => tt::AuthResponse {
            auth_type: tt::AuthType::Credentials as i32,
            username,
            secret,
            expire_at: None,
        },
        None => tt::AuthResponse::default(),
    }
}

/// Answers the daemon's credential questions until it closes the stream.
async fn answer_auth(mut s: OpenStream, user: Option<(String, String)>) {
    while let Ok(Some(m)) = s.rx.message().await {
        let Some(q) = unpack::<tt::AuthRequest>(&m) else {
            continue;
        };
        tracing::debug!(host = %q.host, reference = %q.reference, "credentials asked for");
        if s.tx
            .send(pack(&credentials_for(&user, &q.host)))
            .await
            .is_err()
        {
            break;
        }
    }
}

fn split_user(u: &str) -> Result<(String, String)> {
    match u.split_once(':') {
        Some((user, pass)) => Ok((user.to_string(), pass.to_string())),
        None => {
            let mut pass = String::new();
            std::io::stdin()
                .read_line(&mut pass)
                .context("reading the password from standard input")?;
            Ok((
                u.to_string(),
                pass.trim_end_matches(['\n', '\r']).to_string(),
            ))
        }
    }
}

/// Opens the streams, builds source and destination with the auth stream's id
/// (`ends`), and runs the transfer, showing its progress.
async fn run_transfer(
    opts: &ClientOpts,
    channel: &Channel,
    reg: &RegistryOpts,
    view: &mut TransferView,
    ends: impl FnOnce(String) -> (Any, Any),
) -> Result<()> {
    let user = reg.user.as_deref().map(split_user).transpose()?;
    // containerd acknowledges a stream before it registers it; the progress
    // stream, which a transfer takes first, is opened last (see below).
    let auth = open_stream(opts, channel, "auth").await?;
    let OpenStream {
        id: progress_id,
        tx: progress_tx,
        rx: mut progress_rx,
    } = open_stream(opts, channel, "progress").await?;
    let options = api::TransferOptions {
        progress_stream: progress_id,
    };
    let (source, destination) = ends(auth.id.clone());
    let auth_task = tokio::spawn(answer_auth(auth, user));
    let (etx, mut erx) = mpsc::unbounded_channel::<tt::Progress>();
    let reader = tokio::spawn(async move {
        while let Ok(Some(m)) = progress_rx.message().await {
            if let Some(p) = unpack::<tt::Progress>(&m) {
                let _ = etx.send(p);
            }
        }
    });
    let request = api::TransferRequest {
        source: Some(source),
        destination: Some(destination),
        options: Some(options),
    };
    let mut client = TransferClient::new(channel.clone());
    let mut tries = 0u64;
    let result = loop {
        let call = client.transfer(opts.req(request.clone()));
        tokio::pin!(call);
        let r = loop {
            tokio::select! {
                r = &mut call => break r,
                Some(p) = erx.recv() => view.event(&p),
            }
        };
        // A bare "not found" is containerd's answer for a stream it has
        // acknowledged but not registered yet: asked again shortly.
        match r {
            Err(s) if s.code() == Code::NotFound && s.message() == "not found" && tries < 5 => {
                tries += 1;
                tokio::time::sleep(std::time::Duration::from_millis(20 * tries)).await;
            }
            r => break r,
        }
    };
    // What the daemon sent before answering is shown before the result.
    drop(progress_tx);
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), reader).await;
    while let Ok(p) = erx.try_recv() {
        view.event(&p);
    }
    auth_task.abort();
    result.map(|_| ()).map_err(|s| {
        // A daemon without the service (containerd 1.6) answers for an unknown
        // service; other Unimplemented answers are the daemon's own.
        if s.code() == Code::Unimplemented
            && (s.message().is_empty() || s.message().contains("unknown service"))
        {
            anyhow!("the daemon has no Transfer service: {}", s.message())
        } else if s.code() == Code::Unauthenticated {
            anyhow!(
                "{}: log in with `ember login REGISTRY` (or pass --user USER[:PASSWORD])",
                s.message()
            )
        } else {
            rpc(s)
        }
    })
}

fn resolver(reg: &RegistryOpts, auth_stream: String) -> tt::RegistryResolver {
    tt::RegistryResolver {
        auth_stream,
        default_scheme: if reg.plain_http {
            "http".into()
        } else {
            String::new()
        },
        ..Default::default()
    }
}

fn parse_reference(r: &str) -> Result<Reference> {
    Reference::parse(r).map_err(|e| anyhow!("{e}"))
}

#[derive(Serialize)]
struct Done {
    event: &'static str,
    name: String,
    digest: String,
}

async fn report(
    opts: &ClientOpts,
    channel: &Channel,
    name: &str,
    view: &TransferView,
) -> Result<()> {
    let img = ImagesClient::new(channel.clone())
        .get(opts.req(api::GetImageRequest { name: name.into() }))
        .await
        .map_err(rpc)?
        .into_inner()
        .image
        .ok_or_else(|| anyhow!("{name}: not found"))?;
    let digest = img.target.map(|t| t.digest).unwrap_or_default();
    view.finish();
    if opts.json {
        let d = Done {
            event: "done",
            name: name.into(),
            digest,
        };
        println!("{}", serde_json::to_string(&d)?);
    } else {
        println!("{name} {digest}");
    }
    Ok(())
}

/// `ember run`'s pull of an image it did not find: the host's platform, progress as
/// `ember pull` shows it.
pub async fn pull_for_run(
    opts: &ClientOpts,
    reference: &str,
    snapshotter: &str,
    plain_http: bool,
) -> Result<()> {
    let a = PullArgs {
        reference: reference.to_string(),
        registry: RegistryOpts {
            plain_http,
            user: None,
            quiet: false,
        },
        platform: None,
        all_platforms: false,
        snapshotter: snapshotter.to_string(),
    };
    pull(opts, a).await.map(|_| ())
}

pub async fn pull(opts: &ClientOpts, a: PullArgs) -> Result<i32> {
    let r = parse_reference(&a.reference)?;
    let name = r.to_string();
    let platform = match &a.platform {
        Some(p) => parse_platform(p)?,
        None => host_platform(),
    };
    let channel = opts.channel().await?;
    let mut view = TransferView::new(Mode::pick(a.registry.quiet, opts.json));
    let store = tt::ImageStore {
        name: name.clone(),
        platforms: if a.all_platforms {
            Vec::new()
        } else {
            vec![platform.clone()]
        },
        unpacks: vec![tt::UnpackConfiguration {
            platform: Some(platform),
            snapshotter: a.snapshotter.clone(),
        }],
        ..Default::default()
    };
    run_transfer(opts, &channel, &a.registry, &mut view, |auth| {
        (
            pack(&tt::OciRegistry {
                reference: name.clone(),
                resolver: Some(resolver(&a.registry, auth)),
            }),
            pack(&store),
        )
    })
    .await
    .with_context(|| format!("pulling {name}"))?;
    report(opts, &channel, &name, &view).await?;
    Ok(0)
}

pub async fn push(opts: &ClientOpts, a: PushArgs) -> Result<i32> {
    let r = parse_reference(&a.reference)?;
    let remote = r.to_string();
    let local = match &a.local {
        Some(l) => parse_reference(l)?.to_string(),
        None => remote.clone(),
    };
    let channel = opts.channel().await?;
    let mut view = TransferView::new(Mode::pick(a.registry.quiet, opts.json));
    run_transfer(opts, &channel, &a.registry, &mut view, |auth| {
        (
            pack(&tt::ImageStore {
                name: local.clone(),
                ..Default::default()
            }),
            pack(&tt::OciRegistry {
                reference: remote.clone(),
                resolver: Some(resolver(&a.registry, auth)),
            }),
        )
    })
    .await
    .with_context(|| format!("pushing {local} to {remote}"))?;
    report(opts, &channel, &local, &view).await?;
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platforms() {
        let p = parse_platform("linux/arm64/v8").unwrap();
        assert_eq!((p.os.as_str(), p.architecture.as_str()), ("linux", "arm64"));
        assert_eq!(p.variant, "v8");
        assert!(parse_platform("linux").is_err());
        assert!(parse_platform("linux//x").is_err());
    }
}
