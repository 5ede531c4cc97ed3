//! The shim's command line, as containerd invokes shim v2 binaries (Go `flag` style:
//! `-name value`, `--name value` or `-name=value`, then an action word).

use std::path::PathBuf;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Args {
    pub namespace: String,
    pub id: String,
    /// containerd's gRPC address.
    pub address: String,
    pub publish_binary: String,
    pub bundle: Option<PathBuf>,
    /// The VM the shim serves (`serve` only; set by `start` from the bundle's
    /// annotations). None: the shim serves one ungrouped container.
    pub vm: Option<String>,
    pub debug: bool,
    pub version: bool,
    /// `-info`: print the runtime info (containerd 2.x).
    pub info: bool,
    /// `start`, `delete`, or `serve` (internal: the long-running shim).
    pub action: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ArgsError {
    #[error("flag -{0} needs a value")]
    MissingValue(String),
    #[error("unknown flag -{0}")]
    Unknown(String),
}

pub fn parse<I: IntoIterator<Item = String>>(it: I) -> Result<Args, ArgsError> {
    let mut a = Args::default();
    let mut it = it.into_iter().peekable();
    while let Some(arg) = it.next() {
        let Some(flag) = arg.strip_prefix("--").or_else(|| arg.strip_prefix('-')) else {
            a.action = arg;
            continue;
        };
        let (name, inline) = match flag.split_once('=') {
            Some((n, v)) => (n.to_string(), Some(v.to_string())),
            None => (flag.to_string(), None),
        };
        match name.as_str() {
            "debug" => a.debug = inline.map(|v| v != "false").unwrap_or(true),
            "v" | "version" => a.version = true,
            "info" => a.info = true,
            "namespace" | "id" | "address" | "publish-binary" | "bundle" | "socket" | "vm" => {
                let v = match inline {
                    Some(v) => v,
                    None => it
                        .next()
                        .ok_or_else(|| ArgsError::MissingValue(name.clone()))?,
                };
                match name.as_str() {
                    "namespace" => a.namespace = v,
                    "id" => a.id = v,
                    "address" => a.address = v,
                    "publish-binary" => a.publish_binary = v,
                    "bundle" => a.bundle = Some(PathBuf::from(v)),
                    "vm" => a.vm = Some(v),
                    _ => {}
                }
            }
            _ => return Err(ArgsError::Unknown(name)),
        }
    }
    Ok(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn containerd_2_asks_for_the_runtime_info() {
        let a = parse(v("-info")).unwrap();
        assert!(a.info && a.action.is_empty());
    }

    #[test]
    fn containerd_start_invocation() {
        let a = parse(v(
            "-namespace default -address /run/containerd/containerd.sock -publish-binary /usr/bin/containerd -id c1 -debug start",
        ))
        .unwrap();
        assert_eq!(a.namespace, "default");
        assert_eq!(a.id, "c1");
        assert_eq!(a.address, "/run/containerd/containerd.sock");
        assert!(a.debug);
        assert_eq!(a.action, "start");
    }

    #[test]
    fn delete_with_bundle_and_inline_values() {
        let a = parse(v("--namespace=k8s.io -id=x -bundle /b delete")).unwrap();
        assert_eq!(a.namespace, "k8s.io");
        assert_eq!(a.bundle, Some(PathBuf::from("/b")));
        assert_eq!(a.action, "delete");
    }

    #[test]
    fn errors() {
        assert_eq!(parse(v("-id")), Err(ArgsError::MissingValue("id".into())));
        assert_eq!(
            parse(v("-bogus 1")),
            Err(ArgsError::Unknown("bogus".into()))
        );
    }
}
