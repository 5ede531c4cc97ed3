//! Reading the configuration file with errors a person can act on: the file, the
//! line, the key, and what is wrong (the closest known key for a misspelt one).

use std::path::Path;

use super::{ConfigError, RuntimeConfig, KEYS};

/// Parses `text` (the contents of `path`) strictly.
pub fn parse(path: &Path, text: &str) -> Result<RuntimeConfig, ConfigError> {
    let file = |line: Option<usize>, key: Option<&str>, why: String| ConfigError::File {
        path: path.to_path_buf(),
        line,
        key: key.map(str::to_string),
        why,
    };
    // Syntax first: a file that is not TOML says where it stops being TOML.
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        let line = e.span().map(|s| line_of(text, s.start));
        file(
            line,
            None,
            format!("not valid TOML: {}", one_line(e.message())),
        )
    })?;
    if let Some(key) = table.keys().find(|k| !KEYS.contains(&k.as_str())) {
        let hint = closest(key, KEYS)
            .map(|k| format!(" (did you mean `{k}`?)"))
            .unwrap_or_default();
        return Err(file(
            key_line(text, key),
            Some(key),
            format!(
                "unknown key `{key}`{hint}; the keys are {}",
                KEYS.join(", ")
            ),
        ));
    }
    toml::from_str(text).map_err(|e| {
        let line = e.span().map(|s| line_of(text, s.start));
        // Every key is on its own line: the error's line names the key.
        let key = line
            .and_then(|l| key_on_line(text, l))
            .filter(|k| KEYS.contains(&k.as_str()));
        let why = plain_types(&one_line(e.message()));
        match &key {
            Some(k) => file(line, Some(k), format!("key `{k}`: {why}")),
            None => file(line, None, why),
        }
    })
}

/// The 1-based line of byte offset `at`.
fn line_of(text: &str, at: usize) -> usize {
    text[..at.min(text.len())].matches('\n').count() + 1
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Rust's integer type names, as a person reads them.
fn plain_types(s: &str) -> String {
    s.replace("expected u8", "expected a whole number from 0 to 255")
        .replace(
            "expected u32",
            "expected a whole number from 0 to 4294967295",
        )
        .replace("expected u64", "expected a whole number, 0 or more")
}

/// The key a `key = value` line (or a `[key]` header) sets, unquoted.
fn key_on_line(text: &str, line: usize) -> Option<String> {
    let l = text.lines().nth(line.checked_sub(1)?)?.trim();
    let name = if let Some(h) = l.strip_prefix('[') {
        h.trim_start_matches('[')
            .split([']', '.'])
            .next()?
            .to_string()
    } else {
        l.split(['=', '.']).next()?.to_string()
    };
    let name = name.trim().trim_matches(['"', '\'']).to_string();
    (!name.is_empty()).then_some(name)
}

/// The line where top-level `key` is set.
pub fn key_line(text: &str, key: &str) -> Option<usize> {
    text.lines()
        .enumerate()
        .find(|(_, l)| key_on_line_text(l).as_deref() == Some(key))
        .map(|(i, _)| i + 1)
}

fn key_on_line_text(l: &str) -> Option<String> {
    let t = l.trim();
    if t.starts_with('#') || (!t.contains('=') && !t.starts_with('[')) {
        return None;
    }
    key_on_line(t, 1)
}

/// The value text of `key = value` as written (for messages).
pub fn value_text(text: &str, key: &str) -> String {
    key_line(text, key)
        .and_then(|l| text.lines().nth(l - 1))
        .and_then(|l| l.split_once('='))
        .map(|(_, v)| v.split('#').next().unwrap_or(v).trim().to_string())
        .unwrap_or_else(|| "(default)".into())
}

/// The known key closest to a misspelt one, when it is close.
pub fn closest(key: &str, known: &[&'static str]) -> Option<&'static str> {
    known
        .iter()
        .map(|k| (edit_distance(key, k), *k))
        .min()
        .filter(|(d, k)| *d <= (k.len() / 3).max(2))
        .map(|(_, k)| k)
}

/// Levenshtein distance (insertions, deletions, substitutions), with adjacent
/// transpositions counting one.
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, v) in d[0].iter_mut().enumerate() {
        *v = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let sub = usize::from(a[i - 1] != b[j - 1]);
            let mut v = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + sub);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                v = v.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = v;
        }
    }
    d[a.len()][b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn misspellings_find_their_key() {
        assert_eq!(closest("memroy_mib", KEYS), Some("memory_mib"));
        assert_eq!(closest("vcpu", KEYS), Some("vcpus"));
        assert_eq!(closest("kernal", KEYS), Some("kernel"));
        assert_eq!(closest("bootTimeout", KEYS), None);
        assert_eq!(edit_distance("abc", "abc"), 0);
        assert_eq!(edit_distance("ab", "ba"), 1);
    }

    #[test]
    fn lines_and_keys() {
        let t = "# c\nvcpus = 2\n\"memory_mib\" = 5 # x\n[extra]\na = 1\n";
        assert_eq!(key_line(t, "vcpus"), Some(2));
        assert_eq!(key_line(t, "memory_mib"), Some(3));
        assert_eq!(key_line(t, "extra"), Some(4));
        assert_eq!(key_line(t, "c"), None);
        assert_eq!(value_text(t, "memory_mib"), "5");
        assert_eq!(line_of(t, 0), 1);
        assert_eq!(line_of(t, 5), 2);
    }
}
