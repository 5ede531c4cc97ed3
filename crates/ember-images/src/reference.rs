//! Image references as docker names them: `busybox` is
//! `docker.io/library/busybox:latest`.

/// The full form of a reference (`docker.io` and `library/` added where docker
/// implies them, `:latest` when it has neither tag nor digest). `None` for
/// something that is not a reference.
pub fn normalize(r: &str) -> Option<String> {
    if r.is_empty()
        || r.len() > 4096
        || r.chars().any(|c| c.is_whitespace() || c.is_control())
        || r.starts_with('/')
        || r.ends_with('/')
        || r.contains("//")
    {
        return None;
    }
    let (domain, rest) = match r.split_once('/') {
        Some((d, rest)) if d.contains('.') || d.contains(':') || d == "localhost" => {
            (d.to_string(), rest.to_string())
        }
        _ => ("docker.io".to_string(), r.to_string()),
    };
    let rest = if domain == "docker.io" && !rest.contains('/') {
        format!("library/{rest}")
    } else {
        rest
    };
    let last = rest.rsplit('/').next().unwrap_or_default();
    let tagged = last.contains(':') || rest.contains('@');
    let name_part = last.split([':', '@']).next().unwrap_or_default();
    if name_part.is_empty() || name_part.chars().any(|c| c.is_ascii_uppercase()) {
        return None;
    }
    Some(if tagged {
        format!("{domain}/{rest}")
    } else {
        format!("{domain}/{rest}:latest")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes() {
        assert_eq!(
            normalize("busybox").unwrap(),
            "docker.io/library/busybox:latest"
        );
        assert_eq!(normalize("ember/bb:1").unwrap(), "docker.io/ember/bb:1");
        assert_eq!(
            normalize("docker.io/ember/bb:latest").unwrap(),
            "docker.io/ember/bb:latest"
        );
        assert_eq!(
            normalize("localhost:5000/x").unwrap(),
            "localhost:5000/x:latest"
        );
        assert_eq!(
            normalize("quay.io/a/b@sha256:00").unwrap(),
            "quay.io/a/b@sha256:00"
        );
        assert!(normalize("").is_none());
        assert!(normalize("Upper").is_none());
    }
}
