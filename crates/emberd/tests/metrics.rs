//! emberd's Prometheus endpoint (`[metrics] address`, `/v1/metrics`): a runc task
//! and a microVM task move the task, VM, boot-time and memory metrics; a bad
//! address or one in use stops the daemon's start with a clear message.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::tasks::*;
use common::*;

const NS: &str = "ember-metrics";

/// A scrape: every sample by its full name with labels (`name{a="b"}`).
struct Scrape {
    text: String,
    samples: BTreeMap<String, f64>,
}

impl Scrape {
    fn get(&self, series: &str) -> Option<f64> {
        self.samples.get(series).copied()
    }

    /// The sum over the series of `name` whose labels contain all of `labels`.
    fn sum(&self, name: &str, labels: &[&str]) -> f64 {
        self.samples
            .iter()
            .filter(|(k, _)| {
                k.split('{').next() == Some(name) && labels.iter().all(|l| k.contains(l))
            })
            .map(|(_, v)| v)
            .sum()
    }
}

/// Checks the exposition format line by line (what promtool checks of it) and
/// reads the samples.
fn parse(text: &str) -> Scrape {
    let mut samples = BTreeMap::new();
    let mut typed: BTreeMap<String, String> = BTreeMap::new();
    let mut helped = std::collections::BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').expect("HELP name text");
            assert!(!help.is_empty() && valid_name(name), "{line}");
            assert!(helped.insert(name.to_string()), "HELP twice: {line}");
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
            assert!(valid_name(name), "{line}");
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                "{line}"
            );
            assert!(helped.contains(name), "TYPE before HELP: {line}");
            assert!(typed.insert(name.into(), kind.into()).is_none(), "{line}");
            continue;
        }
        assert!(
            !line.starts_with('#') && !line.is_empty(),
            "stray line {line:?}"
        );
        let (series, value) = line.rsplit_once(' ').expect("series value");
        let v: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v
                .parse()
                .unwrap_or_else(|_| panic!("bad value in {line:?}")),
        };
        let name = series.split('{').next().unwrap();
        assert!(valid_name(name), "{line}");
        if let Some(labels) = series.strip_prefix(name) {
            if !labels.is_empty() {
                check_labels(labels, line);
            }
        }
        // Every sample belongs to the family typed last (histograms: _bucket,
        // _sum, _count).
        let family = typed.keys().last().cloned().unwrap_or_default();
        let last_family = text[..text.find(line).unwrap()]
            .lines()
            .rev()
            .find_map(|l| l.strip_prefix("# TYPE "))
            .and_then(|r| r.split(' ').next())
            .unwrap_or_else(|| panic!("sample before any TYPE: {line} ({family})"));
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .filter(|b| typed.get(*b).map(String::as_str) == Some("histogram"))
            .unwrap_or(name);
        assert_eq!(base, last_family, "sample outside its family: {line}");
        assert!(
            samples.insert(series.to_string(), v).is_none(),
            "twice: {line}"
        );
    }
    Scrape {
        text: text.to_string(),
        samples,
    }
}

fn valid_name(n: &str) -> bool {
    let mut c = n.chars();
    c.next()
        .is_some_and(|f| f.is_ascii_alphabetic() || f == '_' || f == ':')
        && c.all(|x| x.is_ascii_alphanumeric() || x == '_' || x == ':')
}

/// `{a="x",b="y"}`, values escaped.
fn check_labels(labels: &str, line: &str) {
    let inner = labels
        .strip_prefix('{')
        .and_then(|l| l.strip_suffix('}'))
        .unwrap_or_else(|| panic!("labels of {line}"));
    let mut rest = inner;
    while !rest.is_empty() {
        let (name, after) = rest.split_once("=\"").unwrap_or_else(|| panic!("{line}"));
        assert!(valid_name(name), "label {name:?} in {line}");
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next() {
                Some((_, '\\')) => {
                    chars.next();
                }
                Some((i, '"')) => break i,
                Some(_) => {}
                None => panic!("unterminated label value in {line}"),
            }
        };
        rest = &after[end + 1..];
        rest = rest.strip_prefix(',').unwrap_or(rest);
    }
}

