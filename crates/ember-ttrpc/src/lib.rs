//! ttrpc: the light request/response protocol containerd uses between itself and its
//! shims. A message is a 10-byte header (payload length, stream id, type, flags; all
//! big-endian) followed by a protobuf payload. Requests carry `Request`, replies carry
//! `Response`, and the stream id pairs them, so one connection carries many calls at once.
//!
//! This crate runs the protocol over any `AsyncRead + AsyncWrite` byte stream: unix
//! sockets, vsock connections and virtio-serial ports alike.

mod client;
mod frame;
mod proto;
mod server;
mod status;

pub use client::Client;
pub use frame::{FrameHeader, MessageType, HEADER_LEN, MAX_DATA_LEN};
pub use proto::{KeyValue, Request, Response};
pub use server::{Handler, Server, Service};
pub use status::{Code, Status};

/// Errors of a ttrpc connection or call.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("ttrpc i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("ttrpc protocol violation: {0}")]
    Protocol(String),
    #[error("ttrpc connection closed")]
    Closed,
    #[error("ttrpc call timed out after {0:?}")]
    Timeout(std::time::Duration),
    #[error("{0}")]
    Status(Status),
    #[error("ttrpc payload decode: {0}")]
    Decode(#[from] prost::DecodeError),
}

impl Error {
    /// The status code this error maps to, as a server would report it.
    pub fn code(&self) -> Code {
        match self {
            Error::Status(s) => s.code(),
            Error::Timeout(_) => Code::DeadlineExceeded,
            Error::Closed => Code::Unavailable,
            _ => Code::Internal,
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;
