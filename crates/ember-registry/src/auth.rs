//! Registry authentication: `WWW-Authenticate` challenges, credentials supplied
//! by the caller, and the Authorization header they turn into (basic, or a
//! bearer token from the challenge's token endpoint).

use std::collections::BTreeMap;

use base64::Engine as _;

use crate::Error;

/// Credentials for one registry host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Credentials {
    /// Anonymous.
    #[default]
    None,
    /// A user name and password (or identity token) exchanged for a token, or
    /// sent as basic auth.
    Basic { username: String, secret: String },
    /// A refresh token exchanged for an access token.
    Refresh(String),
    /// An `Authorization` header value used as it is.
    Header(String),
}

/// Where credentials come from: asked for when a registry challenges.
#[async_trait::async_trait]
pub trait CredentialSource: Send + Sync {
    /// Credentials for `host` (`host[:port]`), asked for while accessing
    /// `reference`; `challenges` are the registry's `WWW-Authenticate` values.
    async fn credentials(
        &self,
        host: &str,
        reference: &str,
        challenges: &[String],
    ) -> Result<Credentials, Error>;
}

/// No credentials at all.
pub struct Anonymous;

#[async_trait::async_trait]
impl CredentialSource for Anonymous {
    async fn credentials(&self, _: &str, _: &str, _: &[String]) -> Result<Credentials, Error> {
        Ok(Credentials::None)
    }
}

/// The same credentials for every host.
pub struct Static(pub Credentials);

#[async_trait::async_trait]
impl CredentialSource for Static {
    async fn credentials(&self, _: &str, _: &str, _: &[String]) -> Result<Credentials, Error> {
        Ok(self.0.clone())
    }
}

/// One parsed challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    /// Lower case: `bearer`, `basic`.
    pub scheme: String,
    pub params: BTreeMap<String, String>,
}

/// Parses `WWW-Authenticate` values (`Bearer realm="…",service="…",scope="…"`).
/// Unparseable parts are skipped.
pub fn parse_challenges(values: &[String]) -> Vec<Challenge> {
    let mut out = Vec::new();
    for v in values {
        let mut rest = v.trim();
        while !rest.is_empty() {
            let end = rest.find([' ', ',']).unwrap_or(rest.len());
            let scheme = rest[..end].to_ascii_lowercase();
            rest = rest[end..].trim_start_matches([' ', ',']);
            let mut params = BTreeMap::new();
            while let Some(eq) = rest.find('=') {
                let key = rest[..eq].trim();
                if key.is_empty() || key.contains([' ', ',']) {
                    break;
                }
                let after = &rest[eq + 1..];
                let (value, next) = if let Some(q) = after.strip_prefix('"') {
                    let mut val = String::new();
                    let mut chars = q.char_indices();
                    let mut end = q.len();
                    while let Some((i, c)) = chars.next() {
                        match c {
                            '\\' => {
                                if let Some((_, n)) = chars.next() {
                                    val.push(n);
                                }
                            }
                            '"' => {
                                end = i + 1;
                                break;
                            }
                            c => val.push(c),
                        }
                    }
                    (val, &q[end.min(q.len())..])
                } else {
                    let e = after.find(',').unwrap_or(after.len());
                    (after[..e].trim().to_string(), &after[e..])
                };
                params.insert(key.to_ascii_lowercase(), value);
                rest = next.trim_start_matches([' ', ',']);
            }
            if !scheme.is_empty() {
                out.push(Challenge { scheme, params });
            }
        }
    }
    out
}

/// `Basic base64(user:secret)`.
pub fn basic_header(username: &str, secret: &str) -> String {
    let raw = format!("{username}:{secret}");
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(raw.as_bytes())
    )
}

/// The token endpoint's answer.
#[derive(Debug, serde::Deserialize)]
pub(crate) struct TokenResponse {
    #[serde(default)]
    pub token: String,
    #[serde(default)]
    pub access_token: String,
}

impl TokenResponse {
    pub fn token(self) -> Result<String, Error> {
        let t = if self.access_token.is_empty() {
            self.token
        } else {
            self.access_token
        };
        if t.is_empty() {
            return Err(Error::Auth("the token endpoint returned no token".into()));
        }
        Ok(t)
    }
}

/// The scope a repository operation needs.
pub fn scope(repository: &str, push: bool) -> String {
    if push {
        format!("repository:{repository}:pull,push")
    } else {
        format!("repository:{repository}:pull")
    }
}

/// Minimal percent-encoding of a query value.
pub fn query_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_challenges() {
        let c = parse_challenges(&[
            r#"Bearer realm="https://auth.example/token",service="reg",scope="repository:a/b:pull""#
                .into(),
            "Basic realm=x".into(),
        ]);
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].scheme, "bearer");
        assert_eq!(c[0].params["realm"], "https://auth.example/token");
        assert_eq!(c[0].params["scope"], "repository:a/b:pull");
        assert_eq!(c[1].scheme, "basic");
        assert_eq!(c[1].params["realm"], "x");
        let q = parse_challenges(&[r#"Bearer realm="a\"b", service=s"#.into()]);
        assert_eq!(q[0].params["realm"], "a\"b");
        assert_eq!(q[0].params["service"], "s");
        // Junk never panics.
        for j in [
            "",
            "=",
            "\"",
            "Bearer =\"",
            "a=\"unterminated",
            ",,,",
            "Bearer realm",
        ] {
            let _ = parse_challenges(&[j.into()]);
        }
    }

    #[test]
    fn headers() {
        assert_eq!(basic_header("u", "p"), "Basic dTpw");
        assert_eq!(
            query_escape("repository:a/b:pull"),
            "repository%3Aa%2Fb%3Apull"
        );
        assert_eq!(scope("a", true), "repository:a:pull,push");
    }
}
