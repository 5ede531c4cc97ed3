//! Starting a sandbox from a template: restore, give the clone its own identity,
//! and fall back to an ordinary boot when that fails.

use std::io::Read;
use std::time::{Duration, Instant, SystemTime};

use ember_agent_api::{ConfigureNetworkRequest, SetIdentityRequest};
use ember_vmm::{TemplateMode, VmmKind};

use crate::template::{self, guest_mac, Template, TemplateStore};
use crate::{Error, Sandbox, SandboxConfig};

/// Bytes of host entropy each clone's generator gets.
const SEED_BYTES: usize = 64;

fn host_seed() -> Result<Vec<u8>, Error> {
    let mut seed = vec![0u8; SEED_BYTES];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut seed)?;
    Ok(seed)
}

impl Sandbox {
    /// Starts the sandbox of `config`: restored from the template of its shape
    /// when `templates` is given and the shape can have one (built first if the
    /// store has none), else booted. A restore that fails boots instead and says
    /// why in the log; the template is dropped only when that boot works (the
    /// fault was the template's, not the host's).
    pub async fn start(
        config: SandboxConfig,
        templates: Option<&TemplateStore>,
    ) -> Result<Sandbox, Error> {
        let Some(store) = templates else {
            return Sandbox::boot(config).await;
        };
        let shape = match template::shape_of(&config).await {
            Ok(s) => s,
            Err(e) => {
                tracing::info!(sandbox = %config.id, "booting without a template: {e}");
                return Sandbox::boot(config).await;
            }
        };
        let t = match template::obtain(store, &config, &shape).await {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(sandbox = %config.id, "no template ({e}); booting");
                return Sandbox::boot(config).await;
            }
        };
        match Sandbox::restore(config.clone(), &t).await {
            Ok(sb) => Ok(sb),
            Err(e) => {
                tracing::warn!(
                    sandbox = %config.id,
                    template = %t.key,
                    "restoring the template failed, booting instead: {e}"
                );
                let sb = Sandbox::boot(config).await?;
                if let Ok(_l) = store.lock(&t.key).await {
                    let _ = store.discard(&t.key);
                }
                Ok(sb)
            }
        }
    }

    /// Restores `config`'s sandbox from `t` (a template of its shape): the VM with
    /// the config's own drives, shared directory and NICs, then a fresh identity.
    pub async fn restore(config: SandboxConfig, t: &Template) -> Result<Sandbox, Error> {
        let started = Instant::now();
        let mut vc = config.vm_config();
        vc.accel = t.manifest.shape.accel;
        vc.kernel_args = template::with_template_arg(&config.kernel_args);
        let mut nic_macs = Vec::new();
        for (i, n) in vc.nics.iter_mut().enumerate() {
            let mac = guest_mac(i);
            nic_macs.push((n.mac.clone(), mac.clone()));
            n.mac = mac;
        }
        vc.template = Some(TemplateMode::Restore {
            memory: t.memory(),
            state: t.state(),
        });
        let seed = host_seed()?;
        let mut sb = Sandbox::boot_vm(
            VmmKind::Qemu,
            vc,
            config.drives.clone(),
            config.boot_timeout,
        )
        .await?;
        let req = SetIdentityRequest {
            seed,
            hostname: template::hostname_of(&config.kernel_args),
            unix_ns: ember_agent_api::unix_ns(SystemTime::now()),
        };
        if let Err(e) = sb.agent.set_identity(&req).await {
            let _ = sb.vm.stop(Duration::ZERO).await;
            return Err(e.into());
        }
        sb.timings.identity_ready = started.elapsed();
        sb.timings.from_template = true;
        sb.template = Some(t.key.clone());
        sb.nic_macs = nic_macs;
        tracing::info!(
            template = %t.key,
            restore_ms = sb.timings.vmm_ready.as_millis() as u64,
            ready_ms = sb.timings.identity_ready.as_millis() as u64,
            "sandbox {} restored",
            config.id
        );
        Ok(sb)
    }

    /// The template this sandbox was restored from.
    pub fn template(&self) -> Option<&str> {
        self.template.as_deref()
    }

    /// `req` as the guest must get it: a clone's NICs carry the template's MACs,
    /// so each interface is found by that and given the MAC it was asked to have.
    pub fn guest_network(&self, req: &ConfigureNetworkRequest) -> ConfigureNetworkRequest {
        let mut req = req.clone();
        for i in &mut req.interfaces {
            let wanted = i.device_mac.to_ascii_lowercase();
            if let Some((_, guest)) = self
                .nic_macs
                .iter()
                .find(|(asked, _)| asked.to_ascii_lowercase() == wanted)
            {
                if i.mac.is_empty() {
                    i.mac = i.device_mac.clone();
                }
                i.device_mac = guest.clone();
            }
        }
        req
    }
}
