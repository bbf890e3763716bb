//! Recordings safe to commit: a customer service (examples/privacy/) whose traffic carries every kind of
//! credential and personal data is recorded with privacy on (the default). No original value is anywhere in
//! the recording, `doppel scan` finds nothing in clear, replay with the seal key is green, replay without it
//! fails only the tests that needed a credential and says so, and pseudonyms are the same in two
//! recordings under one key.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::pg::PgService;
use crate::common::*;

const SECRET_KEY: &str = "app-signing-Zq81x";
const DB_PASSWORD: &str = "pg-Pass-4471q";
const CLIENT_KEY: &str = "cli_9f8e7d6c5b4a3f2e";
const MERCHANT_PASSWORD: &str = "mpw-Secret-99z";
const MERCHANT_KEY: &str = "sk_live_MERCHANTKEY12345";
const USER_PASSWORD: &str = "Hunter2-Passw0rd!";
const PROXY_AUTH: &str = "Basic cHJveHk6cHJveHktcGFzcw==";
const TRACKING: &str = "TRACKCOOKIE777x";
/// Personal data the client sends.
const PERSONAL: [&str; 8] = [
    "Grace",
    "Hopper",
    "grace.hopper@example.com",
    "+44 20 7946 0958",
    "4111 1111 1111 1111",
    "DE89 3704 0044 0532 0130 00",
    "078-05-1120",
    "8.8.4.4",
];

struct Shop {
    pg: PgService,
    payments: Option<Bg>,
    payments_port: u16,
    /// Where the seal key file lives (created by the first recording).
    key: PathBuf,
}

impl Shop {
    fn new() -> Shop {
        let pg = PgService::new("privacy");
        let key = pg.dir.path().join("keys/seal.key");
        let payments_port = free_port();
        let mut shop = Shop { pg, payments: None, payments_port, key };
        let mut cmd = Command::new("python3");
        cmd.arg(repo().join("examples/privacy/payments.py")).arg(payments_port.to_string());
        shop.merchant_env(&mut cmd);
        shop.payments = Some(Bg::spawn(&mut cmd, shop.pg.dir.path(), "payments"));
        wait_port_open(payments_port, std::time::Duration::from_secs(20), std::time::Duration::from_millis(50), || {
            "the payments API did not start".into()
        });
        shop
    }

    fn merchant_env(&self, c: &mut Command) {
        c.env("MERCHANT_ID", "merchant-42")
            .env("MERCHANT_PASSWORD", MERCHANT_PASSWORD)
            .env("MERCHANT_API_KEY", MERCHANT_KEY);
    }

    /// `doppel <sub>` of the app; the secrets the issue names as command-line ones are on the command line.
    fn doppel(&self, sub: &str, key: Option<&Path>) -> Command {
        let mut c = doppel_cmd(self.pg.dir.path(), sub, &self.pg.path());
        if sub == "record" {
            c.args(["--port", &self.pg.port.to_string()]);
        }
        let url = format!("postgresql://postgres:{DB_PASSWORD}@127.0.0.1:5432/{}?sslmode=disable", self.pg.db);
        c.args(["--", "env", &format!("SECRET_KEY={SECRET_KEY}"), &format!("DATABASE_URL={url}"), "python3"]);
        c.arg(repo().join("examples/privacy/app.py"));
        c.env("APP_PORT", self.pg.port.to_string())
            .env("CLIENT_API_KEY", CLIENT_KEY)
            .env("PAYMENTS_URL", format!("http://127.0.0.1:{}", self.payments_port))
            .env("PYTHONUNBUFFERED", "1")
            .env_remove("DOPPEL_SEAL_KEY")
            .env("DOPPEL_SEAL_KEY_FILE", key.unwrap_or(&self.pg.dir.path().join("no-key-here/seal.key")));
        self.merchant_env(&mut c);
        c
    }

