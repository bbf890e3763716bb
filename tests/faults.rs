//! Faults while recording and replaying: the app crashing mid-request, a dependency closing mid-response or
//! hanging up, a dependency that is down, a client leaving mid-body, a thousand concurrent connections,
//! garbage on every listener, and a full disk. doppel keeps serving, loses at most the exchanges in flight,
//! reports clearly, and what it wrote stays loadable.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use crate::common::*;

#[test]
fn the_app_crashing_mid_request_keeps_what_completed() {
    let w = FlaskWorld::new(1);
    let mut rec = w.start_recording(&[]);
    assert!(curl(&[&w.url("/api/items/2")]).stdout.contains("item-2"));
    let crash = curl(&[&w.url("/api/crash")]);
    assert_ne!(crash.code, 0, "the request dies with the app: {crash:?}");
    let code = rec.wait(Duration::from_secs(30));
    assert_eq!(code, 2, "doppel says the app exited by itself\n{}", rec.explain());
    assert!(rec.stderr().contains("the app exited by itself with code 3"), "{}", rec.explain());
    assert!(rec.stdout().contains("recorded 2 tests and 1 mock"), "{}", rec.explain());
    assert!(w.list().stdout.contains("test-set-0: 2 tests, 1 mocks"));
}

#[test]
fn a_dependency_that_closes_mid_response_or_hangs_up_or_is_down_replays_the_same_failure() {
    let mut w = FlaskWorld::new(1);
    let rec = w.start_recording(&[]);
    // The catalog cuts item 500 short and hangs up on item 501: the app's own error path answers.
    let cut = curl(&["-w", "%{http_code}", "-o", "/dev/null", &w.url("/api/items/500")]);
    assert_eq!(cut.stdout, "500", "{cut:?}");
    let hung = curl(&["-w", "%{http_code}", "-o", "/dev/null", &w.url("/api/items/501")]);
    assert_eq!(hung.stdout, "500", "{hung:?}");
    w.stop_recording(rec);
    let mocks = read_all(&w.path().join("test-set-0/mocks.yaml"));
    assert_eq!(mocks.matches("cut_short: true").count(), 2, "{mocks}");

    // The KV store is down while recording: the app's error path is recorded too.
    w.stop_upstream();
    let rec = w.start_recording_as("record-down", &["--test-set", "down"]);
    let down = curl(&["-w", "%{http_code}", "-o", "/dev/null", &w.url("/api/kv/orders")]);
    assert_eq!(down.stdout, "500", "{down:?}");
    w.stop_recording(rec);
    assert!(read_all(&w.path().join("down/mocks.yaml")).contains("connect_error:"));

    // Everything is gone now: replay both sets; the same failures come back, so the tests pass.
    let r = run(&mut w.doppel("test", &[], None));
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("5 passed, 0 failed"), "{r:?}");
}

#[test]
fn a_client_leaving_mid_body_loses_only_its_own_exchange() {
    let w = FlaskWorld::new(1);
    let rec = w.start_recording(&[]);
    let mut s = TcpStream::connect(("127.0.0.1", w.app_port)).unwrap();
    s.write_all(b"POST /api/upload HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n0123456789").unwrap();
    drop(s);
    std::thread::sleep(Duration::from_millis(300));
    assert!(curl(&[&w.url("/api/items/3")]).stdout.contains("item-3"));
    let out = w.stop_recording(rec);
    assert!(out.contains("recorded 2 tests"), "the health check and items/3 only:\n{out}");
}

