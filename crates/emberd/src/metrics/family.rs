//! Counters and histograms kept by emberd, keyed by their labels.

use std::collections::BTreeMap;
use std::sync::Mutex;

use super::text::{Labels, Text};

/// A counter family.
pub struct Counter {
    name: &'static str,
    help: &'static str,
    series: Mutex<BTreeMap<Labels, u64>>,
}

impl Counter {
    pub const fn new(name: &'static str, help: &'static str) -> Counter {
        Counter {
            name,
            help,
            series: Mutex::new(BTreeMap::new()),
        }
    }

    pub fn inc(&self, labels: Labels) {
        *lock(&self.series).entry(labels).or_default() += 1;
    }

    pub fn get(&self, labels: &Labels) -> u64 {
        lock(&self.series).get(labels).copied().unwrap_or(0)
    }

    pub fn write(&self, t: &mut Text) {
        t.family(self.name, "counter", self.help);
        for (labels, v) in lock(&self.series).iter() {
            t.sample(self.name, labels, *v as f64);
        }
    }
}

/// Bucket bounds (seconds) for VM boots and restores: TCG boots take about a
/// second, KVM ones a tenth.
pub const BOOT_BUCKETS: &[f64] = &[0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0];
/// Bucket bounds (seconds) for gRPC calls, as grpc-go's Prometheus middleware.
pub const GRPC_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

#[derive(Clone)]
struct Series {
    /// Per bucket, the samples at or below its bound (not cumulative).
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

/// A histogram family.
pub struct Histogram {
    name: &'static str,
    help: &'static str,
    buckets: &'static [f64],
    series: Mutex<BTreeMap<Labels, Series>>,
}

impl Histogram {
    pub const fn new(name: &'static str, help: &'static str, buckets: &'static [f64]) -> Self {
        Histogram {
            name,
            help,
            buckets,
            series: Mutex::new(BTreeMap::new()),
        }
    }

    pub fn observe(&self, labels: Labels, v: f64) {
        let mut series = lock(&self.series);
        let s = series.entry(labels).or_insert_with(|| Series {
            counts: vec![0; self.buckets.len()],
            sum: 0.0,
            count: 0,
        });
        if let Some(i) = self.buckets.iter().position(|b| v <= *b) {
            s.counts[i] += 1;
        }
        s.sum += v;
        s.count += 1;
    }

    /// How many samples the series holds.
    pub fn count(&self, labels: &Labels) -> u64 {
        lock(&self.series).get(labels).map_or(0, |s| s.count)
    }

    pub fn write(&self, t: &mut Text) {
        t.family(self.name, "histogram", self.help);
        let bucket = format!("{}_bucket", self.name);
        for (labels, s) in lock(&self.series).iter() {
            let mut cumulative = 0;
            for (bound, n) in self.buckets.iter().zip(&s.counts) {
                cumulative += n;
                let mut l = labels.clone();
                l.push(("le", super::text::number(*bound)));
                t.sample(&bucket, &l, cumulative as f64);
            }
            let mut l = labels.clone();
            l.push(("le", "+Inf".into()));
            t.sample(&bucket, &l, s.count as f64);
            t.sample(&format!("{}_sum", self.name), labels, s.sum);
            t.sample(&format!("{}_count", self.name), labels, s.count as f64);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative() {
        let h = Histogram::new("h_seconds", "H.", &[1.0, 2.0]);
        let l: Labels = vec![("kind", "a".into())];
        h.observe(l.clone(), 0.5);
        h.observe(l.clone(), 1.5);
        h.observe(l.clone(), 9.0);
        let mut t = Text::default();
        h.write(&mut t);
        let text = t.finish();
        assert!(
            text.contains("h_seconds_bucket{kind=\"a\",le=\"1\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("h_seconds_bucket{kind=\"a\",le=\"2\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("h_seconds_bucket{kind=\"a\",le=\"+Inf\"} 3\n"),
            "{text}"
        );
        assert!(text.contains("h_seconds_sum{kind=\"a\"} 11\n"), "{text}");
        assert!(text.contains("h_seconds_count{kind=\"a\"} 3\n"), "{text}");
        assert_eq!(h.count(&l), 3);
        let c = Counter::new("c_total", "C.");
        c.inc(vec![]);
        c.inc(vec![]);
        assert_eq!(c.get(&vec![]), 2);
    }
}
