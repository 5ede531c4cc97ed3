//! `ember images ls`: names, targets, sizes (the content of this host's
//! platform: manifest, config and layers) and ages.

use std::time::SystemTime;

use anyhow::Result;
use containerd_client::services::v1 as api;
use containerd_client::services::v1::images_client::ImagesClient;
use ember_images::Descriptor;
use serde::Serialize;

use super::images::{platform_manifest, Ctx};
use super::{human_size, labels_cell, output, rfc3339, rpc, secs_since, time_of, ClientOpts};

#[derive(Serialize)]
struct ImageRow {
    name: String,
    media_type: String,
    digest: String,
    /// Bytes of this platform's manifest, config and layers (the target's own
    /// size when they are not all stored).
    size: i64,
    /// RFC 3339.
    created: String,
    /// `3 minutes ago`.
    age: String,
    labels: std::collections::BTreeMap<String, String>,
}

/// `3 minutes ago`, `1 hour ago`, `2 days ago`.
pub fn ago(t: Option<SystemTime>) -> String {
    let Some(s) = t.map(secs_since) else {
        return "-".into();
    };
    let (n, unit) = match s {
        0..=1 => return "just now".into(),
        2..=59 => (s, "second"),
        60..=3599 => (s / 60, "minute"),
        3600..=86399 => (s / 3600, "hour"),
        86400..=2_591_999 => (s / 86400, "day"),
        2_592_000..=31_535_999 => (s / 2_592_000, "month"),
        _ => (s / 31_536_000, "year"),
    };
    format!("{n} {unit}{} ago", if n == 1 { "" } else { "s" })
}

/// The bytes an image holds for this host's platform.
async fn image_size(ctx: &Ctx, target: &Descriptor) -> Option<i64> {
    let (d, m) = platform_manifest(ctx, target).await.ok()?;
    let mut size = target.size + m.config.size;
    if d.digest != target.digest {
        // An index: the chosen manifest counts too.
        size += d.size;
    }
    Some(size + m.layers.iter().map(|l| l.size).sum::<i64>())
}

pub async fn list(opts: &ClientOpts, quiet: bool, filters: Vec<String>) -> Result<()> {
    let channel = opts.channel().await?;
    let list = ImagesClient::new(channel.clone())
        .list(opts.req(api::ListImagesRequest { filters }))
        .await
        .map_err(rpc)?
        .into_inner()
        .images;
    let ctx = Ctx {
        opts: opts.clone(),
        lease: None,
        channel,
    };
    let mut rows = Vec::with_capacity(list.len());
    for i in list {
        let t = i.target.unwrap_or_default();
        let target = Descriptor {
            media_type: t.media_type.clone(),
            digest: t.digest.clone(),
            size: t.size,
            ..Default::default()
        };
        let size = if quiet {
            t.size
        } else {
            image_size(&ctx, &target).await.unwrap_or(t.size)
        };
        let created = time_of(&i.created_at);
        rows.push(ImageRow {
            name: i.name,
            media_type: t.media_type,
            digest: t.digest,
            size,
            created: rfc3339(created),
            age: ago(created),
            labels: i.labels.into_iter().collect(),
        });
    }
    if quiet && !opts.json {
        for r in &rows {
            println!("{}", r.name);
        }
        return Ok(());
    }
    output(
        opts,
        &rows,
        &["REF", "TYPE", "DIGEST", "SIZE", "CREATED", "LABELS"],
        |r| {
            vec![
                r.name.clone(),
                r.media_type.clone(),
                r.digest.clone(),
                human_size(r.size),
                r.age.clone(),
                labels_cell(&r.labels),
            ]
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn ages() {
        let now = SystemTime::now();
        assert_eq!(ago(Some(now)), "just now");
        assert_eq!(ago(Some(now - Duration::from_secs(180))), "3 minutes ago");
        assert_eq!(ago(Some(now - Duration::from_secs(3700))), "1 hour ago");
        assert_eq!(
            ago(Some(now - Duration::from_secs(86400 * 2))),
            "2 days ago"
        );
        assert_eq!(ago(None), "-");
    }
}
