//! `ember vm metadata get|set`: the JSON document a VM publishes to its guest and
//! containers at /run/ember/metadata/metadata.json (Get/Set/UpdateVMMetadata).

use std::io::Read;

use anyhow::{Context, Result};
use clap::Subcommand;
use ember_vm_api::fc::{GetVmMetadataRequest, SetVmMetadataRequest, UpdateVmMetadataRequest};

use super::{vm_error, VmConn};
use crate::client::ClientOpts;

#[derive(clap::Args, Debug)]
#[command(about = "Read or write a microVM's metadata document")]
pub struct MetadataArgs {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Print the document (pretty JSON).
    Get { id: String },
    /// Replace the document, or merge into it (JSON merge patch) with --merge.
    Set {
        /// Merge into the current document instead of replacing it.
        #[arg(long)]
        merge: bool,
        id: String,
        /// The document: JSON text, @FILE, or - for stdin.
        document: String,
    },
}

/// The text of `arg` (JSON, `@FILE` or `-`), checked to be JSON and made compact.
pub fn document(arg: &str) -> Result<String> {
    let text = if arg == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("reading the document from stdin")?;
        s
    } else if let Some(path) = arg.strip_prefix('@') {
        std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?
    } else {
        arg.to_string()
    };
    let v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| anyhow::anyhow!("the metadata is not JSON: {e}"))?;
    Ok(serde_json::to_string(&v)?)
}

/// The document as printed: pretty JSON (the daemon's text as is when it is not JSON).
pub fn pretty(doc: &str) -> String {
    if doc.trim().is_empty() {
        return "{}".into();
    }
    match serde_json::from_str::<serde_json::Value>(doc) {
        Ok(v) => serde_json::to_string_pretty(&v).unwrap_or_else(|_| doc.into()),
        Err(_) => doc.into(),
    }
}

pub async fn run(opts: &ClientOpts, a: MetadataArgs) -> Result<i32> {
    match a.cmd {
        Cmd::Get { id } => {
            let conn = VmConn::new(opts).await?;
            let r = conn
                .fc()
                .get_vm_metadata(conn.req(GetVmMetadataRequest { vmid: id.clone() }))
                .await
                .map_err(|s| vm_error(s, &id))?
                .into_inner();
            println!("{}", pretty(&r.metadata));
        }
        Cmd::Set {
            merge,
            id,
            document: arg,
        } => {
            // Bad input fails here, before the daemon is called.
            let metadata = document(&arg)?;
            let conn = VmConn::new(opts).await?;
            let mut fc = conn.fc();
            let r = if merge {
                fc.update_vm_metadata(conn.req(UpdateVmMetadataRequest {
                    vmid: id.clone(),
                    metadata,
                }))
                .await
            } else {
                fc.set_vm_metadata(conn.req(SetVmMetadataRequest {
                    vmid: id.clone(),
                    metadata,
                }))
                .await
            };
            r.map_err(|s| vm_error(s, &id))?;
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents() {
        assert_eq!(document(r#"{ "a": 1 }"#).unwrap(), r#"{"a":1}"#);
        let e = document("{nope").unwrap_err().to_string();
        assert!(e.starts_with("the metadata is not JSON"), "{e}");
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), "[1, 2]").unwrap();
        assert_eq!(
            document(&format!("@{}", f.path().display())).unwrap(),
            "[1,2]"
        );
        assert!(document("@/no/such/file").is_err());
        assert_eq!(pretty(""), "{}");
        assert_eq!(pretty(r#"{"a":1}"#), "{\n  \"a\": 1\n}");
    }
}
