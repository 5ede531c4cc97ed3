//! Image archives: docker-archive tars (`manifest.json` with `RepoTags`, a config
//! file and layer tars per image) and OCI image layout tars (`oci-layout`,
//! `index.json`, `blobs/<algorithm>/<hex>`).
//!
//! The archive is indexed once (names, offsets); blobs are then read straight
//! from their place in the file, so layers are never copied out. A docker-archive
//! image gets a docker schema 2 manifest made for it, as containerd does on import.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use ember_diff::{Compression, HashReader};

use crate::oci::{parse_docker_manifest, parse_index, Descriptor, Manifest};
use crate::reference::normalize;
use crate::{
    sha256_digest, Error, Result, ANNOTATION_IMAGE_NAME, ANNOTATION_REF_NAME,
    MEDIA_TYPE_DOCKER_CONFIG, MEDIA_TYPE_DOCKER_LAYER, MEDIA_TYPE_DOCKER_LAYER_GZIP,
    MEDIA_TYPE_DOCKER_MANIFEST,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    DockerArchive,
    OciLayout,
}

/// A named image of an archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveImage {
    pub name: String,
    /// The manifest or index the name points at.
    pub target: Descriptor,
}

#[derive(Debug, Clone)]
enum Source {
    File { offset: u64, size: u64 },
    Memory(Vec<u8>),
}

/// An opened image archive.
#[derive(Debug)]
pub struct Archive {
    path: PathBuf,
    pub format: Format,
    pub images: Vec<ArchiveImage>,
    /// Every blob, in the order to write them (layers first, manifests last).
    pub blobs: Vec<Descriptor>,
    sources: HashMap<String, Source>,
}

fn clean(name: &str) -> String {
    let n = name.trim_start_matches("./").trim_start_matches('/');
    n.trim_end_matches('/').to_string()
}

impl Archive {
    /// Indexes the archive at `path`. `base_name` names OCI layout images that
    /// only carry a `org.opencontainers.image.ref.name` tag (`BASE:TAG`).
    pub fn open(path: &Path, base_name: Option<&str>) -> Result<Archive> {
        let f = File::open(path).map_err(|e| Error::io(path.display().to_string(), e))?;
        let mut files: HashMap<String, (u64, u64)> = HashMap::new();
        let mut ar = tar::Archive::new(std::io::BufReader::new(f));
        for e in ar
            .entries()
            .map_err(|e| Error::Invalid(format!("reading the archive: {e}")))?
        {
            let e = e.map_err(|e| Error::Invalid(format!("reading the archive: {e}")))?;
            if !e.header().entry_type().is_file() {
                continue;
            }
            let name = clean(&String::from_utf8_lossy(&e.path_bytes()));
            files.insert(name, (e.raw_file_position(), e.size()));
        }
        let mut a = Archive {
            path: path.to_path_buf(),
            format: Format::OciLayout,
            images: Vec::new(),
            blobs: Vec::new(),
            sources: HashMap::new(),
        };
        if files.contains_key("index.json") {
            a.open_oci(&files, base_name)?;
        } else if files.contains_key("manifest.json") {
            a.format = Format::DockerArchive;
            a.open_docker(&files)?;
        } else {
            return Err(Error::Invalid(
                "neither index.json (OCI layout) nor manifest.json (docker archive) in the archive"
                    .into(),
            ));
        }
        Ok(a)
    }

    fn read_file(&self, files: &HashMap<String, (u64, u64)>, name: &str) -> Result<Vec<u8>> {
        let (offset, size) = *files
            .get(&clean(name))
            .ok_or_else(|| Error::NotFound(format!("{name} in the archive")))?;
        if size > 64 << 20 {
            return Err(Error::Invalid(format!(
                "{name} is too large for a document"
            )));
        }
        let mut buf = Vec::with_capacity(size as usize);
        self.section(offset, size)?
            .read_to_end(&mut buf)
            .map_err(|e| Error::io(name, e))?;
        Ok(buf)
    }

    fn section(&self, offset: u64, size: u64) -> Result<std::io::Take<File>> {
        let mut f =
            File::open(&self.path).map_err(|e| Error::io(self.path.display().to_string(), e))?;
        f.seek(SeekFrom::Start(offset))
            .map_err(|e| Error::io(self.path.display().to_string(), e))?;
        Ok(f.take(size))
    }

