//! Progress display of the client verbs: a byte bar for imports, and for
//! transfers (pull, push) one live line per blob with a summary line, plain
//! lines (one per state change) when stdout is not a terminal, one JSON object
//! per event for scripts, or nothing at all.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::time::Instant;

use containerd_client::types::transfer::Progress;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use serde::Serialize;

use super::human_size;

/// A bar counting bytes (hidden when `quiet`).
pub fn bytes_bar(total: u64, quiet: bool) -> ProgressBar {
    let bar = if quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(total)
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {bytes_per_sec} {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}

/// How transfer progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Live lines on a terminal.
    Live,
    /// One line per state change.
    Plain,
    /// One JSON object per event.
    Json,
    /// Nothing but the result.
    Quiet,
}

impl Mode {
    pub fn pick(quiet: bool, json: bool) -> Mode {
        if quiet {
            Mode::Quiet
        } else if json {
            Mode::Json
        } else if std::io::stdout().is_terminal() {
            Mode::Live
        } else {
            Mode::Plain
        }
    }
}

/// The state a blob is shown in.
pub fn state_of(event: &str, progress: i64, total: i64) -> &'static str {
    match event {
        "waiting" => "waiting",
        "downloading" if total > 0 && progress >= total => "verifying",
        "downloading" => "downloading",
        "uploading" => "uploading",
        "unpacking" | "extracting" => "unpacking",
        "complete" | "done" => "done",
        "already exists" => "exists",
        "mounted" => "mounted",
        _ => "working",
    }
}

/// `sha256:0123456789ab` of a node name such as `layer-sha256:…`.
pub fn short_name(name: &str) -> (String, String) {
    let (kind, rest) = match name.split_once("-sha") {
        Some((k, r)) => (k.to_string(), format!("sha{r}")),
        None => (String::new(), name.to_string()),
    };
    let short = match rest.split_once(':') {
        Some((alg, hex)) => format!("{alg}:{}", &hex[..hex.len().min(12)]),
        None => rest,
    };
    (kind, short)
}

#[derive(Serialize)]
struct JsonEvent<'a> {
    event: &'a str,
    state: &'a str,
    name: &'a str,
    parents: &'a [String],
    progress: i64,
    total: i64,
}

struct Node {
    state: &'static str,
    progress: i64,
    total: i64,
    bar: Option<ProgressBar>,
}

/// Shows the events of one transfer.
pub struct TransferView {
    mode: Mode,
    multi: MultiProgress,
    nodes: HashMap<String, Node>,
    order: Vec<String>,
    started: Instant,
}

impl TransferView {
    pub fn new(mode: Mode) -> TransferView {
        TransferView {
            mode,
            multi: MultiProgress::new(),
            nodes: HashMap::new(),
            order: Vec::new(),
            started: Instant::now(),
        }
    }

    fn line(&self, s: &str) {
        match self.mode {
            Mode::Live => {
                let _ = self.multi.println(s);
            }
            Mode::Plain => println!("{s}"),
            _ => {}
        }
    }

    fn bar_for(&self, label: &str, total: i64) -> ProgressBar {
        let bar = self.multi.add(ProgressBar::new(total.max(0) as u64));
        bar.set_style(
            ProgressStyle::with_template(
                "{prefix:<22} {msg:<11} {bytes:>10}/{total_bytes:<10} {binary_bytes_per_sec}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.set_prefix(label.to_string());
        bar
    }

    /// One event of the progress stream.
    pub fn event(&mut self, p: &Progress) {
        let blob = p.name.contains("-sha");
        let state = if blob {
            state_of(&p.event, p.progress, p.total)
        } else {
            "status"
        };
        if self.mode == Mode::Json {
            let e = JsonEvent {
                event: &p.event,
                state,
                name: &p.name,
                parents: &p.parents,
                progress: p.progress,
                total: p.total,
            };
            if let Ok(s) = serde_json::to_string(&e) {
                println!("{s}");
            }
        }
        if !blob {
            let s = if p.name.is_empty() {
                p.event.clone()
            } else {
                format!("{}: {}", p.name, p.event)
            };
            self.line(&s);
            return;
        }
        let (kind, short) = short_name(&p.name);
        let label = format!("{kind} {short}");
        if !self.nodes.contains_key(&p.name) {
            let bar = (self.mode == Mode::Live).then(|| self.bar_for(&label, p.total));
            self.nodes.insert(
                p.name.clone(),
                Node {
                    state: "",
                    progress: 0,
                    total: p.total,
                    bar,
                },
            );
            self.order.push(p.name.clone());
        }
        let changed = {
            let n = self.nodes.get_mut(&p.name).expect("inserted above");
            let changed = n.state != state;
            n.state = state;
            n.progress = p.progress.max(n.progress);
            n.total = p.total.max(n.total);
            if let Some(b) = &n.bar {
                b.set_length(n.total.max(0) as u64);
                b.set_position(n.progress.max(0) as u64);
                b.set_message(state);
                if matches!(state, "done" | "exists" | "mounted") {
                    b.finish();
                }
            }
            changed
        };
        if changed && self.mode == Mode::Plain {
            let n = &self.nodes[&p.name];
            println!(
                "{label}  {state}  {}/{}",
                human_size(n.progress),
                human_size(n.total)
            );
        }
    }

    /// The summary line: blobs, bytes and the rate.
    pub fn summary(&self) -> String {
        let secs = self.started.elapsed().as_secs_f64();
        let moved: i64 = self
            .nodes
            .values()
            .filter(|n| !matches!(n.state, "exists" | "mounted"))
            .map(|n| n.progress)
            .sum();
        let rate = if secs > 0.0 {
            (moved as f64 / secs) as i64
        } else {
            0
        };
        format!(
            "{} blobs, {} moved in {secs:.1}s ({}/s)",
            self.order.len(),
            human_size(moved),
            human_size(rate)
        )
    }

    /// Ends the live lines and prints the summary (not when quiet or JSON).
    pub fn finish(&self) {
        for n in self.nodes.values() {
            if let Some(b) = &n.bar {
                b.abandon();
            }
        }
        if matches!(self.mode, Mode::Live | Mode::Plain) {
            println!("{}", self.summary());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_and_names() {
        assert_eq!(state_of("downloading", 5, 10), "downloading");
        assert_eq!(state_of("downloading", 10, 10), "verifying");
        assert_eq!(state_of("complete", 10, 10), "done");
        assert_eq!(state_of("waiting", 0, 10), "waiting");
        assert_eq!(
            short_name("layer-sha256:0123456789abcdef"),
            ("layer".to_string(), "sha256:0123456789ab".to_string())
        );
        assert_eq!(short_name("x").1, "x");
    }
}
