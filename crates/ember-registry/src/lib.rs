//! An OCI distribution client and the moves of images between a registry and a
//! content store.
//!
//! - [`reference`]: references normalised as containerd does.
//! - [`hosts`]: where a registry is reached (containerd's hosts directory format).
//! - [`auth`]: challenges, caller-supplied credentials, basic and bearer tokens.
//! - [`client`]: HTTP/1.1 (hyper) with authorisation on a registry's challenge;
//!   [`distribution`]: the API's calls: manifests, blobs (ranged reads to resume),
//!   uploads, cross-repository mounts.
//! - [`store`]: what a content store offers to [`pull`] and [`push`], so the daemon
//!   and the command line share one implementation.
//! - [`tls`]: HTTPS with rustls: system roots, `hosts.toml` CA files, `skip_verify`.

pub mod auth;
pub mod client;
pub mod distribution;
pub mod hosts;
pub mod progress;
pub mod pull;
pub mod push;
pub mod reference;
pub mod store;
pub mod testing;
pub mod tls;

pub use auth::{CredentialSource, Credentials};
pub use client::{Registry, Repository};
pub use hosts::{HostsConfig, RegistryHost};
pub use progress::{Progress, ProgressSink};
pub use pull::{pull, Arrived, PullOptions, Pulled};
pub use push::push;
pub use reference::Reference;
pub use store::{BlobWriter, ContentStore};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid reference: {0}")]
    InvalidReference(String),
    #[error("{0}: not found")]
    NotFound(String),
    #[error("unauthorized: {0}")]
    Auth(String),
    #[error("registry host configuration: {0}")]
    Config(String),
    #[error("registry unreachable: {0}")]
    Unavailable(String),
    /// A transfer that started and broke off (a short body, a dropped
    /// connection); what arrived is kept to resume from.
    #[error("download interrupted: {0}")]
    Interrupted(String),
    #[error("registry protocol: {0}")]
    Protocol(String),
    #[error("invalid content: {0}")]
    Invalid(String),
    #[error("not supported: {0}")]
    Unsupported(String),
    #[error("content store: {0}")]
    Store(String),
    #[error("{0}: already exists")]
    AlreadyExists(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<ember_images::Error> for Error {
    fn from(e: ember_images::Error) -> Error {
        match e {
            ember_images::Error::NotFound(m) => Error::NotFound(m),
            e => Error::Invalid(e.to_string()),
        }
    }
}

/// Manifest and index media types a registry is asked for.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json";

/// Whether a media type is an index or a manifest list.
pub fn is_index(media_type: &str) -> bool {
    media_type == ember_images::MEDIA_TYPE_OCI_INDEX
        || media_type == ember_images::MEDIA_TYPE_DOCKER_LIST
}

/// Whether a media type is an image manifest.
pub fn is_manifest(media_type: &str) -> bool {
    media_type == ember_images::MEDIA_TYPE_OCI_MANIFEST
        || media_type == ember_images::MEDIA_TYPE_DOCKER_MANIFEST
}
