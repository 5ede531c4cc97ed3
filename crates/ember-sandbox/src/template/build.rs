//! Getting the template of a shape: the one in the store if it checks, else one
//! built now, once, however many sandboxes ask at the same time.

use std::time::Instant;

use ember_vmm::{Drive, Nic, TemplateMode};

use super::{
    guest_mac, placeholder, with_template_arg, Shape, StoreError, Template, TemplateStore,
};
use crate::{Error, Sandbox, SandboxConfig};

/// The template of `shape` (the shape of `config`): found, or built.
pub async fn obtain(
    store: &TemplateStore,
    config: &SandboxConfig,
    shape: &Shape,
) -> Result<Template, Error> {
    match store.lookup(shape) {
        Ok(Some(t)) => return Ok(t),
        Ok(None) => {}
        Err(StoreError::Invalid { key, why }) => {
            tracing::warn!("template {key}: {why}; rebuilding it");
        }
        Err(e) => return Err(store_err(e)),
    }
    let key = shape.key();
    let _lock = store.lock(&key).await.map_err(store_err)?;
    // Someone else may have built it meanwhile.
    if let Ok(Some(t)) = store.lookup(shape) {
        return Ok(t);
    }
    let t = build(store, config, shape).await?;
    match store.evict(&key).await {
        Ok(gone) if !gone.is_empty() => {
            tracing::info!("templates over the size cap removed: {}", gone.join(", "))
        }
        Ok(_) => {}
        Err(e) => tracing::warn!("evicting templates: {e}"),
    }
    Ok(t)
}

fn store_err(e: StoreError) -> Error {
    Error::Invalid(format!("template store: {e}"))
}

/// Boots the template VM of `shape` from placeholders and saves it; the caller
/// holds the key's lock.
async fn build(
    store: &TemplateStore,
    config: &SandboxConfig,
    shape: &Shape,
) -> Result<Template, Error> {
    let started = Instant::now();
    let key = shape.key();
    store.discard(&key).map_err(store_err)?;
    let dir = store.path(&key);
    let vm_dir = dir.join("vm");
    std::fs::create_dir_all(&vm_dir)?;
    std::fs::create_dir_all(dir.join("drives"))?;
    let mut vc = config.vm_config();
    vc.id = format!("template-{key}");
    vc.state_dir = vm_dir;
    vc.accel = shape.accel;
    vc.kernel_args = with_template_arg(&config.kernel_args);
    vc.jail = None;
    vc.netns = None;
    vc.drives = Vec::new();
    for (i, d) in shape.drives.iter().enumerate() {
        let path = dir.join("drives").join(i.to_string());
        placeholder(&path, d.len)?;
        vc.drives.push(Drive {
            id: d.id.clone(),
            path,
            read_only: d.read_only,
        });
    }
    vc.shared_dir = if shape.shared_dir {
        let p = dir.join("shared");
        std::fs::create_dir_all(&p)?;
        Some(p)
    } else {
        None
    };
    vc.nics = shape
        .nic_mtus
        .iter()
        .enumerate()
        .map(|(i, mtu)| Nic {
            id: format!("n{i}"),
            tap: format!("tpl{i}"),
            mac: guest_mac(i),
            mtu: *mtu,
        })
        .collect();
    vc.template = Some(TemplateMode::Build {
        memory: shape.ram_in_file().then(|| dir.join("memory")),
    });
    let drives = vc.drives.clone();
    let timeout = config.boot_timeout;
    let mut sb = Sandbox::boot_vm(config.vmm, vc, drives, timeout).await?;
    let booted = started.elapsed();
    let saved = sb.vm_mut().save_template(&dir.join("state")).await;
    let _ = sb.kill().await;
    saved?;
    let t = store
        .finish(shape, started.elapsed().as_millis() as u64)
        .map_err(store_err)?;
    tracing::info!(
        template = %key,
        boot_ms = booted.as_millis() as u64,
        total_ms = started.elapsed().as_millis() as u64,
        "template built"
    );
    Ok(t)
}