#[test]
fn a_thousand_concurrent_connections_are_recorded_each_with_its_own_response() {
    let dir = tempfile::tempdir().unwrap();
    let (app_port, rates, ledger) = (free_port(), free_port(), free_port());
    let mut deps = Command::new(doppel_bin());
    deps.arg("__demo-deps").env("DEMO_RATES_PORT", rates.to_string()).env("DEMO_LEDGER_PORT", ledger.to_string());
    let _deps = Bg::spawn_ready(&mut deps, dir.path(), "deps", "demo dependencies", Duration::from_secs(10));
    let mut c = Command::new(doppel_bin());
    c.current_dir(dir.path()).args([
        "record",
        "--path",
        "rec",
        "--port",
        &app_port.to_string(),
        "--",
        doppel_bin().to_str().unwrap(),
        "__demo-app",
    ]);
    c.env("DEMO_APP_PORT", app_port.to_string()).env("DEMO_RATES_ADDR", format!("127.0.0.1:{rates}"));
    let health = format!("http://127.0.0.1:{app_port}/health");
    let mut rec = Bg::spawn_answering(&mut c, dir.path(), "record", &health, Duration::from_secs(30));

    let n = 1000;
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(n));
    let handles: Vec<_> = (0..n)
        .map(|i| {
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let mut s = TcpStream::connect(("127.0.0.1", app_port)).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
                barrier.wait();
                let req =
                    format!("GET /quote?amount={i}&currency=EUR HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
                s.write_all(req.as_bytes()).unwrap();
                let mut resp = String::new();
                s.read_to_string(&mut resp).unwrap();
                assert!(resp.contains(&format!("\"amount\":{i}.0")), "{resp}");
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    rec.signal(libc::SIGINT);
    assert_eq!(rec.wait(Duration::from_secs(60)), 0, "{}", rec.explain());
    assert!(rec.stdout().contains(&format!("recorded {} tests and {n} mocks", n + 1)), "{}", rec.explain());
    // Verified by content: every test's response carries its own request's amount.
    let tests = dir.path().join("rec/test-set-0/tests");
    let mut seen = std::collections::HashSet::new();
    for e in std::fs::read_dir(&tests).unwrap() {
        let text = read_all(&e.unwrap().path());
        let Some(q) = text.split("target: /quote?amount=").nth(1) else { continue };
        let amount: u32 = q.split('&').next().unwrap().parse().unwrap();
        assert!(text.contains(&format!("amount: {amount}.0")), "request and response mixed up:\n{text}");
        assert!(seen.insert(amount), "amount {amount} recorded twice");
    }
    assert_eq!(seen.len(), n);
}

#[test]
fn garbage_on_every_listener_never_breaks_doppel() {
    let mut w = FlaskWorld::new(1);
    let rec = w.start_recording(&[]);
    // Garbage to the app's exposed port, a truncated request, then garbage from the app to a dependency
    // and to DNS.
    for junk in [&b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage"[..], b"GET /api/items/1 HTTP/1.1\r\nHo"] {
        let mut s = TcpStream::connect(("127.0.0.1", w.app_port)).unwrap();
        s.write_all(junk).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let _ = s.read(&mut [0u8; 100]);
    }
    assert!(curl(&[&w.url("/api/garbage")]).stdout.contains("\"sent\":300"));
    assert!(curl(&[&w.url("/api/items/4")]).stdout.contains("item-4"), "doppel still forwards");
    let out = w.stop_recording(rec);
    assert!(out.contains("recorded"), "{out}");
    // Replay: the app sends garbage to doppel's mock servers and DNS listener; they cope, tests still run.
    w.stop_upstream();
    let r = run(&mut w.doppel("test", &[], None));
    assert!(r.stdout.contains("get-api-items-4") && r.stdout.contains("PASS"), "{r:?}");
    assert!(!r.stderr.contains("panicked"), "{r:?}");
    let rec_log = std::fs::read_to_string(w.dir.path().join("record.err")).unwrap_or_default();
    assert!(!rec_log.contains("panicked"), "{rec_log}");
}

#[test]
fn a_full_disk_gives_a_clear_error_and_keeps_what_was_written() {
    let w = FlaskWorld::new(1);
    let disk = w.dir.path().join("disk");
    std::fs::create_dir_all(&disk).unwrap();
    let big = w.dir.path().join("big.bin");
    std::fs::write(&big, vec![b'z'; 6 << 20]).unwrap();
    // A 4 MiB tmpfs in a mount namespace of our own: the recording fills it with a 6 MiB upload.
    let script = format!(
        r#"set -e
mount -t tmpfs -o size=4m tmpfs {disk}
APP_PORT={port} CATALOG_URL=http://127.0.0.1:{http} KV_ADDR=127.0.0.1:{kv} {doppel} record --path {disk}/rec --port {port} -- python3 {app} >{disk}/../rec.out 2>{disk}/../rec.err &
pid=$!
for i in $(seq 300); do curl -sf http://127.0.0.1:{port}/health >/dev/null && break; sleep 0.1; done
curl -s http://127.0.0.1:{port}/api/items/1 >/dev/null
curl -s -o /dev/null --data-binary @{big} http://127.0.0.1:{port}/api/upload
curl -s http://127.0.0.1:{port}/api/items/2 >/dev/null
kill -INT $pid
wait $pid || echo "record exit $?"
{doppel} list --path {disk}/rec
"#,
        disk = disk.display(),
        port = w.app_port,
        http = w.http_port,
        kv = w.kv_port,
        doppel = doppel_bin().display(),
        app = repo().join("examples/flask-orders/app.py").display(),
        big = big.display(),
    );
    let r = run(Command::new("unshare").args(["-Urm", "--propagation", "private", "sh", "-c", &script]));
    let out = read_all(&w.dir.path().join("rec.out"));
    let err = read_all(&w.dir.path().join("rec.err"));
    assert!(r.stdout.contains("record exit 2"), "doppel record exits 2 when exchanges were lost\n{r:?}\n{out}\n{err}");
    assert!(out.contains("could not be stored") && err.contains("No space left on device"), "{out}\n{err}");
    // What was written stays valid: the set loads, with the exchanges that fit.
    assert!(r.stdout.contains("test-set-0: 3 tests"), "{r:?}\n{out}");
}
