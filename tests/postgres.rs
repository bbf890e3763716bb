//! PostgreSQL end to end, against the local server (127.0.0.1:5432, trust auth) with real drivers: the
//! example shop (examples/postgres/) on psycopg 3, SQLAlchemy, asyncpg, psql, node `pg` and tokio-postgres
//! is recorded against a fresh database, the database is dropped, the recording replays green, and a
//! changed build is caught. Each test uses its own database `doppel_pg_<random>`. Password authentication
//! (SCRAM-SHA-256, md5, cleartext) runs against a private cluster started by the test (the shared server
//! trusts loopback).

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::common::*;

/// psql's options for scripts: no psqlrc, quiet, stop at the first error, over TCP to 127.0.0.1.
const PSQL_SCRIPT: [&str; 6] = ["-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1"];

fn psql(db: &str, sql: &str) -> Ran {
    run(Command::new("psql").args(PSQL_SCRIPT).args(["-U", "postgres", "-d", db, "-c", sql]))
}

fn db_exists(db: &str) -> bool {
    let r = psql("test", &format!("SELECT 'present' FROM pg_database WHERE datname = '{db}'"));
    assert_eq!(r.code, 0, "{r:?}");
    r.stdout.contains("present")
}

/// How the shop is started.
enum App {
    Python(&'static str),
    Node,
    Tokio,
}

struct Shop {
    dir: tempfile::TempDir,
    db: String,
    port: u16,
    app: App,
    /// Connect with `sslmode=verify-ca` (decrypted by doppel) instead of plaintext.
    tls: bool,
}

impl Shop {
    fn new(app: App) -> Shop {
        let db = format!("doppel_pg_{}_{}", std::process::id(), free_port());
        let r = psql("test", &format!("CREATE DATABASE {db}"));
        assert_eq!(r.code, 0, "{r:?}");
        let schema = repo().join("examples/postgres/schema.sql");
        let r = run(Command::new("psql").args(PSQL_SCRIPT).args(["-U", "postgres", "-d", &db, "-f"]).arg(schema));
        assert_eq!(r.code, 0, "{r:?}");
        Shop { dir: tempfile::tempdir().unwrap(), db, port: free_port(), app, tls: false }
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("recordings")
    }

    fn command(&self) -> Vec<String> {
        match self.app {
            App::Python(_) => {
                vec!["python3".into(), repo().join("examples/postgres/app.py").display().to_string()]
            }
            App::Node => vec!["node".into(), repo().join("examples/postgres/node_app.js").display().to_string()],
            App::Tokio => vec![tokio_example().display().to_string()],
        }
    }

