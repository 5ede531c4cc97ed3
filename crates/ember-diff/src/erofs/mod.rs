//! Layers straight to EROFS images.
//!
//! [`write_layer`] turns a layer blob into an EROFS image without unpacking it to a
//! directory: the blob is decompressed here and streamed into `mkfs.erofs
//! --tar=f --aufs` (OCI whiteouts become overlayfs ones: `.wh.NAME` a character
//! device 0:0, `.wh..wh..opq` the `trusted.overlay.opaque=y` xattr). Every entry
//! passes the same refusals as [`crate::apply`] on the way: names that climb above
//! the root, hard links whose target does, and entries below a symlink the layer
//! itself makes. The image is written next to its final name and renamed into
//! place once complete, so a refused layer, a full disk or a killed process leaves
//! nothing at the final name. [`build_from_dir`] makes an image from a directory
//! (an overlayfs upper directory keeps its whiteouts and xattrs).

mod tool;

use std::collections::HashSet;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::apply::clean_path;
use crate::compression::{decompress, HashReader};
use crate::{Applied, Error};

pub use tool::{erofs_tool, ErofsTool};

/// The temporary name an image is built under.
pub fn temp_path(out: &Path) -> PathBuf {
    let mut name = out.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    out.with_file_name(name)
}

fn tool() -> Result<&'static ErofsTool, Error> {
    erofs_tool().ok_or_else(|| {
        Error::io(
            "finding mkfs.erofs",
            io::Error::new(
                io::ErrorKind::NotFound,
                "mkfs.erofs not found (install erofs-utils; scripts/trixie.sh for 1.8)",
            ),
        )
    })
}

fn tar_tool() -> Result<&'static ErofsTool, Error> {
    let t = tool()?;
    if !t.reads_tar() {
        return Err(Error::io(
            "finding mkfs.erofs",
            io::Error::new(
                io::ErrorKind::Unsupported,
                format!(
                    "mkfs.erofs {}.{} cannot read tar streams (1.8 or later is needed: scripts/trixie.sh erofs-utils)",
                    t.version.0, t.version.1
                ),
            ),
        ));
    }
    Ok(t)
}

/// A hint when the filesystem holding `path` is (nearly) full: mkfs.erofs's own
/// message then names a consequence (a bad checksum reading back what it could not
/// write), not the cause.
fn space_hint(path: &Path) -> &'static str {
    let Some(dir) = path.parent() else { return "" };
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()) else {
        return "";
    };
    // SAFETY: `c` is NUL-terminated and outlives the call; `st` is a plain C struct
    // the call fills in.
    let st = unsafe {
        let mut st: libc::statvfs = std::mem::zeroed();
        if libc::statvfs(c.as_ptr(), &mut st) != 0 {
            return "";
        }
        st
    };
    let free = st.f_bavail as u128 * st.f_frsize as u128;
    if free < 4 << 20 {
        " (no space left on the device)"
    } else {
        ""
    }
}

/// Copies what is read into a writer.
struct Tee<R, W> {
    inner: R,
    out: W,
}

impl<R: Read, W: Write> Read for Tee<R, W> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.out
            .write_all(&buf[..n])
            .map_err(|e| io::Error::new(e.kind(), format!("feeding mkfs.erofs: {e}")))?;
        Ok(n)
    }
}

/// A running `mkfs.erofs` and the file it writes; killed and the file removed
/// unless [`Build::finish`] succeeds.
struct Build {
    child: Option<Child>,
    tmp: PathBuf,
    stderr: Option<std::thread::JoinHandle<String>>,
}

impl Build {
    fn spawn(mut cmd: Command, tmp: PathBuf, stdin: bool) -> Result<Build, Error> {
        let _ = std::fs::remove_file(&tmp);
        cmd.stdin(if stdin { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .map_err(|e| Error::io("starting mkfs.erofs", e))?;
        let mut err = child.stderr.take().expect("stderr is piped");
        let stderr = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            s
        });
        Ok(Build {
            child: Some(child),
            tmp,
            stderr: Some(stderr),
        })
    }

    /// The tool's own failure, when it has exited unsuccessfully (it stopped
    /// reading: a full disk, a tar it does not accept).
    fn failure(&mut self) -> Option<Error> {
        let status = self.child.as_mut()?.try_wait().ok()??;
        if status.success() {
            return None;
        }
        self.child = None;
        let stderr = self
            .stderr
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        let hint = space_hint(&self.tmp);
        let _ = std::fs::remove_file(&self.tmp);
        Some(Error::io(
            format!("mkfs.erofs {}", self.tmp.display()),
            io::Error::other(format!("{status}: {}{hint}", stderr.trim())),
        ))
    }

    /// Waits for the tool, then moves the image to `out` durably.
    fn finish(mut self, out: &Path) -> Result<(), Error> {
        let status = self
            .child
            .take()
            .expect("child present until finished")
            .wait()
            .map_err(|e| Error::io("waiting for mkfs.erofs", e))?;
        let stderr = self
            .stderr
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        if !status.success() {
            let msg = stderr.trim();
            // The tool writes the image, so a full disk shows as its failure.
            let hint = space_hint(&self.tmp);
            let _ = std::fs::remove_file(&self.tmp);
            return Err(Error::io(
                format!("mkfs.erofs {}", self.tmp.display()),
                io::Error::other(format!("{status}: {msg}{hint}")),
            ));
        }
        let f = std::fs::File::open(&self.tmp)
            .map_err(|e| Error::io(format!("opening {}", self.tmp.display()), e))?;
        f.sync_all()
            .map_err(|e| Error::io(format!("syncing {}", self.tmp.display()), e))?;
        std::fs::rename(&self.tmp, out)
            .map_err(|e| Error::io(format!("renaming to {}", out.display()), e))?;
        if let Some(dir) = out.parent() {
            if let Ok(d) = std::fs::File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok(())
    }
}

impl Drop for Build {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        // Renamed away when finished; anything left is a failed build's.
        let _ = std::fs::remove_file(&self.tmp);
    }
}

