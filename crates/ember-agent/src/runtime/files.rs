//! `CreateContainerRequest.files`: files the host copies into the guest, only
//! under `FILES_GUEST_DIR`.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use ember_agent_api::{GuestFile, FILES_GUEST_DIR};
use ember_ttrpc::Status;

use super::{internal, Agent, R};

/// The part of `path` below `FILES_GUEST_DIR`, checked: absolute, only normal
/// components (no `..`, `.` or empty ones), at least one of them.
pub(super) fn relative_files_path(path: &str) -> R<PathBuf> {
    let bad = |why: &str| {
        Status::invalid_argument(format!(
            "file path {path:?} {why}: files may only be written under {FILES_GUEST_DIR}/"
        ))
    };
    let rest = path
        .strip_prefix(FILES_GUEST_DIR)
        .and_then(|r| r.strip_prefix('/'))
        .ok_or_else(|| bad("is outside the files directory"))?;
    if rest.is_empty()
        || rest
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err(bad("is not a plain path"));
    }
    let rel = PathBuf::from(rest);
    if !rel.components().all(|c| matches!(c, Component::Normal(_))) {
        return Err(bad("is not a plain path"));
    }
    Ok(rel)
}

/// Writes `content` to `dest` with permission bits `mode` (0: 0644), replacing
/// what was there (a symlink is replaced, never followed).
fn write_one(dest: &Path, content: &[u8], mode: u32) -> std::io::Result<()> {
    if let Some(parent) = dest.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let mode = if mode == 0 { 0o644 } else { mode & 0o7777 };
    let tmp = dest.with_extension(format!("ember-tmp-{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&tmp)?;
    f.write_all(content)?;
    // The umask must not narrow the mode asked for.
    f.set_permissions(std::fs::Permissions::from_mode(mode))?;
    drop(f);
    std::fs::rename(&tmp, dest)
}

impl Agent {
    /// Checks every path first, then writes the files (nothing is written when one
    /// path is refused).
    pub(super) fn write_files(&self, files: &[GuestFile]) -> R<()> {
        let mut todo = Vec::with_capacity(files.len());
        for f in files {
            todo.push((self.cfg.files_dir.join(relative_files_path(&f.path)?), f));
        }
        for (dest, f) in todo {
            // No directory on the way may be a symlink placed there before.
            let rel = dest.strip_prefix(&self.cfg.files_dir).unwrap_or(&dest);
            let mut p = self.cfg.files_dir.clone();
            for c in rel.parent().into_iter().flat_map(|p| p.components()) {
                p.push(c);
                if std::fs::symlink_metadata(&p).is_ok_and(|m| m.file_type().is_symlink()) {
                    return Err(Status::invalid_argument(format!(
                        "{} is a symlink",
                        p.display()
                    )));
                }
            }
            write_one(&dest, &f.content, f.mode)
                .map_err(|e| internal(&format!("writing {}", f.path), e))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_paths_under_the_files_dir() {
        assert_eq!(
            relative_files_path("/run/ember/files/c1/etc/hosts").unwrap(),
            PathBuf::from("c1/etc/hosts")
        );
        for bad in [
            "/etc/passwd",
            "/run/ember/files",
            "/run/ember/files/",
            "/run/ember/filesx/a",
            "/run/ember/files/../x",
            "/run/ember/files/a/../../x",
            "/run/ember/files/a//b",
            "/run/ember/files/./a",
            "run/ember/files/a",
            "",
        ] {
            let e = relative_files_path(bad).unwrap_err();
            assert_eq!(e.code(), ember_ttrpc::Code::InvalidArgument, "{bad:?}");
        }
    }

    #[test]
    fn mode_is_honoured_and_parents_made() {
        let d = std::env::temp_dir().join(format!("ember-files-{}", std::process::id()));
        let dest = d.join("a/b/f");
        write_one(&dest, b"hello", 0o600).unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"hello");
        let mode = std::fs::metadata(&dest).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o600);
        write_one(&dest, b"again", 0o755).unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"again");
        let mode = std::fs::metadata(&dest).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o755);
        std::fs::remove_dir_all(&d).unwrap();
    }
}
