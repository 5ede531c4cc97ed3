//! Writing OCI image layout tars (`oci-layout`, `blobs/<alg>/<hex>`,
//! `index.json`), with docker's `manifest.json` alongside when asked, so the
//! archive imports into docker as well.

use std::io::{Read, Write};

use crate::oci::{Descriptor, Index};
use crate::{Error, Result, ANNOTATION_IMAGE_NAME, ANNOTATION_REF_NAME, MEDIA_TYPE_OCI_INDEX};

/// A layout tar being written: blobs first, then [`LayoutWriter::finish`].
pub struct LayoutWriter<W: Write> {
    tar: tar::Builder<W>,
}

fn add(tar: &mut tar::Builder<impl Write>, name: &str, size: u64, data: impl Read) -> Result<()> {
    let mut h = tar::Header::new_ustar();
    h.set_size(size);
    h.set_mode(0o444);
    h.set_entry_type(tar::EntryType::Regular);
    tar.append_data(&mut h, name, data)
        .map_err(|e| Error::io(format!("writing {name}"), e))
}

/// The index entry naming `target` as `name` (`io.containerd.image.name`, and the
/// tag as `org.opencontainers.image.ref.name`).
pub fn named(target: &Descriptor, name: &str) -> Descriptor {
    let mut d = target.clone();
    d.annotations
        .insert(ANNOTATION_IMAGE_NAME.into(), name.to_string());
    let last = name.rsplit('/').next().unwrap_or_default();
    if let Some((_, tag)) = last.split_once(':') {
        let tag = tag.split('@').next().unwrap_or_default();
        d.annotations.insert(ANNOTATION_REF_NAME.into(), tag.into());
    }
    d
}

impl<W: Write> LayoutWriter<W> {
    pub fn new(out: W) -> Result<Self> {
        let mut tar = tar::Builder::new(out);
        let layout = br#"{"imageLayoutVersion":"1.0.0"}"#;
        add(&mut tar, "oci-layout", layout.len() as u64, &layout[..])?;
        Ok(LayoutWriter { tar })
    }

    /// Adds a blob of `size` bytes.
    pub fn blob(&mut self, digest: &str, size: u64, data: impl Read) -> Result<()> {
        let (alg, hex) = digest
            .split_once(':')
            .ok_or_else(|| Error::Invalid(format!("digest {digest:?}")))?;
        add(&mut self.tar, &format!("blobs/{alg}/{hex}"), size, data)
    }

    /// Writes `index.json` listing `manifests`, and `manifest.json` when given
    /// (docker-archive entries: config path, repo tags, layer paths).
    pub fn finish(
        mut self,
        manifests: Vec<Descriptor>,
        docker: Option<serde_json::Value>,
    ) -> Result<W> {
        let idx = Index {
            schema_version: 2,
            media_type: MEDIA_TYPE_OCI_INDEX.into(),
            manifests,
            annotations: Default::default(),
        };
        let bytes = serde_json::to_vec(&idx).expect("indexes serialise");
        add(&mut self.tar, "index.json", bytes.len() as u64, &bytes[..])?;
        if let Some(d) = docker {
            let bytes = serde_json::to_vec(&d).expect("json values serialise");
            add(
                &mut self.tar,
                "manifest.json",
                bytes.len() as u64,
                &bytes[..],
            )?;
        }
        self.tar
            .into_inner()
            .map_err(|e| Error::io("finishing the archive", e))
    }
}

/// The path of a blob inside a layout.
pub fn blob_path(digest: &str) -> String {
    format!("blobs/{}", digest.replacen(':', "/", 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_a_layout_the_reader_opens() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.tar");
        let data = b"hello";
        let digest = crate::sha256_digest(data);
        let target = Descriptor {
            media_type: crate::MEDIA_TYPE_OCI_MANIFEST.into(),
            digest: digest.clone(),
            size: data.len() as i64,
            ..Default::default()
        };
        let mut w = LayoutWriter::new(std::fs::File::create(&p).unwrap()).unwrap();
        w.blob(&digest, data.len() as u64, &data[..]).unwrap();
        w.finish(vec![named(&target, "docker.io/library/x:1")], None)
            .unwrap();
        let a = crate::Archive::open(&p, None).unwrap();
        assert_eq!(a.images.len(), 1);
        assert_eq!(a.images[0].name, "docker.io/library/x:1");
        assert_eq!(a.images[0].target.digest, digest);
        assert_eq!(a.read(&digest).unwrap(), data);
        assert_eq!(blob_path(&digest), format!("blobs/sha256/{}", &digest[7..]));
    }
}
