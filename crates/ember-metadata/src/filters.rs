//! containerd's filter language, used by every `List` call and by event
//! subscriptions.
//!
//! A request carries a list of filter strings; an object matches when it matches any
//! of them. Within one string, selectors separated by `,` must all match. A selector
//! is a field path, optionally followed by an operator and a value:
//!
//! ```text
//! name                     the field is present
//! labels."io.x/y"==a       equal
//! kind!=View               not equal (also true when the field is absent)
//! name~=^sha256:           regular expression match (unanchored)
//! topic~=|^/tasks/|        the same, with the expression quoted
//! ```
//!
//! Field path components are bare words (`[A-Za-z0-9_]`) or `"`-quoted strings,
//! separated by `.`. Values are bare (up to the next `,` or space) or quoted: `"…"`
//! always, and `/…/` or `|…|` (handy for regular expressions) after `~=`. Quoted
//! strings take Go's escapes (`\n`, `\t`, `\\`, `\xHH`, `\uHHHH`, octal `\NNN`, ...)
//! and `\` before the quote character itself.

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
            any.push(Parser::new(f).parse()?);
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

/// A token of the filter language.
#[derive(Debug, Clone, PartialEq)]
enum Token {
    /// A bare field name.
    Field(String),
    /// A quoted string, unescaped, with the quote character it used.
    Quoted(char, String),
    /// A bare value (after an operator).
    Value(String),
    /// `,` between selectors.
    Comma,
    /// `.` between field path components.
    Dot,
    /// A run of `=`, `!` and `~`.
    Operator(String),
    End,
}

fn is_field_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

fn is_quote(c: char) -> bool {
    matches!(c, '"' | '/' | '|')
}

fn is_value_char(c: char) -> bool {
    c != ',' && !c.is_whitespace() && !c.is_control()
}

/// Scanner and recursive-descent parser over one filter string.
struct Parser<'a> {
    src: &'a str,
    chars: Vec<char>,
    pos: usize,
    /// The next bare word is a value (an operator came last), not a field.
    value: bool,
    /// Where the token last scanned started, for errors.
    start: usize,
}

impl<'a> Parser<'a> {
    fn new(src: &'a str) -> Self {
        Parser {
            src,
            chars: src.chars().collect(),
            pos: 0,
            value: false,
            start: 0,
        }
    }

    fn err(&self, what: &str) -> Error {
        Error::InvalidArgument(format!(
            "filters: {what} at position {} in {:?}",
            self.start, self.src
        ))
    }

