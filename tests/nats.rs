//! NATS end to end, with a real client nobody here wrote (nats-py) against a real nats-server with
//! JetStream: each test starts a private server on a free port and a price responder beside it (outside
//! doppel), records the example app (examples/nats/app.py) through them, stops both (proving replay cannot
//! reach them), replays green, and catches a deliberately changed build.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::common::*;

const NATS_SERVER: &str = "/usr/sbin/nats-server";

/// The example app, a private nats-server (JetStream on, its store in the test's directory) with the price
/// responder beside it, and a recordings directory.
struct World {
    dir: tempfile::TempDir,
    recordings: PathBuf,
    app_port: u16,
    /// Keeps the subjects and stream of each test apart.
    prefix: String,
    nats_port: u16,
    nats_url: String,
    server: Option<Bg>,
    responder: Option<Bg>,
}

impl World {
    /// `credentials`: a user and password the server requires.
    fn new(credentials: Option<(&str, &str)>) -> World {
        let dir = tempfile::tempdir().unwrap();
        let (app_port, nats_port) = (free_port(), free_port());
        let prefix = format!("t{app_port}");
        let mut c = Command::new(NATS_SERVER);
        c.args(["-a", "127.0.0.1", "-p", &nats_port.to_string(), "-js", "-sd"]).arg(dir.path().join("jetstream"));
        if let Some((user, pass)) = credentials {
            c.args(["--user", user, "--pass", pass]);
        }
        let server = Bg::spawn(&mut c, dir.path(), &format!("nats-server-{nats_port}"));
        wait_port_open(nats_port, Duration::from_secs(10), Duration::from_millis(20), || {
            format!("nats-server did not start\n{}", server.explain())
        });
        let auth = credentials.map(|(u, p)| format!("{u}:{p}@")).unwrap_or_default();
        let nats_url = format!("nats://{auth}127.0.0.1:{nats_port}");
        let mut r = Command::new("python3");
        r.arg(repo().join("examples/nats/responder.py")).env("NATS_URL", &nats_url).env("PREFIX", &prefix);
        let responder = Bg::spawn_ready(&mut r, dir.path(), "responder", "ready", Duration::from_secs(15));
        World {
            recordings: dir.path().join("recordings"),
            dir,
            app_port,
            prefix,
            nats_port,
            nats_url,
            server: Some(server),
            responder: Some(responder),
        }
    }

    /// Stops the responder and the server (replay must do without them), and proves the server is gone.
    fn stop_nats(&mut self) {
        self.responder.take();
        self.server.take();
        wait_port_closed(self.nats_port, &format!("port {} still open after stopping nats-server", self.nats_port));
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.app_port)
    }

    fn doppel(&self, sub: &str, extra: &[&str], variant: Option<&str>) -> Command {
        let mut c = doppel_cmd(self.dir.path(), sub, &self.recordings);
        c.args(extra).arg("--").arg("python3").arg(repo().join("examples/nats/app.py"));
        c.env("APP_PORT", self.app_port.to_string())
            .env("NATS_URL", &self.nats_url)
            .env("PREFIX", &self.prefix)
            .env("PYTHONUNBUFFERED", "1");
        app_variant(&mut c, variant);
        c
    }

    /// Records the app while `traffic` runs against it; what `doppel record` printed.
    fn record(&self, traffic: impl FnOnce(&World)) -> String {
        let mut cmd = self.doppel("record", &["--port", &self.app_port.to_string()], None);
        let limit = Duration::from_secs(30);
        let mut rec = Bg::spawn_answering(&mut cmd, self.dir.path(), "record", &self.url("/health"), limit);
        traffic(self);
        stop_recording(&mut rec);
        rec.stdout()
    }

    /// `doppel test` of what was recorded, the app built as `variant`.
    fn replay(&self, variant: Option<&str>) -> Ran {
        run(&mut self.doppel("test", &[], variant))
    }

    /// Sends `json` (or nothing, for a GET) to the app; its answer, which must be a success.
    fn call(&self, path: &str, json: Option<&str>) -> String {
        let r = match json {
            Some(body) => curl(&["-f", "-H", "Content-Type: application/json", "-d", body, &self.url(path)]),
            None => curl(&["-f", &self.url(path)]),
        };
        assert_eq!(r.code, 0, "{r:?}");
        r.stdout
    }
}

