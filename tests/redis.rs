//! Redis end to end, with real clients nobody here wrote (redis-py, redis-cli, node-redis v4) against a real
//! redis-server: each test starts a private server on a free port, records a small app through it, stops the
//! server (proving replay cannot reach it), replays green, and catches a deliberate change.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::common::*;

/// A private redis-server for one test.
struct RedisServer {
    port: u16,
    bg: Option<Bg>,
    /// The server's own certificate, when it speaks TLS only.
    tls_cert: Option<PathBuf>,
}

impl RedisServer {
    fn start(dir: &Path, password: Option<&str>) -> RedisServer {
        let port = free_port();
        let mut c = Command::new("redis-server");
        c.args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir);
        if let Some(p) = password {
            c.args(["--requirepass", p]);
        }
        RedisServer::spawn(&mut c, dir, port, None)
    }

    /// A TLS-only server (no plaintext port) with a self-signed certificate for 127.0.0.1.
    fn start_tls(dir: &Path) -> RedisServer {
        let (cert_path, key_path) = self_signed(dir, "redis-cert.pem", "redis-key.pem", &["127.0.0.1"]);
        let port = free_port();
        let mut c = Command::new("redis-server");
        c.args(["--port", "0", "--tls-port", &port.to_string(), "--bind", "127.0.0.1", "--save", ""])
            .args(["--tls-auth-clients", "no", "--appendonly", "no"])
            .arg("--tls-cert-file")
            .arg(&cert_path)
            .arg("--tls-key-file")
            .arg(&key_path)
            .arg("--dir")
            .arg(dir);
        RedisServer::spawn(&mut c, dir, port, Some(cert_path))
    }

    /// Starts `cmd` (a redis-server on `port`) and waits until it listens.
    fn spawn(cmd: &mut Command, dir: &Path, port: u16, tls_cert: Option<PathBuf>) -> RedisServer {
        let bg = Bg::spawn(cmd, dir, &format!("redis-server-{port}"));
        let fail = || format!("redis-server did not start\n{}", bg.explain());
        wait_port_open(port, Duration::from_secs(10), Duration::from_millis(20), fail);
        RedisServer { port, bg: Some(bg), tls_cert }
    }

    /// Stops the server and proves it is gone.
    fn stop(&mut self) {
        self.bg.take();
        wait_port_closed(self.port, &format!("port {} still open after stopping redis-server", self.port));
    }
}

/// One of the example apps, its Redis, and a recordings directory.
struct World {
    dir: tempfile::TempDir,
    app_port: u16,
    redis: RedisServer,
    password: Option<&'static str>,
    node: bool,
}

impl World {
    fn new(node: bool, password: Option<&'static str>) -> World {
        let dir = tempfile::tempdir().unwrap();
        let redis = RedisServer::start(dir.path(), password);
        World { app_port: free_port(), redis, dir, password, node }
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("recordings")
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.app_port)
    }

    /// `doppel <sub> --path ... [extra] -- <app>` with the app's environment.
    fn doppel(&self, sub: &str, extra: &[&str], variant: Option<&str>) -> Command {
        let mut c = doppel_cmd(self.dir.path(), sub, &self.path());
        c.args(extra);
        if let (Some(cert), "record") = (&self.redis.tls_cert, sub) {
            c.arg("--upstream-ca").arg(cert);
        }
        if self.redis.tls_cert.is_some() {
            // Inside the sandbox the system bundle also holds doppel's CA: redis-py verifies, through doppel.
            c.env("REDIS_TLS_CA", "/etc/ssl/certs/ca-certificates.crt")
                .env("DOPPEL_CA_DIR", self.dir.path().join("ca"));
        }
        c.arg("--");
        if self.node {
            c.arg("node").arg(repo().join("examples/redis/app.js"));
            c.env("NODE_PATH", repo().join("examples/node/node_modules"));
        } else {
            c.arg("python3").arg(repo().join("examples/redis/app.py"));
        }
        let auth = self.password.map(|p| format!(":{p}@")).unwrap_or_default();
        c.env("APP_PORT", self.app_port.to_string())
            .env("REDIS_PORT", self.redis.port.to_string())
            .env("REDIS_URL", format!("redis://{auth}127.0.0.1:{}", self.redis.port))
            .env("KEY_PREFIX", format!("t{}", self.app_port))
            .env("PYTHONUNBUFFERED", "1");
        match self.password {
            Some(p) => c.env("REDIS_PASSWORD", p),
            None => c.env_remove("REDIS_PASSWORD"),
        };
        app_variant(&mut c, variant);
        c
    }

    fn record(&self, traffic: impl FnOnce(&World)) -> String {
        let mut cmd = self.doppel("record", &["--port", &self.app_port.to_string()], None);
        let mut rec =
            Bg::spawn_answering(&mut cmd, self.dir.path(), "record", &self.url("/health"), Duration::from_secs(30));
        traffic(self);
        stop_recording(&mut rec);
        rec.stdout()
    }

    fn mocks(&self) -> String {
        read_all(&self.path().join("test-set-0/mocks.yaml"))
    }

    fn replay(&self, variant: Option<&str>) -> Ran {
        run(&mut self.doppel("test", &[], variant))
    }
}

