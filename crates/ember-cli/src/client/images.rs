//! `ember images`: import (docker-archive and OCI layout tars, with unpacking into
//! a snapshotter), export (OCI layout), list, tag, remove.
//!
//! Import works over containerd's API the way `ctr images import` does, so it
//! works against emberd and containerd alike: blobs go in through content
//! `Write` under a lease, the images are created (or retargeted), then each layer
//! is applied by the diff service onto a snapshot prepared on its parent and
//! committed under its chain id. Blobs are written several at a time.

use std::collections::HashMap;
use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use clap::Subcommand;
use containerd_client::services::v1 as api;
use containerd_client::services::v1::content_client::ContentClient;
use containerd_client::services::v1::images_client::ImagesClient;
use containerd_client::services::v1::leases_client::LeasesClient;
use containerd_client::tonic::transport::Channel;
use containerd_client::tonic::{Code, Request};
use containerd_client::types::Descriptor as WireDescriptor;
use ember_images::{Archive, Descriptor, Platform};

use super::{rpc, ClientOpts};

#[derive(clap::Args, Debug)]
#[command(about = "Manage images (lists them without a subcommand)")]
pub struct ImagesArgs {
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Import a docker-archive or OCI layout tar and unpack its images.
    Import {
        /// The tar (`-`: stdin).
        file: PathBuf,
        /// Name for OCI layout images that only carry a tag (`BASE:TAG`).
        #[arg(long)]
        base_name: Option<String>,
        /// Snapshotter to unpack into.
        #[arg(long, default_value = "overlayfs")]
        snapshotter: String,
        /// Only store the blobs and images.
        #[arg(long)]
        no_unpack: bool,
        /// No progress bar.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Export images as an OCI layout tar.
    Export {
        /// The tar to write (`-`: stdout).
        out: PathBuf,
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// List images.
    #[command(alias = "list")]
    Ls {
        #[arg(short, long)]
        quiet: bool,
        /// Image names (`busybox`: every tag of it) or containerd filters
        /// (`name==REF`, `labels.KEY==V`, `target.digest~=^sha256:ab`).
        filters: Vec<String>,
    },
    /// Give an image another name.
    Tag(super::image_tag::TagArgs),
    /// Remove images.
    #[command(alias = "remove")]
    Rm {
        #[arg(required = true)]
        names: Vec<String>,
        /// Wait for garbage collection to free what they held.
        #[arg(long)]
        sync: bool,
    },
}

pub(super) fn wire_desc(d: &Descriptor) -> WireDescriptor {
    WireDescriptor {
        media_type: d.media_type.clone(),
        digest: d.digest.clone(),
        size: d.size,
        annotations: d.annotations.clone().into_iter().collect(),
    }
}

/// Requests in the namespace, under a lease.
#[derive(Clone)]
pub(super) struct Ctx {
    pub(super) opts: ClientOpts,
    pub(super) lease: Option<String>,
    pub(super) channel: Channel,
}

impl Ctx {
    pub(super) fn req<T>(&self, msg: T) -> Request<T> {
        let mut r = self.opts.req(msg);
        if let Some(l) = &self.lease {
            if let Ok(v) = l.parse() {
                r.metadata_mut().insert("containerd-lease", v);
            }
        }
        r
    }

    pub(super) async fn read_blob(&self, digest: &str) -> Result<Vec<u8>> {
        let mut c = ContentClient::new(self.channel.clone());
        let mut s = c
            .read(self.req(api::ReadContentRequest {
                digest: digest.to_string(),
                offset: 0,
                size: 0,
            }))
            .await
            .map_err(rpc)?
            .into_inner();
        let mut out = Vec::new();
        while let Some(m) = s.message().await.map_err(rpc)? {
            out.extend_from_slice(&m.data);
        }
        Ok(out)
    }

    pub(super) async fn label(&self, digest: &str, labels: HashMap<String, String>) -> Result<()> {
        let paths = labels.keys().map(|k| format!("labels.{k}")).collect();
        ContentClient::new(self.channel.clone())
            .update(self.req(api::UpdateRequest {
                info: Some(api::Info {
                    digest: digest.to_string(),
                    labels,
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask { paths }),
            }))
            .await
            .map_err(rpc)?;
        Ok(())
    }

    /// Writes one blob from the archive; `false` when it was there already.
    async fn write_blob(
        &self,
        archive: Arc<Archive>,
        d: Descriptor,
        progress: indicatif::ProgressBar,
    ) -> Result<bool> {
        let (tx, rx) = tokio::sync::mpsc::channel::<api::WriteContentRequest>(4);
        let reference = format!("import-{}", d.digest);
        let first = api::WriteContentRequest {
            action: api::WriteAction::Stat as i32,
            r#ref: reference.clone(),
            total: d.size,
            expected: d.digest.clone(),
            ..Default::default()
        };
        tx.send(first).await.ok();
        let mut c = ContentClient::new(self.channel.clone());
        let mut responses = match c
            .write(self.req(tokio_stream::wrappers::ReceiverStream::new(rx)))
            .await
        {
            Ok(r) => r.into_inner(),
            Err(s) if s.code() == Code::AlreadyExists => {
                progress.inc(d.size as u64);
                return Ok(false);
            }
            Err(s) => return Err(rpc(s)),
        };
        match responses.message().await {
            Ok(_) => {}
            Err(s) if s.code() == Code::AlreadyExists => {
                progress.inc(d.size as u64);
                return Ok(false);
            }
            Err(s) => return Err(rpc(s)),
        }
        let digest = d.digest.clone();
        let reader = tokio::task::spawn_blocking(move || archive.reader(&digest)).await??;
        let size = d.size;
        let (ctx_tx, mut ctx_rx) = tokio::sync::mpsc::channel::<std::io::Result<Vec<u8>>>(4);
        tokio::task::spawn_blocking(move || {
            let mut r = reader;
            loop {
                let mut buf = vec![0u8; 1 << 20];
                let mut n = 0;
                while n < buf.len() {
                    match r.read(&mut buf[n..]) {
                        Ok(0) => break,
                        Ok(k) => n += k,
                        Err(e) => {
                            let _ = ctx_tx.blocking_send(Err(e));
                            return;
                        }
                    }
                }
                buf.truncate(n);
                let done = n == 0;
                if ctx_tx.blocking_send(Ok(buf)).is_err() || done {
                    return;
                }
            }
        });
        let mut offset = 0i64;
        while let Some(chunk) = ctx_rx.recv().await {
            let chunk = chunk.context("reading the archive")?;
            if chunk.is_empty() {
                break;
            }
            let n = chunk.len() as i64;
            tx.send(api::WriteContentRequest {
                action: api::WriteAction::Write as i32,
                r#ref: reference.clone(),
                offset,
                data: chunk,
                ..Default::default()
            })
            .await
            .map_err(|_| anyhow!("the daemon closed the write of {}", d.digest))?;
            responses.message().await.map_err(rpc)?;
            offset += n;
            progress.inc(n as u64);
        }
        tx.send(api::WriteContentRequest {
            action: api::WriteAction::Commit as i32,
            r#ref: reference,
            offset,
            total: size,
            expected: d.digest.clone(),
            ..Default::default()
        })
        .await
        .map_err(|_| anyhow!("the daemon closed the write of {}", d.digest))?;
        match responses.message().await {
            Ok(_) => Ok(true),
            Err(s) if s.code() == Code::AlreadyExists => Ok(false),
            Err(s) => Err(rpc(s)),
        }
    }
}

pub(super) fn media_is_index(mt: &str) -> bool {
    mt == ember_images::MEDIA_TYPE_OCI_INDEX || mt == ember_images::MEDIA_TYPE_DOCKER_LIST
}

pub(super) fn media_is_manifest(mt: &str) -> bool {
    mt == ember_images::MEDIA_TYPE_OCI_MANIFEST || mt == ember_images::MEDIA_TYPE_DOCKER_MANIFEST
}

/// The manifest of `target` for this host's platform, with its descriptor.
pub(super) async fn platform_manifest(
    ctx: &Ctx,
    target: &Descriptor,
) -> Result<(Descriptor, ember_images::Manifest)> {
    let mut d = target.clone();
    for _ in 0..8 {
        let bytes = ctx.read_blob(&d.digest).await?;
        if media_is_index(&d.media_type) {
            let idx = ember_images::parse_index(&bytes)?;
            let host = Platform::host();
            let mut chosen = None;
            for m in idx.manifests {
                match &m.platform {
                    Some(p) if p.matches(&host) => {
                        chosen = Some(m);
                        break;
                    }
                    None if chosen.is_none() => chosen = Some(m),
                    _ => {}
                }
            }
            d = chosen
                .ok_or_else(|| anyhow!("no manifest for {}/{}", host.os, host.architecture))?;
            continue;
        }
        return Ok((d, ember_images::parse_manifest(&bytes)?));
    }
    bail!("indexes nested too deep")
}

/// The config blob and layer chain ids of image `target`, for this host's platform.
pub(crate) async fn config_and_chain(
    opts: &ClientOpts,
    channel: Channel,
    target: &Descriptor,
) -> Result<(Vec<u8>, Vec<String>)> {
    let ctx = Ctx {
        opts: opts.clone(),
        lease: None,
        channel,
    };
    let (_, manifest) = platform_manifest(&ctx, target).await?;
    let bytes = ctx.read_blob(&manifest.config.digest).await?;
    let config = ember_images::parse_config(&bytes)?;
    Ok((bytes, ember_images::chain_ids(&config.rootfs.diff_ids)))
}

/// Labels linking a manifest or index to its children, as containerd sets them.
fn child_labels(d: &Descriptor, bytes: &[u8]) -> HashMap<String, String> {
    let mut l = HashMap::new();
    if media_is_index(&d.media_type) {
        if let Ok(i) = ember_images::parse_index(bytes) {
            for (n, m) in i.manifests.iter().enumerate() {
                l.insert(
                    format!("containerd.io/gc.ref.content.m.{n}"),
                    m.digest.clone(),
                );
            }
        }
    } else if let Ok(m) = ember_images::parse_manifest(bytes) {
        l.insert(
            "containerd.io/gc.ref.content.config".into(),
            m.config.digest.clone(),
        );
        for (n, x) in m.layers.iter().enumerate() {
            l.insert(
                format!("containerd.io/gc.ref.content.l.{n}"),
                x.digest.clone(),
            );
        }
    }
    l
}

pub(super) fn uuid_like() -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format!("{}-{}", t.as_nanos(), std::process::id())
}

async fn import(
    opts: &ClientOpts,
    file: PathBuf,
    base_name: Option<String>,
    snapshotter: String,
    no_unpack: bool,
    quiet: bool,
) -> Result<()> {
    let channel = opts.channel().await?;
    let lease_id = format!("ember-import-{}", uuid_like());
    LeasesClient::new(channel.clone())
        .create(opts.req(api::CreateRequest {
            id: lease_id.clone(),
            labels: Default::default(),
        }))
        .await
        .map_err(rpc)?;
    let ctx = Ctx {
        opts: opts.clone(),
        lease: Some(lease_id.clone()),
        channel: channel.clone(),
    };
    let result = import_leased(&ctx, file, base_name, snapshotter, no_unpack, quiet).await;
    let _ = LeasesClient::new(channel)
        .delete(opts.req(api::DeleteRequest {
            id: lease_id,
            sync: false,
        }))
        .await;
    result
}

async fn import_leased(
    ctx: &Ctx,
    file: PathBuf,
    base_name: Option<String>,
    snapshotter: String,
    no_unpack: bool,
    quiet: bool,
) -> Result<()> {
    let from_stdin = file.as_os_str() == "-";
    let shown = if from_stdin {
        "stdin".to_string()
    } else {
        file.display().to_string()
    };
    // Blobs are read by offset: stdin is kept in a file for the import's length.
    let (archive, _spool) = tokio::task::spawn_blocking(move || -> Result<_> {
        if from_stdin {
            let mut tmp =
                tempfile::NamedTempFile::new().context("creating a file to hold stdin")?;
            std::io::copy(&mut std::io::stdin().lock(), &mut tmp)?;
            let a = Archive::open(tmp.path(), base_name.as_deref())?;
            return Ok((a, Some(tmp)));
        }
        Ok((Archive::open(&file, base_name.as_deref())?, None))
    })
    .await?
    .with_context(|| format!("reading {shown}"))?;
    let archive = Arc::new(archive);
    if archive.images.is_empty() {
        bail!("{shown} names no image");
    }
    let total: u64 = archive.blobs.iter().map(|b| b.size.max(0) as u64).sum();
    let bar = super::progress::bytes_bar(total, quiet);
    bar.set_message("writing blobs");
    // Several blobs at a time.
    let sem = Arc::new(tokio::sync::Semaphore::new(4));
    let mut tasks = Vec::new();
    for d in archive.blobs.clone() {
        let (ctx, archive, bar, sem) = (ctx.clone(), archive.clone(), bar.clone(), sem.clone());
        tasks.push(tokio::spawn(async move {
            let _p = sem.acquire().await;
            ctx.write_blob(archive, d, bar).await
        }));
    }
    for t in tasks {
        t.await??;
    }
    // Link manifests and indexes to their children.
    for img in &archive.images {
        let mut todo = vec![img.target.clone()];
        while let Some(d) = todo.pop() {
            if !(media_is_index(&d.media_type) || media_is_manifest(&d.media_type)) {
                continue;
            }
            let bytes = ctx.read_blob(&d.digest).await?;
            let labels = child_labels(&d, &bytes);
            if media_is_index(&d.media_type) {
                if let Ok(i) = ember_images::parse_index(&bytes) {
                    todo.extend(i.manifests);
                }
            }
            ctx.label(&d.digest, labels).await?;
        }
    }
    let mut images = ImagesClient::new(ctx.channel.clone());
    for img in &archive.images {
        let image = api::Image {
            name: img.name.clone(),
            target: Some(wire_desc(&img.target)),
            ..Default::default()
        };
        let updated = images
            .update(ctx.req(api::UpdateImageRequest {
                image: Some(image.clone()),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["target".into()],
                }),
                ..Default::default()
            }))
            .await;
        match updated {
            Ok(_) => {}
            Err(s) if s.code() == Code::NotFound => {
                images
                    .create(ctx.req(api::CreateImageRequest {
                        image: Some(image),
                        ..Default::default()
                    }))
                    .await
                    .map_err(rpc)?;
            }
            Err(s) => return Err(rpc(s)),
        }
    }
    if !no_unpack {
        let mut done = std::collections::HashSet::new();
        for img in &archive.images {
            if done.insert(img.target.digest.clone()) {
                super::image_unpack::unpack(ctx, &img.target, &snapshotter, &bar)
                    .await
                    .with_context(|| format!("unpacking {}", img.name))?;
            }
        }
    }
    bar.finish_and_clear();
    for img in &archive.images {
        println!("{} {}", img.name, img.target.digest);
    }
    Ok(())
}

