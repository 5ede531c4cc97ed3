//! `OCIRegistry` ↔ `ImageStore`: pull (then unpack) and push, through
//! `ember-registry`.

use std::sync::Arc;

use containerd_client::types::transfer::{ImageStore, OciRegistry};
use ember_images::Platform;
use ember_registry::{CredentialSource, HostsConfig, PullOptions, Reference, Registry};
use tokio::sync::Mutex;
use tonic::Status;

use super::callbacks::StreamCredentials;
use super::unpack::Arrivals;
use super::{images, platforms_in, registry_status, Job};

/// The registry client a request's resolver describes.
fn client(job: &Job<'_>, reg: &OciRegistry) -> Result<Arc<Registry>, Status> {
    let resolver = reg.resolver.clone().unwrap_or_default();
    let creds: Arc<dyn CredentialSource> = if resolver.auth_stream.is_empty() {
        Arc::new(ember_registry::auth::Anonymous)
    } else {
        let s = job.inner.streams.take(&job.ns, &resolver.auth_stream)?;
        Arc::new(StreamCredentials {
            stream: Mutex::new(s),
            reference: reg.reference.clone(),
        })
    };
    let hosts = HostsConfig {
        dir: if resolver.host_dir.is_empty() {
            job.inner.hosts_dir.clone()
        } else {
            Some(resolver.host_dir.clone().into())
        },
        default_scheme: resolver.default_scheme.clone(),
        plain_http: Vec::new(),
        headers: resolver.headers.into_iter().collect(),
    };
    Ok(Registry::new(hosts, creds))
}

fn reference(r: &str) -> Result<Reference, Status> {
    Reference::parse(r).map_err(registry_status)
}

/// `OCIRegistry` → `ImageStore`.
pub async fn pull(job: &Job<'_>, reg: OciRegistry, is: ImageStore) -> Result<(), Status> {
    let r = reference(&reg.reference)?;
    let registry = client(job, &reg)?;
    let repo = registry.repository(&r, false).map_err(registry_status)?;
    let source = format!("OCI Registry ({})", reg.reference);
    job.status(format!("Resolving from {source}"));
    // The first unpack runs while the pull goes on; others follow it.
    let unpacks: Vec<(Platform, String)> = is
        .unpacks
        .iter()
        .map(|u| {
            let platform = u
                .platform
                .as_ref()
                .map(|p| platforms_in(std::slice::from_ref(p)).remove(0))
                .unwrap_or_else(Platform::host);
            (platform, u.snapshotter.clone())
        })
        .collect();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let opts = PullOptions {
        platforms: platforms_in(&is.platforms),
        all_metadata: is.all_metadata,
        max_concurrent: job.inner.downloads,
        arrivals: (!unpacks.is_empty()).then_some(tx),
    };
    let store = Arc::new(job.store());
    let unpacker = job.unpacker();
    let pulling = async {
        let opts = opts;
        ember_registry::pull(&repo, store, &opts, job.progress).await
    };
    let unpacking = async {
        match unpacks.first() {
            Some((platform, snapshotter)) => {
                unpacker
                    .unpack_arriving(Arrivals::of(rx), platform, snapshotter)
                    .await
            }
            None => Ok(None),
        }
    };
    let (pulled, unpacked) = tokio::join!(pulling, unpacking);
    let pulled = pulled.map_err(|e| {
        // Failures reaching or finding the image are resolution failures, as
        // containerd words them; the others happened while fetching content.
        let stage = match e {
            ember_registry::Error::InvalidReference(_)
            | ember_registry::Error::NotFound(_)
            | ember_registry::Error::Auth(_)
            | ember_registry::Error::Config(_)
            | ember_registry::Error::Unavailable(_) => "failed to resolve image",
            _ => "failed to pull image",
        };
        let s = registry_status(e);
        Status::new(s.code(), format!("{stage}: {}", s.message()))
    })?;
    let unpacked = unpacked?;
    job.status(format!("Pulling from {source}"));
    for (i, (platform, snapshotter)) in unpacks.iter().enumerate() {
        if i == 0 && unpacked.is_some() {
            continue;
        }
        let Some(m) = unpacker.manifest_for(&pulled.target, platform).await? else {
            return Err(Status::not_found(format!(
                "no manifest of {} for {}/{}",
                pulled.name, platform.os, platform.architecture
            )));
        };
        job.progress.progress(ember_registry::Progress {
            event: "unpacking".into(),
            name: pulled.name.clone(),
            ..Default::default()
        });
        unpacker.unpack(&m, snapshotter).await?;
    }
    let names = images::names_for(&is, &pulled.target.digest);
    images::store(job, &is, names, &pulled.target).await?;
    job.status(format!("Completed pull from {source}"));
    Ok(())
}

/// `ImageStore` → `OCIRegistry`.
pub async fn push(job: &Job<'_>, is: ImageStore, reg: OciRegistry) -> Result<(), Status> {
    let r = reference(&reg.reference)?;
    let image = images::get(job, &is.name).await?;
    let target = images::target_in(&image.target);
    let registry = client(job, &reg)?;
    let repo = registry.repository(&r, true).map_err(registry_status)?;
    let source = format!("OCI Registry ({})", reg.reference);
    job.status(format!("Pushing to {source}"));
    ember_registry::push(
        &repo,
        Arc::new(job.store()),
        &target,
        job.progress,
        job.inner.uploads,
    )
    .await
    .map_err(registry_status)?;
    job.status(format!("Completed push to {source}"));
    Ok(())
}