fn get(w: &World, path: &str) -> String {
    let r = curl(&["-f", &w.url(path)]);
    assert_eq!(r.code, 0, "{r:?}");
    r.stdout
}

fn send(w: &World, method: &str, path: &str, json: &str) -> String {
    let r = curl(&["-f", "-X", method, "-H", "Content-Type: application/json", "-d", json, &w.url(path)]);
    assert_eq!(r.code, 0, "{r:?}");
    r.stdout
}

/// The last `N passed, M failed ...` line of a run, or "".
fn last_summary(r: &Ran) -> &str {
    r.stdout.lines().rev().find(|l| l.contains(" passed, ")).unwrap_or("")
}

/// Stops the server (proving replay cannot reach it); the unchanged build replays green with `tally`.
fn stop_and_replay_green(w: &mut World, tally: &str) {
    w.redis.stop();
    let ok = w.replay(None);
    assert_eq!(ok.code, 0, "{ok:?}");
    assert!(last_summary(&ok).starts_with(tally), "{ok:?}");
}

/// The changed build fails with `needle` in its output and `tally` in its summary.
fn changed_build_fails(w: &World, needle: &str, tally: &str) {
    let bad = w.replay(Some("changed"));
    assert_eq!(bad.code, 1, "{bad:?}");
    assert!(bad.stdout.contains(needle), "{bad:?}");
    assert!(last_summary(&bad).starts_with(tally), "{bad:?}");
}

