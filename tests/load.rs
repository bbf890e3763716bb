//! `doppel load` end to end against doppel's own small HTTP server (`__http-target`): the schedule is
//! honoured, a slow endpoint shows in p99 and in its own row, gates fail the run, responses are checked,
//! errors are classified, and the HTML report renders in headless Chromium.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::common::*;

/// A recorded request: name, milliseconds after the first, recorded latency, target, recorded status and body.
struct Rec<'a> {
    name: &'a str,
    at_ms: u64,
    latency_ms: f64,
    target: &'a str,
    status: u16,
    body: &'a str,
}

/// Writes `tests` as test-set-0 of `<work>/rec` in doppel's format, as `doppel record` would have; returns that
/// recordings path and `<work>/load.json`, where the tests have `doppel load` write its report.
fn write_set(work: &Path, tests: &[Rec]) -> (PathBuf, PathBuf) {
    let root = work.join("rec");
    let dir = root.join("test-set-0");
    std::fs::create_dir_all(dir.join("tests")).unwrap();
    std::fs::write(
        dir.join("set.yaml"),
        "version: 1\ncreated_at: \"2026-11-26T20:00:00.000Z\"\ncommand: [handwritten]\napp_ports: [8080]\ncapture: explicit\n",
    )
    .unwrap();
    for t in tests {
        let yaml = format!(
            "version: 1\nname: {name}\nkind: http\nrecorded_at: \"2026-11-26T20:00:{s:02}.{ms:03}Z\"\nlatency_ms: {lat}\n\
             port: 8080\nrequest:\n  method: GET\n  target: {target}\n  headers:\n  - \"Host: 127.0.0.1:8080\"\n\
             response:\n  status: {status}\n  headers:\n  - \"Content-Type: application/json\"\n  body:\n    json: {body}\n",
            name = t.name,
            s = t.at_ms / 1000,
            ms = t.at_ms % 1000,
            lat = t.latency_ms,
            target = t.target,
            status = t.status,
            body = t.body,
        );
        std::fs::write(dir.join("tests").join(format!("{}.yaml", t.name)), yaml).unwrap();
    }
    (root, work.join("load.json"))
}

/// doppel's HTTP target on a free port.
fn start_target(dir: &Path, variant: Option<&str>) -> (Bg, String) {
    let port = free_port();
    let mut c = Command::new(doppel_bin());
    c.args(["__http-target", &port.to_string()]);
    if let Some(v) = variant {
        c.env("TARGET_VARIANT", v);
    }
    let bg = Bg::spawn_ready(&mut c, dir, &format!("target-{port}"), "ready on", Duration::from_secs(10));
    (bg, format!("http://127.0.0.1:{port}"))
}

fn load(path: &Path, target: &str, args: &[&str]) -> Ran {
    let mut c = Command::new(doppel_bin());
    c.arg("load").arg("--path").arg(path).args(["--target", target]).args(args);
    run(&mut c)
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&read_all(path)).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn endpoint<'a>(report: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    find_by(&report["endpoints"], "endpoint", name).unwrap_or_else(|| panic!("no endpoint {name} in {report:#}"))
}

fn items(count: u64) -> Vec<(String, String, String)> {
    (0..count)
        .map(|i| {
            (
                format!("get-api-items-{i}"),
                format!("/api/items/{i}"),
                format!("{{\"id\": {i}, \"name\": \"item-{i}\"}}"),
            )
        })
        .collect()
}

/// One recorded request per item, `step_ms` apart, each recorded at `latency_ms`, answered 200.
fn item_recs(its: &[(String, String, String)], step_ms: u64, latency_ms: f64) -> Vec<Rec<'_>> {
    its.iter()
        .enumerate()
        .map(|(i, (n, t, b))| Rec { name: n, at_ms: i as u64 * step_ms, latency_ms, target: t, status: 200, body: b })
        .collect()
}

/// doppel's HTTP target, and `count` item requests recorded `step_ms` apart (each at `latency_ms`) to load it.
struct Items {
    _target: Bg,
    url: String,
    rec: PathBuf,
    out: PathBuf,
    _dir: tempfile::TempDir,
}

impl Items {
    fn new(count: u64, step_ms: u64, latency_ms: f64) -> Items {
        let dir = tempfile::tempdir().unwrap();
        let (target, url) = start_target(dir.path(), None);
        let its = items(count);
        let (rec, out) = write_set(dir.path(), &item_recs(&its, step_ms, latency_ms));
        Items { _target: target, url, rec, out, _dir: dir }
    }

    /// `doppel load <args> --json <out>`, which must exit 0: the run and its report.
    fn load(&self, args: &[&str]) -> (Ran, serde_json::Value) {
        let out = self.out.to_str().unwrap();
        let args: Vec<&str> = args.iter().copied().chain(["--json", out]).collect();
        let r = load(&self.rec, &self.url, &args);
        assert_eq!(r.code, 0, "{r:?}");
        let report = json(&self.out);
        (r, report)
    }
}

