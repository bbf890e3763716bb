//! Replays that stay green on an app whose answers change on every run (examples/noisy: a Flask service
//! with UUID keys, timestamps, random API keys, a JWT login, a trace id header, the time, its pid and a
//! shuffled list), with no hand-written rule, while a real change to one field is still caught. Also:
//! learned noise, target/secondary comparison, frozen time, dedup, selection and re-recording.

use std::process::Command;
use std::time::Duration;

use crate::common::*;
use serde_json::Value;

/// The noisy service and its dependencies (audit log, quota service), wired together for one test.
struct Noisy {
    dir: tempfile::TempDir,
    deps_port: u16,
    app_port: u16,
    deps: Option<Bg>,
}

impl Noisy {
    fn new() -> Noisy {
        let dir = tempfile::tempdir().unwrap();
        let (deps_port, app_port) = (free_port(), free_port());
        let mut c = Command::new("python3");
        c.arg(repo().join("examples/noisy/deps.py")).arg(deps_port.to_string());
        let deps = Bg::spawn_ready(&mut c, dir.path(), "deps", "ready", Duration::from_secs(20));
        Noisy { dir, deps_port, app_port, deps: Some(deps) }
    }

    fn stop_deps(&mut self) {
        self.deps.take();
        wait_port_closed(self.deps_port, "the dependencies are still up");
    }

    fn path(&self) -> std::path::PathBuf {
        self.dir.path().join("recordings")
    }

    fn app_env(&self, c: &mut Command, port: u16, variant: Option<&str>) {
        c.env("APP_PORT", port.to_string())
            .env("DEPS_URL", format!("http://127.0.0.1:{}", self.deps_port))
            .env("JWT_SECRET", "test-secret")
            .env("PYTHONUNBUFFERED", "1");
        app_variant(c, variant);
    }

    /// `doppel <sub> --path ... [extra] -- python3 app.py`.
    fn doppel(&self, sub: &str, extra: &[&str], variant: Option<&str>) -> Command {
        let mut c = doppel_cmd(self.dir.path(), sub, &self.path());
        c.args(extra).arg("--").arg("python3").arg(repo().join("examples/noisy/app.py"));
        self.app_env(&mut c, self.app_port, variant);
        c
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.app_port)
    }

    fn record(&self, extra: &[&str], traffic: impl FnOnce(&Noisy)) -> String {
        let mut args = vec!["--port".to_string(), self.app_port.to_string()];
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
        let mut cmd = self.doppel("record", &args, None);
        let mut rec =
            Bg::spawn_answering(&mut cmd, self.dir.path(), "record", &self.url("/health"), Duration::from_secs(30));
        traffic(self);
        stop_recording(&mut rec);
        rec.stdout()
    }

    fn json(&self, args: &[&str]) -> Value {
        let r = curl(args);
        serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {r:?}"))
    }

    fn login(&self) -> String {
        let v = self.json(&[
            "-H",
            "Content-Type: application/json",
            "-d",
            r#"{"user":"ann","password":"pw"}"#,
            &self.url("/api/login"),
        ]);
        v["token"].as_str().unwrap().to_string()
    }

    fn create_user(&self, token: &str, name: &str) -> String {
        let body = format!(r#"{{"name":"{name}","email":"{}@example.com"}}"#, name.to_lowercase());
        let auth = format!("Authorization: Bearer {token}");
        let v = self.json(&["-H", &auth, "-H", "Content-Type: application/json", "-d", &body, &self.url("/api/users")]);
        v["id"].as_str().unwrap().to_string()
    }

    fn get(&self, token: &str, path: &str) -> Value {
        self.json(&["-H", &format!("Authorization: Bearer {token}"), &self.url(path)])
    }

    fn test_file(&self, name: &str) -> String {
        read_all(&self.path().join("test-set-0/tests").join(format!("{name}.yaml")))
    }
}