    fn curl(&self, args: &[&str]) -> Ran {
        let mut all = vec!["-i"];
        all.extend_from_slice(args);
        curl(&all)
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.pg.port)
    }

    /// Records the flow; returns the record output and the values the app made (token, session cookie).
    fn record(&self) -> (String, Vec<String>) {
        let mut cmd = self.doppel("record", Some(&self.key));
        let mut rec = Bg::spawn_answering(
            &mut cmd,
            self.pg.dir.path(),
            "record",
            &self.url("/health"),
            std::time::Duration::from_secs(60),
        );
        let ok = |r: &Ran, status: &str| assert!(r.stdout.starts_with(&format!("HTTP/1.1 {status}")), "{r:?}");
        let r = self.curl(&["-H", &format!("Proxy-Authorization: {PROXY_AUTH}"), &self.url("/health")]);
        ok(&r, "200");
        let signup = format!(
            r#"{{"first_name":"{}","last_name":"{}","email":"{}","phone":"{}","card":"{}","iban":"{}","ssn":"{}","password":"{USER_PASSWORD}"}}"#,
            PERSONAL[0], PERSONAL[1], PERSONAL[2], PERSONAL[3], PERSONAL[4], PERSONAL[5], PERSONAL[6]
        );
        let r = self.curl(&["-H", "Content-Type: application/json", "-d", &signup, &self.url("/signup")]);
        ok(&r, "201");
        let body: serde_json::Value = serde_json::from_str(r.stdout.rsplit_once("\r\n\r\n").unwrap().1).unwrap();
        let token = body["token"].as_str().unwrap().to_string();
        let form = format!("email={}&password={}", PERSONAL[2].replace('@', "%40"), USER_PASSWORD.replace('!', "%21"));
        let r = self.curl(&["-d", &form, &self.url("/login")]);
        ok(&r, "200");
        let session = r.stdout.split("session=").nth(1).unwrap().split(';').next().unwrap().to_string();
        let r = self.curl(&[
            "-H",
            &format!("Authorization: Bearer {token}"),
            "-H",
            &format!("Cookie: theme=dark; tracking={TRACKING}"),
            "-H",
            &format!("X-Forwarded-For: {}", PERSONAL[7]),
            &self.url("/me"),
        ]);
        ok(&r, "200");
        assert!(r.stdout.contains(PERSONAL[0]) && r.stdout.contains(PERSONAL[7]), "{r:?}");
        let pay = format!(r#"{{"card":"{}","amount":20,"email":"{}"}}"#, PERSONAL[4], PERSONAL[2]);
        let r = self.curl(&[
            "-H",
            &format!("X-Api-Key: {CLIENT_KEY}"),
            "-H",
            "Content-Type: application/json",
            "-d",
            &pay,
            &self.url("/pay"),
        ]);
        ok(&r, "200");
        assert!(r.stdout.contains("approved"), "{r:?}");
        let r = self.curl(&[&self.url(&format!("/orders?access_token={CLIENT_KEY}"))]);
        ok(&r, "200");
        stop_recording(&mut rec);
        let out = rec.stdout();
        (out, vec![token, session])
    }
}

/// Every file below `dir`, as text where it is text.
fn all_files(dir: &Path) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(all_files(&p));
        } else {
            out.push((p.clone(), String::from_utf8_lossy(&std::fs::read(&p).unwrap()).into_owned()));
        }
    }
    out
}

fn find_in(dir: &Path, value: &str) -> Vec<String> {
    all_files(dir).into_iter().filter(|(_, t)| t.contains(value)).map(|(p, _)| p.display().to_string()).collect()
}