    fn open_oci(&mut self, files: &HashMap<String, (u64, u64)>, base: Option<&str>) -> Result<()> {
        let index = parse_index(&self.read_file(files, "index.json")?)?;
        let mut names: Vec<&String> = files.keys().collect();
        names.sort();
        for name in names {
            let Some(rest) = name.strip_prefix("blobs/") else {
                continue;
            };
            let Some((alg, hex)) = rest.split_once('/') else {
                continue;
            };
            let (offset, size) = files[name];
            let digest = format!("{alg}:{hex}");
            self.sources
                .insert(digest.clone(), Source::File { offset, size });
            self.blobs.push(Descriptor {
                digest,
                size: size as i64,
                ..Default::default()
            });
        }
        for m in &index.manifests {
            if !self.sources.contains_key(&m.digest) {
                return Err(Error::NotFound(format!("blob {} of index.json", m.digest)));
            }
            let name = m
                .annotations
                .get(ANNOTATION_IMAGE_NAME)
                .cloned()
                .or_else(|| {
                    let r = m.annotations.get(ANNOTATION_REF_NAME)?;
                    if r.contains('/') || r.contains('@') {
                        normalize(r)
                    } else {
                        base.map(|b| format!("{b}:{r}"))
                    }
                });
            if let Some(name) = name {
                let mut target = m.clone();
                target.platform = None;
                self.images.push(ArchiveImage { name, target });
            }
        }
        Ok(())
    }

    fn open_docker(&mut self, files: &HashMap<String, (u64, u64)>) -> Result<()> {
        let entries = parse_docker_manifest(&self.read_file(files, "manifest.json")?)?;
        let mut layer_descs: HashMap<String, Descriptor> = HashMap::new();
        for entry in entries {
            let config = self.read_file(files, &entry.config)?;
            let config_desc = Descriptor {
                media_type: MEDIA_TYPE_DOCKER_CONFIG.into(),
                digest: sha256_digest(&config),
                size: config.len() as i64,
                ..Default::default()
            };
            let mut layers = Vec::new();
            for l in &entry.layers {
                if let Some(d) = layer_descs.get(l) {
                    layers.push(d.clone());
                    continue;
                }
                let (offset, size) = *files
                    .get(&clean(l))
                    .ok_or_else(|| Error::NotFound(format!("layer {l} in the archive")))?;
                let mut head = [0u8; 4];
                let n = self.section(offset, size)?.read(&mut head).unwrap_or(0);
                let media_type = match Compression::detect(&head[..n]) {
                    Compression::None => MEDIA_TYPE_DOCKER_LAYER,
                    Compression::Gzip => MEDIA_TYPE_DOCKER_LAYER_GZIP,
                    Compression::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
                };
                let h = HashReader::new(self.section(offset, size)?);
                let (digest, n) = h.finish().map_err(|e| Error::io(l.clone(), e))?;
                if n != size {
                    return Err(Error::Invalid(format!("layer {l} is truncated")));
                }
                let d = Descriptor {
                    media_type: media_type.into(),
                    digest: digest.clone(),
                    size: size as i64,
                    ..Default::default()
                };
                if let std::collections::hash_map::Entry::Vacant(v) = self.sources.entry(digest) {
                    v.insert(Source::File { offset, size });
                    self.blobs.push(d.clone());
                }
                layer_descs.insert(l.clone(), d.clone());
                layers.push(d);
            }
            if !self.sources.contains_key(&config_desc.digest) {
                self.sources
                    .insert(config_desc.digest.clone(), Source::Memory(config));
                self.blobs.push(config_desc.clone());
            }
            let manifest = Manifest {
                schema_version: 2,
                media_type: MEDIA_TYPE_DOCKER_MANIFEST.into(),
                config: config_desc,
                layers,
                annotations: BTreeMap::new(),
            };
            let bytes = serde_json::to_vec(&manifest).expect("manifests serialise");
            let target = Descriptor {
                media_type: MEDIA_TYPE_DOCKER_MANIFEST.into(),
                digest: sha256_digest(&bytes),
                size: bytes.len() as i64,
                ..Default::default()
            };
            if !self.sources.contains_key(&target.digest) {
                self.sources
                    .insert(target.digest.clone(), Source::Memory(bytes));
                self.blobs.push(target.clone());
            }
            for tag in entry.repo_tags.unwrap_or_default() {
                let name = normalize(&tag)
                    .ok_or_else(|| Error::Invalid(format!("bad repository tag {tag:?}")))?;
                self.images.push(ArchiveImage {
                    name,
                    target: target.clone(),
                });
            }
        }
        Ok(())
    }

    /// The bytes of a blob.
    pub fn reader(&self, digest: &str) -> Result<Box<dyn Read + Send>> {
        match self.sources.get(digest) {
            Some(Source::File { offset, size }) => Ok(Box::new(self.section(*offset, *size)?)),
            Some(Source::Memory(b)) => Ok(Box::new(std::io::Cursor::new(b.clone()))),
            None => Err(Error::NotFound(format!("blob {digest} in the archive"))),
        }
    }

    /// A (small) blob read whole.
    pub fn read(&self, digest: &str) -> Result<Vec<u8>> {
        let mut v = Vec::new();
        self.reader(digest)?
            .read_to_end(&mut v)
            .map_err(|e| Error::io(digest, e))?;
        Ok(v)
    }
}
