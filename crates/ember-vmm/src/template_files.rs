//! The files of a saved template, as every backend handles them: checked before a
//! restore, written under a `.partial` name and moved into place once complete.

use std::path::{Path, PathBuf};

use crate::Error;

/// What to do about a template file that is missing.
pub(crate) const REBUILD_HINT: &str =
    "rebuild the template (`ember vm template rm`, then start again)";

/// The files a clone restores from: `state` present, and `memory` (where RAM is a
/// file of its own) present and of `mib` MiB.
pub(crate) fn check_restore(memory: Option<&Path>, state: &Path, mib: u32) -> Result<(), Error> {
    let meta = |p: &Path, what: &'static str| match std::fs::metadata(p) {
        Ok(m) if m.is_file() => Ok(m),
        _ => Err(Error::MissingFile {
            what,
            path: p.to_path_buf(),
            hint: REBUILD_HINT,
        }),
    };
    meta(state, "template state")?;
    if let Some(memory) = memory {
        let len = meta(memory, "template memory")?.len();
        if len != u64::from(mib) << 20 {
            return Err(Error::InvalidConfig(format!(
                "template memory {} holds {len} bytes, not the VM's {mib} MiB",
                memory.display()
            )));
        }
    }
    Ok(())
}

/// `path` with `.partial` appended to its file name.
pub(crate) fn partial(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".partial");
    PathBuf::from(s)
}

pub(crate) fn remove_if_there(path: &Path) -> Result<(), Error> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_error("removing", path, e)),
    }
}

pub(crate) fn io_error(what: &str, path: &Path, e: std::io::Error) -> Error {
    Error::Control(format!("{what} {}: {e}", path.display()))
}

/// Flushes a file, or a directory's entries, to disk.
pub(crate) fn sync(path: &Path) -> Result<(), Error> {
    std::fs::File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|e| io_error("syncing", path, e))
}
