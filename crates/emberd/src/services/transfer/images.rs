//! The `ImageStore` side of a transfer: which names an image is stored under
//! (its name, extra references, digests added) and the records themselves.

use containerd_client::services::v1::{ImageCreate, ImageUpdate};
use containerd_client::types::transfer::ImageStore;
use ember_images::Descriptor;
use ember_metadata::db::Reader;
use ember_metadata::Image;
use tonic::Status;

use super::Job;
use crate::services::{blocking, labels_out};

/// An image descriptor as the metadata store keeps it.
pub fn target_out(d: &Descriptor) -> ember_metadata::Descriptor {
    ember_metadata::Descriptor {
        media_type: d.media_type.clone(),
        digest: d.digest.clone(),
        size: d.size,
        annotations: d.annotations.clone(),
    }
}

pub fn target_in(d: &ember_metadata::Descriptor) -> Descriptor {
    Descriptor {
        media_type: d.media_type.clone(),
        digest: d.digest.clone(),
        size: d.size,
        annotations: d.annotations.clone(),
        platform: None,
    }
}

/// The names an image store gives a pulled (or tagged) image: its name and its
/// full (non-prefix) extra references, with the digest where asked.
pub fn names_for(is: &ImageStore, digest: &str) -> Vec<String> {
    let mut out = Vec::new();
    if !is.name.is_empty() {
        out.push(is.name.clone());
    }
    for r in is.extra_references.iter().filter(|r| !r.is_prefix) {
        if r.add_digest {
            out.push(format!("{}@{digest}", r.name));
        } else {
            out.push(r.name.clone());
        }
    }
    out
}

/// Creates or retargets the images `names` at `target`; reports each as saved.
pub async fn store(
    job: &Job<'_>,
    is: &ImageStore,
    names: Vec<String>,
    target: &Descriptor,
) -> Result<(), Status> {
    if names.is_empty() {
        return Err(Status::not_found("no image name found: not found"));
    }
    for name in names {
        let image = Image {
            name: name.clone(),
            labels: is.labels.clone().into_iter().collect(),
            target: target_out(target),
            created_at: std::time::UNIX_EPOCH,
            updated_at: std::time::UNIX_EPOCH,
        };
        let (db, ns) = (job.inner.md.db.clone(), job.ns.clone());
        let (image, created) = blocking(move || {
            db.update(|tx| match tx.create_image(&ns, &image) {
                Ok(i) => Ok((i, true)),
                Err(ember_metadata::Error::AlreadyExists(_)) => {
                    Ok((tx.update_image(&ns, &image, &[])?, false))
                }
                Err(e) => Err(e),
            })
        })
        .await?;
        let labels = labels_out(&image.labels);
        if created {
            job.inner.events.publish(
                &job.ns,
                "/images/create",
                &ImageCreate {
                    name: name.clone(),
                    labels,
                },
            );
        } else {
            job.inner.events.publish(
                &job.ns,
                "/images/update",
                &ImageUpdate {
                    name: name.clone(),
                    labels,
                },
            );
        }
        job.progress.progress(ember_registry::Progress {
            event: "saved".into(),
            name,
            ..Default::default()
        });
    }
    job.inner.md.gc.schedule();
    Ok(())
}

/// The image an image store names.
pub async fn get(job: &Job<'_>, name: &str) -> Result<Image, Status> {
    if name.is_empty() {
        return Err(Status::invalid_argument("an image name is required"));
    }
    let (db, ns, n) = (job.inner.md.db.clone(), job.ns.clone(), name.to_string());
    blocking(move || db.view(|tx| tx.get_image(&ns, &n))).await
}

/// `ImageStore` → `ImageStore`: another name for an image.
pub async fn tag(job: &Job<'_>, from: ImageStore, to: ImageStore) -> Result<(), Status> {
    let image = get(job, &from.name).await?;
    let target = target_in(&image.target);
    let names = names_for(&to, &target.digest);
    store(job, &to, names, &target).await
}
