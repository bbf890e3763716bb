//! `doppel diff` end to end on a real app (examples/load/catalog.py, Flask served by waitress): recorded
//! once, then its requests sent to a primary, a secondary copy of it and a candidate build. The changed
//! fields are reported; random tokens, timestamps and jittering numbers are classified as noise.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::common::*;

fn catalog(dir: &Path, name: &str, variant: Option<&str>) -> (Bg, String) {
    let port = free_port();
    let mut c = Command::new("python3");
    c.arg(repo().join("examples/load/catalog.py")).env("APP_PORT", port.to_string()).env("PYTHONUNBUFFERED", "1");
    app_variant(&mut c, variant);
    let url = format!("http://127.0.0.1:{port}");
    let bg = Bg::spawn_answering(&mut c, dir, name, &format!("{url}/health"), Duration::from_secs(30));
    (bg, url)
}

/// Records real traffic to the catalog with `doppel record` (explicit mode: no sandbox needed).
fn record(dir: &Path) -> PathBuf {
    let path = dir.join("recordings");
    let (app, exposed) = (free_port(), free_port());
    let mut c = Command::new(doppel_bin());
    c.arg("record").arg("--path").arg(&path).args(["--no-sandbox", "--port", &format!("{exposed}:{app}")]);
    c.arg("--").arg("python3").arg(repo().join("examples/load/catalog.py"));
    c.env("APP_PORT", app.to_string()).env_remove("APP_VARIANT");
    let url = format!("http://127.0.0.1:{exposed}");
    let mut rec = Bg::spawn_answering(&mut c, dir, "record", &format!("{url}/health"), Duration::from_secs(30));
    for target in ["/api/items/1", "/api/items/7", "/api/items/3", "/api/items"] {
        let r = curl(&[&format!("{url}{target}")]);
        assert!(r.stdout.contains("token"), "{r:?}");
    }
    // A body over the 1 MiB inline limit: compared from files.
    let r = curl(&["-o", "/dev/null", "-w", "%{size_download}", &format!("{url}/api/blob?kb=1500")]);
    assert_eq!(r.stdout, "1536000", "{r:?}");
    let r =
        curl(&["-H", "Content-Type: application/json", "-d", r#"{"sku":"A-1","qty":2}"#, &format!("{url}/api/orders")]);
    assert!(r.stdout.contains("order_id"), "{r:?}");
    stop_recording(&mut rec);
    assert!(rec.stdout().contains("recorded 7 tests"), "{}", rec.explain());
    path
}

fn diff(path: &Path, args: &[&str]) -> Ran {
    let mut c = Command::new(doppel_bin());
    c.arg("diff").arg("--path").arg(path).args(args);
    run(&mut c)
}

fn field<'a>(report: &'a serde_json::Value, endpoint: &str, name: &str) -> &'a serde_json::Value {
    let e = find_by(&report["endpoints"], "endpoint", endpoint)
        .unwrap_or_else(|| panic!("no endpoint {endpoint}: {report:#}"));
    find_by(&e["fields"], "field", name).unwrap_or_else(|| panic!("no field {name} under {endpoint}: {e:#}"))
}

