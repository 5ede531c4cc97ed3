//! OCI image documents (and docker's equivalents), parsed and checked.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{sha256_digest, Error, Result};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub variant: String,
}

impl Platform {
    /// The platform this host runs containers of (`linux/amd64` on x86-64).
    pub fn host() -> Platform {
        let architecture = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            other => other,
        };
        Platform {
            architecture: architecture.into(),
            os: "linux".into(),
            variant: String::new(),
        }
    }

    /// Whether an image for `self` runs on `want` (variant only checked when both
    /// name one).
    pub fn matches(&self, want: &Platform) -> bool {
        self.os == want.os
            && self.architecture == want.architecture
            && (self.variant.is_empty() || want.variant.is_empty() || self.variant == want.variant)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Descriptor {
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    pub digest: String,
    pub size: i64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    #[serde(rename = "schemaVersion")]
    pub schema_version: u32,
    #[serde(
        rename = "mediaType",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub media_type: String,
    pub config: Descriptor,
    #[serde(default)]
    pub layers: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Index {
    #[serde(rename = "schemaVersion")]
    pub schema_version: u32,
    #[serde(
        rename = "mediaType",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub media_type: String,
    #[serde(default)]
    pub manifests: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootFs {
    #[serde(rename = "type", default)]
    pub kind: String,
    #[serde(default)]
    pub diff_ids: Vec<String>,
}

/// The parts of an image config the runtime needs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub variant: String,
    #[serde(default)]
    pub rootfs: RootFs,
}

impl ImageConfig {
    pub fn platform(&self) -> Platform {
        Platform {
            architecture: self.architecture.clone(),
            os: self.os.clone(),
            variant: self.variant.clone(),
        }
    }
}

/// One image of a docker-archive `manifest.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DockerManifestEntry {
    #[serde(rename = "Config")]
    pub config: String,
    #[serde(rename = "RepoTags", default)]
    pub repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers", default)]
    pub layers: Vec<String>,
}

/// Checks a digest's form: `algorithm:hex` with the algorithm's hex length.
pub fn check_digest(what: &str, d: &str) -> Result<()> {
    let (alg, hex) = d
        .split_once(':')
        .ok_or_else(|| Error::Invalid(format!("{what}: digest {d:?} has no algorithm")))?;
    let len = match alg {
        "sha256" => 64,
        "sha384" => 96,
        "sha512" => 128,
        _ => {
            return Err(Error::Invalid(format!(
                "{what}: unsupported digest algorithm {alg:?}"
            )))
        }
    };
    if hex.len() != len
        || !hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(Error::Invalid(format!("{what}: malformed digest {d:?}")));
    }
    Ok(())
}

fn check_descriptor(what: &str, d: &Descriptor) -> Result<()> {
    check_digest(what, &d.digest)?;
    if d.size < 0 {
        return Err(Error::Invalid(format!("{what}: negative size")));
    }
    Ok(())
}

fn json<'a, T: Deserialize<'a>>(what: &str, data: &'a [u8]) -> Result<T> {
    serde_json::from_slice(data).map_err(|e| Error::Invalid(format!("{what}: {e}")))
}

pub fn parse_manifest(data: &[u8]) -> Result<Manifest> {
    let m: Manifest = json("manifest", data)?;
    if m.schema_version != 2 {
        return Err(Error::Invalid(format!(
            "manifest: schema version {} is not supported",
            m.schema_version
        )));
    }
    check_descriptor("manifest config", &m.config)?;
    for l in &m.layers {
        check_descriptor("manifest layer", l)?;
    }
    Ok(m)
}

pub fn parse_index(data: &[u8]) -> Result<Index> {
    let i: Index = json("index", data)?;
    if i.schema_version != 2 {
        return Err(Error::Invalid(format!(
            "index: schema version {} is not supported",
            i.schema_version
        )));
    }
    for m in &i.manifests {
        check_descriptor("index manifest", m)?;
    }
    Ok(i)
}

pub fn parse_config(data: &[u8]) -> Result<ImageConfig> {
    let c: ImageConfig = json("image config", data)?;
    for d in &c.rootfs.diff_ids {
        check_digest("image config diff id", d)?;
    }
    Ok(c)
}

pub fn parse_docker_manifest(data: &[u8]) -> Result<Vec<DockerManifestEntry>> {
    let v: Vec<DockerManifestEntry> = json("manifest.json", data)?;
    if v.is_empty() {
        return Err(Error::Invalid("manifest.json lists no image".into()));
    }
    Ok(v)
}

/// The chain ids of a stack of layers given their diff ids: the first is the
/// first diff id, each next one `sha256(previous + " " + diff id)`.
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match out.last() {
            None => d.clone(),
            Some(prev) => sha256_digest(format!("{prev} {d}").as_bytes()),
        };
        out.push(next);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn chain_of_two() {
        let a = format!("sha256:{}", "a".repeat(64));
        let b = format!("sha256:{}", "b".repeat(64));
        let c = chain_ids(&[a.clone(), b.clone()]);
        assert_eq!(c[0], a);
        assert_eq!(c[1], sha256_digest(format!("{a} {b}").as_bytes()));
    }

    #[test]
    fn parses_and_checks() {
        let d = format!("sha256:{}", "0".repeat(64));
        let m = format!(
            r#"{{"schemaVersion":2,"config":{{"mediaType":"x","digest":"{d}","size":1}},"layers":[{{"digest":"{d}","size":2}}]}}"#
        );
        assert_eq!(parse_manifest(m.as_bytes()).unwrap().layers.len(), 1);
        assert!(parse_manifest(m.replace("sha256:", "md5:").as_bytes()).is_err());
        assert!(parse_manifest(br#"{"schemaVersion":1}"#).is_err());
        assert!(parse_index(b"[]").is_err());
        assert!(parse_docker_manifest(b"[]").is_err());
        let p = Platform::host();
        assert!(p.matches(&p));
        assert!(!Platform {
            os: "windows".into(),
            ..p.clone()
        }
        .matches(&p));
    }

    proptest! {
        #[test]
        fn parsers_never_panic(data in proptest::collection::vec(any::<u8>(), 0..300), s in "\\PC{0,200}") {
            let _ = parse_manifest(&data);
            let _ = parse_index(&data);
            let _ = parse_config(&data);
            let _ = parse_docker_manifest(&data);
            let _ = parse_manifest(s.as_bytes());
            let _ = parse_index(s.as_bytes());
            let _ = crate::reference::normalize(&s);
        }
    }
}