pub async fn run(opts: &ClientOpts, a: ImagesArgs) -> Result<i32> {
    let cmd = a.cmd.unwrap_or(Cmd::Ls {
        quiet: false,
        filters: Vec::new(),
    });
    match cmd {
        Cmd::Import {
            file,
            base_name,
            snapshotter,
            no_unpack,
            quiet,
        } => import(opts, file, base_name, snapshotter, no_unpack, quiet).await?,
        Cmd::Export { out, names } => super::image_export::export(opts, out, names).await?,
        Cmd::Ls { quiet, filters } => super::image_list::list(opts, quiet, filters).await?,
        Cmd::Tag(a) => return super::image_tag::tag(opts, a).await,
        Cmd::Rm { names, sync } => {
            let mut c = ImagesClient::new(opts.channel().await?);
            let mut failed = 0;
            let n = names.len();
            for (i, name) in names.into_iter().enumerate() {
                match c
                    .delete(opts.req(api::DeleteImageRequest {
                        name: name.clone(),
                        sync: sync && i + 1 == n,
                        target: None,
                    }))
                    .await
                {
                    Ok(_) => println!("{name}"),
                    Err(e) => {
                        if e.message().contains(&name) {
                            eprintln!("ember: {}", e.message());
                        } else {
                            eprintln!("ember: {name}: {}", e.message());
                        }
                        failed += 1;
                    }
                }
            }
            return Ok(i32::from(failed > 0));
        }
    }
    Ok(0)
}
