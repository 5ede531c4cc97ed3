//! Templates on QEMU: a guest saved once, restored by many.
//!
//! The device state goes through QEMU's migration into a file, and comes back
//! from it in a QEMU started with `-incoming defer`. The file's descriptor is
//! handed over QMP (`getfd`), so a jailed QEMU that cannot open host paths restores
//! the same way. Guest RAM either lives in a file of its own (the template is built
//! with it mapped shared and saved with the `x-ignore-shared` capability, so the
//! state holds no RAM; a clone maps it privately and shares every page it does not
//! write with the other clones) or travels inside the state (clones then load it
//! into memory of their own).

use std::os::fd::AsFd;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::Qmp;
use crate::template_files::{io_error, partial, remove_if_there};
use crate::Error;

/// The name under which QEMU holds the state file's descriptor.
const FD_NAME: &str = "ember-template";
/// Longest a save or a restore may take.
const MIGRATION_TIMEOUT: Duration = Duration::from_secs(120);

async fn set_ignore_shared(qmp: &Qmp, on: bool) -> Result<(), Error> {
    qmp.execute(
        "migrate-set-capabilities",
        Some(json!({"capabilities": [{"capability": "x-ignore-shared", "state": on}]})),
    )
    .await
    .map(|_| ())
}

/// Pauses the VM and saves its state into `state` (through `state.partial`, renamed
/// once complete and on disk). `ram_in_file`: guest RAM is a shared file the state
/// leaves out.
pub(super) async fn save(qmp: &Qmp, state: &Path, ram_in_file: bool) -> Result<(), Error> {
    qmp.execute("stop", None).await?;
    set_ignore_shared(qmp, ram_in_file).await?;
    let partial = partial(state);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&partial)
        .map_err(|e| io_error("creating", &partial, e))?;
    qmp.send_fd(FD_NAME, file.as_fd()).await?;
    qmp.execute("migrate", Some(json!({"uri": format!("fd:{FD_NAME}")})))
        .await?;
    let deadline = Instant::now() + MIGRATION_TIMEOUT;
    loop {
        let info = qmp.execute("query-migrate", None).await?;
        match info.get("status").and_then(Value::as_str).unwrap_or("") {
            "completed" => break,
            s @ ("failed" | "cancelled") => {
                let _ = std::fs::remove_file(&partial);
                let why = info
                    .get("error-desc")
                    .and_then(Value::as_str)
                    .unwrap_or("no reason given");
                return Err(Error::Control(format!("saving the VM state {s}: {why}")));
            }
            _ => {}
        }
        if Instant::now() > deadline {
            let _ = qmp.execute("migrate_cancel", None).await;
            let _ = std::fs::remove_file(&partial);
            return Err(Error::Control(format!(
                "saving the VM state took over {MIGRATION_TIMEOUT:?}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    file.sync_all()
        .map_err(|e| io_error("syncing", &partial, e))?;
    drop(file);
    std::fs::rename(&partial, state).map_err(|e| io_error("renaming", &partial, e))?;
    Ok(())
}

/// Loads `state` into a QEMU waiting with `-incoming defer` and lets the guest run.
/// `ram_in_file`: RAM is mapped from the template's file, not in the state.
pub(super) async fn restore(
    qmp: &Qmp,
    state: &Path,
    ram_in_file: bool,
    timeout: Duration,
) -> Result<(), Error> {
    set_ignore_shared(qmp, ram_in_file).await?;
    let file = std::fs::File::open(state).map_err(|e| io_error("opening", state, e))?;
    qmp.send_fd(FD_NAME, file.as_fd()).await?;
    drop(file);
    qmp.execute(
        "migrate-incoming",
        Some(json!({"uri": format!("fd:{FD_NAME}")})),
    )
    .await?;
    let deadline = Instant::now() + timeout.min(MIGRATION_TIMEOUT);
    loop {
        let st = qmp.execute("query-status", None).await?;
        match st.get("status").and_then(Value::as_str).unwrap_or("") {
            "running" => return Ok(()),
            // Loaded, but not started (no autostart): start it.
            "paused" | "postmigrate" | "prelaunch" => {
                qmp.execute("cont", None).await?;
                return Ok(());
            }
            "inmigrate" | "restore-vm" | "finish-migrate" => {}
            other => {
                return Err(Error::Control(format!(
                    "the restored VM is {other:?}, not running"
                )))
            }
        }
        if Instant::now() > deadline {
            return Err(Error::Control(format!(
                "loading the VM state took over {:?}",
                timeout.min(MIGRATION_TIMEOUT)
            )));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Makes a fresh memory file of `mib` MiB at `path` for a template's RAM (an old
/// one, of whatever size, goes first).
pub(super) fn fresh_memory_file(path: &Path, mib: u32) -> Result<(), Error> {
    remove_if_there(path)?;
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .create_new(true)
        .write(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| io_error("creating", path, e))?;
    f.set_len(u64::from(mib) << 20)
        .map_err(|e| io_error("sizing", path, e))?;
    Ok(())
}
