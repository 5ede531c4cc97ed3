//! Templates on Firecracker: a booted guest saved once as a full snapshot, restored
//! by many clones.
//!
//! Saving ([`TemplateMode::Build`]): the VM is paused and `PUT /snapshot/create`
//! writes its device state and its guest memory into two files (both through
//! `.partial` names, renamed into place only once the snapshot is complete and on
//! disk). Firecracker always writes guest memory into a file of its own, so a Build
//! config must name one.
//!
//! Restoring ([`TemplateMode::Restore`]): a fresh Firecracker gets its logger and
//! metrics, then `PUT /snapshot/load` with the memory file as a `File` backend
//! (mapped privately: every clone shares the pages it does not write), the VM left
//! paused. The load overrides what the snapshot baked in that belongs to the
//! template, not the clone: the vsock socket (`vsock_override`, Firecracker 1.16 and
//! later) and the taps of the config's NICs (`network_overrides`, 1.12 and later).
//! Then each config drive is pointed at the clone's own file (`PATCH /drives/<id>`)
//! and the VM resumed.
//!
//! What callers must know:
//! - The snapshot also names the template's drive files, and Firecracker opens them
//!   during the load, before they can be swapped: they must still exist when a clone
//!   is restored. The clone's drives must have the template's ids. Once swapped, a
//!   drive's serial is that of the clone's file (Firecracker derives it from the file
//!   it serves, and the guest asks the device each time it reads
//!   `/sys/block/*/serial`), which is what `guest_serial` returns.
//! - Boot source, machine configuration and devices all come from the snapshot: a
//!   clone's kernel and initrd are not used, and its vCPUs and memory must be the
//!   template's (the memory file's size is checked against `memory_mib`).
//! - A jailed Firecracker cannot take part in templates yet (`Error::Unsupported`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::api::Method;
use super::config::{
    json, DrivePatch, SnapshotCreate, SnapshotLoad, SnapshotType, VmState, VmStateBody,
};
use super::FirecrackerVm;
use crate::template_files::{check_restore, io_error, partial, remove_if_there, sync};
use crate::{Error, TemplateMode, Vm, VmConfig};

/// Longest a snapshot save or load request may take (it writes or maps all of
/// guest memory).
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(120);

/// The first Firecracker versions with the load overrides a clone needs.
const VSOCK_OVERRIDE_SINCE: (u32, u32) = (1, 16);
const NETWORK_OVERRIDES_SINCE: (u32, u32) = (1, 12);

const MEMORY_REQUIRED: &str =
    "a Firecracker template needs a memory file (TemplateMode::Build { memory: Some(..) }): \
     Firecracker always saves guest memory into a file of its own";

/// Checks the template part of a configuration (called by `FirecrackerVm::new`):
/// no jail, a memory file for a Build, and for a Restore its files present and of
/// the config's memory size.
pub(super) fn check_config(config: &VmConfig) -> Result<(), Error> {
    match &config.template {
        None => Ok(()),
        Some(_) if config.jail.is_some() => Err(Error::Unsupported(
            "templates (snapshot save and restore) with a jailed Firecracker",
        )),
        Some(TemplateMode::Build { memory: None }) => {
            Err(Error::InvalidConfig(MEMORY_REQUIRED.into()))
        }
        Some(TemplateMode::Build { memory: Some(_) }) => Ok(()),
        Some(TemplateMode::Restore { memory: None, .. }) => Err(Error::InvalidConfig(
            "restoring a Firecracker template needs its memory file \
             (TemplateMode::Restore { memory: Some(..) })"
                .into(),
        )),
        Some(TemplateMode::Restore {
            memory: Some(memory),
            state,
        }) => check_restore(Some(memory), state, config.memory_mib),
    }
}

/// The directory holding `path` (`.` for a bare file name).
fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Moves the completed `.partial` files into place: both on disk first, then the
/// memory, then the state. A previous template's state goes before its memory is
/// replaced, so a state file only ever sits next to the memory it was saved with
/// (a crash in between leaves no state: no template).
fn commit(state: &Path, memory: &Path) -> Result<(), Error> {
    let (state_tmp, memory_tmp) = (partial(state), partial(memory));
    sync(&memory_tmp)?;
    sync(&state_tmp)?;
    remove_if_there(state)?;
    std::fs::rename(&memory_tmp, memory).map_err(|e| io_error("renaming", &memory_tmp, e))?;
    std::fs::rename(&state_tmp, state).map_err(|e| io_error("renaming", &state_tmp, e))?;
    sync(parent_dir(memory))?;
    sync(parent_dir(state))
}

