//! Image references, normalised as containerd (and docker) do: `busybox` is
//! `docker.io/library/busybox:latest`; `name[:tag][@digest]`.

use std::fmt;
use std::str::FromStr;

use crate::Error;

/// The registry an unqualified name lives on.
pub const DEFAULT_DOMAIN: &str = "docker.io";

/// A parsed, normalised reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// `docker.io`, `registry.example:5000`, `localhost`.
    pub domain: String,
    /// The repository on that registry: `library/busybox`.
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<String>,
}

fn bad(r: &str, why: &str) -> Error {
    Error::InvalidReference(format!("{r:?}: {why}"))
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`
fn valid_component(c: &str) -> bool {
    let b = c.as_bytes();
    if b.is_empty() || !b[0].is_ascii_alphanumeric() || !b[b.len() - 1].is_ascii_alphanumeric() {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        let ch = b[i];
        if ch.is_ascii_lowercase() || ch.is_ascii_digit() {
            i += 1;
            continue;
        }
        // A separator run: '.', '_', '__' or any number of '-'.
        let start = i;
        while i < b.len() && matches!(b[i], b'.' | b'_' | b'-') {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-');
        if !ok || i == b.len() {
            return false;
        }
        if !(b[i].is_ascii_lowercase() || b[i].is_ascii_digit()) {
            return false;
        }
    }
    true
}

fn valid_tag(t: &str) -> bool {
    let b = t.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

fn valid_domain(d: &str) -> bool {
    let (host, port) = match d.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || d.starts_with('[') => (h, Some(p)),
        _ => (d, None),
    };
    if let Some(p) = port {
        if p.is_empty() || !p.bytes().all(|c| c.is_ascii_digit()) {
            return false;
        }
    }
    if host.starts_with('[') {
        return host.ends_with(']') && host.len() > 2;
    }
    !host.is_empty()
        && host.split('.').all(|l| {
            !l.is_empty()
                && l.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

/// Checks a digest's form: `algorithm:hex` with the hex length the algorithm has.
pub fn check_digest(d: &str) -> Result<(), Error> {
    ember_images::oci::check_digest("digest", d).map_err(|e| Error::InvalidReference(e.to_string()))
}

impl Reference {
    /// Parses and normalises `r`; a reference with neither tag nor digest gets
    /// `latest`.
    pub fn parse(r: &str) -> Result<Reference, Error> {
        let mut x = Self::parse_name(r)?;
        if x.tag.is_none() && x.digest.is_none() {
            x.tag = Some("latest".into());
        }
        Ok(x)
    }

    /// Parses without adding a default tag.
    pub fn parse_name(r: &str) -> Result<Reference, Error> {
        if r.is_empty() {
            return Err(bad(r, "empty reference"));
        }
        if r.len() > 4096 {
            return Err(bad(&r[..32], "reference too long"));
        }
        let (rest, digest) = match r.split_once('@') {
            Some((n, d)) => {
                check_digest(d).map_err(|e| bad(r, &e.to_string()))?;
                (n, Some(d.to_string()))
            }
            None => (r, None),
        };
        let (name, tag) = match rest.rsplit_once(':') {
            Some((n, t)) if !t.contains('/') => {
                if !valid_tag(t) {
                    return Err(bad(r, "invalid tag"));
                }
                (n, Some(t.to_string()))
            }
            _ => (rest, None),
        };
        let (domain, path) = match name.split_once('/') {
            Some((d, p)) if d.contains('.') || d.contains(':') || d == "localhost" => {
                (d.to_string(), p.to_string())
            }
            _ => (DEFAULT_DOMAIN.to_string(), name.to_string()),
        };
        if !valid_domain(&domain) {
            return Err(bad(r, "invalid registry host"));
        }
        let path = if domain == DEFAULT_DOMAIN && !path.contains('/') {
            format!("library/{path}")
        } else {
            path
        };
        if path.chars().any(|c| c.is_ascii_uppercase()) {
            return Err(bad(r, "repository name must be lowercase"));
        }
        if !path.split('/').all(valid_component) {
            return Err(bad(r, "invalid reference format"));
        }
        if domain.len() + path.len() + 1 > 255 {
            return Err(bad(
                r,
                "repository name must not be more than 255 characters",
            ));
        }
        Ok(Reference {
            domain,
            repository: path,
            tag,
            digest,
        })
    }

    /// `domain/repository`.
    pub fn name(&self) -> String {
        format!("{}/{}", self.domain, self.repository)
    }

    /// What a manifest is asked for by: the digest when there is one, else the tag.
    pub fn object(&self) -> &str {
        self.digest
            .as_deref()
            .or(self.tag.as_deref())
            .unwrap_or("latest")
    }

    /// The same repository at another tag or digest.
    pub fn with_digest(&self, digest: &str) -> Reference {
        Reference {
            digest: Some(digest.to_string()),
            ..self.clone()
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.domain, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

impl FromStr for Reference {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        Reference::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> String {
        Reference::parse(s).unwrap().to_string()
    }

    #[test]
    fn normalises_like_containerd() {
        assert_eq!(n("busybox"), "docker.io/library/busybox:latest");
        assert_eq!(n("ember/bb:1"), "docker.io/ember/bb:1");
        assert_eq!(n("localhost:5000/x"), "localhost:5000/x:latest");
        assert_eq!(n("127.0.0.1:5000/a/b:v1.2"), "127.0.0.1:5000/a/b:v1.2");
        let d = format!("sha256:{}", "a".repeat(64));
        assert_eq!(n(&format!("quay.io/a/b@{d}")), format!("quay.io/a/b@{d}"));
        assert_eq!(n(&format!("a:t@{d}")), format!("docker.io/library/a:t@{d}"));
        let r = Reference::parse("localhost/x").unwrap();
        assert_eq!(
            (r.domain.as_str(), r.repository.as_str()),
            ("localhost", "x")
        );
        assert_eq!(r.object(), "latest");
    }

    #[test]
    fn refuses_bad_references() {
        for bad in [
            "",
            "Upper",
            "a b",
            "a:",
            "a:-x",
            "a@sha256:00",
            "a@md5:00",
            "/a",
            "a/",
            "a//b",
            "a..b",
            "host:port/x",
            "-a",
        ] {
            assert!(Reference::parse(bad).is_err(), "{bad:?} parsed");
        }
        let e = Reference::parse("Upper").unwrap_err().to_string();
        assert!(e.contains("lowercase"), "{e}");
    }

    #[test]
    fn components() {
        assert!(valid_component("a__b"));
        assert!(valid_component("a---b"));
        assert!(!valid_component("a._b"));
        assert!(!valid_component("a_"));
    }
}
