//! The spine end to end: a Flask service (Python, `requests` for its HTTP calls, a raw socket for its KV
//! store) recorded with zero code change, replayed with its dependencies gone, and a changed build caught.

use std::process::Command;
use std::time::Duration;

use crate::common::*;

#[test]
fn record_replay_and_catch_a_change() {
    let mut w = FlaskWorld::new(1);
    let rec = w.start_recording(&[]);

    // Two requests on one keep-alive connection (curl reuses it for URLs given together).
    let r = curl(&["-v", &w.url("/api/items/7"), &w.url("/api/items/404")]);
    assert!(r.stdout.contains("\"name\":\"item-7\""), "{r:?}");
    assert!(r.stderr.contains("Re-using existing connection"), "curl did not keep the connection alive\n{r:?}");
    // A chunked request body.
    let r = curl(&[
        "-H",
        "Content-Type: application/json",
        "-H",
        "Transfer-Encoding: chunked",
        "--data-binary",
        r#"{"sku":"A-1","qty":3,"ref":"first"}"#,
        &w.url("/api/orders"),
    ]);
    assert!(r.stdout.contains("\"total\":12.75"), "{r:?}");
    // A chunked (streamed) response and an opaque-protocol call.
    let r = curl(&[&w.url("/api/stream")]);
    assert_eq!(r.stdout.lines().count(), 5, "{r:?}");
    let r = curl(&[&w.url("/api/kv/orders")]);
    assert!(r.stdout.contains("VALUE 1"), "{r:?}");
    // Looking at the set while it is being recorded shows the tests so far and takes nothing from it.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let list = loop {
        let list = w.list();
        if list.stdout.contains("test-set-0: 6 tests") || std::time::Instant::now() > deadline {
            break list;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(list.stdout.contains("test-set-0: 6 tests"), "{list:?}");
    assert!(list.stderr.contains("a recording is still writing this set"), "{list:?}");
    let r = curl(&[&w.url("/api/items/9")]);
    assert!(r.stdout.contains("item-9"), "{r:?}");

    let out = w.stop_recording(rec);
    assert!(out.contains("recorded 7 tests"), "{out}");
    assert!(!w.path().join("test-set-0/tests.journal").exists());
    let set = w.path().join("test-set-0");
    let tests: Vec<String> =
        std::fs::read_dir(set.join("tests")).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    assert!(tests.contains(&"post-api-orders.yaml".to_string()), "{tests:?}");
    let order = read_all(&set.join("tests/post-api-orders.yaml"));
    // JSON bodies are stored as structured YAML, not escaped strings.
    assert!(order.contains("sku: A-1"), "{order}");
    assert!(order.contains("Transfer-Encoding: chunked"), "{order}");
    let mocks = read_all(&set.join("mocks.yaml"));
    assert!(mocks.contains("kind: tcp") && mocks.contains("INCR orders"), "opaque KV traffic missing:\n{mocks}");
    assert!(mocks.contains("target: /catalog/7?fields=name%2Cprice"), "{mocks}");

    // Replay with the dependencies gone: everything comes from the mocks.
    w.stop_upstream();
    let junit = w.dir.path().join("junit.xml");
    let ok = run(&mut w.doppel("test", &["--junit", junit.to_str().unwrap()], None));
    assert_eq!(ok.code, 0, "{ok:?}");
    assert!(ok.stdout.lines().any(|l| l.starts_with("7 passed, 0 failed")), "{ok:?}");
    assert!(read_all(&junit).contains("tests=\"7\""), "{}", read_all(&junit));

    // The changed build: the order total differs, and only that field is named.
    let bad = run(&mut w.doppel("test", &["--junit", junit.to_str().unwrap()], Some("changed")));
    assert_eq!(bad.code, 1, "{bad:?}");
    assert!(bad.stdout.contains("body $.total changed: expected 12.75 got 14.03"), "{bad:?}");
    assert!(bad.stdout.lines().any(|l| l.starts_with("6 passed, 1 failed")), "{bad:?}");
    assert!(read_all(&junit).contains("failures=\"1\""), "{}", read_all(&junit));
    let reports = std::fs::read_dir(w.path().join("reports")).unwrap().count();
    assert_eq!(reports, 2, "one JSON report per run");
}

#[test]
fn a_second_recording_is_a_new_test_set() {
    let w = FlaskWorld::new(1);
    for expected in ["test-set-0", "test-set-1"] {
        let rec = w.start_recording(&[]);
        curl(&[&w.url("/api/items/1")]);
        let out = w.stop_recording(rec);
        assert!(out.contains(expected), "{out}");
    }
    let list = w.list();
    assert!(list.stdout.contains("test-set-0: 2 tests") && list.stdout.contains("test-set-1: 2 tests"), "{list:?}");
}

#[test]
fn concurrent_requests_are_each_recorded_with_their_own_response() {
    let mut w = FlaskWorld::new(1);
    let rec = w.start_recording(&[]);
    let handles: Vec<_> = (0..24)
        .map(|i| {
            let url = w.url("/api/orders");
            std::thread::spawn(move || {
                let body = format!(r#"{{"sku":"S-{i}","qty":{},"ref":"r{i}"}}"#, i % 5 + 1);
                curl(&["-H", "Content-Type: application/json", "-d", &body, &url])
            })
        })
        .collect();
    for h in handles {
        let r = h.join().unwrap();
        assert!(r.stdout.contains("order_id"), "{r:?}");
    }
    let out = w.stop_recording(rec);
    assert!(out.contains("recorded 25 tests"), "{out}");
    // Every test's response echoes its own request's ref and sku.
    let dir = w.path().join("test-set-0/tests");
    for e in std::fs::read_dir(&dir).unwrap() {
        let text = read_all(&e.unwrap().path());
        if let Some(r) = text.split("ref: ").nth(1) {
            let reference = r.lines().next().unwrap().trim();
            assert!(text.contains(&format!("echo: {reference}")), "request and response mixed up:\n{text}");
        }
    }
    // Replay: requests and catalog calls all match. The KV store's counter was hit by 24 overlapping requests,
    // so which recorded INCR answer belongs to which request cannot be known; only that field may differ.
    w.stop_upstream();
    let r = run(&mut w.doppel("test", &[], None));
    let diffs: Vec<&str> = r.stdout.lines().filter(|l| l.contains(" changed: ") || l.contains("mock miss")).collect();
    assert!(diffs.iter().all(|l| l.contains("body $.order_id changed")), "{r:?}");
    assert!(r.stdout.contains("48 of 48 mocks used"), "{r:?}");
}

#[test]
fn replays_against_a_running_target() {
    let w = FlaskWorld::new(1);
    let rec = w.start_recording(&[]);
    curl(&[&w.url("/api/items/3")]);
    curl(&["-H", "Content-Type: application/json", "-d", r#"{"sku":"B","qty":2}"#, &w.url("/api/orders")]);
    w.stop_recording(rec);
    // The same app running on its own, dependencies real: replay against it with --target.
    let mut c = Command::new("python3");
    c.arg(repo().join("examples/flask-orders/app.py"))
        .env("APP_PORT", w.app_port.to_string())
        .env("CATALOG_URL", format!("http://127.0.0.1:{}", w.http_port))
        .env("KV_ADDR", format!("127.0.0.1:{}", w.kv_port));
    let _app = Bg::spawn_answering(&mut c, w.dir.path(), "app", &w.url("/health"), Duration::from_secs(20));
    let mut t = Command::new(doppel_bin());
    t.args(["test", "--path"]).arg(w.path()).args(["--target", &format!("http://127.0.0.1:{}", w.app_port)]);
    let r = run(&mut t);
    // The order id comes from the live KV store (its counter moved on), so that one test differs.
    assert!(r.stdout.contains("get-api-items-3") && r.stdout.contains("PASS"), "{r:?}");
    assert!(r.stdout.contains("body $.order_id changed: expected 1 got 2"), "{r:?}");
    assert_eq!(r.code, 1, "{r:?}");
}

#[test]
fn an_unrecorded_call_gets_502_and_fails_its_test_and_noise_rules_apply() {
    let mut w = FlaskWorld::new(1);
    let rec = w.start_recording(&[]);
    curl(&[&w.url("/api/items/4")]);
    curl(&["-H", "Content-Type: application/json", "-d", r#"{"sku":"N","qty":1}"#, &w.url("/api/orders")]);
    w.stop_recording(rec);
    w.stop_upstream();

    // The new build asks the catalog for something never recorded: doppel answers 502 naming the request,
    // the app turns that into its own error, and the test fails with the miss listed.
    let r = run(&mut w.doppel("test", &["--ready-url", "/health"], Some("newcall")));
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stdout.contains("mock miss: GET /catalog/4?fields=name%2Cprice%2Cstock"), "{r:?}");
    assert!(r.stdout.contains("a recorded request to the same path differs in its query"), "{r:?}");
    assert!(r.stdout.contains("status changed: expected 200 got 502"), "{r:?}");

    // A noise rule in doppel.yaml hides the changed total; the JSON report says which rule applied.
    std::fs::write(
        w.dir.path().join("doppel.yaml"),
        "version: 1\nnoise:\n- body: $.total\n  reason: pricing is being reworked\n",
    )
    .unwrap();
    let r = run(&mut w.doppel("test", &[], Some("changed")));
    assert_eq!(r.code, 0, "{r:?}");
    let json = latest_report(&w.path());
    let applied = applied_noise(&json);
    assert!(applied.contains(&"body $.total".to_string()), "{json:#}");
}

#[test]
fn sigterm_stops_the_recording_cleanly() {
    let w = FlaskWorld::new(1);
    let mut rec = w.start_recording(&[]);
    curl(&[&w.url("/api/items/9")]);
    rec.signal(libc::SIGTERM);
    assert_eq!(rec.wait(Duration::from_secs(30)), 0, "{}", rec.explain());
    assert!(rec.stdout().contains("recorded 2 tests and 1 mock (http: 1)"), "{}", rec.explain());
}
