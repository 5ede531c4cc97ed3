//! The distribution API over HTTP/1.1: one [`Registry`] (connection pool,
//! credentials, tokens) hands out [`Repository`] handles that resolve, fetch and
//! push manifests and blobs, authorising on a registry's challenge.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::auth::{
    self, basic_header, parse_challenges, query_escape, CredentialSource, Credentials,
};
use crate::hosts::{HostsConfig, RegistryHost};
use crate::reference::Reference;
use crate::tls::{client_config, TlsSettings};
use crate::{Error, Result};

/// A request or response body.
pub type Body = UnsyncBoxBody<Bytes, std::io::Error>;

/// How long a registry gets to answer a request (headers; bodies stream on).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);

pub fn empty() -> Body {
    Empty::<Bytes>::new().map_err(|n| match n {}).boxed_unsync()
}

pub fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|n| match n {}).boxed_unsync()
}

/// A registry client: the HTTP pool, how hosts are found, credentials and the
/// tokens and headers they became.
pub struct Registry {
    /// A pool per distinct TLS setting.
    pools: Mutex<HashMap<TlsSettings, Client<HttpsConnector<HttpConnector>, Body>>>,
    hosts: HostsConfig,
    creds: Arc<dyn CredentialSource>,
    /// Authorization header values by `(authority, scope)`; basic auth under an
    /// empty scope.
    auth: Mutex<HashMap<(String, String), String>>,
}

/// One repository of a registry, as a reference names it.
#[derive(Clone)]
pub struct Repository {
    registry: Arc<Registry>,
    pub reference: Reference,
    pub(crate) hosts: Vec<RegistryHost>,
    push: bool,
}

pub(crate) fn status_error(what: &str, status: StatusCode) -> Error {
    match status {
        StatusCode::NOT_FOUND => Error::NotFound(what.to_string()),
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
            Error::Auth(format!("{what}: {status}"))
        }
        s => Error::Protocol(format!("{what}: unexpected status {s}")),
    }
}

