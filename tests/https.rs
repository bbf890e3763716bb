//! HTTPS interception with real clients: Python requests, httpx and curl, Node fetch and axios, and Java's
//! HttpClient call a local HTTPS server that has its own certificate. doppel decrypts with its CA (which
//! the apps trust without any change), records plaintext mocks, and replays them with the server gone.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::common::*;

/// The names the test certificates are for.
const LOCALHOST: [&str; 2] = ["localhost", "127.0.0.1"];

struct World {
    dir: tempfile::TempDir,
    http_port: u16,
    kv_port: u16,
    upstream: Option<Bg>,
}

impl World {
    fn new() -> World {
        let dir = tempfile::tempdir().unwrap();
        // The upstream's own certificate, self-signed for localhost.
        let (cert, key) = self_signed(dir.path(), "upstream-cert.pem", "upstream-key.pem", &LOCALHOST);
        let (http_port, kv_port) = (free_port(), free_port());
        let mut c = Command::new("python3");
        c.arg(repo().join("examples/flask-orders/upstream.py"))
            .arg(http_port.to_string())
            .arg(kv_port.to_string())
            .env("UPSTREAM_TLS_CERT", cert)
            .env("UPSTREAM_TLS_KEY", key);
        let up = Bg::spawn_ready(&mut c, dir.path(), "upstream", "ready", Duration::from_secs(20));
        World { dir, http_port, kv_port, upstream: Some(up) }
    }

    fn cert(&self) -> PathBuf {
        self.dir.path().join("upstream-cert.pem")
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("recordings")
    }

    fn doppel(&self, sub: &str, extra: &[&str], app: &[String], app_port: u16, variant: Option<&str>) -> Command {
        let mut c = doppel_cmd(self.dir.path(), sub, &self.path());
        c.args(extra).arg("--").args(app);
        c.env("DOPPEL_CA_DIR", self.dir.path().join("ca"))
            .env("APP_PORT", app_port.to_string())
            .env("UPSTREAM_URL", format!("https://localhost:{}", self.http_port))
            .env("PINNED_CERT", self.cert())
            .env("NODE_PATH", repo().join("examples/node/node_modules"));
        app_variant(&mut c, variant);
        c
    }

    fn record(&self, app: &[String], app_port: u16, urls: &[&str]) -> String {
        let cert = self.cert();
        let args = ["--port", &app_port.to_string(), "--upstream-ca", cert.to_str().unwrap()].map(String::from);
        let args: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
        let mut cmd = self.doppel("record", &args, app, app_port, None);
        let health = format!("http://127.0.0.1:{app_port}/health");
        let mut rec = Bg::spawn_answering(&mut cmd, self.dir.path(), "record", &health, Duration::from_secs(60));
        for u in urls {
            let r = curl(&[&format!("http://127.0.0.1:{app_port}{u}")]);
            assert!(
                r.stdout.contains("\"name\":\"item-") || r.stdout.contains("\"ok\":"),
                "{u}: {r:?}\n{}",
                rec.explain()
            );
        }
        stop_recording(&mut rec);
        rec.stdout()
    }

    fn stop_upstream(&mut self) {
        self.upstream.take();
        wait_port_closed(self.http_port, "upstream still up");
        let _ = self.kv_port;
    }

    /// Replays the recording, then the changed build; checks both verdicts.
    fn replay_and_catch(&self, app: &[String], app_port: u16, tests: usize, changed_field: &str) {
        let ok = run(&mut self.doppel("test", &[], app, app_port, None));
        assert_eq!(ok.code, 0, "{ok:?}");
        assert!(ok.stdout.contains(&format!("{tests} passed, 0 failed")), "{ok:?}");
        let bad = run(&mut self.doppel("test", &[], app, app_port, Some("changed")));
        assert_eq!(bad.code, 1, "{bad:?}");
        assert!(bad.stdout.contains(changed_field), "{bad:?}");
    }
}

fn python_app() -> Vec<String> {
    vec!["python3".into(), repo().join("examples/https/app.py").display().to_string()]
}

