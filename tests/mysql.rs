//! MySQL/MariaDB end to end with real clients nobody here wrote: the `mariadb` command line client,
//! PyMySQL and node `mysql2` (prepared statements), each inside a small shop service recorded against the
//! local MariaDB, replayed after its database was dropped (so only the mocks can answer), and a changed
//! build caught. Each test works in a database of its own.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::common::*;

fn mariadb(args: &[&str], stdin: Option<&str>) -> Ran {
    let mut c = Command::new("mariadb");
    c.args(["-h", "127.0.0.1", "-P", "3306", "-u", "root"]).args(args);
    match stdin {
        None => run(&mut c),
        Some(file) => {
            c.stdin(std::fs::File::open(file).unwrap());
            run(&mut c)
        }
    }
}

#[derive(Clone, Copy)]
enum App {
    PyMySql,
    Cli,
    Node,
}

/// A fresh database with the example schema, an app port, and a recordings directory.
struct World {
    dir: tempfile::TempDir,
    db: String,
    app_port: u16,
    app: App,
}

impl World {
    fn new(app: App) -> World {
        let dir = tempfile::tempdir().unwrap();
        let db = format!("doppel_my_{}_{}", std::process::id(), free_port());
        let r = mariadb(&["-e", &format!("CREATE DATABASE {db}")], None);
        assert_eq!(r.code, 0, "is MariaDB running on 127.0.0.1:3306? (scripts/test starts it)\n{r:?}");
        let schema = repo().join("examples/mysql/schema.sql");
        let r = mariadb(&[&db], Some(schema.to_str().unwrap()));
        assert_eq!(r.code, 0, "{r:?}");
        World { dir, db, app_port: free_port(), app }
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("recordings")
    }

    fn doppel(&self, sub: &str, extra: &[&str], variant: Option<&str>) -> Command {
        let mut c = doppel_cmd(self.dir.path(), sub, &self.path());
        c.args(extra).arg("--");
        match self.app {
            App::PyMySql | App::Cli => {
                c.arg("python3").arg(repo().join("examples/mysql/app.py"));
            }
            App::Node => {
                c.arg("node").arg(repo().join("examples/mysql/app.js"));
            }
        }
        c.env("APP_PORT", self.app_port.to_string())
            .env("DB_NAME", &self.db)
            .env("DRIVER", if matches!(self.app, App::Cli) { "cli" } else { "pymysql" })
            .env("NODE_PATH", repo().join("examples/node/node_modules"))
            .env("PYTHONUNBUFFERED", "1");
        app_variant(&mut c, variant);
        c
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.app_port)
    }

    fn record(&self, drive: impl FnOnce(&World)) -> String {
        let port = self.app_port.to_string();
        let mut cmd = self.doppel("record", &["--port", &port], None);
        let mut rec =
            Bg::spawn_answering(&mut cmd, self.dir.path(), "record", &self.url("/health"), Duration::from_secs(30));
        drive(self);
        stop_recording(&mut rec);
        rec.stderr() + &rec.stdout()
    }

    fn mocks(&self) -> String {
        read_all(&self.path().join("test-set-0/mocks.yaml"))
    }

    /// Proves replay cannot reach the data: the database is gone.
    fn drop_database(&self) {
        let r = mariadb(&["-e", &format!("DROP DATABASE {}", self.db)], None);
        assert_eq!(r.code, 0, "{r:?}");
    }
}

impl Drop for World {
    fn drop(&mut self) {
        mariadb(&["-e", &format!("DROP DATABASE IF EXISTS {}", self.db)], None);
    }
}

fn get(w: &World, path: &str) -> String {
    let r = curl(&[&w.url(path)]);
    assert_eq!(r.code, 0, "{r:?}");
    r.stdout
}

fn post(w: &World, path: &str, body: &str) -> String {
    let r = curl(&["-H", "Content-Type: application/json", "-d", body, &w.url(path)]);
    assert_eq!(r.code, 0, "{r:?}");
    r.stdout
}

/// The replay of an unchanged build passes; the changed build fails on exactly the order totals (the first
/// order, of one book at 12.75, is in every scenario).
fn replay_green_then_caught(w: &World, tests: usize, orders: usize) {
    let ok = run(&mut w.doppel("test", &[], None));
    assert_eq!(ok.code, 0, "{ok:?}");
    assert!(ok.stdout.lines().any(|l| l.starts_with(&format!("{tests} passed, 0 failed"))), "{ok:?}");
    let bad = run(&mut w.doppel("test", &[], Some("changed")));
    assert_eq!(bad.code, 1, "{bad:?}");
    assert!(bad.stdout.contains("body $.total changed: expected 12.75 got 14.03"), "{bad:?}");
    let tally = format!("{} passed, {orders} failed", tests - orders);
    assert!(bad.stdout.lines().any(|l| l.starts_with(&tally)), "{bad:?}");
    assert!(!bad.stdout.contains("mock miss"), "only the total differs\n{bad:?}");
}

