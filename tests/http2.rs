//! HTTP/2 with real clients and servers: an h2c service (node's http2 module) driven by curl
//! --http2-prior-knowledge and h2load (multiplexed streams) recorded as tests and replayed; an app calling an
//! HTTPS server that speaks only h2 (its own certificate, trusted with --upstream-ca) recorded as parsed h2
//! mocks and replayed with the server gone.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::common::*;

fn example(file: &str) -> String {
    repo().join("examples/http2").join(file).display().to_string()
}

fn doppel(dir: &std::path::Path, sub: &str, extra: &[&str], app: &[String], port: u16) -> Command {
    let mut c = doppel_cmd(dir, sub, &dir.join("rec"));
    c.args(extra).arg("--").args(app);
    c.env("DOPPEL_CA_DIR", dir.join("ca")).env("APP_PORT", port.to_string()).env_remove("APP_VARIANT");
    c
}

fn h2c_curl(args: &[&str]) -> Ran {
    let mut all = vec!["--http2-prior-knowledge"];
    all.extend_from_slice(args);
    curl(&all)
}

#[test]
fn h2c_service_driven_by_curl_and_h2load_recorded_and_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let app = vec!["node".to_string(), example("server.js")];
    let p = port.to_string();
    let mut cmd = doppel(dir.path(), "record", &["--port", &p], &app, port);
    let mut rec = Bg::spawn_ready(&mut cmd, dir.path(), "record", "ready", Duration::from_secs(60));
    let base = format!("http://127.0.0.1:{port}");
    let hello = h2c_curl(&[&format!("{base}/hello")]);
    assert!(hello.stdout.contains("\"greeting\":\"hello\""), "{hello:?}\n{}", rec.explain());
    let body = r#"{"sku":"A-1","qty":3}"#;
    let echo = h2c_curl(&["-H", "content-type: application/json", "--data", body, &format!("{base}/echo")]);
    assert!(echo.stdout.contains("\"received\":{\"sku\":\"A-1\""), "{echo:?}");
    // h2load: one connection, 8 requests, up to 4 streams in flight at once.
    let load = run(Command::new("h2load").args(["-n", "8", "-c", "1", "-m", "4", &format!("{base}/hello")]));
    assert!(load.stdout.contains("8 succeeded"), "{load:?}");
    stop_recording(&mut rec);
    assert!(rec.stdout().contains("recorded 10 tests"), "{}", rec.explain());

    let tests = dir.path().join("rec/test-set-0/tests");
    let echo_test = read_all(&tests.join("post-echo.yaml"));
    assert!(echo_test.contains("kind: http2") && echo_test.contains("version: HTTP/2"), "{echo_test}");
    assert!(echo_test.contains("x-checksum: 21"), "trailers are kept:\n{echo_test}");
    assert!(echo_test.contains("user-agent: curl/"), "{echo_test}");
    let loaded = read_all(&tests.join("get-hello-9.yaml"));
    assert!(loaded.contains("user-agent: h2load"), "{loaded}");

    let ok = run(&mut doppel(dir.path(), "test", &[], &app, port));
    assert_eq!(ok.code, 0, "{ok:?}");
    assert!(ok.stdout.contains("10 passed, 0 failed"), "{ok:?}");
    let mut changed = doppel(dir.path(), "test", &[], &app, port);
    let bad = run(changed.env("APP_VARIANT", "changed"));
    assert_eq!(bad.code, 1, "{bad:?}");
    assert!(bad.stdout.contains("body $.greeting changed: expected \"hello\" got \"hi\""), "{bad:?}");
    assert!(bad.stdout.contains("1 passed, 9 failed"), "{bad:?}");
}

struct Upstream {
    _server: Bg,
    cert: PathBuf,
    port: u16,
}

fn start_upstream(dir: &std::path::Path) -> Upstream {
    let (cert_path, key_path) = self_signed(dir, "upstream-cert.pem", "upstream-key.pem", &["localhost"]);
    let port = free_port();
    let mut c = Command::new("node");
    c.arg(example("upstream.js"))
        .arg(port.to_string())
        .env("UPSTREAM_TLS_CERT", &cert_path)
        .env("UPSTREAM_TLS_KEY", key_path);
    let server = Bg::spawn_ready(&mut c, dir, "upstream", "ready", Duration::from_secs(20));
    Upstream { _server: server, cert: cert_path, port }
}

