//! Finding `mkfs.erofs`.
//!
//! Building an image straight from a tar stream (`--tar=f`) needs erofs-utils 1.8
//! or later; Debian 12 ships 1.5. `scripts/trixie.sh erofs-utils libc6 ...` unpacks
//! Debian 13's build aside (under `$EMBER_TRIXIE_DIR`, default `/opt/ember/trixie`)
//! together with the C library it needs; that build is run through its own dynamic
//! loader with its own library directory, so nothing of the system is replaced.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// A runnable `mkfs.erofs` and its version.
#[derive(Debug, Clone)]
pub struct ErofsTool {
    program: PathBuf,
    prefix: Vec<OsString>,
    /// `(major, minor, patch)`.
    pub version: (u32, u32, u32),
}

impl ErofsTool {
    /// A command running the tool (arguments still to be added).
    pub fn command(&self) -> Command {
        let mut c = Command::new(&self.program);
        c.args(&self.prefix);
        c
    }

    /// Whether the tool builds images from tar streams (`--tar=f`, `--aufs`).
    pub fn reads_tar(&self) -> bool {
        self.version >= (1, 8, 0)
    }

    fn probe(program: PathBuf, prefix: Vec<OsString>) -> Option<ErofsTool> {
        let mut tool = ErofsTool {
            program,
            prefix,
            version: (0, 0, 0),
        };
        // 1.5 has no --version; it prints its version first on any run.
        let out = tool.command().arg("-V").output().ok()?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        tool.version = parse_version(&text)?;
        Some(tool)
    }
}

/// The `x.y[.z]` after `mkfs.erofs` in its banner.
fn parse_version(text: &str) -> Option<(u32, u32, u32)> {
    let line = text.lines().find(|l| l.starts_with("mkfs.erofs"))?;
    let word = line
        .split_whitespace()
        .find(|w| w.chars().next().is_some_and(|c| c.is_ascii_digit()))?;
    let mut parts = word
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().ok());
    let major = parts.next()??;
    let minor = parts.next().flatten().unwrap_or(0);
    let patch = parts.next().flatten().unwrap_or(0);
    Some((major, minor, patch))
}

fn trixie_dir() -> PathBuf {
    std::env::var_os("EMBER_TRIXIE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/ember/trixie"))
}

fn side_tool(dir: &Path) -> Option<ErofsTool> {
    let program = dir.join("usr/bin/mkfs.erofs");
    if !program.is_file() {
        return None;
    }
    let libs = dir.join("usr/lib/x86_64-linux-gnu");
    let loader = libs.join("ld-linux-x86-64.so.2");
    if loader.is_file() {
        let prefix = vec![
            OsString::from("--library-path"),
            libs.into_os_string(),
            program.into_os_string(),
        ];
        return ErofsTool::probe(loader, prefix);
    }
    ErofsTool::probe(program, Vec::new())
}

/// The newest `mkfs.erofs` found: Debian 13's unpacked aside, or the system's.
/// Looked up once per process.
pub fn erofs_tool() -> Option<&'static ErofsTool> {
    static TOOL: OnceLock<Option<ErofsTool>> = OnceLock::new();
    TOOL.get_or_init(|| {
        let mut found: Vec<ErofsTool> = side_tool(&trixie_dir()).into_iter().collect();
        found.extend(ErofsTool::probe(PathBuf::from("mkfs.erofs"), Vec::new()));
        found.into_iter().max_by_key(|t| t.version)
    })
    .as_ref()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        assert_eq!(
            parse_version("mkfs.erofs (erofs-utils) 1.8.6\navailable compressors"),
            Some((1, 8, 6))
        );
        assert_eq!(
            parse_version("mkfs.erofs 1.5\nusage: [options]"),
            Some((1, 5, 0))
        );
        assert_eq!(parse_version("something else"), None);
    }
}