/// Checks tar entries as they stream past.
#[derive(Default)]
struct Checker {
    symlinks: HashSet<Vec<u8>>,
}

impl Checker {
    fn refuse(path: &[u8], reason: impl Into<String>) -> Error {
        Error::Unsafe {
            path: String::from_utf8_lossy(path).into_owned(),
            reason: reason.into(),
        }
    }

    fn check<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<(), Error> {
        let raw = entry.path_bytes().into_owned();
        let comps = clean_path(&raw).map_err(|r| Self::refuse(&raw, r))?;
        let mut prefix = Vec::new();
        for c in comps.iter().take(comps.len().saturating_sub(1)) {
            if !prefix.is_empty() {
                prefix.push(b'/');
            }
            prefix.extend_from_slice(c);
            if self.symlinks.contains(&prefix) {
                return Err(Self::refuse(
                    &raw,
                    "its parent is a symlink the layer makes",
                ));
            }
        }
        let rel = comps.join(&b'/');
        match entry.header().entry_type() {
            tar::EntryType::Symlink => {
                self.symlinks.insert(rel);
            }
            tar::EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| {
                        Error::Invalid(format!(
                            "hard link {} has no target",
                            String::from_utf8_lossy(&raw)
                        ))
                    })?
                    .into_owned();
                let t = clean_path(&target).map_err(|_| {
                    Self::refuse(
                        &raw,
                        format!(
                            "hard link target {} is outside the root",
                            String::from_utf8_lossy(&target)
                        ),
                    )
                })?;
                if t.is_empty() {
                    return Err(Self::refuse(&raw, "hard link to the root"));
                }
                self.symlinks.remove(&rel);
            }
            _ => {
                self.symlinks.remove(&rel);
            }
        }
        Ok(())
    }
}

/// Writes the layer blob read from `layer` (plain, gzip or zstd tar) as the EROFS
/// image `out`. Nothing is at `out` unless the whole layer was accepted and written.
pub fn write_layer(out: &Path, layer: impl Read) -> Result<Applied, Error> {
    let (compression, tar) =
        decompress(layer).map_err(|e| Error::Invalid(format!("reading the layer: {e}")))?;
    let tool = tar_tool()?;
    let tmp = temp_path(out);
    let mut cmd = tool.command();
    cmd.args(["--tar=f", "--aufs", "--quiet"]).arg(&tmp);
    let mut build = Build::spawn(cmd, tmp, true)?;
    let stdin = build
        .child
        .as_mut()
        .and_then(|c| c.stdin.take())
        .expect("stdin is piped");
    let tee = Tee {
        inner: HashReader::new(tar),
        out: io::BufWriter::with_capacity(1 << 20, stdin),
    };
    let mut archive = tar::Archive::new(tee);
    let mut checker = Checker::default();
    let streamed = (|| -> Result<(String, u64), Error> {
        let read_err = |e: io::Error| Error::Invalid(format!("reading the layer: {e}"));
        {
            let entries = archive.entries().map_err(read_err)?;
            for entry in entries {
                let mut entry = entry.map_err(read_err)?;
                checker.check(&mut entry)?;
            }
        }
        let mut tee = archive.into_inner();
        io::copy(&mut tee, &mut io::sink()).map_err(read_err)?;
        let Tee {
            inner,
            out: mut feed,
        } = tee;
        feed.flush()
            .map_err(|e| Error::io("feeding mkfs.erofs", e))?;
        drop(feed);
        inner
            .finish()
            .map_err(|e| Error::Invalid(format!("reading the end of the layer: {e}")))
    })();
    let (diff_id, size) = match streamed {
        Ok(v) => v,
        // A refused entry is the layer's fault whatever the tool did meanwhile.
        Err(e @ Error::Unsafe { .. }) => return Err(e),
        Err(e) => {
            // The tool stopping early (full disk, a header it refuses) shows on our
            // side as a broken pipe: report the tool's reason instead.
            for _ in 0..50 {
                if let Some(failed) = build.failure() {
                    return Err(failed);
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            return Err(e);
        }
    };
    build.finish(out)?;
    Ok(Applied {
        diff_id,
        size,
        compression,
    })
}

/// Makes the EROFS image `out` from the directory `dir` (whiteout devices and
/// `trusted.overlay.*` xattrs kept).
pub fn build_from_dir(out: &Path, dir: &Path) -> Result<(), Error> {
    let tool = tool()?;
    let tmp = temp_path(out);
    let mut cmd = tool.command();
    cmd.arg("--quiet").arg(&tmp).arg(dir);
    if tool.version < (1, 6, 0) {
        // 1.5 knows no --quiet.
        cmd = tool.command();
        cmd.arg(&tmp).arg(dir);
    }
    Build::spawn(cmd, tmp, false)?.finish(out)
}