#[test]
fn https_h2_dependency_recorded_as_parsed_exchanges_and_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = start_upstream(dir.path());
    let port = free_port();
    let app = vec!["node".to_string(), example("app.js")];
    let url = format!("https://localhost:{}", upstream.port);
    let p = port.to_string();
    let cert = upstream.cert.display().to_string();
    let mut cmd = doppel(dir.path(), "record", &["--port", &p, "--upstream-ca", &cert], &app, port);
    let health = format!("http://127.0.0.1:{port}/health");
    let mut rec =
        Bg::spawn_answering(cmd.env("UPSTREAM_URL", &url), dir.path(), "record", &health, Duration::from_secs(60));
    for path in ["/convert/EUR/7", "/convert/USD/3"] {
        let r = curl(&[&format!("http://127.0.0.1:{port}{path}")]);
        assert!(r.stdout.contains("\"via\":\"h2\""), "the app spoke h2 to the server: {r:?}\n{}", rec.explain());
    }
    stop_recording(&mut rec);
    assert!(rec.stdout().contains("recorded 3 tests and 2 mocks (http2: 2)"), "{}", rec.explain());
    let mocks = read_all(&dir.path().join("rec/test-set-0/mocks.yaml"));
    assert!(mocks.contains("target: /rates/EUR") && mocks.contains("\":scheme: https\""), "{mocks}");
    assert!(mocks.contains("rate: 0.92"), "decrypted and parsed:\n{mocks}");
    drop(upstream);

    let mut replay = doppel(dir.path(), "test", &[], &app, port);
    let ok = run(replay.env("UPSTREAM_URL", &url));
    assert_eq!(ok.code, 0, "{ok:?}");
    assert!(ok.stdout.contains("3 passed, 0 failed") && ok.stdout.contains("2 of 2 mocks used"), "{ok:?}");
    let mut changed = doppel(dir.path(), "test", &[], &app, port);
    let bad = run(changed.env("UPSTREAM_URL", &url).env("APP_VARIANT", "changed"));
    assert_eq!(bad.code, 1, "{bad:?}");
    assert!(bad.stdout.contains("body $.amount changed: expected 6.44 got 6"), "{bad:?}");
}

#[test]
fn h2c_upgrade_from_http1_recorded_as_http2_and_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let bind = format!("127.0.0.1:{port}");
    let app: Vec<String> = ["hypercorn", "asgi_app:app", "--bind", &bind].map(String::from).to_vec();
    let p = port.to_string();
    let mut cmd = doppel(dir.path(), "record", &["--port", &p], &app, port);
    cmd.current_dir(repo().join("examples/http2"));
    let mut rec = Bg::spawn_ready(&mut cmd, dir.path(), "record", "Running on", Duration::from_secs(60));
    let base = format!("http://127.0.0.1:{port}");
    // curl --http2 on http:// asks for `Upgrade: h2c`; hypercorn answers 101 and the rest is HTTP/2.
    let upgraded = curl(&["--http2", "-v", &format!("{base}/upgraded")]);
    assert!(upgraded.stderr.contains("Switching to HTTP/2"), "{upgraded:?}\n{}", rec.explain());
    assert!(upgraded.stdout.contains("\"http_version\": \"2\""), "{upgraded:?}");
    let prior = h2c_curl(&["--data", "one two three", &format!("{base}/prior")]);
    assert!(prior.stdout.contains("\"words\": 3"), "{prior:?}");
    stop_recording(&mut rec);
    let tests = dir.path().join("rec/test-set-0/tests");
    let names: Vec<_> = std::fs::read_dir(&tests).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(tests.join("get-upgraded.yaml").exists(), "{names:?}\n{}", rec.explain());
    let up = read_all(&tests.join("get-upgraded.yaml"));
    // The upgrading request is stream 1 of the HTTP/2 connection: recorded once, as HTTP/2, with its answer.
    assert!(up.contains("kind: http2") && up.contains("\":authority: 127.0.0.1:"), "{up}");
    assert!(up.contains("server: hypercorn-h2") && !up.contains("http2-settings"), "{up}");

    let mut replay = doppel(dir.path(), "test", &[], &app, port);
    let ok = run(replay.current_dir(repo().join("examples/http2")));
    assert_eq!(ok.code, 0, "{ok:?}");
    assert!(ok.stdout.contains("2 passed, 0 failed"), "{ok:?}");
    let mut changed = doppel(dir.path(), "test", &[], &app, port);
    let bad = run(changed.current_dir(repo().join("examples/http2")).env("APP_VARIANT", "changed"));
    assert!(bad.stdout.contains("body $.words changed: expected 3 got 4"), "{bad:?}");
}
