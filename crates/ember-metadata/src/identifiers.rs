//! Validation of identifiers (namespace names, container and lease ids) and labels,
//! with containerd's rules: an identifier is 1 to 76 characters of alphanumeric
//! runs joined by single `.`, `_` or `-`; a label's key and value together are at
//! most 4096 bytes.

use crate::{Error, Labels, Result};

pub const MAX_IDENTIFIER_LEN: usize = 76;
pub const MAX_LABEL_SIZE: usize = 4096;

pub fn validate(id: &str) -> Result<()> {
    if id.is_empty() {
        return Err(Error::InvalidArgument(
            "identifier must not be empty".into(),
        ));
    }
    if id.len() > MAX_IDENTIFIER_LEN {
        return Err(Error::InvalidArgument(format!(
            "identifier {id:?} greater than maximum length ({MAX_IDENTIFIER_LEN} characters)"
        )));
    }
    let mut prev_sep = true;
    for (i, c) in id.chars().enumerate() {
        let sep = matches!(c, '.' | '_' | '-');
        let ok = if sep {
            !prev_sep
        } else {
            c.is_ascii_alphanumeric()
        };
        if !ok || (sep && i == id.len() - 1) {
            return Err(Error::InvalidArgument(format!(
                "identifier {id:?} must match ^[A-Za-z0-9]+(?:[._-](?:[A-Za-z0-9]+))*$"
            )));
        }
        prev_sep = sep;
    }
    Ok(())
}

/// [`validate`] for an identifier of a given role, with containerd's message:
/// `invalid <what> <id>: identifier ... must match ...`.
pub fn validate_as(what: &str, id: &str) -> Result<()> {
    validate(id).map_err(|e| match e {
        Error::InvalidArgument(m) => Error::InvalidArgument(format!("invalid {what} {id}: {m}")),
        e => e,
    })
}

pub fn validate_labels(labels: &Labels) -> Result<()> {
    for (k, v) in labels {
        if k.is_empty() {
            return Err(Error::InvalidArgument("label key must not be empty".into()));
        }
        if k.len() + v.len() > MAX_LABEL_SIZE {
            return Err(Error::InvalidArgument(format!(
                "label key and value greater than maximum size ({MAX_LABEL_SIZE} bytes), key: {}",
                k.chars().take(10).collect::<String>()
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers() {
        for ok in ["a", "default", "k8s.io", "a-b_c.d", "A1", &"x".repeat(76)] {
            validate(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in [
            "",
            "-a",
            "a-",
            "a..b",
            "a/b",
            "a b",
            "ä",
            ".",
            &"x".repeat(77),
            "a_-b",
        ] {
            assert!(validate(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn labels() {
        let mut l = Labels::new();
        l.insert("k".into(), "v".repeat(4095));
        validate_labels(&l).unwrap();
        l.insert("k".into(), "v".repeat(4096));
        assert!(validate_labels(&l).is_err());
    }
}