    fn peek_char(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn take_while(&mut self, keep: impl Fn(char) -> bool) -> String {
        let from = self.pos;
        while self.peek_char().is_some_and(&keep) {
            self.pos += 1;
        }
        self.chars[from..self.pos].iter().collect()
    }

    /// The next token, consumed.
    fn next(&mut self) -> Result<Token> {
        while self.peek_char().is_some_and(char::is_whitespace) {
            self.pos += 1;
        }
        self.start = self.pos;
        let Some(c) = self.peek_char() else {
            return Ok(Token::End);
        };
        if is_quote(c) {
            self.pos += 1;
            let s = self.quoted(c)?;
            return Ok(Token::Quoted(c, s));
        }
        match c {
            ',' | '.' => {
                self.pos += 1;
                self.value = false;
                return Ok(if c == ',' { Token::Comma } else { Token::Dot });
            }
            '=' | '!' | '~' => {
                self.value = true;
                return Ok(Token::Operator(
                    self.take_while(|c| matches!(c, '=' | '!' | '~')),
                ));
            }
            _ => {}
        }
        if self.value {
            self.value = false;
            let v = self.take_while(is_value_char);
            if v.is_empty() {
                return Err(self.err(&format!("unexpected character {c:?}")));
            }
            return Ok(Token::Value(v));
        }
        if is_field_char(c) {
            return Ok(Token::Field(self.take_while(is_field_char)));
        }
        Err(self.err(&format!("unexpected character {c:?}")))
    }

    /// The next token, left in place.
    fn peek(&mut self) -> Result<Token> {
        let (pos, value, start) = (self.pos, self.value, self.start);
        let t = self.next();
        (self.pos, self.value, self.start) = (pos, value, start);
        t
    }

    /// The rest of a string quoted with `quote` (already consumed), unescaped.
    fn quoted(&mut self, quote: char) -> Result<String> {
        let mut out = String::new();
        loop {
            let c = match self.peek_char() {
                None | Some('\n') => return Err(self.err("quoted literal not terminated")),
                Some(c) => c,
            };
            self.pos += 1;
            if c == quote {
                return Ok(out);
            }
            if c != '\\' {
                out.push(c);
                continue;
            }
            let Some(e) = self.peek_char() else {
                return Err(self.err("quoted literal not terminated"));
            };
            self.pos += 1;
            let simple = match e {
                'a' => Some('\x07'),
                'b' => Some('\x08'),
                'f' => Some('\x0c'),
                'n' => Some('\n'),
                'r' => Some('\r'),
                't' => Some('\t'),
                'v' => Some('\x0b'),
                '\\' => Some('\\'),
                e if e == quote => Some(e),
                _ => None,
            };
            if let Some(s) = simple {
                out.push(s);
                continue;
            }
            let (digits, radix, first) = match e {
                'x' => (2, 16, None),
                'u' => (4, 16, None),
                'U' => (8, 16, None),
                '0'..='7' => (2, 8, e.to_digit(8)),
                _ => return Err(self.err("illegal escape sequence")),
            };
            let mut v = first.unwrap_or(0);
            for _ in 0..digits {
                let d = self
                    .peek_char()
                    .and_then(|c| c.to_digit(radix))
                    .ok_or_else(|| self.err("illegal numeric escape sequence"))?;
                self.pos += 1;
                v = v * radix + d;
            }
            if radix == 8 && v > 255 {
                return Err(self.err("octal escape out of range"));
            }
            out.push(char::from_u32(v).ok_or_else(|| self.err("escape is not a character"))?);
        }
    }

    /// `selector (',' selector)*`
    fn parse(&mut self) -> Result<Vec<Selector>> {
        let mut all = vec![self.selector()?];
        loop {
            match self.next()? {
                Token::End => return Ok(all),
                Token::Comma => all.push(self.selector()?),
                _ => return Err(self.err("expected ',' or the end")),
            }
        }
    }

    /// `fieldpath [operator value]`
    fn selector(&mut self) -> Result<Selector> {
        let mut path = vec![self.field()?];
        while self.peek()? == Token::Dot {
            self.next()?;
            path.push(self.field()?);
        }
        if matches!(self.peek()?, Token::Comma | Token::End) {
            return Ok(Selector {
                path,
                op: Op::Present,
            });
        }
        let op = match self.next()? {
            Token::Operator(o) => o,
            _ => return Err(self.err(r#"expected an operator ("=="|"!="|"~=")"#)),
        };
        let regex = op == "~=";
        let value = match self.next()? {
            Token::Value(v) | Token::Field(v) => v,
            Token::Quoted('"', v) => v,
            Token::Quoted(_, v) if regex => v,
            Token::Quoted(..) => return Err(self.err("invalid quote encountered")),
            _ => return Err(self.err("expected a value")),
        };
        let op = match op.as_str() {
            "==" => Op::Equal(value),
            "!=" => Op::NotEqual(value),
            "~=" => Op::Matches(
                Regex::new(&value)
                    .map_err(|e| self.err(&format!("bad regular expression: {e}")))?,
            ),
            other => return Err(self.err(&format!("unsupported operator {other:?}"))),
        };
        Ok(Selector { path, op })
    }

    fn field(&mut self) -> Result<String> {
        match self.next()? {
            Token::Field(f) | Token::Quoted('"', f) => Ok(f),
            Token::Quoted(..) => Err(self.err("invalid quote encountered")),
            _ => Err(self.err("expected a field name")),
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
        // `|` quotes, it does not separate alternatives: this value is literal.
        assert!(!m(&["name==bar|labels.a==1"], &o));
        assert!(m(&["name==bar|labels.a==1", "name==foo"], &o));
        assert!(m(&[" name == foo "], &o));
        assert!(!m(&["nope==x"], &o));
    }

    #[test]
    fn quoted_values() {
        let o = obj("/tasks/exit", &[("a,b", "x|y"), ("q\"", "1")]);
        // dockerd's event subscription.
        assert!(m(&["name~=|^/tasks/|"], &o));
        assert!(m(&[r#"name~="^/tasks/""#], &o));
        assert!(m(&["name~=/^\\/tasks\\//"], &o));
        assert!(m(
            &["name~=/^\\/tasks\\/exit$/,labels.\"a,b\"==\"x|y\""],
            &o
        ));
        assert!(!m(&["name~=|^/images/|"], &o));
        assert!(m(&[r"name~=|^a\\\|$|"], &obj("a|", &[])));
        assert!(!m(&[r"name~=|^a\\\|$|"], &obj("a", &[])));
        assert!(m(&[r#"name=="a\"b""#], &obj("a\"b", &[])));
        assert!(m(&[r#"name=="\x41\u00e9\101\t""#], &obj("A\u{e9}A\t", &[])));
        assert!(m(&[r#"labels."q\""==1"#], &o));
        // Bare values run to the next `,` or space and may hold quote characters.
        assert!(m(&["labels.\"a,b\"==x|y"], &o));
        // Unicode passes through.
        assert!(m(&["name==zé"], &obj("zé", &[])));
    }

    #[test]
    fn scans_tokens() {
        let mut p = Parser::new(r#"labels."k.1"~=|a,b| , x"#);
        let mut got = vec![];
        loop {
            let t = p.next().unwrap();
            if t == Token::End {
                break;
            }
            got.push(t);
        }
        assert_eq!(
            got,
            vec![
                Token::Field("labels".into()),
                Token::Dot,
                Token::Quoted('"', "k.1".into()),
                Token::Operator("~=".into()),
                Token::Quoted('|', "a,b".into()),
                Token::Comma,
                Token::Field("x".into()),
            ]
        );
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
            // `/…/` and `|…|` quote only regular expressions.
            "name==/foo/",
            "name==|foo|",
            // Quoted field names take `"` only.
            "labels./a/==1",
            "name~=|x",
            "name~=/x\ny/",
            r#"name=="\q""#,
            r#"name~=/\d/"#,
            r#"name=="\x4""#,
            r#"name=="\777""#,
            r#"name=="\U00110000""#,
            "name=~x",
            "name===x",
            "la-bel==x",
            "name==x y",
            "name==.x",
            "name==/tasks/exit",
        ] {
            assert!(Filter::parse_all(&[bad]).is_err(), "{bad:?} accepted");
        }
    }
}