#[test]
fn a_fixed_rate_is_honoured_and_reported() {
    let (r, report) = Items::new(4, 100, 2.0).load(&["--rate", "200/s", "--duration", "3s"]);
    assert_eq!(report["requests"], 600, "{r:?}");
    assert_eq!(report["errors"], 0, "{r:?}");
    assert_eq!(report["requested_rps"], 200.0);
    let achieved = report["achieved_rps"].as_f64().unwrap();
    assert!((190.0..=210.0).contains(&achieved), "asked 200/s, achieved {achieved}/s\n{r:?}");
    for key in ["p50", "p90", "p99", "p999", "max"] {
        assert!(report[key].as_f64().is_some_and(|v| v > 0.0), "{key} missing: {report:#}");
    }
    let items = endpoint(&report, "GET /api/items/{id}");
    assert_eq!(items["requests"], 600);
    assert_eq!(items["recorded"]["p50"], 2.0);
    assert!(items["p99"].as_f64().is_some());
    // The timeline asks 200 per second for three seconds.
    let asked: Vec<u64> = report["timeline"].as_array().unwrap().iter().map(|s| s["asked"].as_u64().unwrap()).collect();
    assert_eq!(&asked[..3], &[200, 200, 200], "{asked:?}");
    // Live progress once a second on stderr, and the table on stdout.
    assert!(r.stderr.lines().filter(|l| l.contains("(asked ")).count() >= 2, "{r:?}");
    assert!(r.stdout.contains("GET /api/items/{id}") && r.stdout.contains("throughput: "), "{r:?}");
}

#[test]
fn a_slow_endpoint_shows_in_p99_and_a_gate_fails_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let (_target, url) = start_target(dir.path(), None);
    let its = items(9);
    let mut recs = item_recs(&its, 10, 1.0);
    recs.push(Rec {
        name: "get-slow",
        at_ms: 95,
        latency_ms: 300.0,
        target: "/slow?ms=300",
        status: 200,
        body: "{\"slept_ms\": 300}",
    });
    let (rec, out) = write_set(dir.path(), &recs);
    let html = dir.path().join("load.html");
    let r = load(
        &rec,
        &url,
        &[
            "--rate",
            "50/s",
            "--duration",
            "2s",
            "--json",
            out.to_str().unwrap(),
            "--html",
            html.to_str().unwrap(),
            "--fail-if",
            "p99>200ms",
            "--fail-if",
            "errors>1%",
        ],
    );
    assert_eq!(r.code, 1, "the p99 gate must fail the run\n{r:?}");
    assert!(r.stderr.contains("gate failed: p99>200ms (p99 was"), "{r:?}");
    assert!(r.stdout.contains("gate errors>1%: ok"), "{r:?}");
    let report = json(&out);
    assert!(report["p99"].as_f64().unwrap() >= 300.0, "{report:#}");
    let slow = endpoint(&report, "GET /slow");
    assert_eq!(slow["requests"], 10);
    assert!(slow["p50"].as_f64().unwrap() >= 300.0, "{slow:#}");
    assert_eq!(slow["recorded"]["p50"], 300.0);
    let fast = endpoint(&report, "GET /api/items/{id}");
    assert!(fast["p50"].as_f64().unwrap() < 100.0, "{fast:#}");
    let row = r.stdout.lines().find(|l| l.starts_with("GET /slow")).unwrap_or_else(|| panic!("no row\n{r:?}"));
    assert!(row.contains("ms") && row.split_whitespace().nth(2) == Some("10"), "{row}");
    assert_eq!(report["gates"][0]["failed"], true);

    // The HTML page renders: summary, endpoint table, latency over time and histogram plots.
    let (shot, dom) = chromium::render(&html, dir.path());
    assert!(std::fs::metadata(&shot).unwrap().len() > 10_000);
    for id in ["summary", "endpoints", "latency-over-time", "throughput-over-time", "latency-histogram", "gates"] {
        assert!(dom.contains(&format!("id=\"{id}\"")), "no #{id} in the rendered page");
    }
    assert!(dom.contains("GET /slow") && dom.contains("GET /api/items/{id}"));
    assert!(dom.matches("class=\"bar\"").count() >= 2, "histogram bars missing");
    assert!(dom.contains("<polyline"), "latency lines missing");
    assert!(dom.contains("FAILED"));
}

