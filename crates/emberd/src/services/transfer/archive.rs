//! Archives over streams: `ImageImportStream` → `ImageStore` (the client streams
//! a docker-archive or OCI layout tar; it is kept in a file, indexed and read by
//! `ember-images`, its blobs stored, its images named and unpacked) and
//! `ImageStore` → `ImageExportStream` (an OCI layout tar, with docker's
//! `manifest.json`, written by `ember-images` and streamed to the client).

use std::collections::HashSet;
use std::io::Write;

use containerd_client::types::transfer::{ImageExportStream, ImageImportStream, ImageStore};
use ember_images::layout::{blob_path, named, LayoutWriter};
use ember_images::{Archive, Descriptor, Platform};
use ember_metadata::content::ContentStore;
use ember_registry::store::child_labels;
use ember_registry::{is_index, is_manifest};
use tonic::Status;

use super::{data, images, invalid, platforms_in, Job};
use crate::services::status;

/// Writes the archive's blobs that the namespace lacks (blocking).
fn store_blobs(a: &Archive, cs: &ContentStore, ns: &str, lease: &str) -> Result<(), Status> {
    for b in &a.blobs {
        let reference = format!("import-{}", b.digest);
        let mut w = match cs.writer(ns, &reference, b.size, &b.digest, Some(lease)) {
            Ok(w) => w,
            Err(ember_metadata::Error::AlreadyExists(_)) => continue,
            Err(e) => return Err(status(e)),
        };
        w.truncate(0).map_err(status)?;
        let mut r = a.reader(&b.digest).map_err(invalid)?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = std::io::Read::read(&mut r, &mut buf)
                .map_err(|e| Status::unknown(format!("reading the archive: {e}")))?;
            if n == 0 {
                break;
            }
            w.write(&buf[..n]).map_err(status)?;
        }
        match w.commit(b.size, &b.digest, Default::default()) {
            Ok(_) | Err(ember_metadata::Error::AlreadyExists(_)) => {}
            Err(e) => return Err(status(e)),
        }
    }
    Ok(())
}

/// Labels each manifest and index reachable from `target` with its children.
fn link(a: &Archive, cs: &ContentStore, ns: &str, target: &Descriptor) -> Result<(), Status> {
    let mut todo = vec![target.clone()];
    let mut seen = HashSet::new();
    while let Some(d) = todo.pop() {
        if !seen.insert(d.digest.clone()) {
            continue;
        }
        let bytes = a.read(&d.digest).map_err(invalid)?;
        let children = if is_index(&d.media_type) {
            let i = ember_images::parse_index(&bytes).map_err(invalid)?;
            todo.extend(i.manifests.iter().cloned());
            i.manifests
        } else if is_manifest(&d.media_type) {
            let m = ember_images::parse_manifest(&bytes).map_err(invalid)?;
            let mut c = vec![m.config];
            c.extend(m.layers);
            c
        } else {
            continue;
        };
        let labels = child_labels(&d.media_type, &children);
        let paths: Vec<String> = labels.keys().map(|k| format!("labels.{k}")).collect();
        let info = ember_metadata::ContentInfo {
            digest: d.digest.clone(),
            size: 0,
            labels,
            created_at: std::time::UNIX_EPOCH,
            updated_at: std::time::UNIX_EPOCH,
        };
        cs.update(ns, &info, &paths).map_err(status)?;
    }
    Ok(())
}

