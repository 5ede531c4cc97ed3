//! Layers: applying OCI layer tars onto directories ([`apply`]) and computing a
//! layer from two directory trees ([`diff`]).
//!
//! A layer blob is a tar stream, plain, gzip or zstd compressed (detected by its
//! magic bytes). Its diff id is the sha256 digest of the uncompressed tar.

#![deny(clippy::undocumented_unsafe_blocks)]

mod apply;
mod compression;
mod diff;
pub mod erofs;
mod sys;

pub use apply::{apply, apply_tar, clean_path, Applied, ApplyOptions, DevicePolicy};
pub use compression::{decompress, Compression, HashReader, HashWriter};
pub use diff::{diff, Written};

/// Why a layer could not be applied or written.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The blob is not a (complete) tar stream.
    #[error("invalid layer: {0}")]
    Invalid(String),
    /// An entry would write outside the root, or is not allowed.
    #[error("refusing layer entry {path:?}: {reason}")]
    Unsafe { path: String, reason: String },
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