/// `(major, minor)` of a Firecracker version such as `1.16.1` or `1.17.0-dev`.
fn parse_version(v: &str) -> Option<(u32, u32)> {
    let v = v.trim().trim_start_matches('v');
    let mut parts = v.split(['.', '-']);
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// Refuses a Firecracker too old for the overrides a clone needs. An unreadable
/// version is let through: the load itself then tells.
fn check_version(version: &str, nics: bool) -> Result<(), Error> {
    let Some(v) = parse_version(version) else {
        tracing::debug!("unrecognised Firecracker version {version:?}; trying the load");
        return Ok(());
    };
    if v < VSOCK_OVERRIDE_SINCE {
        return Err(Error::Unsupported(
            "restoring a template with Firecracker older than 1.16 (no vsock_override on snapshot load)",
        ));
    }
    if nics && v < NETWORK_OVERRIDES_SINCE {
        return Err(Error::Unsupported(
            "restoring a template with NICs on Firecracker older than 1.12 (no network_overrides)",
        ));
    }
    Ok(())
}

/// A path as an absolute one: Firecracker resolves relative paths against its own
/// working directory (the state directory), Ember against the caller's.
fn absolute(path: &Path) -> Result<PathBuf, Error> {
    std::path::absolute(path).map_err(|e| io_error("resolving", path, e))
}

impl FirecrackerVm {
    /// `Vm::save_template`: pauses the VM and saves it as a full snapshot, state into
    /// `state` and guest memory into the Build's memory file, whole or not at all.
    pub(super) async fn save_snapshot(&mut self, state: &Path) -> Result<(), Error> {
        let Some(TemplateMode::Build { memory }) = &self.config.template else {
            return Err(Error::InvalidConfig(
                "only a VM booted to be a template can be saved as one".into(),
            ));
        };
        let memory = absolute(
            memory
                .as_deref()
                .ok_or_else(|| Error::InvalidConfig(MEMORY_REQUIRED.into()))?,
        )?;
        let state = absolute(state)?;
        if state == memory {
            return Err(Error::InvalidConfig(format!(
                "the template state and memory cannot both be {}",
                state.display()
            )));
        }
        self.pause().await?;
        let (state_tmp, memory_tmp) = (partial(&state), partial(&memory));
        remove_if_there(&state_tmp)?;
        remove_if_there(&memory_tmp)?;
        let body = SnapshotCreate {
            snapshot_type: SnapshotType::Full,
            snapshot_path: state_tmp.clone(),
            mem_file_path: memory_tmp.clone(),
        };
        let saved = match self
            .api
            .call_within(
                Method::Put,
                "/snapshot/create",
                Some(&json(&body)),
                SNAPSHOT_TIMEOUT,
            )
            .await
        {
            Ok(_) => commit(&state, &memory),
            Err(e) => Err(e),
        };
        if saved.is_err() {
            let _ = std::fs::remove_file(&state_tmp);
            let _ = std::fs::remove_file(&memory_tmp);
        }
        saved
    }

    /// The restore part of the API conversation (after logger and metrics): load the
    /// snapshot paused, swap in the clone's drives, resume.
    pub(super) async fn restore_snapshot(
        &mut self,
        state: &Path,
        memory: Option<&Path>,
    ) -> Result<(), Error> {
        let memory = memory.ok_or_else(|| Error::InvalidConfig(MEMORY_REQUIRED.into()))?;
        let api = self.api.clone();
        let version = api.get_json("/version").await?;
        let version = version
            .get("firecracker_version")
            .and_then(|v| v.as_str())
            .unwrap_or_default();
        check_version(version, !self.config.nics.is_empty())?;
        // Firecracker binds the vsock socket during the load; one left behind makes
        // the load fail, and a failed load ends the process.
        remove_if_there(&self.paths.vsock)?;
        let body = SnapshotLoad::for_clone(
            &self.config,
            &absolute(state)?,
            &absolute(memory)?,
            absolute(&self.seen.state_dir.join("vsock.sock"))?,
        );
        api.call_within(
            Method::Put,
            "/snapshot/load",
            Some(&json(&body)),
            SNAPSHOT_TIMEOUT,
        )
        .await
        .map_err(|e| match e {
            Error::Control(m) => Error::Control(format!("restoring the template: {m}")),
            e => e,
        })?;
        for drive in &self.seen.drives {
            api.patch(
                &format!("/drives/{}", drive.id),
                &json(&DrivePatch {
                    drive_id: drive.id.clone(),
                    path_on_host: absolute(&drive.path)?,
                }),
            )
            .await?;
        }
        api.patch(
            "/vm",
            &json(&VmStateBody {
                state: VmState::Resumed,
            }),
        )
        .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
