//! `ember tag` (also `ember images tag`): another name for an image.

use anyhow::{anyhow, bail, Result};
use containerd_client::services::v1 as api;
use containerd_client::services::v1::images_client::ImagesClient;
use containerd_client::tonic::Code;

use super::{rpc, ClientOpts};

#[derive(clap::Args, Debug)]
#[command(about = "Give an image another name")]
pub struct TagArgs {
    /// The image as it is named now.
    source: String,
    /// The new name.
    target: String,
    /// Replace an existing image of that name.
    #[arg(long)]
    force: bool,
}

pub async fn tag(opts: &ClientOpts, a: TagArgs) -> Result<i32> {
    let mut c = ImagesClient::new(opts.channel().await?);
    let mut img = match c
        .get(opts.req(api::GetImageRequest {
            name: a.source.clone(),
        }))
        .await
    {
        Ok(r) => r
            .into_inner()
            .image
            .ok_or_else(|| anyhow!("no such image: {}", a.source))?,
        Err(s) if s.code() == Code::NotFound => bail!("no such image: {}", a.source),
        Err(s) => return Err(rpc(s)),
    };
    img.name = a.target.clone();
    let created = c
        .create(opts.req(api::CreateImageRequest {
            image: Some(img.clone()),
            ..Default::default()
        }))
        .await;
    match created {
        Ok(_) => {}
        Err(s) if s.code() == Code::AlreadyExists && a.force => {
            c.update(opts.req(api::UpdateImageRequest {
                image: Some(img),
                ..Default::default()
            }))
            .await
            .map_err(rpc)?;
        }
        Err(s) if s.code() == Code::AlreadyExists => {
            bail!(
                "an image named {} exists already (--force replaces it)",
                a.target
            )
        }
        Err(s) => return Err(rpc(s)),
    }
    println!("{}", a.target);
    Ok(0)
}