/// The user flow: login, create a user, read it back, list users, ask the time.
fn user_flow(w: &Noisy) -> String {
    let token = w.login();
    let id = w.create_user(&token, "Ann");
    assert_eq!(w.get(&token, &format!("/api/users/{id}"))["quota"], 100);
    assert_eq!(w.get(&token, "/api/users")["count"], 1);
    curl(&[&w.url("/api/now")]);
    id
}

#[test]
fn a_noisy_app_replays_green_with_no_rules_and_a_real_change_is_caught() {
    let mut w = Noisy::new();
    let mut id = String::new();
    let out = w.record(&[], |w| id = user_flow(w));
    assert!(out.contains("recorded 6 tests and 2 mocks"), "{out}");
    assert!(out.contains("chained") && out.contains("flagged"), "{out}");

    // The files say what was chained and what looked volatile.
    let get = w.test_file(&format!("get-api-users-{id}"));
    assert!(get.contains("target: /api/users/{{ chain.post-api-users.body.id }}"), "{get}");
    assert!(get.contains("Authorization: Bearer {{ chain.post-api-login.body.token }}"), "{get}");
    assert!(get.contains(&format!("post-api-users.body.id: {id}")), "{get}");
    let post = w.test_file("post-api-users");
    for field in ["body: $.id", "body: $.created_at", "body: $.api_key", "header: x-trace-id"] {
        assert!(post.contains(field), "{field} not flagged:\n{post}");
    }
    assert!(post.contains("{timestamp}") && post.contains("{uuid}") && post.contains("{token:32}"), "{post}");

    // Dependencies gone; every answer differs in ids, keys, times and tokens; no rule was written by hand.
    w.stop_deps();
    let ok = run(&mut w.doppel("test", &[], None));
    assert_eq!(ok.code, 0, "{ok:?}");
    assert!(summary(&ok).starts_with("6 passed, 0 failed") && summary(&ok).contains("2 of 2 mocks used"), "{ok:?}");
    let line = ok.stdout.lines().find(|l| l.contains("PASS post-api-users")).unwrap();
    assert!(line.contains("noise: ") && line.contains("$.created_at") && line.contains("$.id"), "{line}");
    let applied = applied_noise(&latest_report(&w.path()));
    assert!(applied.contains(&"body $.created_at like {timestamp}".to_string()), "{applied:?}");

    // The new build changes one field: only that field is reported, where it appears.
    let bad = run(&mut w.doppel("test", &[], Some("changed")));
    assert_eq!(bad.code, 1, "{bad:?}");
    assert!(summary(&bad).starts_with("4 passed, 2 failed"), "{bad:?}");
    let diffs: Vec<&str> = bad
        .stdout
        .lines()
        .filter(|l| l.contains(" changed") || l.contains(" added") || l.contains(" removed"))
        .collect();
    assert_eq!(diffs.len(), 2, "{bad:?}");
    assert!(diffs.iter().all(|l| l.contains(r#"body $.plan changed: expected "free" got "trial""#)), "{bad:?}");
    assert!(!bad.stdout.contains("mock miss"), "{bad:?}");
}

#[test]
fn noise_learned_from_runs_of_one_build_is_written_reviewable_and_never_hides_a_change() {
    let w = Noisy::new();
    w.record(&[], |w| {
        curl(&[&w.url("/api/stats")]);
    });
    // The worker's pid and the order of a list change on every run: no shape gives them away.
    let plain = run(&mut w.doppel("test", &[], None));
    assert_eq!(plain.code, 1, "{plain:?}");
    assert!(plain.stdout.contains("body $.served_by changed"), "{plain:?}");

    // Learning against a new build: what differs between its runs is learned, what it changed is not.
    let learn = run(&mut w.doppel("test", &["--learn-noise", "--runs", "3"], Some("changed")));
    assert_eq!(learn.code, 1, "{learn:?}");
    assert!(
        learn.stdout.contains("learned get-api-stats: body $.features (ignore order), body $.served_by (seen worker-"),
        "{learn:?}"
    );
    assert!(learn.stdout.contains(r#"body $.version changed: expected "1.4.2" got "1.5.0""#), "{learn:?}");
    assert!(summary(&learn).starts_with("1 passed, 1 failed"), "{learn:?}");
    let file = w.test_file("get-api-stats");
    assert!(file.contains("reason: learned") && file.contains("runs: 3") && file.contains("- worker-"), "{file}");
    assert!(file.contains("ignore_order: true") && !file.contains("$.version"), "{file}");
    let report = latest_report(&w.path());
    let learned = report["sets"][0]["learned"].as_array().unwrap();
    assert!(learned.iter().any(|l| l.as_str().unwrap().starts_with("get-api-stats: body $.served_by")), "{report:#}");
    let stats = &report["sets"][0]["results"][1];
    let applied: Vec<&str> = stats["applied_noise"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert!(applied.iter().any(|a| a.starts_with("body $.served_by (learned ")), "{applied:?}");

    // The learned rules keep the unchanged build green from now on, and say so on its line.
    let ok = run(&mut w.doppel("test", &[], None));
    assert_eq!(ok.code, 0, "{ok:?}");
    let line = ok.stdout.lines().find(|l| l.contains("PASS get-api-stats")).unwrap();
    assert!(line.contains("$.served_by (learned)"), "{line}");
}

#[test]
fn fields_that_differ_between_target_and_secondary_are_noise() {
    let w = Noisy::new();
    w.record(&[], |w| {
        curl(&[&w.url("/api/stats")]);
    });
    // Two deployments of the same version, running on their own.
    let ports = [free_port(), free_port()];
    let apps: Vec<Bg> = ports
        .iter()
        .enumerate()
        .map(|(i, port)| {
            let mut c = Command::new("python3");
            c.arg(repo().join("examples/noisy/app.py"));
            w.app_env(&mut c, *port, None);
            let health = format!("http://127.0.0.1:{port}/health");
            Bg::spawn_answering(&mut c, w.dir.path(), &format!("app{i}"), &health, Duration::from_secs(20))
        })
        .collect();
    let target = format!("http://127.0.0.1:{}", ports[0]);
    let secondary = format!("http://127.0.0.1:{}", ports[1]);
    let mut alone = Command::new(doppel_bin());
    alone.args(["test", "--path"]).arg(w.path()).args(["--target", &target]);
    let r = run(&mut alone);
    assert_eq!(r.code, 1, "{r:?}");
    let mut both = Command::new(doppel_bin());
    both.args(["test", "--path"]).arg(w.path()).args(["--target", &target, "--secondary", &secondary]);
    let r = run(&mut both);
    assert_eq!(r.code, 0, "{r:?}");
    let report = latest_report(&w.path());
    let applied = report["sets"][0]["results"][1]["applied_noise"].to_string();
    assert!(applied.contains("body $.served_by (differs between target and secondary)"), "{report:#}");
    // Nothing learned this way is written.
    assert!(!w.test_file("get-api-stats").contains("noise:"));
    drop(apps);
}

#[test]
fn frozen_time_keeps_a_recorded_token_valid_and_static_binaries_are_refused() {
    let w = Noisy::new();
    let mut used_at = std::time::Instant::now();
    w.record(&[], |w| {
        // A token another service handed out, valid for 3 seconds, sent by the client under test.
        let mut mint = Command::new("python3");
        mint.arg(repo().join("examples/noisy/app.py")).args(["--mint", "ann"]);
        mint.env("JWT_SECRET", "test-secret").env("TOKEN_TTL", "3");
        let token = run(&mut mint).stdout.trim().to_string();
        assert!(token.starts_with("eyJ"), "{token}");
        used_at = std::time::Instant::now();
        assert_eq!(w.get(&token, "/api/me")["user"], "ann");
        curl(&[&w.url("/api/now")]);
    });
    // Past the token's expiry, and past the tolerance for times under a frozen clock.
    std::thread::sleep((used_at + Duration::from_millis(4500)).saturating_duration_since(std::time::Instant::now()));
    let late = run(&mut w.doppel("test", &[], None));
    assert_eq!(late.code, 1, "{late:?}");
    assert!(late.stdout.contains("status changed: expected 200 got 401"), "{late:?}");
    assert!(
        late.stdout.contains(r#"expected {"user":"ann"} got {"error":"token expired"}"#)
            || late.stdout.contains("token expired"),
        "{late:?}"
    );

    // With the clock the app saw when recording, the token is valid and "now" is within 3 s of the recording.
    let frozen = run(&mut w.doppel("test", &["--freeze-time"], None));
    assert_eq!(frozen.code, 0, "{frozen:?}");
    assert!(summary(&frozen).starts_with("3 passed, 0 failed"), "{frozen:?}");

    // A statically linked program cannot get libfaketime preloaded: a clear error, before anything runs.
    let src = w.dir.path().join("static.c");
    std::fs::write(&src, "int main(void) { return 0; }\n").unwrap();
    let bin = w.dir.path().join("static-app");
    let cc = run(Command::new("cc").arg("-static").arg("-o").arg(&bin).arg(&src));
    assert_eq!(cc.code, 0, "cannot build a static binary here: {cc:?}");
    let mut c = Command::new(doppel_bin());
    c.args(["test", "--freeze-time", "--path"]).arg(w.path()).arg("--").arg(&bin);
    let r = run(&mut c);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("is statically linked") && r.stderr.contains("PT_INTERP"), "{r:?}");
}

#[test]
fn dedup_keeps_one_test_per_shape_and_selection_runs_what_is_asked() {
    let mut w = Noisy::new();
    w.record(&[], |w| {
        for item in ["1", "2", "3", "featured"] {
            curl(&[&w.url(&format!("/api/items/{item}"))]);
        }
        let token = w.login();
        for name in ["Ann", "Bob"] {
            let id = w.create_user(&token, name);
            w.get(&token, &format!("/api/users/{id}"));
        }
    });
    w.stop_deps();
    let tests_dir = w.path().join("test-set-0/tests");
    let count = || std::fs::read_dir(&tests_dir).unwrap().count();
    assert_eq!(count(), 10);

    // --test: a glob over names; tests feeding a selected test's templates run first.
    let r = run(&mut w.doppel("test", &["--test", "get-api-items-?"], None));
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("(3 of 10 tests, 4 mocks)") && summary(&r).starts_with("3 passed"), "{r:?}");
    let r = run(&mut w.doppel("test", &["--test", "get-api-users-*"], None));
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("also running post-api-login, post-api-users, post-api-users-2"), "{r:?}");
    assert!(summary(&r).starts_with("5 passed, 0 failed"), "{r:?}");
    // --tag: labels in the test files.
    let featured = tests_dir.join("get-api-items-featured.yaml");
    let text = read_all(&featured);
    std::fs::write(&featured, format!("{text}tags:\n- smoke\n")).unwrap();
    let r = run(&mut w.doppel("test", &["--tag", "smoke"], None));
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("(1 of 10 tests") && r.stdout.contains("PASS get-api-items-featured"), "{r:?}");
    let r = run(&mut w.doppel("test", &["--tag", "nightly"], None));
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("no test matches --tag nightly"), "{r:?}");

    let mocks_before = read_all(&w.path().join("test-set-0/mocks.yaml"));
    let dedup = |extra: &[&str]| {
        let mut c = Command::new(doppel_bin());
        c.arg("dedup").arg("--path").arg(w.path()).args(extra);
        run(&mut c)
    };
    let dry = dedup(&["--dry-run"]);
    assert_eq!(dry.code, 0, "{dry:?}");
    assert!(
        dry.stdout.contains(
            "GET /api/items/{n} -> 200 (3 tests): keep get-api-items-1; would remove get-api-items-2, get-api-items-3"
        ),
        "{dry:?}"
    );
    assert!(
        dry.stdout.contains("POST /api/users -> 201 (2 tests): keep post-api-users; would remove post-api-users-2"),
        "{dry:?}"
    );
    assert_eq!(count(), 10, "a dry run removes nothing");

    // Keeping two of each shape: the second user's GET stays, so its POST stays as what feeds it.
    let two = dedup(&["--keep", "2"]);
    assert!(two.stdout.contains("removed 1 test file(s); mocks kept"), "{two:?}");
    assert!(!tests_dir.join("get-api-items-3.yaml").exists());
    let one = dedup(&[]);
    assert!(one.stdout.contains("removed 3 test file(s)"), "{one:?}");
    assert_eq!(count(), 6);
    assert_eq!(read_all(&w.path().join("test-set-0/mocks.yaml")), mocks_before, "mocks are never removed");
    let r = run(&mut w.doppel("test", &[], None));
    assert_eq!(r.code, 0, "{r:?}");
}

#[test]
fn rerecord_refreshes_expectations_against_the_real_dependencies() {
    let mut w = Noisy::new();
    let mut id = String::new();
    w.record(&[], |w| {
        let token = w.login();
        id = w.create_user(&token, "Ann");
        w.get(&token, &format!("/api/users/{id}"));
    });
    let before = w.test_file("post-api-users");

    // An intended change: without a terminal and without --yes, the changes are shown, nothing is written.
    let shown = run(&mut w.doppel("test", &["--rerecord"], Some("changed")));
    assert_eq!(shown.code, 1, "{shown:?}");
    assert!(shown.stdout.contains("changes post-api-users"), "{shown:?}");
    assert!(shown.stdout.contains(r#"body $.plan changed: expected "free" got "trial""#), "{shown:?}");
    assert!(shown.stdout.contains("not written: there is no terminal to ask and --yes was not given"), "{shown:?}");
    assert_eq!(w.test_file("post-api-users"), before);

    let written = run(&mut w.doppel("test", &["--rerecord", "--yes"], Some("changed")));
    assert_eq!(written.code, 0, "{written:?}");
    assert!(written.stdout.contains("doppel: wrote 4 test file(s) of test-set-0"), "{written:?}");
    let after = w.test_file("post-api-users");
    assert!(after.contains("plan: trial") && after.contains("{uuid}"), "{after}");
    let get = w.test_file(&format!("get-api-users-{id}"));
    assert!(get.contains("{{ chain.post-api-users.body.id }}"), "templates are found again:\n{get}");

    // The refreshed tests (and mocks) replay green on the new build, with the dependencies gone.
    w.stop_deps();
    let ok = run(&mut w.doppel("test", &[], Some("changed")));
    assert_eq!(ok.code, 0, "{ok:?}");
    assert!(summary(&ok).contains("2 of 2 mocks used"), "{ok:?}");
}

#[test]
fn load_replay_fills_chained_values_with_what_the_target_produced() {
    let w = Noisy::new();
    w.record(&[], |w| {
        user_flow(w);
    });
    // The app running on its own: a token and user ids the recording never saw.
    let port = free_port();
    let mut c = Command::new("python3");
    c.arg(repo().join("examples/noisy/app.py"));
    w.app_env(&mut c, port, None);
    let health = format!("http://127.0.0.1:{port}/health");
    let app = Bg::spawn_answering(&mut c, w.dir.path(), "app", &health, Duration::from_secs(20));
    let target = format!("http://127.0.0.1:{port}");
    let json = w.dir.path().join("load.json");
    let load = |extra: &[&str]| {
        let mut c = Command::new(doppel_bin());
        c.args(["load", "--path"]).arg(w.path()).args(["--target", &target, "--speed", "1", "--connections", "1"]);
        c.args(["--quiet", "--json", json.to_str().unwrap()]).args(extra);
        run(&mut c)
    };
    // With chains the login's token and the created user's id go into the later requests: no 4xx.
    let r = load(&[]);
    assert_eq!(r.code, 0, "{r:?}");
    let report: Value = serde_json::from_str(&read_all(&json)).unwrap();
    assert_eq!(report["errors"], 0, "{report:#}\n{r:?}");
    // Sent as recorded, the old token and id are refused.
    let r = load(&["--no-chain"]);
    let report: Value = serde_json::from_str(&read_all(&json)).unwrap();
    assert!(report["errors"].as_u64().unwrap() > 0, "{report:#}\n{r:?}");
    drop(app);
}
