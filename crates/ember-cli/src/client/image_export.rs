//! `ember images export`: images written as an OCI layout tar.

use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;

use anyhow::{anyhow, Context, Result};
use containerd_client::services::v1 as api;
use containerd_client::services::v1::images_client::ImagesClient;
use ember_images::Descriptor;

use super::images::{media_is_index, media_is_manifest, Ctx};
use super::{rpc, ClientOpts};

pub(super) async fn export(opts: &ClientOpts, out: PathBuf, names: Vec<String>) -> Result<()> {
    if out.as_os_str() == "-" && std::io::stdout().is_terminal() {
        anyhow::bail!("refusing to write a tar to a terminal: redirect stdout or name a file");
    }
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
    let w: Box<dyn Write> = if out.as_os_str() == "-" {
        Box::new(std::io::stdout().lock())
    } else {
        Box::new(
            std::fs::File::create(&out).with_context(|| format!("creating {}", out.display()))?,
        )
    };
    let mut b = tar::Builder::new(std::io::BufWriter::new(w));
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
