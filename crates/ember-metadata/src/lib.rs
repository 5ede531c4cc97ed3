//! Ember's metadata: namespaced, labelled records for namespaces, containers,
//! content, snapshots and leases, kept in a redb database, plus the layers that
//! namespace the shared content store and snapshotters.
//!
//! See [`db`] for the schema.

pub mod content;
pub mod db;
pub mod filters;
pub mod gc;
pub mod identifiers;
pub mod sandboxes;
pub mod snapshots;
mod types;
mod wal;

pub use db::Db;
pub use filters::{Fields, Filter};
pub use types::*;

/// Errors of the metadata layer, classified like containerd's error definitions.
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
    #[error("{0}: not implemented")]
    Unimplemented(String),
    #[error("{0}")]
    Internal(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl From<ember_content::Error> for Error {
    fn from(e: ember_content::Error) -> Self {
        use ember_content::Error as C;
        match e {
            C::NotFound(m) => Error::NotFound(m),
            C::AlreadyExists(m) => Error::AlreadyExists(m),
            C::InvalidArgument(m) => Error::InvalidArgument(m),
            C::FailedPrecondition(m) => Error::FailedPrecondition(m),
            C::Unavailable(m) => Error::Unavailable(m),
            C::Internal(m) => Error::Internal(m),
        }
    }
}

impl From<ember_snapshot::Error> for Error {
    fn from(e: ember_snapshot::Error) -> Self {
        use ember_snapshot::Error as S;
        match e {
            S::NotFound(m) => Error::NotFound(m),
            S::AlreadyExists(m) => Error::AlreadyExists(m),
            S::InvalidArgument(m) => Error::InvalidArgument(m),
            S::FailedPrecondition(m) => Error::FailedPrecondition(m),
            S::Unavailable(m) => Error::Unavailable(m),
            S::Unimplemented(m) => Error::Unimplemented(m),
            S::Internal(m) => Error::Internal(m),
        }
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Internal(e.to_string())
    }
}