#[test]
fn a_recording_of_secrets_and_personal_data_is_safe_to_commit_and_replays() {
    let shop = Shop::new();
    let (out, made) = shop.record();
    assert!(out.contains("created the seal key"), "{out}");
    assert!(out.contains("sealed") && out.contains("pseudonymized"), "the summary says what was done:\n{out}");
    let key_mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&shop.key).unwrap().permissions());
    assert_eq!(key_mode & 0o777, 0o600);
    let recordings = shop.pg.path();
    let originals: Vec<&str> = [SECRET_KEY, DB_PASSWORD, CLIENT_KEY, MERCHANT_KEY, USER_PASSWORD, PROXY_AUTH, TRACKING]
        .into_iter()
        .chain(PERSONAL)
        .chain(made.iter().map(String::as_str))
        .collect();
    // The Basic credentials the app sends to the payments API, as they travel.
    let basic = "bWVyY2hhbnQtNDI6bXB3LVNlY3JldC05OXo="; // base64("merchant-42:mpw-Secret-99z")
    for v in originals.iter().copied().chain([basic, "grace.hopper", "GRACE", "grace"]) {
        let found = find_in(&recordings, v);
        assert!(found.is_empty(), "{v:?} is in clear in {found:?}");
    }
    let mocks = read_all(&recordings.join("test-set-0/mocks.yaml"));
    assert!(mocks.contains("kind: postgres") && mocks.contains("kind: http"), "{mocks}");
    assert!(
        mocks.contains("Authorization: !sealed basic#") && mocks.contains("X-Api-Key: !sealed api-key#"),
        "{mocks}"
    );
    let set: serde_json::Value = serde_saphyr::from_str(&read_all(&recordings.join("test-set-0/set.yaml"))).unwrap();
    let command = set["command"].to_string();
    assert!(
        command.contains("SECRET_KEY=!sealed secret#") && command.contains("postgres:!sealed password#"),
        "{command}"
    );

    // doppel scan: clean here, and it names file and line of a value in clear elsewhere.
    let scan = run(Command::new(doppel_bin()).arg("scan").arg(&recordings));
    assert_eq!(scan.code, 0, "{scan:?}");
    let leaky = shop.pg.dir.path().join("leaky.yaml");
    std::fs::write(&leaky, "request:\n  headers:\n  - \"Authorization: Bearer abc.def.ghi\"\n  body:\n    json:\n      password: hunter2\n").unwrap();
    let scan = run(Command::new(doppel_bin()).arg("scan").arg(&leaky));
    assert_eq!(scan.code, 1, "{scan:?}");
    assert!(
        scan.stdout.contains("leaky.yaml:3: bearer in clear")
            && scan.stdout.contains("leaky.yaml:6: password in clear"),
        "{scan:?}"
    );

    // The database is gone: replay with the key is green.
    shop.pg.drop_database();
    let green = run(&mut shop.doppel("test", Some(&shop.key)));
    assert_eq!(green.code, 0, "{green:?}");
    assert!(
        summary(&green).starts_with("7 passed, 0 failed") || summary(&green).starts_with("8 passed, 0 failed"),
        "{green:?}"
    );
    for (report, text) in all_files(&recordings.join("reports")) {
        for v in [SECRET_KEY, CLIENT_KEY, MERCHANT_KEY, USER_PASSWORD, TRACKING] {
            assert!(!text.contains(v), "{v} in clear in the report {}", report.display());
        }
    }

    // Without the key: only the tests that need a credential fail, each saying so.
    let keyless = run(&mut shop.doppel("test", None));
    assert_eq!(keyless.code, 1, "{keyless:?}");
    for needs in ["FAIL post-login", "FAIL post-pay", "FAIL get-orders"] {
        assert!(keyless.stdout.contains(needs), "{needs}: {keyless:?}");
    }
    for fine in ["PASS post-signup", "PASS get-me", "PASS get-health"] {
        assert!(keyless.stdout.contains(fine), "{fine}: {keyless:?}");
    }
    assert_eq!(keyless.stdout.matches("sealed: the request sends sealed values").count(), 3, "{keyless:?}");
    assert!(keyless.stdout.contains("the seal key is missing"), "{keyless:?}");
    assert!(summary(&keyless).contains(" 3 failed"), "{keyless:?}");
}

#[test]
fn pseudonyms_are_stable_across_recordings_under_one_key() {
    let shop = Shop::new();
    shop.record();
    // A fresh database and a second recording under the same key.
    let _ = crate::common::pg::psql(&shop.pg.db, &["-c", "TRUNCATE customers RESTART IDENTITY"]);
    shop.record();
    let signup = |set: &str| {
        let text = read_all(&shop.pg.path().join(format!("{set}/tests/post-signup.yaml")));
        let t: serde_json::Value = serde_saphyr::from_str(&text).unwrap();
        t["request"]["body"]["json"].clone()
    };
    let (a, b) = (signup("test-set-0"), signup("test-set-1"));
    for field in ["first_name", "last_name", "email", "phone", "card", "iban", "ssn"] {
        assert_eq!(a[field], b[field], "{field}");
        assert_ne!(
            a[field].as_str(),
            PERSONAL.iter().copied().find(|p| a[field].as_str() == Some(p)),
            "{field} in clear"
        );
    }
    assert!(a["email"].as_str().unwrap().ends_with(".com") && a["email"].as_str().unwrap().contains('@'), "{a}");
}