#[test]
fn python_requests_httpx_and_curl_over_https() {
    let mut w = World::new();
    let port = free_port();
    let out = w.record(&python_app(), port, &["/via/requests/2", "/via/httpx/4", "/via/curl/6"]);
    assert!(out.contains("recorded 4 tests and 3 mocks (http: 3)"), "{out}");
    let mocks = read_all(&w.path().join("test-set-0/mocks.yaml"));
    // Decrypted: the mocks are plain HTTP exchanges, readable.
    assert!(mocks.contains("target: /catalog/4") && mocks.contains("name: item-4"), "{mocks}");
    assert!(mocks.contains("User-Agent: python-httpx/") && mocks.contains("User-Agent: curl/"), "{mocks}");
    w.stop_upstream();
    w.replay_and_catch(&python_app(), port, 4, "body $.price changed: expected 5.0 got 5.5");
}

#[test]
fn node_fetch_and_axios_over_https() {
    let mut w = World::new();
    let port = free_port();
    let app = vec!["node".to_string(), repo().join("examples/https/app.js").display().to_string()];
    let out = w.record(&app, port, &["/via/fetch/3", "/via/axios/5"]);
    assert!(out.contains("recorded 3 tests and 2 mocks (http: 2)"), "{out}");
    let mocks = read_all(&w.path().join("test-set-0/mocks.yaml"));
    assert!(mocks.contains("User-Agent: axios/"), "{mocks}");
    w.stop_upstream();
    w.replay_and_catch(&app, port, 3, "body $.price changed: expected 12.5 got 13.75");
}

fn compile_java(out: &Path) {
    let r = run(Command::new("javac").arg("-d").arg(out).arg(repo().join("examples/https/App.java")));
    assert_eq!(r.code, 0, "{r:?}");
}

#[test]
fn java_httpclient_over_https() {
    let mut w = World::new();
    let classes = w.dir.path().join("classes");
    compile_java(&classes);
    let port = free_port();
    let app = vec!["java".to_string(), "-cp".to_string(), classes.display().to_string(), "App".to_string()];
    let out = w.record(&app, port, &["/via/java/7"]);
    assert!(out.contains("recorded 2 tests and 1 mock (http: 1)"), "{out}");
    w.stop_upstream();
    w.replay_and_catch(&app, port, 2, "body $.price changed: expected 17.5 got 19.25");
}

#[test]
fn a_client_that_refuses_doppels_ca_is_recorded_encrypted_and_reported() {
    let w = World::new();
    let port = free_port();
    // The first pinned call fails (the client refuses doppel's certificate); the next passes through
    // encrypted, and the summary names the host.
    let out = w.record(&python_app(), port, &["/pinned/1", "/pinned/1"]);
    assert!(out.contains("TLS to localhost could not be decrypted"), "{out}");
    let tests = w.path().join("test-set-0/tests");
    let second = read_all(&tests.join("get-pinned-1-2.yaml"));
    assert!(second.contains("ok: true"), "{second}");
    let mocks = read_all(&w.path().join("test-set-0/mocks.yaml"));
    assert!(mocks.contains("kind: tcp"), "the pass-through connection is kept as opaque bytes:\n{mocks}");
}