pub(crate) fn header(h: &HeaderMap, name: &str) -> Option<String> {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// Reads a whole (small) body, refusing more than `limit` bytes.
pub async fn read_body(mut body: Incoming, limit: usize) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    while let Some(chunk) = next_chunk(&mut body).await? {
        if out.len() + chunk.len() > limit {
            return Err(Error::Invalid(format!(
                "document larger than {limit} bytes"
            )));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// The next data chunk of a body.
pub async fn next_chunk(body: &mut Incoming) -> Result<Option<Bytes>> {
    loop {
        match body.frame().await {
            None => return Ok(None),
            Some(Err(e)) => return Err(Error::Unavailable(format!("reading a response: {e}"))),
            Some(Ok(f)) => {
                if let Ok(d) = f.into_data() {
                    if !d.is_empty() {
                        return Ok(Some(d));
                    }
                }
            }
        }
    }
}

impl Registry {
    pub fn new(hosts: HostsConfig, creds: Arc<dyn CredentialSource>) -> Arc<Registry> {
        Arc::new(Registry {
            pools: Mutex::new(HashMap::new()),
            hosts,
            creds,
            auth: Mutex::new(HashMap::new()),
        })
    }

    /// A handle on the repository `reference` names; `push` asks for push access
    /// (and hosts that allow it).
    pub fn repository(self: &Arc<Self>, reference: &Reference, push: bool) -> Result<Repository> {
        let hosts: Vec<RegistryHost> = self
            .hosts
            .hosts(&reference.domain)?
            .into_iter()
            .filter(|h| {
                if push {
                    h.capabilities.push
                } else {
                    h.capabilities.pull || h.capabilities.resolve
                }
            })
            .collect();
        if hosts.is_empty() {
            return Err(Error::Config(format!(
                "no host of {} allows {}",
                reference.domain,
                if push { "push" } else { "pull" }
            )));
        }
        Ok(Repository {
            registry: self.clone(),
            reference: reference.clone(),
            hosts,
            push,
        })
    }

    fn pool(&self, tls: &TlsSettings) -> Result<Client<HttpsConnector<HttpConnector>, Body>> {
        let mut pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = pools.get(tls) {
            return Ok(c.clone());
        }
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(Duration::from_secs(15)));
        http.set_nodelay(true);
        http.enforce_http(false);
        let conn = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(client_config(tls)?)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let c = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(conn);
        pools.insert(tls.clone(), c.clone());
        Ok(c)
    }

    async fn send_raw(&self, req: Request<Body>, tls: &TlsSettings) -> Result<Response<Incoming>> {
        let uri = req.uri().clone();
        let pool = self.pool(tls)?;
        match tokio::time::timeout(ANSWER_TIMEOUT, pool.request(req)).await {
            Err(_) => Err(Error::Unavailable(format!(
                "{uri}: no answer in {ANSWER_TIMEOUT:?}"
            ))),
            Ok(Err(e)) => {
                let mut msg = e.to_string();
                let mut src = std::error::Error::source(&e);
                while let Some(s) = src {
                    msg = format!("{msg}: {s}");
                    src = s.source();
                }
                Err(Error::Unavailable(format!("{uri}: {msg}")))
            }
            Ok(Ok(r)) => Ok(r),
        }
    }

    /// Turns a challenge into an Authorization header value for `scope`.
    async fn authorize(
        &self,
        host: &RegistryHost,
        reference: &str,
        scope: &str,
        challenges: &[String],
    ) -> Result<String> {
        let parsed = parse_challenges(challenges);
        let creds = self
            .creds
            .credentials(&host.authority, reference, challenges)
            .await?;
        if let Credentials::Header(h) = &creds {
            return Ok(h.clone());
        }
        if let Some(b) = parsed.iter().find(|c| c.scheme == "bearer") {
            let realm = b
                .params
                .get("realm")
                .ok_or_else(|| Error::Auth("bearer challenge without a realm".into()))?;
            let service = b.params.get("service").cloned().unwrap_or_default();
            let mut url = format!("{realm}{}", if realm.contains('?') { "&" } else { "?" });
            url.push_str(&format!("service={}", query_escape(&service)));
            url.push_str(&format!("&scope={}", query_escape(scope)));
            let (method, body, ctype, basic) = match &creds {
                Credentials::Refresh(token) => (
                    Method::POST,
                    full(format!(
                        "grant_type=refresh_token&refresh_token={}&service={}&scope={}&client_id=ember",
                        query_escape(token),
                        query_escape(&service),
                        query_escape(scope)
                    )),
                    Some("application/x-www-form-urlencoded"),
                    None,
                ),
                Credentials::Basic { username, secret } => {
                    (Method::GET, empty(), None, Some(basic_header(username, secret)))
                }
                _ => (Method::GET, empty(), None, None),
            };
            let mut req = Request::builder().method(method).uri(&url);
            if let Some(b) = basic {
                req = req.header("authorization", b);
            }
            if let Some(c) = ctype {
                req = req.header("content-type", c);
            }
            let req = req
                .body(body)
                .map_err(|e| Error::Auth(format!("token request {url}: {e}")))?;
            let resp = self.send_raw(req, &host.tls()).await?;
            if !resp.status().is_success() {
                return Err(Error::Auth(format!(
                    "token endpoint {realm}: {}",
                    resp.status()
                )));
            }
            let body = read_body(resp.into_body(), 1 << 20).await?;
            let t: auth::TokenResponse = serde_json::from_slice(&body)
                .map_err(|e| Error::Auth(format!("token endpoint {realm}: {e}")))?;
            return Ok(format!("Bearer {}", t.token()?));
        }
        if parsed.iter().any(|c| c.scheme == "basic") {
            return match creds {
                Credentials::Basic { username, secret } => Ok(basic_header(&username, &secret)),
                _ => Err(Error::Auth(format!(
                    "{} asks for a user name and password",
                    host.authority
                ))),
            };
        }
        Err(Error::Auth(format!(
            "{}: no supported authentication scheme in {challenges:?}",
            host.authority
        )))
    }

    fn cached_auth(&self, authority: &str, scope: &str) -> Option<String> {
        let a = self.auth.lock().unwrap_or_else(|e| e.into_inner());
        a.get(&(authority.to_string(), scope.to_string()))
            .or_else(|| a.get(&(authority.to_string(), String::new())))
            .cloned()
    }
}

/// A request that can be sent again after authorising.
pub struct Call<'a> {
    pub method: Method,
    /// A path under the API prefix (`/<repo>/manifests/latest`) or an absolute URL.
    pub target: &'a str,
    pub headers: Vec<(&'static str, String)>,
    pub body: Option<Bytes>,
}

impl<'a> Call<'a> {
    pub fn new(method: Method, target: &'a str) -> Call<'a> {
        Call {
            method,
            target,
            headers: Vec::new(),
            body: None,
        }
    }

    pub fn header(mut self, k: &'static str, v: impl Into<String>) -> Self {
        self.headers.push((k, v.into()));
        self
    }
}

impl Repository {
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    fn scope(&self) -> String {
        auth::scope(&self.reference.repository, self.push)
    }

    fn url(host: &RegistryHost, target: &str) -> String {
        if target.starts_with("http://") || target.starts_with("https://") {
            target.to_string()
        } else if target.starts_with("/v2/") || target.starts_with(&format!("{}/", host.path)) {
            format!("{}://{}{}", host.scheme, host.authority, target)
        } else {
            host.url(target)
        }
    }

    fn build(&self, host: &RegistryHost, call: &Call<'_>, body: Body) -> Result<Request<Body>> {
        let url = Self::url(host, call.target);
        let mut req = Request::builder()
            .method(call.method.clone())
            .uri(&url)
            .header("user-agent", concat!("ember/", env!("CARGO_PKG_VERSION")));
        for (k, v) in &host.headers {
            req = req.header(k.as_str(), v.as_str());
        }
        for (k, v) in &call.headers {
            req = req.header(*k, v.as_str());
        }
        if let Some(a) = self.registry.cached_auth(&host.authority, &self.scope()) {
            req = req.header("authorization", a);
        }
        req.body(body)
            .map_err(|e| Error::Protocol(format!("request {url}: {e}")))
    }

    /// Sends `call` to `host`, authorising and sending it again once when the
    /// registry challenges.
    pub async fn send(&self, host: &RegistryHost, call: &Call<'_>) -> Result<Response<Incoming>> {
        let body = || call.body.clone().map(full).unwrap_or_else(empty);
        let resp = self
            .registry
            .send_raw(self.build(host, call, body())?, &host.tls())
            .await?;
        if resp.status() != StatusCode::UNAUTHORIZED {
            return Ok(resp);
        }
        let challenges: Vec<String> = resp
            .headers()
            .get_all("www-authenticate")
            .iter()
            .filter_map(|v| v.to_str().ok().map(str::to_string))
            .collect();
        if challenges.is_empty() {
            return Err(Error::Auth(format!(
                "{}: 401 without a challenge",
                host.authority
            )));
        }
        let scope = self.scope();
        let value = self
            .registry
            .authorize(host, &self.reference.name(), &scope, &challenges)
            .await?;
        let key_scope = if value.starts_with("Basic ") {
            String::new()
        } else {
            scope
        };
        self.registry
            .auth
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((host.authority.clone(), key_scope), value);
        let resp = self
            .registry
            .send_raw(self.build(host, call, body())?, &host.tls())
            .await?;
        if resp.status() == StatusCode::UNAUTHORIZED {
            return Err(Error::Auth(format!(
                "{} refused the credentials for {}",
                host.authority,
                self.reference.name()
            )));
        }
        Ok(resp)
    }

    /// Sends a streamed body (not repeatable); authorises first with a cheap
    /// request when nothing is cached.
    pub async fn send_stream(
        &self,
        host: &RegistryHost,
        call: &Call<'_>,
        body: Body,
    ) -> Result<Response<Incoming>> {
        self.registry
            .send_raw(self.build(host, call, body)?, &host.tls())
            .await
    }
}