#[test]
fn the_changed_field_is_reported_and_nondeterministic_fields_are_noise() {
    let dir = tempfile::tempdir().unwrap();
    let path = record(dir.path());
    let (_p, primary) = catalog(dir.path(), "primary", None);
    let (_s, secondary) = catalog(dir.path(), "secondary", None);
    let (_c, changed) = catalog(dir.path(), "candidate-changed", Some("changed"));
    let (_same, same) = catalog(dir.path(), "candidate-same", None);

    let json = dir.path().join("diff.json");
    let html = dir.path().join("diff.html");
    // Primary and secondary against a candidate, then `extra`.
    let diff3 = |candidate: &str, extra: &[&str]| {
        let mut args: Vec<&str> = vec!["--primary", &primary, "--secondary", &secondary, "--candidate", candidate];
        args.extend_from_slice(extra);
        diff(&path, &args)
    };
    let r = diff3(&changed, &["--json", json.to_str().unwrap(), "--html", html.to_str().unwrap()]);
    assert_eq!(r.code, 1, "the candidate changed prices: exit 1\n{r:?}");
    let line =
        |needle: &str| r.stdout.lines().find(|l| l.contains(needle)).unwrap_or_else(|| panic!("{needle:?}\n{r:?}"));
    assert!(line("body $.price ").contains("DIFF") && line("body $.price ").contains("3 of 3"), "{r:?}");
    assert!(line("body $.price ").contains("primary 9.5, candidate 10.45"), "{r:?}");
    assert!(line("body $.items[*].price").contains("DIFF"), "{r:?}");
    for noisy in ["body $.token ", "body $.served_at ", "body $.load "] {
        assert!(
            line(noisy).contains("noise") && line(noisy).contains("differs between primary and secondary"),
            "{r:?}"
        );
    }
    assert!(r.stdout.contains("skipped writes: POST /api/orders (1)"), "{r:?}");
    assert!(r.stdout.contains("result: the candidate differs in"), "{r:?}");

    let report: serde_json::Value = serde_json::from_str(&read_all(&json)).unwrap();
    assert_eq!(report["compared"], 6);
    let blob = field(&report, "GET /api/blob", "body");
    assert_eq!(blob["kind"], "difference", "{blob:#}");
    assert!(blob["example"]["expected"].as_str().unwrap().contains("first difference at offset 1535999"), "{blob:#}");
    assert_eq!(field(&report, "GET /api/items/{id}", "body $.price")["kind"], "difference");
    assert_eq!(field(&report, "GET /api/items/{id}", "body $.price")["differences"], 3);
    assert_eq!(field(&report, "GET /api/items/{id}", "body $.description")["kind"], "difference");
    assert_eq!(field(&report, "GET /api/items/{id}", "body $.token")["kind"], "noise");
    assert_eq!(field(&report, "GET /api/items", "body $.items[*].token")["kind"], "noise");
    let health = find_by(&report["endpoints"], "endpoint", "GET /health").unwrap();
    assert_eq!(health["fields"].as_array().unwrap().len(), 0, "the same answer everywhere: {health:#}");

    // The page renders with the verdict, the fields and the examples side by side, everything escaped.
    let (_shot, dom) = chromium::render(&html, dir.path());
    assert!(dom.contains("id=\"verdict\"") && dom.contains("The candidate differs in"), "verdict missing");
    assert!(dom.contains("id=\"endpoints\"") && dom.contains("body $.price") && dom.contains("GET /api/items/{id}"));
    assert!(dom.contains("class=\"pair\""), "no side-by-side example");
    assert!(dom.contains("&lt;script&gt;alert("), "the candidate's markup must show as text");
    assert!(!dom.contains("<script>alert("), "the candidate's markup must not become part of the page");

    // The same build as candidate: only noise, exit 0. Writes go through with --allow-writes.
    let r = diff3(&same, &["--allow-writes", "--json", json.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("result: no differences beyond noise in 7 compared requests"), "{r:?}");
    assert!(!r.stdout.contains("skipped writes"), "{r:?}");

    // Without a secondary nothing tells the token is random: it differs. Jitter within the threshold is noise.
    let r = diff(
        &path,
        &["--primary", &primary, "--candidate", &same, "--absolute-threshold", "0.5", "--json", json.to_str().unwrap()],
    );
    assert_eq!(r.code, 1, "{r:?}");
    let report: serde_json::Value = serde_json::from_str(&read_all(&json)).unwrap();
    assert_eq!(field(&report, "GET /api/items/{id}", "body $.token")["kind"], "difference");
    let load = field(&report, "GET /api/items/{id}", "body $.load");
    assert_eq!(load["kind"], "noise", "{load:#}");
    assert_eq!(load["differences"], 0, "{load:#}");
}

#[test]
fn only_writes_or_no_primary_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rec/test-set-0");
    std::fs::create_dir_all(path.join("tests")).unwrap();
    std::fs::write(
        path.join("set.yaml"),
        "version: 1\ncreated_at: \"2026-11-26T20:00:00.000Z\"\ncommand: [handwritten]\ncapture: explicit\n",
    )
    .unwrap();
    let test = |method: &str, name: &str| {
        format!(
            "version: 1\nname: {name}\nkind: http\nrecorded_at: \"2026-11-26T20:00:00.000Z\"\nport: 8080\nrequest:\n  \
             method: {method}\n  target: /x\nresponse:\n  status: 200\n"
        )
    };
    std::fs::write(path.join("tests/post-x.yaml"), test("POST", "post-x")).unwrap();
    let closed = format!("http://127.0.0.1:{}", free_port());
    let rec = dir.path().join("rec");
    let r = diff(&rec, &["--primary", &closed, "--candidate", &closed]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("--allow-writes"), "{r:?}");
    std::fs::write(path.join("tests/get-x.yaml"), test("GET", "get-x")).unwrap();
    let r = diff(&rec, &["--primary", &closed, "--candidate", &closed]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("no request could be compared") && r.stderr.contains("cannot connect"), "{r:?}");
    let r = diff(&rec, &["--primary", "ftp://x", "--candidate", &closed]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("--primary ftp://x: expected http://HOST:PORT or https://HOST:PORT"), "{r:?}");
}
