//! Prometheus' text exposition format (version 0.0.4): `# HELP`, `# TYPE`, then
//! `name{label="value",...} value` lines.

use std::fmt::Write;

/// A metric's labels, in the order they are written.
pub type Labels = Vec<(&'static str, String)>;

/// Builds one exposition.
#[derive(Default)]
pub struct Text {
    out: String,
}

impl Text {
    /// Starts a metric family.
    pub fn family(&mut self, name: &str, kind: &str, help: &str) {
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    /// One sample of the current family.
    pub fn sample(&mut self, name: &str, labels: &[(&str, String)], value: f64) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", escape(v));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {}", number(value));
    }

    pub fn finish(self) -> String {
        self.out
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// A sample value as Prometheus writes it.
pub fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_and_escapes() {
        let mut t = Text::default();
        t.family("x_total", "counter", "Things\ncounted.");
        t.sample("x_total", &[], 3.0);
        t.sample(
            "x_total",
            &[("a", "q\"b\\c\nd".into()), ("b", "2".into())],
            0.25,
        );
        assert_eq!(
            t.finish(),
            "# HELP x_total Things\\ncounted.\n# TYPE x_total counter\nx_total 3\n\
             x_total{a=\"q\\\"b\\\\c\\nd\",b=\"2\"} 0.25\n"
        );
        assert_eq!(number(f64::INFINITY), "+Inf");
        assert_eq!(number(1e20), "100000000000000000000");
    }
}
