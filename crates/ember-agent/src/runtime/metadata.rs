//! `SetMetadata`: the VM's metadata document, written atomically into a directory
//! every container sees read-only at the same path.

use std::io::Write;
use std::path::{Path, PathBuf};

use ember_agent_api::METADATA_GUEST_PATH;
use ember_ttrpc::Status;

use super::{internal, Agent, R};

/// The guest directory holding the document.
pub fn guest_dir() -> PathBuf {
    Path::new(METADATA_GUEST_PATH)
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("/run/ember/metadata"))
}

/// The file name of the document inside its directory.
fn file_name() -> &'static str {
    METADATA_GUEST_PATH
        .rsplit('/')
        .next()
        .unwrap_or("metadata.json")
}

/// Replaces `dir/<name>` with `json` by writing a temporary file and renaming it,
/// so a reader sees the old or the new document, never a mix.
pub(super) fn publish(dir: &Path, json: &str) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".{}.tmp", file_name()));
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(json.as_bytes())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, dir.join(file_name()))
}

impl Agent {
    pub async fn set_metadata(&self, json: &str) -> R<()> {
        serde_json::from_str::<serde_json::Value>(json)
            .map_err(|e| Status::invalid_argument(format!("metadata is not valid JSON: {e}")))?;
        let _g = self.metadata_lock.lock().await;
        publish(&self.cfg.metadata_dir, json)
            .map_err(|e| internal(&format!("writing {}", self.cfg.metadata_dir.display()), e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert_eq!(guest_dir(), PathBuf::from("/run/ember/metadata"));
        assert_eq!(file_name(), "metadata.json");
    }

    #[test]
    fn publish_replaces_the_document() {
        let d = std::env::temp_dir().join(format!("ember-md-{}", std::process::id()));
        publish(&d, "{\"a\":1}").unwrap();
        assert_eq!(
            std::fs::read_to_string(d.join("metadata.json")).unwrap(),
            "{\"a\":1}"
        );
        publish(&d, "{\"a\":2}").unwrap();
        assert_eq!(
            std::fs::read_to_string(d.join("metadata.json")).unwrap(),
            "{\"a\":2}"
        );
        let names: Vec<_> = std::fs::read_dir(&d)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
        std::fs::remove_dir_all(&d).unwrap();
    }
}