/// `ImageImportStream` → `ImageStore`.
pub async fn import(job: &Job<'_>, src: ImageImportStream, is: ImageStore) -> Result<(), Status> {
    let mut stream = job.inner.streams.take(&job.ns, &src.stream)?;
    job.status("Importing".into());
    std::fs::create_dir_all(&job.inner.work)
        .map_err(|e| Status::unknown(format!("creating {}: {e}", job.inner.work.display())))?;
    let file = tempfile::NamedTempFile::new_in(&job.inner.work)
        .map_err(|e| Status::unknown(format!("creating a file for the archive: {e}")))?;
    let mut out = tokio::fs::File::from_std(
        file.reopen()
            .map_err(|e| Status::unknown(format!("opening the archive file: {e}")))?,
    );
    data::receive(&mut stream, &mut out).await?;
    drop(out);
    drop(stream);
    // OCI layout images that only carry a tag are named under the prefix.
    let prefix = is
        .extra_references
        .iter()
        .find(|r| r.is_prefix)
        .map(|r| r.name.clone());
    let path = file.path().to_path_buf();
    let (cs, ns, lease) = (
        job.inner.md.content.clone(),
        job.ns.clone(),
        job.lease.clone(),
    );
    let archive = tokio::task::spawn_blocking(move || -> Result<Archive, Status> {
        let a = Archive::open(&path, prefix.as_deref()).map_err(invalid)?;
        store_blobs(&a, &cs, &ns, &lease)?;
        for img in &a.images {
            link(&a, &cs, &ns, &img.target)?;
        }
        Ok(a)
    })
    .await
    .map_err(|e| Status::internal(format!("import task: {e}")))??;
    drop(file);
    let unpacker = job.unpacker();
    let mut unpacked = HashSet::new();
    for u in &is.unpacks {
        let platform = u
            .platform
            .as_ref()
            .filter(|p| !p.os.is_empty())
            .map(|p| platforms_in(std::slice::from_ref(p)).remove(0))
            .unwrap_or_else(Platform::host);
        for img in &archive.images {
            let Some(m) = unpacker.manifest_for(&img.target, &platform).await? else {
                continue;
            };
            if unpacked.insert((m.digest.clone(), u.snapshotter.clone())) {
                unpacker.unpack(&m, &u.snapshotter).await?;
            }
        }
    }
    let digests = is
        .extra_references
        .iter()
        .filter(|r| r.is_prefix && r.add_digest);
    let digest_refs: Vec<String> = digests.map(|r| r.name.clone()).collect();
    for img in &archive.images {
        let mut names = vec![img.name.clone()];
        for p in &digest_refs {
            names.push(format!("{p}@{}", img.target.digest));
        }
        images::store(job, &is, names, &img.target).await?;
    }
    job.status("Completed import".into());
    Ok(())
}

/// A `Write` handing chunks to the stream sender.
struct ChunkWriter {
    tx: tokio::sync::mpsc::Sender<std::io::Result<Vec<u8>>>,
    buf: Vec<u8>,
}

impl Write for ChunkWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(b);
        if self.buf.len() >= 256 << 10 {
            self.flush()?;
        }
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::take(&mut self.buf);
        self.tx
            .blocking_send(Ok(chunk))
            .map_err(|_| std::io::Error::other("the client stopped reading the archive"))
    }
}

/// What goes into an export: blobs in order, index entries, docker entries.
struct Plan {
    blobs: Vec<Descriptor>,
    entries: Vec<Descriptor>,
    docker: Vec<serde_json::Value>,
}

fn read_blob(cs: &ContentStore, ns: &str, digest: &str) -> Result<Vec<u8>, Status> {
    let (mut f, _) = cs.open_blob(ns, digest).map_err(status)?;
    let mut v = Vec::new();
    std::io::Read::read_to_end(&mut f, &mut v)
        .map_err(|e| Status::unknown(format!("reading {digest}: {e}")))?;
    Ok(v)
}

fn familiar(name: &str) -> String {
    name.strip_prefix("docker.io/library/")
        .or_else(|| name.strip_prefix("docker.io/"))
        .unwrap_or(name)
        .to_string()
}