#[test]
fn doppel_ca_prints_where_it_is_and_its_fingerprint() {
    let dir = tempfile::tempdir().unwrap();
    let ca_dir = dir.path().join("ca");
    let first = run(Command::new(doppel_bin()).arg("ca").env("DOPPEL_CA_DIR", &ca_dir));
    let second = run(Command::new(doppel_bin()).arg("ca").env("DOPPEL_CA_DIR", &ca_dir));
    assert_eq!(first.code, 0, "{first:?}");
    assert_eq!(first.stdout, second.stdout, "the CA is created once and reused");
    assert!(first.stdout.contains(&ca_dir.join("ca.pem").display().to_string()), "{first:?}");
    let fp = first.stdout.lines().find(|l| l.starts_with("SHA-256 fingerprint:")).unwrap();
    assert_eq!(fp.split_whitespace().last().unwrap().split(':').count(), 32, "{fp}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(ca_dir.join("ca-key.pem")).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
}

fn wait_https_ok(url: &str, ca: &Path, limit: Duration, ctx: &Bg) {
    let deadline = std::time::Instant::now() + limit;
    loop {
        let r = curl(&["--cacert", ca.to_str().unwrap(), url]);
        if r.code == 0 && r.stdout.contains("\"name\":\"ok\"") {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "{url} never answered: {r:?}\n{}", ctx.explain());
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// An app that serves HTTPS itself (Node's http2 secure server: HTTP/2 and HTTP/1.1 by ALPN): curl talks
/// to it in TLS through doppel, which presents the app's own certificate (--ingress-cert) or one from its CA,
/// records plaintext tests marked `tls:`, replays them in TLS (h2 for the h2 test), and catches a change.
/// The same tests replay with `--target https://` against the app running on its own, and `doppel load`
/// drives it over TLS.
#[test]
fn an_app_serving_https_itself_is_recorded_over_h1_and_h2_and_replayed_in_tls() {
    let mut w = World::new();
    let port = free_port();
    let (app_cert, app_key) = self_signed(w.dir.path(), "app-cert.pem", "app-key.pem", &LOCALHOST);
    let app = vec!["node".to_string(), repo().join("examples/https/app.js").display().to_string()];
    let with_tls = |mut c: Command| {
        c.env("APP_TLS_CERT", &app_cert).env("APP_TLS_KEY", &app_key);
        c
    };
    let up_cert = w.cert();
    let port_s = port.to_string();
    let rec_args = [
        "--port",
        &port_s,
        "--upstream-ca",
        up_cert.to_str().unwrap(),
        "--ingress-cert",
        app_cert.to_str().unwrap(),
        "--ingress-key",
        app_key.to_str().unwrap(),
    ];
    let mut rec = Bg::spawn(&mut with_tls(w.doppel("record", &rec_args, &app, port, None)), w.dir.path(), "record-tls");
    let base = format!("https://localhost:{port}");
    wait_https_ok(&format!("{base}/health"), &app_cert, Duration::from_secs(60), &rec);
    // curl trusts only the app's own certificate: doppel presents it.
    let h1 = curl(&["--http1.1", "--cacert", app_cert.to_str().unwrap(), &format!("{base}/via/fetch/3")]);
    assert!(h1.stdout.contains("\"client\":\"fetch\""), "{h1:?}\n{}", rec.explain());
    let h2 = curl(&[
        "--http2",
        "-w",
        "\n%{http_version}",
        "--cacert",
        app_cert.to_str().unwrap(),
        &format!("{base}/via/axios/5"),
    ]);
    assert!(h2.stdout.contains("\"client\":\"axios\"") && h2.stdout.ends_with("\n2"), "{h2:?}\n{}", rec.explain());
    stop_recording(&mut rec);
    assert!(rec.stdout().contains("recorded 3 tests"), "{}", rec.explain());
    let tests = w.path().join("test-set-0/tests");
    let fetch = read_all(&tests.join("get-via-fetch-3.yaml"));
    assert!(fetch.contains("tls: localhost") && fetch.contains("kind: http\n"), "{fetch}");
    let axios = read_all(&tests.join("get-via-axios-5.yaml"));
    assert!(axios.contains("tls: localhost") && axios.contains("kind: http2"), "{axios}");

    // Without --ingress-cert, clients get a certificate from doppel's CA for the name they ask for.
    let mut rec =
        Bg::spawn(&mut with_tls(w.doppel("record", &rec_args[..4], &app, port, None)), w.dir.path(), "record-tls-ca");
    let doppel_ca = w.dir.path().join("ca/ca.pem");
    wait_https_ok(&format!("{base}/health"), &doppel_ca, Duration::from_secs(60), &rec);
    let r = curl(&["--cacert", doppel_ca.to_str().unwrap(), &format!("{base}/via/fetch/7")]);
    assert!(r.stdout.contains("\"client\":\"fetch\""), "{r:?}\n{}", rec.explain());
    stop_recording(&mut rec);
    let seven = read_all(&w.path().join("test-set-1/tests/get-via-fetch-7.yaml"));
    assert!(seven.contains("tls: localhost"), "{seven}");

    // The app on its own, in TLS: replayed with --target https:// (verified with --target-ca), and loaded.
    let direct_port = free_port();
    let mut direct = Command::new("node");
    direct
        .arg(&app[1])
        .env("APP_PORT", direct_port.to_string())
        .env("APP_TLS_CERT", &app_cert)
        .env("APP_TLS_KEY", &app_key)
        .env("UPSTREAM_URL", format!("https://localhost:{}", w.http_port))
        .env("NODE_EXTRA_CA_CERTS", &up_cert)
        .env("NODE_PATH", repo().join("examples/node/node_modules"))
        .env_remove("APP_VARIANT");
    let direct_app = Bg::spawn(&mut direct, w.dir.path(), "direct-app");
    let target = format!("https://localhost:{direct_port}");
    wait_https_ok(&format!("{target}/health"), &app_cert, Duration::from_secs(30), &direct_app);
    let mut t = Command::new(doppel_bin());
    t.arg("test").arg("--path").arg(w.path()).args(["--test-set", "test-set-0", "--target", &target]);
    let untrusted = run(&mut t);
    assert_eq!(untrusted.code, 1, "the app's self-signed certificate is not trusted by default: {untrusted:?}");
    assert!(untrusted.stdout.contains("TLS with https://localhost"), "{untrusted:?}");
    t.args(["--target-ca", app_cert.to_str().unwrap()]);
    let green = run(&mut t);
    assert_eq!(green.code, 0, "{green:?}\n{}", direct_app.explain());
    assert!(green.stdout.contains("3 passed, 0 failed"), "{green:?}");
    let json = w.dir.path().join("load.json");
    let load = run(Command::new(doppel_bin()).arg("load").arg("--path").arg(w.path()).args([
        "--test-set",
        "test-set-0",
        "--target",
        &target,
        "--target-ca",
        app_cert.to_str().unwrap(),
        "--rate",
        "30/s",
        "--duration",
        "1s",
        "--check",
        "--json",
        json.to_str().unwrap(),
    ]));
    assert_eq!(load.code, 0, "{load:?}");
    let report: serde_json::Value = serde_json::from_str(&read_all(&json)).unwrap();
    assert!(report["requests"].as_u64().unwrap() >= 20, "{report}");
    assert_eq!(report["errors"].as_u64(), Some(0), "{report}");
    drop(direct_app);

    // Hermetic replay in TLS, HTTP/1.1 and h2, with the upstream gone; then the changed build is caught.
    w.stop_upstream();
    let mut ok = with_tls(w.doppel("test", &["--test-set", "test-set-0"], &app, port, None));
    let ok = run(&mut ok);
    assert_eq!(ok.code, 0, "{ok:?}");
    assert!(ok.stdout.contains("3 passed, 0 failed"), "{ok:?}");
    let mut bad = with_tls(w.doppel("test", &["--test-set", "test-set-0"], &app, port, Some("changed")));
    let bad = run(&mut bad);
    assert_eq!(bad.code, 1, "{bad:?}");
    assert!(bad.stdout.contains("body $.price changed: expected 12.5 got 13.75"), "{bad:?}");
}

/// An app that requires client certificates on its own port (mutual TLS): doppel cannot present the
/// client's certificate, so the first connection is lost; the next ones pass through encrypted, the app keeps
/// answering, and the summary says why the port was not decrypted.
#[test]
fn an_app_requiring_client_certificates_keeps_working_and_is_reported() {
    let w = World::new();
    let port = free_port();
    let (app_cert, app_key) = self_signed(w.dir.path(), "app-cert.pem", "app-key.pem", &LOCALHOST);
    let (client_cert, client_key) = self_signed(w.dir.path(), "client-cert.pem", "client-key.pem", &LOCALHOST);
    let app = vec!["node".to_string(), repo().join("examples/https/app.js").display().to_string()];
    let port_s = port.to_string();
    let args =
        ["--port", &port_s, "--ingress-cert", app_cert.to_str().unwrap(), "--ingress-key", app_key.to_str().unwrap()];
    let mut cmd = w.doppel("record", &args, &app, port, None);
    cmd.env("APP_TLS_CERT", &app_cert).env("APP_TLS_KEY", &app_key).env("APP_TLS_CLIENT_CA", &client_cert);
    let mut rec = Bg::spawn(&mut cmd, w.dir.path(), "record-mtls");
    let health = format!("https://localhost:{port}/health");
    let with_cert = || {
        curl(&[
            "--cacert",
            app_cert.to_str().unwrap(),
            "--cert",
            client_cert.to_str().unwrap(),
            "--key",
            client_key.to_str().unwrap(),
            &health,
        ])
    };
    // Connections fail until the app listens, and the first one that reaches it through doppel is lost;
    // from then on every connection passes through.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !with_cert().stdout.contains("\"name\":\"ok\"") {
        assert!(std::time::Instant::now() < deadline, "the app never answered through doppel\n{}", rec.explain());
        std::thread::sleep(Duration::from_millis(100));
    }
    for _ in 0..5 {
        let r = with_cert();
        assert!(r.stdout.contains("\"name\":\"ok\""), "{r:?}\n{}", rec.explain());
    }
    stop_recording(&mut rec);
    assert!(
        rec.stdout().contains("could not be decrypted (the server requires a client certificate"),
        "{}",
        rec.explain()
    );
}
