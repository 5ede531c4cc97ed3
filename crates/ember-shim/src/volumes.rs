//! Host bind mounts of a container's spec, carried into its microVM.
//!
//! A mount whose source is a host path and which binds it (`type: bind`, or a
//! `bind`/`rbind` option: what `ctr run --mount type=bind`, dockerd's `/etc/hosts`,
//! `/etc/resolv.conf` and `/etc/hostname`, and CRI's volumes give) cannot be made
//! inside the guest as it stands. With a shared filesystem (QEMU's virtio-9p) the
//! source is bind-mounted into the VM's shared directory
//! ([`ember_sandbox::share`]) and the spec's source becomes the guest path of that
//! share. Without one (Firecracker), a single regular file is copied in as a
//! [`GuestFile`] under `/run/ember/files/<container>/<n>` and the source points at
//! it (a copy: writes inside stay inside); a directory is refused. Mounts the guest
//! makes itself (proc, sysfs, tmpfs, devpts, mqueue, cgroup…) are left alone.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use ember_agent_api::{GuestFile, FILES_GUEST_DIR};
use ember_sandbox::share::{ShareError, SharedDir};
use ember_ttrpc::{Code, Status};
use serde_json::Value;

/// Largest single file copied into a VM without a shared filesystem.
pub const MAX_COPIED_FILE: u64 = 1 << 20;
/// Largest sum of the files copied in for one container (they travel in one
/// agent message, whose limit is 4 MiB with the spec).
pub const MAX_COPIED_TOTAL: u64 = 2 << 20;

#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    /// The spec asks for something that cannot be carried (ttrpc InvalidArgument).
    #[error("{0}")]
    Invalid(String),
    /// The host failed to do what it should have (ttrpc Internal).
    #[error("{0}")]
    Host(String),
}

impl VolumeError {
    pub fn code(&self) -> Code {
        match self {
            VolumeError::Invalid(_) => Code::InvalidArgument,
            VolumeError::Host(_) => Code::Internal,
        }
    }
}

impl From<VolumeError> for Status {
    fn from(e: VolumeError) -> Status {
        Status::new(e.code(), e.to_string())
    }
}

impl From<ShareError> for VolumeError {
    fn from(e: ShareError) -> VolumeError {
        match e {
            ShareError::Invalid(_) | ShareError::Missing(_) => VolumeError::Invalid(e.to_string()),
            other => VolumeError::Host(format!("sharing with the microVM: {other}")),
        }
    }
}

/// How host paths reach the VM.
#[derive(Debug, Clone, Copy)]
pub enum Transport<'a> {
    /// The VM has a shared directory (QEMU's virtio-9p).
    Shared(&'a SharedDir),
    /// The VMM has no shared filesystem (Firecracker): single files are copied in.
    CopyFiles,
}

/// What carrying a container's host mounts produced.
#[derive(Debug, Default)]
pub struct Volumes {
    /// For `CreateContainerRequest.files`.
    pub files: Vec<GuestFile>,
    /// How many host paths were bind-mounted into the shared directory (released
    /// with [`release`] when the container goes).
    pub shared: usize,
}

/// One host bind mount of the spec.
#[derive(Debug)]
struct HostBind {
    /// Index in the spec's `mounts`.
    index: usize,
    source: PathBuf,
    destination: String,
    read_only: bool,
    recursive: bool,
    is_dir: bool,
    len: u64,
}

/// Checks, before anything is made, that the host bind mounts of `spec` can reach a
/// VM (`can_share`: whether its VMM has a shared filesystem): their sources exist,
/// and without sharing they are files small enough to copy. [`prepare`] checks the
/// same; calling this first saves booting a VM for a spec that cannot run.
pub fn check(spec: &Value, bundle: &Path, can_share: bool) -> Result<(), VolumeError> {
    let binds = host_binds(spec, bundle)?;
    if !can_share {
        for b in &binds {
            copyable(b)?;
        }
    }
    Ok(())
}

/// Rewrites the host bind mounts of `spec` (the container's OCI spec as the shim
/// read it) for the VM and makes what they need: shares in the shared directory, or
/// copied files. Relative sources are taken from `bundle`, as runc does. On error
/// nothing is left shared for `container_id` and the spec is unchanged.
pub fn prepare(
    spec: &mut Value,
    bundle: &Path,
    container_id: &str,
    transport: Transport<'_>,
) -> Result<Volumes, VolumeError> {
    check(spec, bundle, matches!(transport, Transport::Shared(_)))?;
    let binds = host_binds(spec, bundle)?;
    let mut out = Volumes::default();
    if binds.is_empty() {
        return Ok(out);
    }
    let mut new_sources = Vec::with_capacity(binds.len());
    match transport {
        Transport::Shared(shared) => {
            for b in &binds {
                match shared.share(container_id, b.index, &b.source, b.read_only, b.recursive) {
                    Ok(guest) => {
                        out.shared += 1;
                        new_sources.push((b.index, guest));
                    }
                    Err(e) => {
                        if let Err(r) = shared.release(container_id) {
                            tracing::warn!("releasing the shares of {container_id}: {r}");
                        }
                        return Err(e.into());
                    }
                }
            }
        }
        Transport::CopyFiles => {
            check_copy_name(container_id)?;
            let mut total = 0;
            for b in &binds {
                let file = copy_in(container_id, b)?;
                total += file.content.len() as u64;
                if total > MAX_COPIED_TOTAL {
                    return Err(VolumeError::Invalid(format!(
                        "the files bind-mounted into the container add up to more than {} MiB, \
                         the most this VMM (no shared filesystem) copies in",
                        MAX_COPIED_TOTAL >> 20
                    )));
                }
                new_sources.push((b.index, file.path.clone()));
                out.files.push(file);
            }
        }
    }
    if let Some(mounts) = spec.get_mut("mounts").and_then(Value::as_array_mut) {
        for (index, source) in new_sources {
            mounts[index]["source"] = Value::String(source);
        }
    }
    Ok(out)
}