#[test]
fn pymysql_records_replays_and_catches_a_change() {
    let w = World::new(App::PyMySql);
    w.record(|w| {
        let items = get(w, "/items");
        assert!(items.contains(r#""price": "12.75""#) && items.contains("18446744073709551615"), "{items}");
        assert!(get(w, "/items/2").contains("book"));
        assert!(post(w, "/orders", r#"{"item_id": 2, "qty": 1}"#).contains(r#""total": 12.75"#));
        assert_eq!(get(w, "/summary"), r#"{"orders": 1, "units": 1}"#);
        assert!(get(w, "/missing").contains(r#""error": 1146"#));
        assert!(get(w, "/session").contains(r#""mariadb": true"#));
    });
    let mocks = w.mocks();
    // Readable: SQL as text, columns with names and types, rows as values, OK and ERR details.
    for needle in [
        "sql: SELECT id, name, price, stock FROM items WHERE id = 2",
        "name: price",
        "type: NEWDECIMAL",
        "- book",
        "- \"12.75\"",
        "last_insert_id: 1",
        "code: 1146",
        "sqlstate: 42S02",
        "auth_plugin: mysql_native_password",
    ] {
        assert!(mocks.contains(needle), "{needle:?} missing from the mocks:\n{mocks}");
    }
    w.drop_database();
    replay_green_then_caught(&w, 7, 1);
    // A build that sends a query never recorded: the driver gets an ERR naming it, the test fails with it.
    let miss = run(&mut w.doppel("test", &[], Some("new-query")));
    assert_eq!(miss.code, 1, "{miss:?}");
    let what = "query `SELECT id, name, price, stock FROM items WHERE id = 2 LIMIT 1` (to 127.0.0.1:3306)";
    assert!(miss.stdout.contains(&format!("mock miss: {what}")), "{miss:?}");
    assert!(miss.stdout.lines().any(|l| l.starts_with("5 passed, 2 failed")), "{miss:?}");
}

#[test]
fn mariadb_cli_records_replays_and_catches_a_change() {
    let w = World::new(App::Cli);
    w.record(|w| {
        assert!(get(w, "/items").contains("hardcover"));
        assert!(post(w, "/orders", r#"{"item_id": 2, "qty": 1}"#).contains(r#""total": 12.75"#));
        assert_eq!(get(w, "/summary"), r#"{"orders": 1, "units": 1}"#);
        assert!(get(w, "/missing").contains(r#""error": 1146"#));
    });
    let mocks = w.mocks();
    assert!(mocks.contains("program_name: mariadb") || mocks.contains("program_name: mysql"), "{mocks}");
    assert!(mocks.contains("sql: SELECT LAST_INSERT_ID() AS id"), "{mocks}");
    w.drop_database();
    replay_green_then_caught(&w, 5, 1);
}

#[test]
fn node_mysql2_prepared_statements_record_replay_and_catch_a_change() {
    let w = World::new(App::Node);
    w.record(|w| {
        let items = get(w, "/items");
        assert!(items.contains(r#""updated":"2024-01-02 03:04:05.123456""#), "{items}");
        assert!(items.contains(r#""tag":"00ff""#), "{items}");
        assert!(get(w, "/items/2").contains("book"));
        assert!(post(w, "/orders", r#"{"item_id": 2, "qty": 1}"#).contains(r#""total":12.75"#));
        assert!(post(w, "/orders", r#"{"item_id": 1, "qty": 4}"#).contains(r#""total":5"#));
        assert_eq!(get(w, "/report"), r#"{"orders":2,"names":["pen","book","mug"]}"#);
        assert_eq!(get(w, "/summary"), r#"{"orders":2,"units":5}"#);
        assert_eq!(get(w, "/missing"), r#"{"error":1146,"sqlstate":"42S02"}"#);
        assert!(get(w, "/session").contains(r#""mariadb":true"#));
    });
    let mocks = w.mocks();
    for needle in [
        "command: prepare",
        "command: execute",
        "sql: SELECT id, name, price, stock FROM items WHERE id = ?",
        "param_types:",
        "- 2.0",
        "type: DATETIME",
        "- \"2024-01-02 03:04:05.123456\"",
        "base64: AP8=",
        "sql: CALL order_report()",
    ] {
        assert!(mocks.contains(needle), "{needle:?} missing from the mocks:\n{mocks}");
    }
    w.drop_database();
    replay_green_then_caught(&w, 9, 2);
}

/// A private MariaDB with TLS on, in a directory of its own (the shared server has TLS off).
struct TlsServer {
    dir: tempfile::TempDir,
    port: u16,
    server: Option<Bg>,
}

impl TlsServer {
    fn start() -> TlsServer {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = self_signed(dir.path(), "cert.pem", "key.pem", &["localhost"]);
        let data = dir.path().join("data");
        let r = run(Command::new("mariadb-install-db")
            .arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .args(["--user=root", "--auth-root-authentication-method=normal"]));
        assert_eq!(r.code, 0, "{r:?}");
        let port = free_port();
        let mut c = Command::new("mariadbd");
        c.arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--socket={}", dir.path().join("sock").display()))
            .arg(format!("--port={port}"))
            .arg(format!("--ssl-cert={}", cert.display()))
            .arg(format!("--ssl-key={}", key.display()))
            .args(["--user=root", "--bind-address=127.0.0.1", "--skip-log-bin"]);
        let server = Bg::spawn(&mut c, dir.path(), "mariadbd");
        wait_port_open(port, Duration::from_secs(30), Duration::from_millis(50), || server.explain());
        TlsServer { dir, port, server: Some(server) }
    }

    fn sql(&self, db: Option<&str>, stdin: Option<&str>, args: &[&str]) -> Ran {
        let mut c = Command::new("mariadb");
        c.args(["-h", "127.0.0.1", "-u", "root", "-P", &self.port.to_string()]).args(args);
        if let Some(d) = db {
            c.arg(d);
        }
        if let Some(f) = stdin {
            c.stdin(std::fs::File::open(f).unwrap());
        }
        run(&mut c)
    }
}

#[test]
fn pymysql_over_tls_is_decrypted_recorded_and_replayed() {
    let mut server = TlsServer::start();
    let r = server.sql(None, None, &["-e", "CREATE DATABASE shop"]);
    assert_eq!(r.code, 0, "{r:?}");
    let schema = repo().join("examples/mysql/schema.sql");
    assert_eq!(server.sql(Some("shop"), Some(schema.to_str().unwrap()), &[]).code, 0);
    let dir = tempfile::tempdir().unwrap();
    let app_port = free_port();
    let doppel = |sub: &str, extra: &[&str], variant: Option<&str>| {
        let mut c = doppel_cmd(dir.path(), sub, &dir.path().join("rec"));
        c.args(extra).arg("--").arg("python3").arg(repo().join("examples/mysql/app.py"));
        c.env("APP_PORT", app_port.to_string())
            .env("DB_PORT", server.port.to_string())
            .env("DB_NAME", "shop")
            // Inside the sandbox the system bundle also holds doppel's CA: real verification, through doppel.
            .env("DB_TLS_CA", "/etc/ssl/certs/ca-certificates.crt")
            .env("DOPPEL_CA_DIR", dir.path().join("ca"));
        app_variant(&mut c, variant);
        c
    };
    let cert = server.dir.path().join("cert.pem");
    let mut cmd = doppel("record", &["--port", &app_port.to_string(), "--upstream-ca", cert.to_str().unwrap()], None);
    let url = |p: &str| format!("http://127.0.0.1:{app_port}{p}");
    let mut rec = Bg::spawn_answering(&mut cmd, dir.path(), "record", &url("/health"), Duration::from_secs(30));
    let r = curl(&[&url("/items/2")]);
    assert!(r.stdout.contains("book"), "{r:?}\n{}", rec.explain());
    let r = curl(&["-H", "Content-Type: application/json", "-d", r#"{"item_id": 2, "qty": 1}"#, &url("/orders")]);
    assert!(r.stdout.contains(r#""total": 12.75"#), "{r:?}\n{}", rec.explain());
    stop_recording(&mut rec);
    let mocks = read_all(&dir.path().join("rec/test-set-0/mocks.yaml"));
    assert!(mocks.contains("TLS (SSLRequest)"), "{mocks}");
    assert!(
        mocks.contains("kind: mysql") && mocks.contains("FROM items WHERE id = 2"),
        "decrypted SQL expected:\n{mocks}"
    );
    assert!(!mocks.contains("kind: tcp"), "{mocks}");

    server.server.take();
    let ok = run(&mut doppel("test", &[], None));
    assert_eq!(ok.code, 0, "{ok:?}");
    let bad = run(&mut doppel("test", &[], Some("changed")));
    assert_eq!(bad.code, 1, "{bad:?}");
    assert!(bad.stdout.contains("body $.total changed: expected 12.75 got 14.03"), "{bad:?}");
}
