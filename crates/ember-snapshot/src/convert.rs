//! Conversions between the snapshot wire types of containerd's API and this crate's
//! types, and between errors and gRPC statuses.

use std::time::SystemTime;

use containerd_client::services::v1::snapshots as wire;
use containerd_client::types as wtypes;
use tonic::{Code, Status};

use crate::{Error, Info, Kind, Mount, Usage};

pub fn kind_to_wire(k: Kind) -> wire::Kind {
    match k {
        Kind::View => wire::Kind::View,
        Kind::Active => wire::Kind::Active,
        Kind::Committed => wire::Kind::Committed,
    }
}

pub fn kind_from_wire(k: i32) -> Kind {
    match wire::Kind::try_from(k) {
        Ok(wire::Kind::View) => Kind::View,
        Ok(wire::Kind::Committed) => Kind::Committed,
        _ => Kind::Active,
    }
}

pub fn timestamp(t: SystemTime) -> prost_types::Timestamp {
    prost_types::Timestamp::from(t)
}

pub fn system_time(t: Option<prost_types::Timestamp>) -> SystemTime {
    t.and_then(|t| SystemTime::try_from(t).ok())
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

pub fn info_to_wire(i: &Info) -> wire::Info {
    wire::Info {
        name: i.name.clone(),
        parent: i.parent.clone(),
        kind: kind_to_wire(i.kind) as i32,
        created_at: Some(timestamp(i.created_at)),
        updated_at: Some(timestamp(i.updated_at)),
        labels: i
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    }
}

pub fn info_from_wire(i: wire::Info) -> Info {
    Info {
        name: i.name,
        parent: i.parent,
        kind: kind_from_wire(i.kind),
        labels: i.labels.into_iter().collect(),
        created_at: system_time(i.created_at),
        updated_at: system_time(i.updated_at),
    }
}

pub fn mount_to_wire(m: &Mount) -> wtypes::Mount {
    wtypes::Mount {
        r#type: m.kind.clone(),
        source: m.source.clone(),
        target: m.target.clone(),
        options: m.options.clone(),
    }
}

pub fn mount_from_wire(m: wtypes::Mount) -> Mount {
    Mount {
        kind: m.r#type,
        source: m.source,
        target: m.target,
        options: m.options,
    }
}

pub fn usage_to_wire(u: Usage) -> wire::UsageResponse {
    wire::UsageResponse {
        size: u.size,
        inodes: u.inodes,
    }
}

/// The gRPC status for a snapshotter error.
pub fn status(e: Error) -> Status {
    let code = match &e {
        Error::NotFound(_) => Code::NotFound,
        Error::AlreadyExists(_) => Code::AlreadyExists,
        Error::InvalidArgument(_) => Code::InvalidArgument,
        Error::FailedPrecondition(_) => Code::FailedPrecondition,
        Error::Unavailable(_) => Code::Unavailable,
        Error::Unimplemented(_) => Code::Unimplemented,
        Error::Internal(_) => Code::Unknown,
    };
    Status::new(code, e.to_string())
}

/// The snapshotter error for a gRPC status (from a remote snapshotter).
pub fn from_status(s: Status) -> Error {
    let msg = strip_suffix(s.message());
    match s.code() {
        Code::NotFound => Error::NotFound(msg),
        Code::AlreadyExists => Error::AlreadyExists(msg),
        Code::InvalidArgument => Error::InvalidArgument(msg),
        Code::FailedPrecondition => Error::FailedPrecondition(msg),
        Code::Unavailable => Error::Unavailable(msg),
        Code::Unimplemented => Error::Unimplemented(msg),
        _ => Error::Internal(s.message().to_string()),
    }
}

fn strip_suffix(msg: &str) -> String {
    for suffix in [
        ": not found",
        ": already exists",
        ": invalid argument",
        ": failed precondition",
        ": unavailable",
        ": not implemented",
    ] {
        if let Some(m) = msg.strip_suffix(suffix) {
            return m.to_string();
        }
    }
    msg.to_string()
}