fn http_get(addr: &str, path: &str) -> (String, String) {
    let mut c = std::net::TcpStream::connect(addr).expect("connecting to the metrics address");
    c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(c, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut r = String::new();
    c.read_to_string(&mut r).unwrap();
    let (head, body) = r.split_once("\r\n\r\n").expect("an HTTP answer");
    (head.to_string(), body.to_string())
}

fn scrape(addr: &str) -> Scrape {
    let (head, body) = http_get(addr, "/v1/metrics");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    parse(&body)
}

/// Scrapes until `ok` holds (some figures are recorded a moment after the call).
fn scrape_until(addr: &str, what: &str, ok: impl Fn(&Scrape) -> bool) -> Scrape {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = scrape(addr);
        if ok(&s) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: never seen in\n{}",
            s.text
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The address emberd's log says it serves metrics on.
fn metrics_address(d: &Emberd) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = d.log();
        if let Some(line) = log.lines().find(|l| l.contains("metrics serving")) {
            let a = line.split("address=").nth(1).unwrap();
            return a.split_whitespace().next().unwrap().to_string();
        }
        assert!(Instant::now() < deadline, "no metrics address in\n{log}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

const CONFIG: &str = "[metrics]\naddress = \"127.0.0.1:0\"\ngrpc_histogram = true\n";

fn remove(s: &Path, id: &str) {
    let _ = ctr(s, NS, &["tasks", "rm", "-f", id]);
    let _ = ctr(s, NS, &["containers", "rm", id]);
}

#[test]
fn metrics_follow_runc_and_microvm_tasks() {
    if !can_run_runc() || !common::vms::can_run_vms() {
        return;
    }
    let pid = std::process::id();
    let (r, v) = (format!("mr{pid}"), format!("mv{pid}"));
    let work = tempfile::tempdir().unwrap();
    let d = Emberd::start_with_config(work.path(), Some(CONFIG));
    let addr = metrics_address(&d);
    let s = d.socket.clone();

    let before = scrape(&addr);
    assert!(before
        .text
        .contains("# TYPE ember_vm_boot_seconds histogram"));
    assert!(before
        .text
        .contains("# TYPE ember_vm_restore_seconds histogram"));
    assert_eq!(before.sum("ember_vm_boot_seconds_count", &[]), 0.0);
    assert!(before.get("process_resident_memory_bytes").unwrap() > 0.0);
    let (head, _) = http_get(&addr, "/metrics");
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");

    import_busybox(&s, NS, work.path());
    ctr(&s, NS, &["run", "-d", IMAGE, &r, "sleep", "600"]).expect_ok();
    wait_status(&s, NS, &r, "RUNNING");
    let runc = [
        "namespace=\"ember-metrics\"",
        "runtime=\"io.containerd.runc.v2\"",
    ];
    let m = scrape(&addr);
    assert_eq!(m.sum("emberd_tasks", &runc), 1.0, "{}", m.text);
    assert_eq!(m.sum("emberd_tasks_running", &runc), 1.0, "{}", m.text);
    assert!(m.sum("emberd_task_processes", &runc) >= 1.0, "{}", m.text);
    assert!(m.sum("ember_shim_starts_total", &["containerd-shim-runc-v2"]) >= 1.0);
    // The gRPC calls ctr made, counted per method, with handling times.
    let create = [
        "grpc_method=\"Create\"",
        "containerd.services.tasks.v1.Tasks",
    ];
    assert_eq!(
        m.sum("grpc_server_started_total", &create),
        1.0,
        "{}",
        m.text
    );
    assert_eq!(
        m.sum(
            "grpc_server_handled_total",
            &[create[0], create[1], "grpc_code=\"OK\""]
        ),
        1.0
    );
    assert_eq!(m.sum("grpc_server_handling_seconds_count", &create), 1.0);
    assert!(m.sum("grpc_server_handled_total", &["grpc_code=\"NOT_FOUND\""]) >= 1.0);

    ctr(
        &s,
        NS,
        &[
            "run",
            "-d",
            "--runtime",
            "io.containerd.ember.v2",
            IMAGE,
            &v,
            "sleep",
            "600",
        ],
    )
    .expect_ok();
    wait_status(&s, NS, &v, "RUNNING");
    let vm = format!("vm=\"{v}\"");
    let m = scrape_until(&addr, "a VM boot sample", |m| {
        m.sum("ember_vm_boot_seconds_count", &["kind=\"container\""]) == 1.0
    });
    assert_eq!(
        m.get("ember_vms_running{namespace=\"ember-metrics\"}"),
        Some(1.0),
        "{}",
        m.text
    );
    let rss = m.sum("ember_vm_memory_bytes", &[&vm, "kind=\"rss\""]);
    let pss = m.sum("ember_vm_memory_bytes", &[&vm, "kind=\"pss\""]);
    assert!(
        rss > 1e6 && pss > 0.0 && pss <= rss,
        "rss {rss} pss {pss}\n{}",
        m.text
    );
    assert!(m.sum("ember_vm_configured_memory_bytes", &[&vm]) > 0.0);
    let boot = m.sum("ember_vm_boot_seconds_sum", &["kind=\"container\""]);
    assert!(boot > 0.1 && boot < 120.0, "boot took {boot} s");
    eprintln!("measured: VM boot {boot:.2} s, VMM rss {rss} pss {pss}");
    let ember = ["runtime=\"io.containerd.ember.v2\""];
    assert_eq!(m.sum("emberd_tasks_running", &ember), 1.0, "{}", m.text);
    // No templates: the restore histogram has no samples.
    assert!(!m.text.contains("ember_vm_restore_seconds_count"));

    // A VM made by CreateVM counts as such, beside the container's.
    let ev = format!("me{pid}");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut c = rt.block_on(common::vms::fc(&d));
    rt.block_on(common::vms::create_vm(&mut c, NS, &ev, false));
    let m = scrape(&addr);
    assert_eq!(
        m.sum("ember_vm_boot_seconds_count", &["kind=\"createvm\""]),
        1.0
    );
    assert_eq!(
        m.sum("ember_vm_boot_seconds_count", &["kind=\"container\""]),
        1.0
    );
    assert_eq!(
        m.get("ember_vms_running{namespace=\"ember-metrics\"}"),
        Some(2.0),
        "{}",
        m.text
    );
    let ev_label = format!("vm=\"{ev}\"");
    assert!(
        m.sum("ember_vm_memory_bytes", &[&ev_label, "kind=\"rss\""]) > 1e6,
        "{}",
        m.text
    );
    // A container joining it boots nothing, and the log says it joined.
    let j = format!("mj{pid}");
    let ann = format!("io.ember.vm.id={ev}");
    ctr(
        &s,
        NS,
        &[
            "run",
            "-d",
            "--runtime",
            "io.containerd.ember.v2",
            "--annotation",
            &ann,
            IMAGE,
            &j,
            "sleep",
            "600",
        ],
    )
    .expect_ok();
    wait_status(&s, NS, &j, "RUNNING");
    let joined = d.log();
    let id = format!("id={j}");
    assert!(
        joined
            .lines()
            .any(|l| l.contains("task joins a running shim") && l.contains(&id)),
        "{joined}"
    );
    assert!(!joined
        .lines()
        .any(|l| l.contains("shim started") && l.contains(&id)));
    std::thread::sleep(Duration::from_millis(500));
    let m = scrape(&addr);
    assert_eq!(m.sum("ember_vm_boot_seconds_count", &[]), 2.0, "{}", m.text);
    assert_eq!(
        m.get("ember_vms_running{namespace=\"ember-metrics\"}"),
        Some(2.0),
        "{}",
        m.text
    );
    assert_eq!(rt.block_on(common::vms::stop_vm(&mut c, NS, &ev)), Ok(()));
    let _ = ctr(&s, NS, &["containers", "rm", &j]);

    remove(&s, &v);
    remove(&s, &r);
    let m = scrape_until(&addr, "no VMs after the delete", |m| {
        m.sum("ember_vms_running", &[]) == 0.0 && m.sum("emberd_tasks", &[]) == 0.0
    });
    assert_eq!(m.sum("ember_vm_boot_seconds_count", &[]), 2.0);
}

/// Runs emberd until it exits (it should not start); its exit code and stderr.
fn failed_start(dir: &Path, config: &str) -> (Option<i32>, String) {
    let p = dir.join("emberd.toml");
    std::fs::write(&p, config).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_emberd"))
        .arg("--config")
        .arg(&p)
        .arg("--root")
        .arg(dir.join("root"))
        .arg("--state")
        .arg(dir.join("state"))
        .arg("--address")
        .arg(dir.join("emberd.sock"))
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_metrics_addresses_stop_the_start() {
    if !can_run() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let (code, err) = failed_start(work.path(), "[metrics]\naddress = \"1338\"\n");
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("[metrics] address") && err.contains("\"1338\" is not IP:PORT"),
        "{err}"
    );
    let (code, err) = failed_start(work.path(), "[metrics]\naddress = 1338\n");
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("address"), "{err}");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let a = taken.local_addr().unwrap().to_string();
    let (code, err) = failed_start(work.path(), &format!("[metrics]\naddress = \"{a}\"\n"));
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains(&format!("binding the metrics address {a}")) && err.contains("in use"),
        "{err}"
    );
    // Nothing was served: no socket left behind.
    assert!(!work.path().join("emberd.sock").exists());
}
