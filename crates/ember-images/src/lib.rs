//! Image formats: OCI and docker manifests, indexes and configs, image archives
//! (docker-archive `manifest.json` tars and OCI image layout tars) and the names
//! they give their images, chain ids, platform matching.
//!
//! Nothing here talks to a daemon: readers hand out descriptors and blob bytes,
//! and the caller writes them wherever images live (`ember images import` writes
//! them over containerd's gRPC API, as `ctr images import` does).

pub mod archive;
pub mod layout;
pub mod oci;
pub mod reference;

pub use archive::{Archive, ArchiveImage, Format};
pub use oci::{
    chain_ids, parse_config, parse_docker_manifest, parse_index, parse_manifest, Descriptor,
    DockerManifestEntry, ImageConfig, Index, Manifest, Platform,
};

/// Annotation naming an image in an index (containerd's).
pub const ANNOTATION_IMAGE_NAME: &str = "io.containerd.image.name";
/// Annotation naming a reference in an OCI layout index.
pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";

pub const MEDIA_TYPE_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MEDIA_TYPE_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MEDIA_TYPE_OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const MEDIA_TYPE_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const MEDIA_TYPE_DOCKER_LIST: &str =
    "application/vnd.docker.distribution.manifest.list.v2+json";
pub const MEDIA_TYPE_DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const MEDIA_TYPE_DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar";
pub const MEDIA_TYPE_DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid image: {0}")]
    Invalid(String),
    #[error("{0}: not found")]
    NotFound(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Error {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// `sha256:<hex>` of some bytes.
pub fn sha256_digest(data: &[u8]) -> String {
    use sha2::Digest as _;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(data)))
}