#[test]
fn the_recorded_timing_is_replayed_faster_and_looped() {
    let set = Items::new(3, 400, 1.0);
    // Recorded 0, 0.4 and 0.8s, one pass 1.2s (span plus a mean gap): at 2x 0.6s, so 2s hold passes starting
    // at 0, 0.6, 1.2 and 1.8s: 3 + 3 + 3 + 1 requests.
    let (_, report) = set.load(&["--speed", "2x", "--duration", "2s"]);
    assert_eq!(report["requests"], 10, "{report:#}");
    assert_eq!(report["errors"], 0);
    let elapsed = report["elapsed_s"].as_f64().unwrap();
    assert!((1.75..2.5).contains(&elapsed), "the last request is due at 1.8s; elapsed {elapsed}");
    // One pass at 4x: the last request is due at 0.2s.
    let (_, report) = set.load(&["--speed", "4x"]);
    assert_eq!(report["requests"], 3);
    let elapsed = report["elapsed_s"].as_f64().unwrap();
    assert!((0.19..0.9).contains(&elapsed), "elapsed {elapsed}");
}

#[test]
fn responses_are_checked_and_errors_classified() {
    let dir = tempfile::tempdir().unwrap();
    // The "changed" server renames items: with --check each item response is a mismatch.
    let (_target, url) = start_target(dir.path(), Some("changed"));
    let recs = [
        Rec {
            name: "get-item",
            at_ms: 0,
            latency_ms: 1.0,
            target: "/api/items/7",
            status: 200,
            body: "{\"id\": 7, \"name\": \"item-7\"}",
        },
        Rec {
            name: "get-missing",
            at_ms: 10,
            latency_ms: 1.0,
            target: "/status/404",
            status: 404,
            body: "{\"status\": 404}",
        },
        Rec {
            name: "get-broken",
            at_ms: 20,
            latency_ms: 1.0,
            target: "/status/503",
            status: 200,
            body: "{\"ok\": true}",
        },
        Rec { name: "get-health", at_ms: 30, latency_ms: 1.0, target: "/health", status: 200, body: "{\"ok\": true}" },
    ];
    let (rec, out) = write_set(dir.path(), &recs);
    let r = load(
        &rec,
        &url,
        &["--rate", "40/s", "--duration", "1s", "--check", "--json", out.to_str().unwrap(), "--fail-if", "errors>=10"],
    );
    assert_eq!(r.code, 1, "{r:?}");
    let report = json(&out);
    let by_class = &report["errors_by_class"];
    // 40 requests, 10 of each: items mismatch, 404 as recorded (no error), 503 instead of 200, health fine.
    assert_eq!(by_class["mismatch"], 10, "{report:#}");
    assert_eq!(by_class["5xx"], 10, "{report:#}");
    assert_eq!(by_class["4xx"], 0, "a 404 that was recorded as 404 is not an error: {report:#}");
    assert_eq!(report["errors"], 20);
    assert!(
        r.stdout
            .contains("mismatch: GET /api/items/{id} (test get-item): body $.name: expected \"item-7\" got \"Item 7\""),
        "{r:?}"
    );
}

#[test]
fn dropped_requests_when_the_server_cannot_keep_up() {
    let dir = tempfile::tempdir().unwrap();
    let (_target, url) = start_target(dir.path(), None);
    let recs = [Rec { name: "get-slow", at_ms: 0, latency_ms: 100.0, target: "/slow?ms=200", status: 200, body: "{}" }];
    let (rec, out) = write_set(dir.path(), &recs);
    // One connection, 200 ms per request, 20 asked per second, at most 2 waiting or on the wire.
    let r = load(
        &rec,
        &url,
        &[
            "--rate",
            "20/s",
            "--duration",
            "1s",
            "--connections",
            "1",
            "--max-inflight",
            "2",
            "--json",
            out.to_str().unwrap(),
        ],
    );
    assert_eq!(r.code, 0, "{r:?}");
    let report = json(&out);
    let dropped = report["errors_by_class"]["dropped"].as_u64().unwrap();
    let responses = report["responses"].as_u64().unwrap();
    assert_eq!(report["requests"], 20);
    assert_eq!(dropped + responses, 20, "{report:#}");
    assert!((10..=17).contains(&dropped), "{report:#}");
    // The second request waited for the first: latency counts from its intended time.
    assert!(report["max"].as_f64().unwrap() >= 350.0, "{report:#}");
}

#[test]
fn usage_errors_and_an_unreachable_target_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let recs = [Rec { name: "get-root", at_ms: 0, latency_ms: 1.0, target: "/", status: 200, body: "{}" }];
    let (rec, _) = write_set(dir.path(), &recs);
    let url = format!("http://127.0.0.1:{}", free_port());
    for args in [
        &["--fail-if", "p98>1ms"][..],
        &["--speed", "2x", "--rate", "5/s"],
        &["--rate", "fast"],
        &["--duration", "soon"],
    ] {
        let r = load(&rec, &url, args);
        assert_eq!(r.code, 2, "{r:?}");
    }
    let r = load(&rec, &url, &["--rate", "5/s"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("cannot connect to"), "{r:?}");
}
