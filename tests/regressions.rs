//! The regression corpus: one recording of an order service (examples/regressions/: psycopg 3 on the
//! local PostgreSQL, a payments API over HTTP), replayed green against the unchanged build with the
//! database dropped and the payments API stopped, then against ten builds that each carry one deliberate
//! regression. Every one must fail, naming the field, header, status or statement that changed.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::common::*;

use crate::common::pg::PgService;

/// The order service and the payments API it calls.
struct Corpus {
    service: PgService,
    payments_port: u16,
}

impl Corpus {
    fn new() -> Corpus {
        let mut service = PgService::new("regressions");
        let payments_port = free_port();
        service.env.push(("PAYMENTS_URL".into(), format!("http://127.0.0.1:{payments_port}")));
        Corpus { service, payments_port }
    }

    fn path(&self) -> PathBuf {
        self.service.path()
    }

    fn send(&self, method: &str, path: &str, json: Option<&str>) -> Ran {
        self.service.send(method, path, json, &[])
    }

    fn record(&self) {
        let dir = self.service.dir.path();
        let mut payments = Command::new("python3");
        payments
            .arg(repo().join("examples/regressions/payments.py"))
            .env("PAYMENTS_PORT", self.payments_port.to_string());
        let payments = Bg::spawn(&mut payments, dir, "payments");
        let port = self.payments_port;
        wait_port_open(port, Duration::from_secs(10), Duration::from_millis(20), || payments.explain());

        let mut rec = self.service.start_recording();
        let r = self.send("POST", "/orders", Some(r#"{"sku":"apple","qty":2}"#));
        assert!(r.stdout.contains(r#""total":8"#) && r.stdout.ends_with(" 201"), "{r:?}\n{}", rec.explain());
        let r = self.send("POST", "/orders", Some(r#"{"sku":"pear","qty":1}"#));
        assert!(r.stdout.ends_with(" 201"), "{r:?}");
        let r = self.send("GET", "/orders/ord-apple-2", None);
        assert!(r.stdout.contains(r#""lines":["apple x2","shipping","tax"]"#), "{r:?}");
        let r = self.send("GET", "/orders?page=0", None);
        assert!(r.stdout.contains(r#""ids":["ord-apple-2","ord-pear-1"]"#), "{r:?}");
        let r = self.send("GET", "/orders?page=1", None);
        assert!(r.stdout.contains(r#""ids":[]"#), "{r:?}");
        stop_recording(&mut rec);
        drop(payments);
        wait_port_closed(port, "the payments API is still up");
        self.service.drop_database();
    }

    fn replay(&self, regression: Option<&str>) -> Ran {
        self.replay_with(regression, &[])
    }

    fn replay_with(&self, regression: Option<&str>, flags: &[&str]) -> Ran {
        let mut cmd = self.service.doppel_with("test", flags, &[]);
        match regression {
            Some(kind) => cmd.env("REGRESSION", kind),
            None => cmd.env_remove("REGRESSION"),
        };
        run(&mut cmd)
    }
}

#[test]
fn every_kind_of_regression_is_caught_and_named_and_the_unchanged_build_is_green() {
    let corpus = Corpus::new();
    corpus.record();
    let mocks = read_all(&corpus.path().join("test-set-0/mocks.yaml"));
    assert!(mocks.contains("INSERT INTO orders") && mocks.contains("/v1/charges"), "{mocks}");

    // The unchanged build, three runs in a row: green, no miss, no missing write.
    for _ in 0..3 {
        let ok = corpus.replay(None);
        assert_eq!(ok.code, 0, "{ok:?}");
        // Six tests: the five requests and the readiness probe on /health.
        assert!(summary(&ok).starts_with("6 passed, 0 failed"), "{ok:?}");
        assert!(!ok.stdout.contains("mock miss") && !ok.stdout.contains("missing write"), "{ok:?}");
    }

    // Each regression: (kind, how many tests fail, what the output must name).
    let corpus_cases: [(&str, usize, &[&str]); 10] = [
        ("constant", 3, &[r#"body $.currency changed: expected "EUR" got "USD""#]),
        (
            "dropped-write",
            2,
            &["missing write: recorded, not made by this build: INSERT INTO orders (id, sku, qty, total)"],
        ),
        ("wrong-amount", 2, &["mock miss:", "body $.amount: recorded 8, sent 9", "/v1/charges"]),
        ("extra-write", 2, &["mock miss:", "UPDATE products SET sold = sold + $1 WHERE sku = $2"]),
        ("status", 2, &["status changed: expected 201 got 200"]),
        ("header", 6, &["header x-api-version changed: expected \"1\" got \"2\""]),
        ("removed-field", 3, &["body $.status removed"]),
        ("type-change", 3, &["body $.qty type changed"]),
        ("reordered", 3, &[r#"body $.lines[0] changed: expected "apple x2" got "tax""#]),
        ("pagination", 2, &["mock miss:", "SELECT id FROM orders ORDER BY id LIMIT $1 OFFSET $2"]),
    ];
    for (kind, failed, named) in corpus_cases {
        let bad = corpus.replay(Some(kind));
        assert_eq!(bad.code, 1, "{kind}: {bad:?}");
        let line = summary(&bad);
        assert!(line.starts_with(&format!("{} passed, {failed} failed", 6 - failed)), "{kind}: {line}\n{bad:?}");
        for text in named {
            assert!(bad.stdout.contains(text), "{kind}: the output does not name `{text}`:\n{}", bad.stdout);
        }
    }

    // An allowed missing write passes and says so; an allow rule for another statement changes nothing.
    let allowed = corpus.replay_with(Some("dropped-write"), &["--allow-missing-write", "insert into  ORDERS"]);
    assert_eq!(allowed.code, 0, "{allowed:?}");
    assert!(
        allowed
            .stdout
            .contains("tolerated: recorded write not made, allowed by `insert into  ORDERS`: INSERT INTO orders"),
        "{}",
        allowed.stdout
    );
    let other = corpus.replay_with(Some("dropped-write"), &["--allow-missing-write", "INSERT INTO audit_log"]);
    assert_eq!(other.code, 1, "{other:?}");
    assert!(other.stdout.contains("missing write:"), "{}", other.stdout);
}
