use std::path::PathBuf;

/// Errors of the VMM backends.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what} not found at {path}: {hint}")]
    MissingFile {
        what: &'static str,
        path: PathBuf,
        hint: &'static str,
    },
    #[error("invalid VM configuration: {0}")]
    InvalidConfig(String),
    #[error("failed to start the VMM {binary}: {source}")]
    Spawn {
        binary: PathBuf,
        source: std::io::Error,
    },
    #[error("the guest did not boot: {reason}\n--- console tail ---\n{console}")]
    Boot { reason: String, console: String },
    #[error("VMM control channel: {0}")]
    Control(String),
    #[error("the VM is not running")]
    NotRunning,
    #[error("the VM has no memory balloon (configure one before it boots)")]
    NoBalloon,
    #[error("{0} is not supported by this backend")]
    Unsupported(&'static str),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}