/// Undoes the shares [`prepare`] made for `container_id`.
pub fn release(shared: &SharedDir, container_id: &str) -> Result<(), VolumeError> {
    Ok(shared.release(container_id)?)
}

/// The host bind mounts of `spec`, their sources checked.
fn host_binds(spec: &Value, bundle: &Path) -> Result<Vec<HostBind>, VolumeError> {
    let Some(mounts) = spec.get("mounts") else {
        return Ok(Vec::new());
    };
    let mounts = mounts
        .as_array()
        .ok_or_else(|| VolumeError::Invalid("the spec's mounts is not a list".into()))?;
    let mut binds = Vec::new();
    for (index, m) in mounts.iter().enumerate() {
        let str_field = |name: &str| m.get(name).and_then(Value::as_str);
        let options: Vec<&str> = match m.get("options") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
            Some(_) => {
                return Err(VolumeError::Invalid(format!(
                    "mount {index}: options is not a list of strings"
                )))
            }
        };
        let is_bind = str_field("type") == Some("bind")
            || options.iter().any(|o| *o == "bind" || *o == "rbind");
        if !is_bind {
            continue;
        }
        let destination = str_field("destination").unwrap_or_default().to_string();
        let source = match str_field("source") {
            Some(s) if !s.is_empty() => s,
            _ => {
                return Err(VolumeError::Invalid(format!(
                    "the bind mount at {destination:?} has no source"
                )))
            }
        };
        let source = bundle.join(source);
        let meta = match std::fs::metadata(&source) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(VolumeError::Invalid(format!(
                    "bind mount source path does not exist: {} (for {destination})",
                    source.display()
                )))
            }
            Err(e) => {
                return Err(VolumeError::Invalid(format!(
                    "bind mount source {} (for {destination}): {e}",
                    source.display()
                )))
            }
        };
        if !meta.is_dir() && !meta.is_file() {
            return Err(VolumeError::Invalid(format!(
                "bind mount source {} (for {destination}) is neither a directory nor a \
                 regular file: sockets and devices cannot cross into a microVM",
                source.display()
            )));
        }
        // The last of ro/rw wins, as with mount(8).
        let read_only = options
            .iter()
            .rev()
            .find(|o| **o == "ro" || **o == "rw")
            .is_some_and(|o| *o == "ro");
        binds.push(HostBind {
            index,
            source,
            destination,
            read_only,
            recursive: options.contains(&"rbind"),
            is_dir: meta.is_dir(),
            len: meta.len(),
        });
    }
    Ok(binds)
}

/// Container ids become one path component of the guest file's path.
fn check_copy_name(id: &str) -> Result<(), VolumeError> {
    if id.is_empty() || id == "." || id == ".." || id.contains('/') || id.contains('\0') {
        return Err(VolumeError::Invalid(format!(
            "container id {id:?} cannot name a directory"
        )));
    }
    Ok(())
}

/// Whether a bind source can be copied into a VM without a shared filesystem.
fn copyable(b: &HostBind) -> Result<(), VolumeError> {
    let src = b.source.display();
    if b.is_dir {
        return Err(VolumeError::Invalid(format!(
            "cannot bind-mount the host directory {src} at {}: this VMM has no shared \
             filesystem (only single files are copied in; use QEMU for host directories)",
            b.destination
        )));
    }
    if b.len > MAX_COPIED_FILE {
        return Err(too_big(b));
    }
    Ok(())
}

fn too_big(b: &HostBind) -> VolumeError {
    VolumeError::Invalid(format!(
        "the host file {} bind-mounted at {} is larger than {} MiB, the most this \
         VMM (no shared filesystem) copies in",
        b.source.display(),
        b.destination,
        MAX_COPIED_FILE >> 20
    ))
}

/// Reads a bind source for a VM without a shared filesystem.
fn copy_in(container_id: &str, b: &HostBind) -> Result<GuestFile, VolumeError> {
    copyable(b)?;
    let src = b.source.display();
    let read_err = |e: std::io::Error| VolumeError::Invalid(format!("reading {src}: {e}"));
    let f = std::fs::File::open(&b.source).map_err(read_err)?;
    let mode = f.metadata().map_err(read_err)?.permissions().mode() & 0o7777;
    let mut content = Vec::new();
    f.take(MAX_COPIED_FILE + 1)
        .read_to_end(&mut content)
        .map_err(read_err)?;
    if content.len() as u64 > MAX_COPIED_FILE {
        return Err(too_big(b));
    }
    Ok(GuestFile {
        path: format!("{FILES_GUEST_DIR}/{container_id}/{}", b.index),
        content,
        mode,
    })
}

#[cfg(test)]
mod tests;