    fn doppel(&self, sub: &str, variant: Option<&str>) -> Command {
        let mut c = doppel_cmd(self.dir.path(), sub, &self.path());
        if sub == "record" {
            c.args(["--port", &self.port.to_string()]);
            if self.tls {
                // The local server's certificate is Debian's self-signed snakeoil one.
                c.args(["--upstream-ca", "/etc/ssl/certs/ssl-cert-snakeoil.pem"]);
            }
        }
        c.arg("--").args(self.command());
        c.env("APP_PORT", self.port.to_string())
            .env("PGHOST", "127.0.0.1")
            .env("PGPORT", "5432")
            .env("PGUSER", "postgres")
            .env("PGDATABASE", &self.db)
            .env("PGSSLMODE", if self.tls { "verify-ca" } else { "disable" })
            // In the sandbox the system bundle also holds doppel's CA: the driver really verifies, through doppel.
            .env("PGSSLROOTCERT", "/etc/ssl/certs/ca-certificates.crt")
            .env("DOPPEL_CA_DIR", self.dir.path().join("ca"))
            .env("PYTHONUNBUFFERED", "1")
            .env("NODE_PATH", repo().join("examples/node/node_modules"));
        if let App::Python(driver) = self.app {
            c.env("DRIVER", driver);
        }
        app_variant(&mut c, variant);
        c
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn post(&self, path: &str, json: &str) -> Ran {
        curl(&["-w", " %{http_code}", "-H", "Content-Type: application/json", "-d", json, &self.url(path)])
    }

    fn get(&self, path: &str) -> Ran {
        curl(&["-w", " %{http_code}", &self.url(path)])
    }

    /// Records the shop while sending it the scenario; returns what `doppel record` printed.
    fn record(&self, extra: impl FnOnce(&Shop)) -> String {
        let mut cmd = self.doppel("record", None);
        let mut rec =
            Bg::spawn_answering(&mut cmd, self.dir.path(), "record", &self.url("/health"), Duration::from_secs(60));
        let r = self.post("/items", r#"{"name":"apple","price":"1.25","tags":["fruit","red"],"meta":{"origin":"NZ"}}"#);
        assert!(r.stdout.contains(r#""id":1"#) && r.stdout.ends_with(" 201"), "{r:?}\n{}", rec.explain());
        let r = self.post("/items", r#"{"name":"pear","price":"2.50","tags":[],"meta":{}}"#);
        assert!(r.stdout.ends_with(" 201"), "{r:?}");
        // The error path: a unique violation becomes 409.
        let r = self.post("/items", r#"{"name":"apple","price":"9.99"}"#);
        assert!(r.stdout.contains("duplicate") && r.stdout.ends_with(" 409"), "{r:?}");
        let r = self.get("/items/1");
        assert!(r.stdout.contains(r#""tags":["fruit","red"]"#) && r.stdout.ends_with(" 200"), "{r:?}");
        assert!(self.get("/items/99").stdout.ends_with(" 404"));
        // A transaction: select for update, update, insert returning, commit.
        let r = self.post("/items/1/buy", r#"{"qty":3}"#);
        assert!(r.stdout.contains(r#""total":"3.75""#) && r.stdout.contains(r#""stock_left":7"#), "{r:?}");
        let r = self.get("/items?min_price=2");
        assert!(r.stdout.contains("pear") && !r.stdout.contains("apple"), "{r:?}");
        // The pool: overlapping requests run on several connections.
        let handles: Vec<_> = (0..6)
            .map(|i| {
                let url = self.url(&format!("/items/{}", i % 2 + 1));
                std::thread::spawn(move || curl(&["-w", " %{http_code}", &url]))
            })
            .collect();
        for h in handles {
            let r = h.join().unwrap();
            assert!(r.stdout.ends_with(" 200"), "{r:?}");
        }
        extra(self);
        stop_recording(&mut rec);
        rec.stdout()
    }

    /// mocks.yaml with whitespace runs collapsed (long SQL is folded over several lines).
    fn mocks(&self) -> String {
        read_all(&self.path().join("test-set-0/mocks.yaml")).split_whitespace().collect::<Vec<_>>().join(" ")
    }

    /// Drops the database and proves it is gone: replay cannot reach it.
    fn drop_database(&self) {
        let r = psql("test", &format!("DROP DATABASE {} WITH (FORCE)", self.db));
        assert_eq!(r.code, 0, "{r:?}");
        assert!(!db_exists(&self.db), "{} still exists", self.db);
    }

    fn replay(&self, variant: Option<&str>) -> Ran {
        run(&mut self.doppel("test", variant))
    }
}

impl Drop for Shop {
    fn drop(&mut self) {
        let _ = psql("test", &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.db));
    }
}

fn tokio_example() -> PathBuf {
    // `cargo test` builds examples; build it if this test binary was built on its own.
    let exe = doppel_bin().parent().unwrap().join("examples/postgres_tokio");
    if !exe.exists() {
        let r = run(Command::new(env!("CARGO")).current_dir(repo()).args(["build", "--example", "postgres_tokio"]));
        assert_eq!(r.code, 0, "{r:?}");
    }
    exe
}

/// Record, drop the database, replay green, then catch the changed build.
fn round_trip(app: App, extra: impl FnOnce(&Shop)) -> Shop {
    round_trip_with(Shop::new(app), extra)
}

fn round_trip_with(shop: Shop, extra: impl FnOnce(&Shop)) -> Shop {
    let out = shop.record(extra);
    assert!(out.contains("postgres:"), "no postgres mocks recorded:\n{out}");
    let mocks = shop.mocks();
    assert!(!mocks.contains("kind: tcp"), "a connection fell back to opaque bytes:\n{mocks}");
    // Readable mocks: SQL text, decoded values, the unique violation with its SQLSTATE.
    assert!(mocks.contains("INSERT INTO items (name, price, tags, meta) VALUES"), "{mocks}");
    assert!(mocks.contains("code: \"23505\""), "{mocks}");
    assert!(mocks.contains(r#"rows: - [1, apple, "1.25"]"#), "rows are readable values:\n{mocks}");
    assert!(mocks.contains("startup:") && mocks.contains("server_version:"), "{mocks}");
    shop.drop_database();

    let ok = shop.replay(None);
    assert_eq!(ok.code, 0, "{ok:?}");
    assert!(summary(&ok).contains(" 0 failed"), "{ok:?}");
    assert!(!ok.stdout.contains("mock miss"), "{ok:?}");

    let bad = shop.replay(Some("changed"));
    assert_eq!(bad.code, 1, "{bad:?}");
    assert!(bad.stdout.contains(r#"body $.total changed: expected "3.75" got "4.1"#), "{bad:?}");
    assert!(summary(&bad).contains(" 1 failed"), "{bad:?}");
    shop
}

#[test]
fn psycopg_with_copy_notices_notifications_and_a_caught_query_change() {
    let shop = round_trip(App::Python("psycopg"), |s| {
        let r = s.post("/import", r#"{"rows":[["kiwi","0.80"],["plum","1.10"]]}"#);
        assert!(r.stdout.contains(r#""imported":2"#), "{r:?}");
        let r = s.get("/export");
        assert!(r.stdout.contains(r#"kiwi\t0.80"#), "{r:?}");
        let r = s.get("/notify");
        assert!(r.stdout.contains("restocked"), "{r:?}");
    });
    let mocks = shop.mocks();
    assert!(mocks.contains("copy_in:") && mocks.contains("copy_out:"), "{mocks}");
    assert!(mocks.contains("payload: restocked"), "{mocks}");
    assert!(mocks.contains("[apple, \"1.25\""), "parameters are readable values:\n{mocks}");
    // A changed parameter reaches the database: doppel answers with an error naming the statement, and
    // the test that caused it fails with the miss listed.
    let r = shop.replay(Some("query"));
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stdout.contains(
            "mock miss: no recorded result for SELECT id, name, price FROM items WHERE price >= $1 ORDER BY id with [$1='3']; recorded with [$1='2']"
        ),
        "{r:?}"
    );
    assert!(r.stdout.contains("FAIL get-items"), "{r:?}");
}

#[test]
fn psycopg_with_sslmode_verify_ca_is_decrypted_and_replayed_over_tls() {
    let on = psql("test", "SHOW ssl");
    assert!(on.stdout.contains("on"), "this test needs the local PostgreSQL with ssl = on (Debian's default)\n{on:?}");
    let mut shop = Shop::new(App::Python("psycopg"));
    shop.tls = true;
    let shop = round_trip_with(shop, |_| {});
    let mocks = shop.mocks();
    assert!(mocks.contains("ssl: accepted"), "{mocks}");
}

#[test]
fn sqlalchemy_on_psycopg() {
    let shop = round_trip(App::Python("sqlalchemy"), |_| {});
    // Dialect start-up queries are session queries, served as often as asked.
    assert!(shop.mocks().contains("select pg_catalog.version()"), "{}", shop.mocks());
}

#[test]
fn asyncpg_prepared_statements_in_binary() {
    let shop = round_trip(App::Python("asyncpg"), |s| {
        // executemany: a pipelined batch of Bind/Execute pairs before one Sync.
        let r = s.post("/import", r#"{"rows":[["kiwi","0.80"],["plum","1.10"],["fig","3.00"]]}"#);
        assert!(r.stdout.contains(r#""imported":3"#), "{r:?}");
    });
    let mocks = shop.mocks();
    assert!(mocks.contains("statement: __asyncpg_stmt_"), "{mocks}");
    assert!(mocks.contains("format: binary"), "{mocks}");
    // Binary values are stored readable: an array, a uuid, a timestamptz.
    assert!(mocks.contains("[fruit, red]"), "{mocks}");
    assert!(mocks.contains("+00\"]"), "{mocks}");
}

#[test]
fn psql_command_line_client() {
    let shop = round_trip(App::Python("psql"), |s| {
        let r = s.post("/import", r#"{"rows":[["kiwi","0.80"]]}"#);
        assert!(r.stdout.contains(r#""imported":1"#), "{r:?}");
        let r = s.get("/notify");
        assert!(r.stdout.contains("restocked") && r.stdout.contains("does not exist, skipping"), "{r:?}");
    });
    let mocks = shop.mocks();
    // psql -c sends the whole transaction as one multi-statement query.
    assert!(mocks.contains("BEGIN; SELECT price, stock FROM items WHERE id = 1 FOR UPDATE;"), "{mocks}");
    assert!(mocks.contains("application_name: psql"), "{mocks}");
    assert!(mocks.contains("severity: NOTICE"), "{mocks}");
}

#[test]
fn node_pg() {
    round_trip(App::Node, |_| {});
}

#[test]
fn tokio_postgres() {
    let shop = round_trip(App::Tokio, |_| {});
    assert!(shop.mocks().contains("statement: s"), "{}", shop.mocks());
}

/// A private PostgreSQL cluster that asks for passwords: SCRAM-SHA-256 by default, md5 and cleartext for
/// two roles. Stopped and removed when dropped.
struct PasswordServer {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
}

impl PasswordServer {
    fn start() -> PasswordServer {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL server binaries in /usr/lib/postgresql (scripts/test installs them)")
            .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
            .filter(|b| b.join("initdb").exists())
            .max()
            .expect("initdb");
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        std::fs::write(dir.path().join("pw"), "secret\n").unwrap();
        let s = PasswordServer { dir, bin, port };
        // The server refuses to run as root: use its own account then.
        s.chown();
        let data = s.dir.path().join("data");
        let pw = s.dir.path().join("pw");
        s.run_as_owner(
            Command::new(s.bin.join("initdb"))
                .arg("-D")
                .arg(&data)
                .args(["-U", "app", "-N", "--auth=scram-sha-256"])
                .arg(format!("--pwfile={}", pw.display())),
        );
        let hba = std::fs::read_to_string(data.join("pg_hba.conf")).unwrap();
        std::fs::write(
            data.join("pg_hba.conf"),
            format!("host all md5user 127.0.0.1/32 md5\nhost all plainuser 127.0.0.1/32 password\n{hba}"),
        )
        .unwrap();
        let opts =
            format!("-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c ssl=off", s.dir.path().display());
        s.run_as_owner(
            Command::new(s.bin.join("pg_ctl"))
                .arg("-D")
                .arg(&data)
                .args(["-o", &opts, "-w", "-l"])
                .arg(s.dir.path().join("log"))
                .arg("start"),
        );
        for sql in [
            "CREATE DATABASE shop",
            "SET password_encryption = 'md5'; CREATE ROLE md5user LOGIN SUPERUSER PASSWORD 'secret'",
            "CREATE ROLE plainuser LOGIN SUPERUSER PASSWORD 'secret'",
        ] {
            assert_eq!(s.psql("postgres", sql).code, 0, "{sql}");
        }
        let schema = repo().join("examples/postgres/schema.sql");
        let r = run(s
            .client("psql")
            .args(PSQL_SCRIPT)
            .args(["-p", &port.to_string(), "-U", "app", "-d", "shop", "-f"])
            .arg(schema));
        assert_eq!(r.code, 0, "{r:?}");
        s
    }

    fn chown(&self) {
        if unsafe { libc::geteuid() } == 0 {
            run(Command::new("chown").arg("-R").arg("postgres").arg(self.dir.path()));
        }
    }

    fn run_as_owner(&self, cmd: &mut Command) {
        let r = run(&mut as_owner(cmd));
        assert_eq!(r.code, 0, "{r:?}\n{}", std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default());
    }

    fn client(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.env("PGPASSWORD", "secret").env("PGSSLMODE", "disable");
        c
    }

    fn psql(&self, db: &str, sql: &str) -> Ran {
        run(self.client("psql").args([
            "-X",
            "-q",
            "-h",
            "127.0.0.1",
            "-p",
            &self.port.to_string(),
            "-U",
            "app",
            "-d",
            db,
            "-c",
            sql,
        ]))
    }
}

/// `cmd` run as the cluster's owner: through runuser as postgres when we are root (the server refuses to run
/// as root), else `cmd` itself.
fn as_owner(cmd: &mut Command) -> Command {
    if unsafe { libc::geteuid() } == 0 {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(cmd.get_program()).args(cmd.get_args());
        c
    } else {
        std::mem::replace(cmd, Command::new("true"))
    }
}

impl Drop for PasswordServer {
    fn drop(&mut self) {
        let data = self.dir.path().join("data");
        let mut stop = Command::new(self.bin.join("pg_ctl"));
        stop.arg("-D").arg(&data).args(["-m", "immediate", "stop"]);
        let _ = run(&mut as_owner(&mut stop));
    }
}

#[test]
fn scram_md5_and_cleartext_passwords_are_recorded_and_replay_accepts_the_app() {
    let server = PasswordServer::start();
    let server_port = server.port;
    let users = [("app", "scram-sha-256"), ("md5user", "md5"), ("plainuser", "cleartext")];
    let runs: Vec<_> = users.iter().map(|_| (tempfile::tempdir().unwrap(), free_port())).collect();
    let doppel = |i: usize, sub: &str| {
        let (dir, app_port) = (&runs[i].0, runs[i].1);
        let mut c = doppel_cmd(dir.path(), sub, &dir.path().join("rec"));
        if sub == "record" {
            c.args(["--port", &app_port.to_string()]);
        }
        c.arg("--").arg("python3").arg(repo().join("examples/postgres/app.py"));
        c.env("APP_PORT", app_port.to_string())
            .env("DRIVER", "psycopg")
            .env("PGHOST", "127.0.0.1")
            .env("PGPORT", server_port.to_string())
            .env("PGUSER", users[i].0)
            .env("PGPASSWORD", "secret")
            .env("PGDATABASE", "shop")
            .env("PGSSLMODE", "disable")
            .env_remove("APP_VARIANT");
        c
    };
    for (i, (user, method)) in users.iter().enumerate() {
        let (dir, app_port) = (&runs[i].0, runs[i].1);
        let health = format!("http://127.0.0.1:{app_port}/health");
        let mut rec =
            Bg::spawn_answering(&mut doppel(i, "record"), dir.path(), "record", &health, Duration::from_secs(60));
        let url = format!("http://127.0.0.1:{app_port}/items/99");
        let r = curl(&["-w", " %{http_code}", &url]);
        assert!(r.stdout.ends_with(" 404"), "{r:?}\n{}", rec.explain());
        stop_recording(&mut rec);
        let mocks = read_all(&dir.path().join("rec/test-set-0/mocks.yaml"));
        assert!(mocks.contains(&format!("auth: {method}")), "{user}:\n{mocks}");
        assert!(!mocks.contains("secret"), "a password was recorded:\n{mocks}");
    }
    // Replay with the server gone: no password exchange, doppel accepts the app itself.
    drop(server);
    assert!(std::net::TcpStream::connect(("127.0.0.1", server_port)).is_err(), "the server still answers");
    for (i, (user, _)) in users.iter().enumerate() {
        let ok = run(&mut doppel(i, "test"));
        assert_eq!(ok.code, 0, "{user}: {ok:?}");
        assert!(summary(&ok).starts_with("2 passed, 0 failed"), "{user}: {ok:?}");
    }
}
