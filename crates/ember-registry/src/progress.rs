//! Progress of a transfer, as containerd's Transfer service reports it: named
//! nodes (`layer-sha256:…`) with parents, an event (`waiting`, `downloading`,
//! `uploading`, `complete`, `already exists`, …) and byte counts; a node without
//! a name carries an overall status line.

/// One progress report.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Progress {
    pub event: String,
    pub name: String,
    pub parents: Vec<String>,
    pub progress: i64,
    pub total: i64,
}

impl Progress {
    /// The report of `event` on descriptor `desc` under `parent`.
    pub fn of(
        desc: &ember_images::Descriptor,
        parent: &str,
        event: &str,
        progress: i64,
    ) -> Progress {
        Progress {
            event: event.into(),
            name: node_name(&desc.media_type, &desc.digest),
            parents: vec![parent.to_string()],
            progress,
            total: desc.size,
        }
    }

    /// An overall status line.
    pub fn status(event: impl Into<String>) -> Progress {
        Progress {
            event: event.into(),
            ..Default::default()
        }
    }
}

/// Where progress goes.
pub trait ProgressSink: Send + Sync {
    fn progress(&self, p: Progress);
}

/// Progress dropped.
pub struct NoProgress;

impl ProgressSink for NoProgress {
    fn progress(&self, _: Progress) {}
}

/// The progress node name of a descriptor, as containerd's reference keys go:
/// `manifest-sha256:…`, `index-sha256:…`, `config-sha256:…`, `layer-sha256:…`.
pub fn node_name(media_type: &str, digest: &str) -> String {
    let kind = if crate::is_index(media_type) {
        "index"
    } else if crate::is_manifest(media_type) {
        "manifest"
    } else if media_type.contains("config")
        || media_type == "application/vnd.docker.container.image.v1+json"
    {
        "config"
    } else if media_type.contains("layer") || media_type.contains("rootfs") {
        "layer"
    } else {
        "unknown"
    };
    format!("{kind}-{digest}")
}

#[cfg(test)]
mod tests {
    use super::node_name;

    #[test]
    fn nodes_are_named_by_their_kind() {
        let d = "sha256:ab";
        for (media_type, kind) in [
            ("application/vnd.oci.image.index.v1+json", "index"),
            (
                "application/vnd.docker.distribution.manifest.v2+json",
                "manifest",
            ),
            ("application/vnd.oci.image.config.v1+json", "config"),
            ("application/vnd.docker.container.image.v1+json", "config"),
            ("application/vnd.oci.image.layer.v1.tar+gzip", "layer"),
            ("application/vnd.docker.image.rootfs.diff.tar.gzip", "layer"),
            ("text/plain", "unknown"),
        ] {
            assert_eq!(
                node_name(media_type, d),
                format!("{kind}-{d}"),
                "{media_type}"
            );
        }
    }
}