/// Collects what is exported of `images` (blocking).
fn plan(
    cs: &ContentStore,
    ns: &str,
    images: &[(String, Descriptor)],
    platforms: &[Platform],
) -> Result<Plan, Status> {
    let mut p = Plan {
        blobs: Vec::new(),
        entries: Vec::new(),
        docker: Vec::new(),
    };
    let mut seen = HashSet::new();
    let want = |d: &Descriptor| match &d.platform {
        Some(pl) => platforms.is_empty() || platforms.iter().any(|w| pl.matches(w)),
        None => true,
    };
    for (name, target) in images {
        let mut manifests = Vec::new();
        if is_index(&target.media_type) {
            let i =
                ember_images::parse_index(&read_blob(cs, ns, &target.digest)?).map_err(invalid)?;
            for m in i
                .manifests
                .into_iter()
                .filter(|m| is_manifest(&m.media_type) && want(m))
            {
                if cs.info(ns, &m.digest).is_ok() {
                    manifests.push(m);
                }
            }
        } else {
            manifests.push(target.clone());
        }
        for m in &manifests {
            let bytes = read_blob(cs, ns, &m.digest)?;
            let mf = ember_images::parse_manifest(&bytes).map_err(invalid)?;
            let mut children = vec![mf.config.clone()];
            children.extend(mf.layers.iter().cloned());
            for c in children.into_iter().chain([m.clone()]) {
                if seen.insert(c.digest.clone()) {
                    p.blobs.push(c);
                }
            }
            if manifests.len() == 1
                || m.platform
                    .as_ref()
                    .is_some_and(|pl| pl.matches(&Platform::host()))
            {
                p.docker.push(serde_json::json!({
                    "Config": blob_path(&mf.config.digest),
                    "RepoTags": [familiar(name)],
                    "Layers": mf.layers.iter().map(|l| blob_path(&l.digest)).collect::<Vec<_>>(),
                }));
            }
        }
        if seen.insert(target.digest.clone()) {
            p.blobs.push(target.clone());
        }
        p.entries.push(named(target, name));
    }
    Ok(p)
}

/// `ImageStore` → `ImageExportStream`.
pub async fn export(job: &Job<'_>, is: ImageStore, dst: ImageExportStream) -> Result<(), Status> {
    let mut names = Vec::new();
    if !is.name.is_empty() {
        names.push(is.name.clone());
    }
    for r in &is.extra_references {
        if r.is_prefix {
            return Err(Status::unimplemented(
                "prefix lookup on export not implemented: not implemented",
            ));
        }
        names.push(r.name.clone());
    }
    let mut imgs = Vec::new();
    for n in names {
        let i = images::get(job, &n).await?;
        imgs.push((n, images::target_in(&i.target)));
    }
    let mut stream = job.inner.streams.take(&job.ns, &dst.stream)?;
    job.status("Exporting".into());
    let platforms = if dst.all_platforms {
        Vec::new()
    } else if dst.platforms.is_empty() {
        vec![Platform::host()]
    } else {
        platforms_in(&dst.platforms)
    };
    let (cs, ns) = (job.inner.md.content.clone(), job.ns.clone());
    let skip_docker = dst.skip_compatibility_manifest;
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let writer = tokio::task::spawn_blocking(move || -> Result<(), Status> {
        let plan = plan(&cs, &ns, &imgs, &platforms)?;
        let out = ChunkWriter {
            tx,
            buf: Vec::new(),
        };
        let mut w = LayoutWriter::new(out).map_err(|e| Status::unknown(e.to_string()))?;
        for b in &plan.blobs {
            let (f, size) = cs.open_blob(&ns, &b.digest).map_err(status)?;
            w.blob(&b.digest, size as u64, std::io::BufReader::new(f))
                .map_err(|e| Status::unknown(e.to_string()))?;
        }
        let docker = (!skip_docker && !plan.docker.is_empty())
            .then_some(serde_json::Value::Array(plan.docker));
        let mut out = w
            .finish(plan.entries, docker)
            .map_err(|e| Status::unknown(e.to_string()))?;
        out.flush()
            .map_err(|e| Status::unknown(format!("sending the archive: {e}")))
    });
    let sent = data::send(&mut stream, rx).await;
    let written = writer
        .await
        .map_err(|e| Status::internal(format!("export task: {e}")))?;
    written?;
    sent?;
    drop(stream);
    job.status("Completed export".into());
    Ok(())
}
