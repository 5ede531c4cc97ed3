//! containerd's filter language, used by every `List` call.
//!
//! A request carries a list of filter strings; an object matches when it matches any
//! of them. Within one string, selectors separated by `,` must all match; `|` also
//! separates alternatives. A selector is a field path, optionally followed by an
//! operator and a value:
//!
//! ```text
//! name                     the field is present
//! labels."io.x/y"==a       equal
//! kind!=View               not equal (also true when the field is absent)
//! name~=^sha256:           regular expression match (unanchored)
//! ```
//!
//! Field path components are bare words (`[A-Za-z0-9_]`) or quoted strings; values
//! are bare (up to the next `,` or `|`) or quoted with `"` (with backslash escapes),
//! `'` or `/`.

use regex::Regex;

use crate::{Error, Labels, Result};

/// Something a filter can look at.
pub trait Fields {
    /// The value of a field, or `None` when the object has no such field.
    fn field(&self, path: &[String]) -> Option<String>;
}

/// Looks a label up for a path like `labels.KEY` (already stripped of `labels`).
pub fn label_field(labels: &Labels, rest: &[String]) -> Option<String> {
    if rest.is_empty() {
        return None;
    }
    labels.get(&rest.join(".")).cloned()
}

/// A non-empty string field.
pub fn present(s: &str) -> Option<String> {
    if s.is_empty() {
        None
    } else {
        Some(s.to_string())
    }
}

#[derive(Debug, Clone)]
enum Op {
    Present,
    Equal(String),
    NotEqual(String),
    Matches(Regex),
}

#[derive(Debug, Clone)]
struct Selector {
    path: Vec<String>,
    op: Op,
}

impl Selector {
    fn matches(&self, obj: &dyn Fields) -> bool {
        let value = obj.field(&self.path);
        match &self.op {
            Op::Present => value.is_some(),
            Op::Equal(v) => value.as_deref() == Some(v.as_str()),
            Op::NotEqual(v) => value.as_deref().unwrap_or("") != v,
            Op::Matches(re) => re.is_match(value.as_deref().unwrap_or("")),
        }
    }
}

/// A parsed set of filters: a disjunction of conjunctions of selectors. The empty
/// filter matches everything.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    any: Vec<Vec<Selector>>,
}

impl Filter {
    /// Parses the filter strings of a request. Empty strings are ignored.
    pub fn parse_all<S: AsRef<str>>(filters: &[S]) -> Result<Filter> {
        let mut any = Vec::new();
        for f in filters {
            let f = f.as_ref();
            if f.trim().is_empty() {
                continue;
            }
            let mut p = Parser {
                src: f,
                chars: f.char_indices().collect(),
                pos: 0,
            };
            any.extend(p.parse()?);
        }
        Ok(Filter { any })
    }

    pub fn matches(&self, obj: &dyn Fields) -> bool {
        self.any.is_empty()
            || self
                .any
                .iter()
                .any(|all| all.iter().all(|s| s.matches(obj)))
    }
}

struct Parser<'a> {
    src: &'a str,
    chars: Vec<(usize, char)>,
    pos: usize,
}

