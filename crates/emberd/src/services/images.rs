//! `containerd.services.images.v1.Images`: named images pointing at content.
//! Deleting an image lets garbage collection free what only it kept; with `sync`
//! the collection has run when the call returns.

use std::sync::Arc;

use containerd_client::services::v1 as wire;
use containerd_client::services::v1::{ImageCreate, ImageDelete, ImageUpdate};
use containerd_client::types::Descriptor as WireDescriptor;
use ember_metadata::db::Reader;
use ember_metadata::{Descriptor, Image};
use tonic::{Request, Response, Status};

use crate::daemon::Metadata;
use crate::events::Exchange;
use crate::grpc::images::images_server::{Images, ImagesServer};
use crate::plugin::{InitError, Registration, EVENT, GRPC, METADATA};
use crate::services::{
    blocking, field_paths, filter, labels_in, labels_out, namespace, status, timestamp, GrpcService,
};

pub fn registration() -> Registration {
    Registration::new(GRPC, "images", &[METADATA, EVENT], |ctx| {
        let service = Service {
            md: ctx.registry.first(METADATA).map_err(InitError::Failed)?,
            events: ctx.registry.first(EVENT).map_err(InitError::Failed)?,
        };
        Ok(GrpcService::instance(move |r| {
            r.add_service(limited!(ImagesServer::new(service.clone())));
        }))
    })
}

#[derive(Clone)]
pub struct Service {
    md: Arc<Metadata>,
    events: Arc<Exchange>,
}

pub fn descriptor_in(d: Option<WireDescriptor>) -> Descriptor {
    let d = d.unwrap_or_default();
    Descriptor {
        media_type: d.media_type,
        digest: d.digest,
        size: d.size,
        annotations: d.annotations.into_iter().collect(),
    }
}

pub fn descriptor_out(d: &Descriptor) -> WireDescriptor {
    WireDescriptor {
        media_type: d.media_type.clone(),
        digest: d.digest.clone(),
        size: d.size,
        annotations: d
            .annotations
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    }
}

fn from_wire(i: wire::Image) -> Image {
    Image {
        name: i.name,
        labels: labels_in(i.labels),
        target: descriptor_in(i.target),
        created_at: std::time::UNIX_EPOCH,
        updated_at: std::time::UNIX_EPOCH,
    }
}

fn to_wire(i: &Image) -> wire::Image {
    wire::Image {
        name: i.name.clone(),
        labels: labels_out(&i.labels),
        target: Some(descriptor_out(&i.target)),
        created_at: timestamp(i.created_at),
        updated_at: timestamp(i.updated_at),
    }
}

#[tonic::async_trait]
impl Images for Service {
    async fn get(
        &self,
        r: Request<wire::GetImageRequest>,
    ) -> Result<Response<wire::GetImageResponse>, Status> {
        let ns = namespace(&r)?;
        let name = r.into_inner().name;
        let db = self.md.db.clone();
        let i = blocking(move || db.view(|tx| tx.get_image(&ns, &name))).await?;
        Ok(Response::new(wire::GetImageResponse {
            image: Some(to_wire(&i)),
        }))
    }

    async fn list(
        &self,
        r: Request<wire::ListImagesRequest>,
    ) -> Result<Response<wire::ListImagesResponse>, Status> {
        let ns = namespace(&r)?;
        let f = filter(&r.into_inner().filters)?;
        let db = self.md.db.clone();
        let all = blocking(move || db.view(|tx| tx.list_images(&ns, &f))).await?;
        Ok(Response::new(wire::ListImagesResponse {
            images: all.iter().map(to_wire).collect(),
        }))
    }

    async fn create(
        &self,
        r: Request<wire::CreateImageRequest>,
    ) -> Result<Response<wire::CreateImageResponse>, Status> {
        let ns = namespace(&r)?;
        let i = r
            .into_inner()
            .image
            .ok_or_else(|| Status::invalid_argument("image is required"))?;
        let i = from_wire(i);
        let db = self.md.db.clone();
        let n = ns.clone();
        let created = blocking(move || db.update(|tx| tx.create_image(&n, &i))).await?;
        self.events.publish(
            &ns,
            "/images/create",
            &ImageCreate {
                name: created.name.clone(),
                labels: labels_out(&created.labels),
            },
        );
        Ok(Response::new(wire::CreateImageResponse {
            image: Some(to_wire(&created)),
        }))
    }

    async fn update(
        &self,
        r: Request<wire::UpdateImageRequest>,
    ) -> Result<Response<wire::UpdateImageResponse>, Status> {
        let ns = namespace(&r)?;
        let r = r.into_inner();
        let i = r
            .image
            .ok_or_else(|| Status::invalid_argument("image is required"))?;
        let i = from_wire(i);
        let paths = field_paths(r.update_mask);
        let db = self.md.db.clone();
        let n = ns.clone();
        let updated = blocking(move || db.update(|tx| tx.update_image(&n, &i, &paths))).await?;
        self.events.publish(
            &ns,
            "/images/update",
            &ImageUpdate {
                name: updated.name.clone(),
                labels: labels_out(&updated.labels),
            },
        );
        // A new target may leave the old one unreferenced.
        self.md.gc.schedule();
        Ok(Response::new(wire::UpdateImageResponse {
            image: Some(to_wire(&updated)),
        }))
    }

    async fn delete(&self, r: Request<wire::DeleteImageRequest>) -> Result<Response<()>, Status> {
        let ns = namespace(&r)?;
        let r = r.into_inner();
        let (name, sync, target) = (r.name, r.sync, r.target);
        let db = self.md.db.clone();
        let (n, i) = (ns.clone(), name.clone());
        blocking(move || {
            db.update(|tx| {
                if let Some(t) = &target {
                    let current = tx.get_image(&n, &i)?;
                    if current.target.digest != t.digest {
                        return Err(ember_metadata::Error::FailedPrecondition(format!(
                            "image {i:?} has target {}, not {}",
                            current.target.digest, t.digest
                        )));
                    }
                }
                tx.delete_image(&n, &i)
            })
        })
        .await?;
        self.events
            .publish(&ns, "/images/delete", &ImageDelete { name });
        if sync {
            self.md.gc.run().await.map_err(status)?;
        } else {
            self.md.gc.schedule();
        }
        Ok(Response::new(()))
    }
}
