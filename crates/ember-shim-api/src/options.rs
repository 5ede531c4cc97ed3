//! `containerd.runc.v1.Options`: the runtime options containerd hands the runc shim
//! (and any shim taking the same options, Ember's among them) in a task's Create,
//! as an `Any`.

use prost::Message;
use prost_types::Any;

/// The type URL containerd gives these options.
pub const RUNC_OPTIONS_TYPE_URL: &str = "containerd.runc.v1.Options";

#[derive(Clone, PartialEq, prost::Message)]
pub struct RuncOptions {
    #[prost(bool, tag = "1")]
    pub no_pivot_root: bool,
    #[prost(bool, tag = "2")]
    pub no_new_keyring: bool,
    /// The cgroup (path under the cgroup root) the shim moves itself into.
    #[prost(string, tag = "3")]
    pub shim_cgroup: String,
    #[prost(uint32, tag = "4")]
    pub io_uid: u32,
    #[prost(uint32, tag = "5")]
    pub io_gid: u32,
    #[prost(string, tag = "6")]
    pub binary_name: String,
    /// runc's state root; the runc shim defaults to `/run/containerd/runc`.
    #[prost(string, tag = "7")]
    pub root: String,
    #[prost(string, tag = "8")]
    pub criu_path: String,
    #[prost(bool, tag = "9")]
    pub systemd_cgroup: bool,
    #[prost(string, tag = "10")]
    pub criu_image_path: String,
    #[prost(string, tag = "11")]
    pub criu_work_path: String,
}

impl RuncOptions {
    /// The options in `any`: `Ok(None)` when it holds another type.
    pub fn from_any(any: &Any) -> Result<Option<Self>, prost::DecodeError> {
        // A type URL may carry a host prefix (`type.googleapis.com/...`).
        if any.type_url.rsplit('/').next() != Some(RUNC_OPTIONS_TYPE_URL) {
            return Ok(None);
        }
        RuncOptions::decode(any.value.as_slice()).map(Some)
    }

    pub fn to_any(&self) -> Any {
        Any {
            type_url: RUNC_OPTIONS_TYPE_URL.into(),
            value: self.encode_to_vec(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_other_types() {
        let o = RuncOptions {
            root: "/run/x".into(),
            shim_cgroup: "/a".into(),
            ..Default::default()
        };
        assert_eq!(RuncOptions::from_any(&o.to_any()).unwrap(), Some(o));
        let other = Any {
            type_url: "containerd.runhcs.v1.Options".into(),
            value: vec![1, 2],
        };
        assert_eq!(RuncOptions::from_any(&other).unwrap(), None);
        let prefixed = Any {
            type_url: format!("type.googleapis.com/{RUNC_OPTIONS_TYPE_URL}"),
            value: vec![],
        };
        assert!(RuncOptions::from_any(&prefixed).unwrap().is_some());
    }
}