impl Parser<'_> {
    fn err(&self, what: &str) -> Error {
        Error::InvalidArgument(format!(
            "filters: {what} at position {} in {:?}",
            self.pos, self.src
        ))
    }

    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).map(|(_, c)| *c)
    }

    fn skip_space(&mut self) {
        while self.peek().is_some_and(char::is_whitespace) {
            self.pos += 1;
        }
    }

    fn eat(&mut self, s: &str) -> bool {
        let n = s.chars().count();
        let got: String = self.chars[self.pos..]
            .iter()
            .take(n)
            .map(|(_, c)| *c)
            .collect();
        if got == s {
            self.pos += n;
            true
        } else {
            false
        }
    }

    fn parse(&mut self) -> Result<Vec<Vec<Selector>>> {
        let mut any = vec![];
        let mut all = vec![];
        loop {
            self.skip_space();
            all.push(self.selector()?);
            self.skip_space();
            match self.peek() {
                None => break,
                Some(',') => self.pos += 1,
                Some('|') => {
                    self.pos += 1;
                    any.push(std::mem::take(&mut all));
                }
                Some(_) => return Err(self.err("expected ',' or '|'")),
            }
        }
        any.push(all);
        Ok(any)
    }

    fn selector(&mut self) -> Result<Selector> {
        let mut path = vec![self.field()?];
        while self.peek() == Some('.') {
            self.pos += 1;
            path.push(self.field()?);
        }
        self.skip_space();
        let op = if self.eat("==") {
            Op::Equal(self.value()?)
        } else if self.eat("!=") {
            Op::NotEqual(self.value()?)
        } else if self.eat("~=") {
            let v = self.value()?;
            Op::Matches(
                Regex::new(&v).map_err(|e| self.err(&format!("bad regular expression: {e}")))?,
            )
        } else {
            Op::Present
        };
        Ok(Selector { path, op })
    }

    fn field(&mut self) -> Result<String> {
        match self.peek() {
            Some('"') | Some('\'') => self.quoted(),
            _ => {
                let start = self.pos;
                while self
                    .peek()
                    .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
                {
                    self.pos += 1;
                }
                if start == self.pos {
                    return Err(self.err("expected a field name"));
                }
                Ok(self.chars[start..self.pos]
                    .iter()
                    .map(|(_, c)| *c)
                    .collect())
            }
        }
    }

    fn value(&mut self) -> Result<String> {
        self.skip_space();
        match self.peek() {
            Some('"') | Some('\'') | Some('/') => self.quoted(),
            _ => {
                let start = self.pos;
                while self
                    .peek()
                    .is_some_and(|c| c != ',' && c != '|' && !c.is_whitespace())
                {
                    self.pos += 1;
                }
                if start == self.pos {
                    return Err(self.err("expected a value"));
                }
                Ok(self.chars[start..self.pos]
                    .iter()
                    .map(|(_, c)| *c)
                    .collect())
            }
        }
    }

    fn quoted(&mut self) -> Result<String> {
        let quote = self.peek().expect("called on a quote");
        self.pos += 1;
        let mut out = String::new();
        loop {
            let Some(c) = self.peek() else {
                return Err(self.err("unterminated quoted string"));
            };
            self.pos += 1;
            if c == quote {
                return Ok(out);
            }
            if c == '\\' && quote == '"' {
                let Some(e) = self.peek() else {
                    return Err(self.err("unterminated escape"));
                };
                self.pos += 1;
                out.push(match e {
                    'n' => '\n',
                    't' => '\t',
                    'r' => '\r',
                    other => other,
                });
            } else if c == '\\' && quote == '/' && self.peek() == Some('/') {
                self.pos += 1;
                out.push('/');
            } else {
                out.push(c);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Obj {
        name: String,
        labels: Labels,
    }

    impl Fields for Obj {
        fn field(&self, path: &[String]) -> Option<String> {
            match path[0].as_str() {
                "name" => present(&self.name),
                "labels" => label_field(&self.labels, &path[1..]),
                _ => None,
            }
        }
    }

    fn obj(name: &str, labels: &[(&str, &str)]) -> Obj {
        Obj {
            name: name.into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    fn m(filters: &[&str], o: &Obj) -> bool {
        Filter::parse_all(filters).unwrap().matches(o)
    }

    #[test]
    fn selectors() {
        let o = obj("foo", &[("a", "1"), ("io.x/y", "z w")]);
        assert!(m(&[], &o));
        assert!(m(&["name==foo"], &o));
        assert!(!m(&["name==bar"], &o));
        assert!(m(&["name!=bar"], &o));
        assert!(m(&["name~=^f"], &o));
        assert!(m(&["name~=/o+$/"], &o));
        assert!(m(&["labels.a"], &o));
        assert!(!m(&["labels.b"], &o));
        assert!(m(&["labels.b!=1"], &o));
        assert!(m(&[r#"labels."io.x/y"=="z w""#], &o));
        assert!(m(&["name==foo,labels.a==1"], &o));
        assert!(!m(&["name==foo,labels.a==2"], &o));
        assert!(m(&["name==bar", "labels.a==1"], &o));
        assert!(m(&["name==bar|labels.a==1"], &o));
        assert!(m(&[" name == foo "], &o));
        assert!(!m(&["nope==x"], &o));
    }

    #[test]
    fn errors() {
        for bad in [
            "name==",
            "==x",
            "name~=(",
            "name==\"x",
            "name foo",
            "labels.",
            "name,",
        ] {
            assert!(Filter::parse_all(&[bad]).is_err(), "{bad:?} accepted");
        }
    }
}