#[test]
fn nats_py_publish_request_and_jetstream_record_replay_and_catch_a_change() {
    let mut w = World::new(None);
    let out = w.record(|w| {
        assert_eq!(w.call("/orders", Some(r#"{"sku":"A-1","qty":2}"#)), "{\"placed\":\"A-1\",\"qty\":2}\n");
        assert!(w.call("/events", Some(r#"{"kind":"shipped","id":7}"#)).contains("shipped"));
        assert!(w.call("/price/A-1", None).contains("\"price\":3.5"));
        assert!(w.call("/price/B-2", None).contains("\"price\":0.25"));
        // The same JetStream publish twice: replay acknowledges them in recorded order.
        let job = r#"{"job":"pack","id":1}"#;
        assert!(w.call("/jobs", Some(job)).contains("\"seq\":1,\"fetched\":{\"job\":\"pack\",\"id\":1}"));
        assert!(w.call("/jobs", Some(job)).contains("\"seq\":2"));
    });
    assert!(out.contains("recorded 7 tests") && out.contains("nats:"), "{out}");

    let mocks = read_all(&w.recordings.join("test-set-0/mocks.yaml"));
    let p = w.prefix.clone();
    for expected in [
        "op: connect".to_string(),
        "no_responders: true".to_string(),
        format!("subject: {p}.orders.created\n  payload:\n    json:\n      sku: A-1\n      qty: 2"),
        format!("subject: {p}.events\n  headers:\n  - \"X-Kind: shipped\""),
        format!("subject: {p}.prices.get\n  reply_to: _INBOX."),
        "price: 3.5".to_string(),
        "subject: $JS.API.STREAM.CREATE.".to_string(),
        "subject: $JS.API.CONSUMER.MSG.NEXT.".to_string(),
        "reply_to: $JS.ACK.".to_string(),
        "op: subscribe\n  subject: _INBOX.".to_string(),
    ] {
        assert!(mocks.contains(&expected), "missing {expected:?} in\n{mocks}");
    }
    assert!(!mocks.contains("kind: tcp"), "every connection was parsed as NATS:\n{mocks}");

    w.stop_nats();
    let ok = w.replay(None);
    assert_eq!(ok.code, 0, "{ok:?}");
    assert!(summary(&ok).starts_with("7 passed, 0 failed"), "{ok:?}");

    // The changed build publishes another order payload: no recording has it, and the test says which subject.
    let bad = w.replay(Some("changed"));
    assert_eq!(bad.code, 1, "{bad:?}");
    assert!(bad.stdout.contains(&format!("mock miss: nats PUB {p}.orders.created")), "{bad:?}");
    // The recorded publish is a write this build no longer makes.
    let missing = format!("missing write: recorded, not made by this build: PUB {p}.orders.created (nats ");
    assert!(bad.stdout.contains(&missing), "{bad:?}");
    assert!(summary(&bad).starts_with("6 passed, 1 failed"), "{bad:?}");

    // A build that asks on another subject: no recording answers, so the app gets the no-responders status
    // at once (nats-py raises NoRespondersError) and both price tests fail with the miss.
    let renamed = w.replay(Some("renamed"));
    assert_eq!(renamed.code, 1, "{renamed:?}");
    assert!(renamed.stdout.contains(&format!("mock miss: nats PUB {p}.prices.lookup \"A-1\"")), "{renamed:?}");
    assert!(renamed.stdout.contains("NoRespondersError"), "{renamed:?}");
    assert!(summary(&renamed).starts_with("5 passed, 2 failed"), "{renamed:?}");
}

#[test]
fn nats_credentials_are_not_stored_and_replay_needs_none() {
    let mut w = World::new(Some(("orders", "s3cret-pass")));
    let out = w.record(|w| {
        w.call("/orders", Some(r#"{"sku":"B-2","qty":1}"#));
        assert!(w.call("/price/B-2", None).contains("\"price\":0.25"));
    });
    assert!(out.contains("recorded 3 tests"), "{out}");
    let mocks = read_all(&w.recordings.join("test-set-0/mocks.yaml"));
    assert!(!mocks.contains("s3cret-pass"), "the password was written:\n{mocks}");
    assert!(mocks.contains("pass: <redacted>") && mocks.contains("user: orders"), "{mocks}");
    w.stop_nats();
    let ok = w.replay(None);
    assert_eq!(ok.code, 0, "{ok:?}");
    assert!(summary(&ok).starts_with("3 passed, 0 failed"), "{ok:?}");
}
