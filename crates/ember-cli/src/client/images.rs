//! `ember images`: import (docker-archive and OCI layout tars, with unpacking into
//! a snapshotter), export (OCI layout), list, tag, remove.
//!
//! Import works over containerd's API the way `ctr images import` does, so it
//! works against emberd and containerd alike: blobs go in through content
//! `Write` under a lease, the images are created (or retargeted), then each layer
//! is applied by the diff service onto a snapshot prepared on its parent and
//! committed under its chain id. Blobs are written several at a time.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use clap::Subcommand;
use containerd_client::services::v1 as api;
use containerd_client::services::v1::content_client::ContentClient;
use containerd_client::services::v1::diff_client::DiffClient;
use containerd_client::services::v1::images_client::ImagesClient;
use containerd_client::services::v1::leases_client::LeasesClient;
use containerd_client::services::v1::snapshots as snap;
use containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient;
use containerd_client::tonic::transport::Channel;
use containerd_client::tonic::{Code, Request};
use containerd_client::types::Descriptor as WireDescriptor;
use ember_images::{Archive, Descriptor, Platform};
use serde::Serialize;

use super::{human_size, labels_cell, output, rpc, ClientOpts};

#[derive(clap::Args, Debug)]
#[command(about = "Manage images")]
pub struct ImagesArgs {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Import a docker-archive or OCI layout tar and unpack its images.
    Import {
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
        out: PathBuf,
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// List images.
    #[command(alias = "list")]
    Ls {
        #[arg(short, long)]
        quiet: bool,
        filters: Vec<String>,
    },
    /// Give an image another name.
    Tag {
        source: String,
        target: String,
        /// Replace an existing image of that name.
        #[arg(long)]
        force: bool,
    },
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

fn wire_desc(d: &Descriptor) -> WireDescriptor {
    WireDescriptor {
        media_type: d.media_type.clone(),
        digest: d.digest.clone(),
        size: d.size,
        annotations: d.annotations.clone().into_iter().collect(),
    }
}

/// Requests in the namespace, under a lease.
#[derive(Clone)]
struct Ctx {
    opts: ClientOpts,
    lease: Option<String>,
    channel: Channel,
}

impl Ctx {
    fn req<T>(&self, msg: T) -> Request<T> {
        let mut r = self.opts.req(msg);
        if let Some(l) = &self.lease {
            if let Ok(v) = l.parse() {
                r.metadata_mut().insert("containerd-lease", v);
            }
        }
        r
    }

    async fn read_blob(&self, digest: &str) -> Result<Vec<u8>> {
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

    async fn label(&self, digest: &str, labels: HashMap<String, String>) -> Result<()> {
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

fn media_is_index(mt: &str) -> bool {
    mt == ember_images::MEDIA_TYPE_OCI_INDEX || mt == ember_images::MEDIA_TYPE_DOCKER_LIST
}

fn media_is_manifest(mt: &str) -> bool {
    mt == ember_images::MEDIA_TYPE_OCI_MANIFEST || mt == ember_images::MEDIA_TYPE_DOCKER_MANIFEST
}

/// The manifest of `target` for this host's platform.
async fn platform_manifest(ctx: &Ctx, target: &Descriptor) -> Result<ember_images::Manifest> {
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
        return Ok(ember_images::parse_manifest(&bytes)?);
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
    let manifest = platform_manifest(&ctx, target).await?;
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

async fn unpack(
    ctx: &Ctx,
    target: &Descriptor,
    snapshotter: &str,
    bar: &indicatif::ProgressBar,
) -> Result<()> {
    let manifest = platform_manifest(ctx, target).await?;
    let config = ember_images::parse_config(&ctx.read_blob(&manifest.config.digest).await?)?;
    let diff_ids = &config.rootfs.diff_ids;
    if diff_ids.len() != manifest.layers.len() {
        bail!(
            "the config lists {} layers, the manifest {}",
            diff_ids.len(),
            manifest.layers.len()
        );
    }
    let chain = ember_images::chain_ids(diff_ids);
    let mut sn = SnapshotsClient::new(ctx.channel.clone());
    let mut diff = DiffClient::new(ctx.channel.clone());
    for (i, layer) in manifest.layers.iter().enumerate() {
        let chain_id = &chain[i];
        let exists = sn
            .stat(ctx.req(snap::StatSnapshotRequest {
                snapshotter: snapshotter.into(),
                key: chain_id.clone(),
            }))
            .await
            .is_ok();
        if exists {
            continue;
        }
        bar.set_message(format!("unpacking {}", layer.digest));
        let key = format!("extract-{} {chain_id}", uuid_like());
        let parent = if i == 0 {
            String::new()
        } else {
            chain[i - 1].clone()
        };
        let labels: HashMap<String, String> =
            [("containerd.io/snapshot.ref".to_string(), chain_id.clone())].into();
        let mounts = sn
            .prepare(ctx.req(snap::PrepareSnapshotRequest {
                snapshotter: snapshotter.into(),
                key: key.clone(),
                parent,
                labels: labels.clone(),
            }))
            .await
            .map_err(rpc)?
            .into_inner()
            .mounts;
        let applied = diff
            .apply(ctx.req(api::ApplyRequest {
                diff: Some(wire_desc(layer)),
                mounts,
                ..Default::default()
            }))
            .await;
        let result = match applied {
            Ok(r) => {
                let got = r.into_inner().applied.map(|d| d.digest).unwrap_or_default();
                if got != diff_ids[i] {
                    Err(anyhow!(
                        "layer {} has diff id {got}, the config says {}",
                        layer.digest,
                        diff_ids[i]
                    ))
                } else {
                    sn.commit(ctx.req(snap::CommitSnapshotRequest {
                        snapshotter: snapshotter.into(),
                        name: chain_id.clone(),
                        key: key.clone(),
                        labels,
                    }))
                    .await
                    .map(|_| ())
                    .or_else(|s| {
                        if s.code() == Code::AlreadyExists {
                            Ok(())
                        } else {
                            Err(rpc(s))
                        }
                    })
                }
            }
            Err(s) => Err(anyhow!("applying layer {}: {}", layer.digest, s.message())),
        };
        if let Err(e) = result {
            let _ = sn
                .remove(ctx.req(snap::RemoveSnapshotRequest {
                    snapshotter: snapshotter.into(),
                    key,
                }))
                .await;
            return Err(e);
        }
        ctx.label(
            &layer.digest,
            [(
                "containerd.io/uncompressed".to_string(),
                diff_ids[i].clone(),
            )]
            .into(),
        )
        .await?;
    }
    if let Some(top) = chain.last() {
        ctx.label(
            &manifest.config.digest,
            [(
                format!("containerd.io/gc.ref.snapshot.{snapshotter}"),
                top.clone(),
            )]
            .into(),
        )
        .await?;
    }
    Ok(())
}

fn uuid_like() -> String {
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
    let f = file.clone();
    let archive = Arc::new(
        tokio::task::spawn_blocking(move || Archive::open(&f, base_name.as_deref()))
            .await?
            .with_context(|| format!("reading {}", file.display()))?,
    );
    if archive.images.is_empty() {
        bail!("{} names no image", file.display());
    }
    let total: u64 = archive.blobs.iter().map(|b| b.size.max(0) as u64).sum();
    let bar = if quiet {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(total)
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {bytes_per_sec} {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
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
                unpack(ctx, &img.target, &snapshotter, &bar)
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

#[derive(Serialize)]
struct ImageRow {
    name: String,
    media_type: String,
    digest: String,
    size: i64,
    labels: std::collections::BTreeMap<String, String>,
}

async fn export(opts: &ClientOpts, out: PathBuf, names: Vec<String>) -> Result<()> {
    let channel = opts.channel().await?;
    let ctx = Ctx {
        opts: opts.clone(),
        lease: None,
        channel: channel.clone(),
    };
    let mut images = ImagesClient::new(channel);
    let tmp = tempfile::tempdir()?;
    let mut blobs: Vec<(String, PathBuf)> = Vec::new();
    let mut index = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for name in names {
        let img = images
            .get(opts.req(api::GetImageRequest { name: name.clone() }))
            .await
            .map_err(rpc)?
            .into_inner()
            .image
            .ok_or_else(|| anyhow!("image {name} has no record"))?;
        let t = img.target.unwrap_or_default();
        let mut target = Descriptor {
            media_type: t.media_type,
            digest: t.digest,
            size: t.size,
            annotations: t.annotations.into_iter().collect(),
            platform: None,
        };
        let mut todo = vec![target.clone()];
        while let Some(d) = todo.pop() {
            if !seen.insert(d.digest.clone()) {
                continue;
            }
            let bytes = ctx.read_blob(&d.digest).await?;
            if media_is_index(&d.media_type) {
                todo.extend(ember_images::parse_index(&bytes)?.manifests);
            } else if media_is_manifest(&d.media_type) {
                let m = ember_images::parse_manifest(&bytes)?;
                todo.push(m.config);
                todo.extend(m.layers);
            }
            let p = tmp.path().join(d.digest.replace(':', "-"));
            std::fs::write(&p, &bytes)?;
            blobs.push((d.digest.clone(), p));
        }
        target
            .annotations
            .insert(ember_images::ANNOTATION_IMAGE_NAME.into(), name.clone());
        if let Some(tag) = name
            .rsplit_once(':')
            .map(|(_, t)| t)
            .filter(|t| !t.contains('/'))
        {
            target
                .annotations
                .insert(ember_images::ANNOTATION_REF_NAME.into(), tag.into());
        }
        index.push(target);
    }
    let idx = ember_images::Index {
        schema_version: 2,
        media_type: ember_images::MEDIA_TYPE_OCI_INDEX.into(),
        manifests: index,
        annotations: Default::default(),
    };
    let f = std::fs::File::create(&out).with_context(|| format!("creating {}", out.display()))?;
    let mut b = tar::Builder::new(std::io::BufWriter::new(f));
    let mut add = |name: &str, data: &mut dyn Read, size: u64| -> Result<()> {
        let mut h = tar::Header::new_ustar();
        h.set_size(size);
        h.set_mode(0o444);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, name, data)?;
        Ok(())
    };
    let layout = br#"{"imageLayoutVersion":"1.0.0"}"#;
    add("oci-layout", &mut &layout[..], layout.len() as u64)?;
    for (digest, path) in &blobs {
        let (alg, hex) = digest.split_once(':').unwrap_or(("sha256", digest));
        let mut f = std::fs::File::open(path)?;
        let size = f.metadata()?.len();
        add(&format!("blobs/{alg}/{hex}"), &mut f, size)?;
    }
    let idx = serde_json::to_vec(&idx)?;
    add("index.json", &mut &idx[..], idx.len() as u64)?;
    b.into_inner()?.flush()?;
    Ok(())
}

pub async fn run(opts: &ClientOpts, a: ImagesArgs) -> Result<i32> {
    match a.cmd {
        Cmd::Import {
            file,
            base_name,
            snapshotter,
            no_unpack,
            quiet,
        } => import(opts, file, base_name, snapshotter, no_unpack, quiet).await?,
        Cmd::Export { out, names } => export(opts, out, names).await?,
        Cmd::Ls { quiet, filters } => {
            let mut c = ImagesClient::new(opts.channel().await?);
            let list = c
                .list(opts.req(api::ListImagesRequest { filters }))
                .await
                .map_err(rpc)?
                .into_inner()
                .images;
            let rows: Vec<ImageRow> = list
                .into_iter()
                .map(|i| {
                    let t = i.target.unwrap_or_default();
                    ImageRow {
                        name: i.name,
                        media_type: t.media_type,
                        digest: t.digest,
                        size: t.size,
                        labels: i.labels.into_iter().collect(),
                    }
                })
                .collect();
            if quiet && !opts.json {
                for r in &rows {
                    println!("{}", r.name);
                }
                return Ok(0);
            }
            output(
                opts,
                &rows,
                &["REF", "TYPE", "DIGEST", "SIZE", "LABELS"],
                |r| {
                    vec![
                        r.name.clone(),
                        r.media_type.clone(),
                        r.digest.clone(),
                        human_size(r.size),
                        labels_cell(&r.labels),
                    ]
                },
            )?;
        }
        Cmd::Tag {
            source,
            target,
            force,
        } => {
            let mut c = ImagesClient::new(opts.channel().await?);
            let mut img = c
                .get(opts.req(api::GetImageRequest { name: source }))
                .await
                .map_err(rpc)?
                .into_inner()
                .image
                .ok_or_else(|| anyhow!("no image record"))?;
            img.name = target.clone();
            let created = c
                .create(opts.req(api::CreateImageRequest {
                    image: Some(img.clone()),
                    ..Default::default()
                }))
                .await;
            match created {
                Ok(_) => {}
                Err(s) if s.code() == Code::AlreadyExists && force => {
                    c.update(opts.req(api::UpdateImageRequest {
                        image: Some(img),
                        ..Default::default()
                    }))
                    .await
                    .map_err(rpc)?;
                }
                Err(s) => return Err(rpc(s)),
            }
            println!("{target}");
        }
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
                        eprintln!("ember: {name}: {}", e.message());
                        failed += 1;
                    }
                }
            }
            return Ok(i32::from(failed > 0));
        }
    }
    Ok(0)
}
