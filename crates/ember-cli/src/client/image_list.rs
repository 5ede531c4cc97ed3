//! `ember images ls`: names, targets, sizes (the content of this host's
//! platform: manifest, config and layers) and ages.

use std::time::SystemTime;

use anyhow::{bail, Result};
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

/// The fields image filters can name.
const FIELDS: &str = "name, target.digest, target.mediatype, labels.KEY";

/// Selectors of one filter string: split at `,` outside quotes.
fn selectors(f: &str) -> Vec<String> {
    let (mut out, mut cur, mut quote) = (Vec::new(), String::new(), None::<char>);
    let mut prev_op = false;
    for c in f.chars() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '"' || (prev_op && (c == '/' || c == '|')) => quote = Some(c),
            None if c == ',' => {
                out.push(std::mem::take(&mut cur));
                prev_op = false;
                continue;
            }
            None => {}
        }
        prev_op = c == '=';
        cur.push(c);
    }
    out.push(cur);
    out
}

/// A filter argument as the daemon takes it: `FIELD OP VALUE` selectors are
/// checked for fields images have (containerd matches nothing on others, which
/// hides a typo); a bare image name lists that image, or every tag of a repository.
pub fn image_filters(arg: &str) -> Result<Vec<String>> {
    if !arg.contains("==") && !arg.contains("!=") && !arg.contains("~=") && !arg.contains(',') {
        let full = ember_images::reference::normalize(arg)
            .filter(|_| !arg.contains(['\\', ']', '^', '|', '"']));
        let Some(full) = full else {
            bail!("{arg:?} is neither an image name nor a filter like name==NAME ({FIELDS})");
        };
        let last = arg.rsplit('/').next().unwrap_or(arg);
        let mut out = vec![format!("name=={full:?}")];
        if full != arg {
            out.push(format!("name=={arg:?}"));
        }
        if !last.contains(':') && !arg.contains('@') {
            let repo = full.strip_suffix(":latest").unwrap_or(&full);
            out.push(format!("name~=|^{}[:@]|", regex_escape(repo)));
            if repo != arg {
                out.push(format!("name~=|^{}[:@]|", regex_escape(arg)));
            }
        }
        return Ok(out);
    }
    for sel in selectors(arg) {
        let field = sel.split(['=', '!', '~']).next().unwrap_or_default().trim();
        let mut parts = field.splitn(2, '.');
        let first = parts.next().unwrap_or_default().trim_matches('"');
        let rest = parts.next().map(|r| r.trim_matches('"'));
        let known = match first {
            "name" => rest.is_none(),
            "target" => matches!(rest, Some("digest" | "mediatype")),
            "labels" => rest.is_some_and(|r| !r.is_empty()),
            _ => false,
        };
        if !known {
            bail!("unknown filter field {field:?} in {arg:?}: images have {FIELDS}");
        }
    }
    Ok(vec![arg.to_string()])
}

/// `s` matched literally: special characters as one-character classes (the
/// filter language takes no `\.` inside a quoted expression).
fn regex_escape(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        if ".+*?()|[{}$".contains(c) {
            out.push('[');
            out.push(c);
            out.push(']');
        } else {
            out.push(c);
        }
    }
    out
}

pub async fn list(opts: &ClientOpts, quiet: bool, args: Vec<String>) -> Result<()> {
    let mut filters = Vec::new();
    for a in &args {
        filters.extend(image_filters(a)?);
    }
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
    fn filter_arguments() {
        assert_eq!(
            image_filters("busybox").unwrap(),
            vec![
                r#"name=="docker.io/library/busybox:latest""#.to_string(),
                r#"name=="busybox""#.to_string(),
                "name~=|^docker[.]io/library/busybox[:@]|".to_string(),
                "name~=|^busybox[:@]|".to_string(),
            ]
        );
        assert_eq!(
            image_filters("docker.io/ember/busybox:1").unwrap(),
            vec![r#"name=="docker.io/ember/busybox:1""#.to_string()]
        );
        assert!(image_filters("name==x,labels.\"a.b\"==c").is_ok());
        assert!(image_filters("target.digest~=/^sha256:/").is_ok());
        let e = image_filters("nmae==x").unwrap_err().to_string();
        assert!(
            e.contains("unknown filter field \"nmae\"") && e.contains("target.digest"),
            "{e}"
        );
        assert!(image_filters("name==x,size==3").is_err());
        assert!(image_filters("target==x").is_err());
        assert!(image_filters("Not A Name").is_err());
    }

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