#[test]
fn redis_py_over_resp2_record_replay_and_catch_a_change() {
    let mut w = World::new(false, None);
    let out = w.record(|w| {
        assert_eq!(send(w, "POST", "/cart/ann", r#"{"sku":"A-1","qty":2,"price":3.5}"#), "{\"items\":1}\n");
        send(w, "POST", "/cart/ann", r#"{"sku":"B-2","qty":1,"price":0.25}"#);
        assert!(get(w, "/cart/ann").contains("\"total\":7.25"));
        // The same command twice: replay answers in recorded order.
        assert!(send(w, "POST", "/counter/visits", "").contains("\"count\":1"));
        assert!(send(w, "POST", "/counter/visits", "").contains("\"count\":2"));
        send(w, "PUT", "/profile/42", r#"{"name":"Ann","tags":["a","b"]}"#);
        assert!(get(w, "/profile/42").contains("\"name\":\"Ann\""));
        assert!(get(w, "/pipeline").contains("\"atomic\":[2,true,[\"1\",\"2\"]]"));
        assert!(send(w, "POST", "/stock/widget", "").contains("\"left\":9"));
        let pubsub = get(w, "/pubsub");
        assert!(pubsub.contains("\"data\":\"hello\"") && pubsub.contains("\"data\":\"full\""), "{pubsub}");
        assert!(get(w, "/blpop").contains("\"empty\":null"));
        assert!(get(w, "/script").contains("\"evalsha\":7"));
        assert!(get(w, "/large").contains("\"same\":true"));
        assert!(get(w, "/binary").contains("\"same\":true"));
        assert!(get(w, "/db").contains("\"db3\":\"three\""));
        assert!(get(w, "/inline").contains("two words"));
    });
    assert!(out.contains("recorded 17 tests"), "{out}");

    // Mocks read as commands and values, one per command; grouped for transactions and subscriptions.
    let mocks = w.mocks();
    let p = format!("t{}", w.app_port);
    for expected in [
        format!("command: [HSET, {p}:cart:ann, A-1, \"{{\\\"qty\\\": 2, \\\"price\\\": 3.5}}\"]"),
        format!("command: [INCRBY, {p}:counter:visits, \"1\"]\n  reply: 2"),
        "command: [EXEC]\n  queued:\n  - command: [INCRBY".to_string(),
        format!("command: [WATCH, {p}:stock:widget]"),
        format!("command: [SUBSCRIBE, {p}:news]\n  replies:\n  - [subscribe, {p}:news, 1]\n  pushed:\n  - after_ms:"),
        format!("message: [pmessage, {p}:alerts:*, {p}:alerts:disk, full]"),
        format!("command: [BLPOP, {p}:queue:empty, \"1\"]\n  reply:\n    nil: array"),
        "command: [EVALSHA, ".to_string(),
        format!("command: [SET, {p}:binary, {{base64: AAECAwQF"),
        format!("command: [SET, {p}:large, {{file: bodies/"),
        format!("db: 3\n  command: [SET, {p}:in-db-3, three]"),
        format!("command: [SET, {p}:inline, two words]"),
    ] {
        assert!(mocks.contains(&expected), "missing {expected:?} in\n{mocks}");
    }
    assert!(!mocks.contains("kind: tcp"), "every connection was parsed as Redis");

    stop_and_replay_green(&mut w, "17 passed, 0 failed");
    changed_build_fails(&w, "body $.total changed: expected 7.25 got 7.98", "16 passed, 1 failed");

    // A build that reads another key: its command has no recording, the app gets a Redis error naming it,
    // and the test fails with the miss.
    let renamed = w.replay(Some("renamed"));
    assert_eq!(renamed.code, 1, "{renamed:?}");
    let miss = format!("mock miss: redis GET {p}:user:42 (to 127.0.0.1:{})", w.redis.port);
    assert!(renamed.stdout.contains(&miss), "{renamed:?}");
    assert!(last_summary(&renamed).starts_with("16 passed, 1 failed"), "{renamed:?}");
}

#[test]
fn redis_py_over_tls_is_decrypted_and_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisServer::start_tls(dir.path());
    let mut w = World { app_port: free_port(), redis, dir, password: None, node: false };
    let out = w.record(|w| {
        send(w, "POST", "/cart/tls", r#"{"sku":"A-1","qty":2,"price":3.5}"#);
        assert!(get(w, "/cart/tls").contains("\"total\":7.0"));
    });
    assert!(out.contains("recorded 3 tests") && out.contains("redis:"), "{out}");
    let mocks = w.mocks();
    assert!(mocks.contains("kind: redis") && mocks.contains("HSET"), "decrypted commands expected:\n{mocks}");
    assert!(!mocks.contains("kind: tcp"), "{mocks}");
    stop_and_replay_green(&mut w, "3 passed, 0 failed");
    let bad = w.replay(Some("changed"));
    assert!(bad.stdout.contains("body $.total changed: expected 7.0 got 7.7"), "{bad:?}");
}

#[test]
fn resp3_auth_and_redis_cli() {
    let mut w = World::new(false, Some("s3cret"));
    let out = w.record(|w| {
        let r3 = get(w, "/resp3");
        assert!(r3.contains("\"score\":1.5") && r3.contains("\"message\":\"pushed\""), "{r3}");
        let cli = get(w, "/cli");
        assert!(cli.contains("\"incr\":\"1\"") && cli.contains("\"hgetall\":\"f v\""), "{cli}");
        assert!(get(w, "/inline").contains("two words"));
    });
    assert!(out.contains("recorded 4 tests"), "{out}");
    let mocks = w.mocks();
    for expected in [
        // redis-py over RESP3 authenticates in its HELLO; redis-cli and the raw socket with AUTH. The
        // password is sealed (doppel.yaml privacy is on by default).
        "command: [HELLO, \"3\", AUTH, default, \"!sealed password#1\"",
        "command: [AUTH, \"!sealed password#1\"]",
        "resp: 3\n  command: [ZSCORE",
        "reply:\n    double: \"1.5\"",
        "- push: [subscribe,",
        "message:\n      push: [message,",
    ] {
        assert!(mocks.contains(expected), "missing {expected:?} in\n{mocks}");
    }
    assert!(!mocks.contains("s3cret"), "the password in clear:\n{mocks}");

    stop_and_replay_green(&mut w, "4 passed, 0 failed");

    // The changed build makes redis-cli send INCRBY instead of INCR: a miss, and the test fails.
    let miss = format!("mock miss: redis INCRBY t{}:cli:n 1", w.app_port);
    changed_build_fails(&w, &miss, "3 passed, 1 failed");
}

#[test]
fn node_redis_record_replay_and_catch_a_change() {
    let mut w = World::new(true, None);
    let out = w.record(|w| {
        send(w, "POST", "/cart", r#"{"user":"bo","sku":"A","qty":2,"price":3.25}"#);
        assert!(get(w, "/cart?user=bo").contains("\"total\":6.5"));
        assert!(get(w, "/pipeline").contains("\"n\":1"));
        assert!(get(w, "/multi").contains("[1,\"OK\",\"v\"]"));
        assert!(get(w, "/blpop").contains("\"element\":\"job-1\""));
        assert!(get(w, "/script").contains("\"result\":3"));
        let events = send(w, "POST", "/events", r#"{"type":"shipped","id":7}"#);
        assert!(events.contains("\"received\":[{\"type\":\"shipped\",\"id\":7}]"), "{events}");
    });
    assert!(out.contains("recorded 8 tests"), "{out}");
    let mocks = w.mocks();
    let p = format!("t{}", w.app_port);
    // The subscriber subscribed at startup; the message it got is kept with the subscription.
    let sub = format!("command: [subscribe, {p}:events]");
    assert!(mocks.contains(&sub) && mocks.contains("pushed:"), "{mocks}");

    stop_and_replay_green(&mut w, "8 passed, 0 failed");
    changed_build_fails(&w, "body $.total changed: expected 6.5 got 7.15", "7 passed, 1 failed");
}
