//! The distribution API calls of a [`Repository`]: resolving a reference,
//! reading manifests and blobs (ranged, to resume), checking for blobs, uploads
//! (POST, PATCH, PUT; cross-repository mounts) and storing manifests.

use bytes::Bytes;
use http::{Method, StatusCode};
use hyper::body::Incoming;

use crate::auth::query_escape;
use crate::client::{header, read_body, status_error, Body, Call, Repository};
use crate::hosts::RegistryHost;
use crate::{Error, Result, MANIFEST_ACCEPT};

/// What a manifest request answered.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub media_type: String,
    pub digest: String,
    pub size: i64,
}

impl Repository {
    /// The hosts for pulling or pushing, in order.
    pub fn hosts(&self) -> &[RegistryHost] {
        &self.hosts
    }

    /// Resolves the reference to its manifest or index descriptor.
    pub async fn resolve(&self) -> Result<Resolved> {
        let object = self.reference.object().to_string();
        let target = format!("/{}/manifests/{object}", self.reference.repository);
        let mut last = Error::NotFound(self.reference.to_string());
        for host in self.hosts.iter().filter(|h| h.capabilities.resolve) {
            for method in [Method::HEAD, Method::GET] {
                let call = Call::new(method.clone(), &target).header("accept", MANIFEST_ACCEPT);
                let resp = match self.send(host, &call).await {
                    Ok(r) => r,
                    Err(e) => {
                        last = e;
                        break;
                    }
                };
                let status = resp.status();
                if !status.is_success() {
                    last = status_error(&self.reference.to_string(), status);
                    break;
                }
                let h = resp.headers().clone();
                let media_type = header(&h, "content-type")
                    .map(|c| c.split(';').next().unwrap_or_default().trim().to_string())
                    .unwrap_or_default();
                let digest = header(&h, "docker-content-digest");
                let (digest, size) = match (method.clone(), digest) {
                    (Method::HEAD, Some(d)) => {
                        let size = header(&h, "content-length")
                            .and_then(|l| l.parse::<i64>().ok())
                            .unwrap_or(-1);
                        if size < 0 {
                            continue;
                        }
                        (d, size)
                    }
                    (Method::HEAD, None) => continue,
                    _ => {
                        let body = read_body(resp.into_body(), 8 << 20).await?;
                        (ember_images::sha256_digest(&body), body.len() as i64)
                    }
                };
                if let Some(want) = &self.reference.digest {
                    if &digest != want {
                        return Err(Error::Invalid(format!(
                            "{} answered {digest} for {want}",
                            host.authority
                        )));
                    }
                }
                if media_type.contains("prettyjws")
                    || media_type == "application/vnd.docker.distribution.manifest.v1+json"
                {
                    return Err(Error::Unsupported(format!(
                        "{}: schema 1 manifests are not supported",
                        self.reference
                    )));
                }
                return Ok(Resolved {
                    media_type,
                    digest,
                    size,
                });
            }
        }
        Err(last)
    }

    /// Opens a blob or manifest for reading from `offset` (a ranged request);
    /// returns the body and the offset it starts at (0 when the registry ignored
    /// the range).
    pub async fn fetch(
        &self,
        digest: &str,
        manifest: bool,
        offset: u64,
    ) -> Result<(Incoming, u64)> {
        let kind = if manifest { "manifests" } else { "blobs" };
        let target = format!("/{}/{kind}/{digest}", self.reference.repository);
        let mut last = Error::NotFound(format!("{} {digest}", self.reference.name()));
        for host in self.hosts.iter().filter(|h| h.capabilities.pull) {
            let mut call = Call::new(Method::GET, &target);
            if manifest {
                call = call.header("accept", MANIFEST_ACCEPT);
            }
            if offset > 0 {
                call = call.header("range", format!("bytes={offset}-"));
            }
            match self.send(host, &call).await {
                Ok(r) if r.status() == StatusCode::PARTIAL_CONTENT => {
                    return Ok((r.into_body(), offset))
                }
                Ok(r) if r.status().is_success() => return Ok((r.into_body(), 0)),
                Ok(r) => {
                    last = status_error(&format!("{} {digest}", self.reference.name()), r.status())
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// Whether the repository has a blob.
    pub async fn blob_exists(&self, host: &RegistryHost, digest: &str) -> Result<bool> {
        let target = format!("/{}/blobs/{digest}", self.reference.repository);
        let r = self.send(host, &Call::new(Method::HEAD, &target)).await?;
        match r.status() {
            s if s.is_success() => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            s => Err(status_error(&format!("blob {digest}"), s)),
        }
    }

    /// Starts an upload, mounting `digest` from `from` (another repository of the
    /// same registry) when given. `Ok(None)`: the mount made the blob exist;
    /// otherwise the upload's location.
    pub async fn start_upload(
        &self,
        host: &RegistryHost,
        mount: Option<(&str, &str)>,
    ) -> Result<Option<String>> {
        let mut target = format!("/{}/blobs/uploads/", self.reference.repository);
        if let Some((digest, from)) = mount {
            target.push_str(&format!(
                "?mount={}&from={}",
                query_escape(digest),
                query_escape(from)
            ));
        }
        let r = self.send(host, &Call::new(Method::POST, &target)).await?;
        match r.status() {
            StatusCode::CREATED if mount.is_some() => Ok(None),
            StatusCode::ACCEPTED | StatusCode::CREATED => {
                let loc = header(r.headers(), "location")
                    .ok_or_else(|| Error::Protocol("upload started without a location".into()))?;
                Ok(Some(loc))
            }
            s => Err(status_error("starting an upload", s)),
        }
    }

    /// Sends the data of an upload (PATCH) and completes it (PUT with the digest).
    pub async fn finish_upload(
        &self,
        host: &RegistryHost,
        location: &str,
        digest: &str,
        size: i64,
        data: Body,
    ) -> Result<()> {
        let call = Call::new(Method::PATCH, location)
            .header("content-type", "application/octet-stream")
            .header("content-length", size.to_string());
        let r = self.send_stream(host, &call, data).await?;
        if r.status() != StatusCode::ACCEPTED && r.status() != StatusCode::NO_CONTENT {
            return Err(status_error(&format!("uploading {digest}"), r.status()));
        }
        let loc = header(r.headers(), "location").unwrap_or_else(|| location.to_string());
        let sep = if loc.contains('?') { '&' } else { '?' };
        let put = format!("{loc}{sep}digest={}", query_escape(digest));
        let r = self
            .send(
                host,
                &Call::new(Method::PUT, &put).header("content-length", "0"),
            )
            .await?;
        if r.status() != StatusCode::CREATED && !r.status().is_success() {
            return Err(status_error(
                &format!("completing the upload of {digest}"),
                r.status(),
            ));
        }
        Ok(())
    }

    /// Stores a manifest or index under a tag or digest.
    pub async fn put_manifest(
        &self,
        host: &RegistryHost,
        object: &str,
        media_type: &str,
        data: Bytes,
    ) -> Result<()> {
        let target = format!("/{}/manifests/{object}", self.reference.repository);
        let mut call = Call::new(Method::PUT, &target).header("content-type", media_type);
        call.body = Some(data);
        let r = self.send(host, &call).await?;
        if !r.status().is_success() {
            let status = r.status();
            let body = read_body(r.into_body(), 64 << 10).await.unwrap_or_default();
            return Err(Error::Protocol(format!(
                "storing manifest {object}: {status}: {}",
                String::from_utf8_lossy(&body).trim()
            )));
        }
        Ok(())
    }
}
