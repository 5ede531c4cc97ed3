//! Content-addressed blob store, laid out like containerd's local content store.
//!
//! ```text
//! <root>/blobs/<algorithm>/<hex>        committed blobs, read-only files
//! <root>/ingest/<sha256 of ref>/data    bytes written so far
//!                              /ref     the ingest's reference
//!                              /startedat, /updatedat   times (ns since the epoch)
//!                              /total   expected size, when known
//!                              /expected expected digest, when known
//! ```
//!
//! Writes are resumable: an ingest lives on disk until committed or aborted, and a
//! writer opened again with the same ref continues where the data file ends. A ref
//! can have one writer at a time. Commit verifies size and digest and moves the
//! data into place with a rename, so a crash never leaves a partial blob.

mod backend;
mod digest;
pub mod remote;
mod store;

pub use backend::{Backend, Blob, Ingest};
pub use digest::{Algorithm, Digest};
pub use store::{Commit, Info, Status, Store, Writer};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}: not found")]
    NotFound(String),
    #[error("{0}: already exists")]
    AlreadyExists(String),
    #[error("{0}: invalid argument")]
    InvalidArgument(String),
    #[error("{0}: failed precondition")]
    FailedPrecondition(String),
    #[error("{0}: unavailable")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Internal(e.to_string())
    }
}
