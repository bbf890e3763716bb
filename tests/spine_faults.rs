//! The spine under stress and misuse: large bodies, kill -9 while recording, DNS, explicit mode, and every
//! error that must be clear (exit 2, nothing overwritten).

use std::process::Command;
use std::time::Duration;

use crate::common::*;

#[test]
fn fifty_megabyte_bodies_are_streamed_not_held() {
    let mut w = FlaskWorld::new(50);
    let rec = w.start_recording(&[]);
    let big = w.dir.path().join("upload.bin");
    std::fs::write(&big, (0..50u32 << 20).map(|i| (i % 251) as u8).collect::<Vec<u8>>()).unwrap();
    let up = curl(&[
        "--data-binary",
        &format!("@{}", big.display()),
        "-H",
        "Content-Type: application/octet-stream",
        &w.url("/api/upload"),
    ]);
    assert!(up.stdout.contains("\"size\":52428800"), "{up:?}");
    let down =
        curl(&["-o", w.dir.path().join("down.bin").to_str().unwrap(), "-w", "%{size_download}", &w.url("/api/blob")]);
    assert_eq!(down.stdout, "52428800", "{down:?}");
    let peak_mib = peak_rss_kib(rec.pid()) / 1024;
    let out = w.stop_recording(rec);
    assert!(out.contains("recorded 3 tests"), "{out}");
    // 150 MB crossed doppel (upload, the app's download from its dependency, the download to the client);
    // bodies were streamed to disk, never held whole.
    assert!(peak_mib < 80, "doppel record peaked at {peak_mib} MiB");
    let set = w.path().join("test-set-0");
    let bodies: Vec<u64> =
        std::fs::read_dir(set.join("bodies")).unwrap().map(|e| e.unwrap().metadata().unwrap().len()).collect();
    assert_eq!(bodies.iter().filter(|s| **s == 50 << 20).count(), 3, "{bodies:?}");
    let upload_test = read_all(&set.join("tests/post-api-upload.yaml"));
    assert!(upload_test.contains("file: bodies/") && upload_test.contains("size: 52428800"), "{upload_test}");

    w.stop_upstream();
    let r = run(&mut w.doppel("test", &["--timeout", "120"], None));
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("3 passed, 0 failed"), "{r:?}");
}

#[test]
fn kill_9_during_recording_keeps_every_completed_exchange() {
    let mut w = FlaskWorld::new(1);
    let rec = w.start_recording(&[]);
    for i in 1..=5 {
        let r = curl(&[&w.url(&format!("/api/items/{i}"))]);
        assert!(r.stdout.contains(&format!("item-{i}")), "{r:?}");
    }
    // One request still in flight when doppel dies.
    let slow_url = w.url("/api/slow?s=5");
    let slow = std::thread::spawn(move || curl(&[&slow_url]));
    std::thread::sleep(Duration::from_millis(500));
    let pid = rec.pid();
    unsafe {
        libc::kill(pid, libc::SIGKILL);
    }
    let _ = slow.join();
    drop(rec);
    // The app dies with doppel (its sandbox helper kills the app's process group).
    std::thread::sleep(Duration::from_millis(500));
    let app_alive = Command::new("pgrep").args(["-f", "flask-orders/app.py"]).output().unwrap();
    let ours: Vec<&str> = std::str::from_utf8(&app_alive.stdout).unwrap().lines().collect();
    let app_still_here = ours.iter().any(|p| {
        std::fs::read_to_string(format!("/proc/{p}/environ"))
            .unwrap_or_default()
            .contains(&format!("APP_PORT={}", w.app_port))
    });
    assert!(!app_still_here, "the app outlived doppel");

    // Killed before its end, the recording left its tests in the journal; the next load turns them into
    // one file each.
    let set = w.path().join("test-set-0");
    let journal = read_all(&set.join("tests.journal"));
    assert_eq!(journal.matches("\n...\n").count(), 6, "health + 5 items, not the in-flight one:\n{journal}");
    let list = w.list();
    assert!(list.stdout.contains("test-set-0: 6 tests, 5 mocks"), "{list:?}");
    let names: Vec<String> =
        std::fs::read_dir(set.join("tests")).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    assert_eq!(names.len(), 6, "{names:?}");
    assert!(names.iter().all(|n| n.ends_with(".yaml")), "{names:?}");
    assert!(!set.join("tests.journal").exists());
    w.stop_upstream();
    let r = run(&mut w.doppel("test", &[], None));
    assert!(r.stdout.contains("6 passed, 0 failed"), "{r:?}");
}

/// A DNS server for one name, answering `A 127.0.0.1`.
fn dns_server() -> (std::net::UdpSocket, u16) {
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = sock.local_addr().unwrap().port();
    let s = sock.try_clone().unwrap();
    std::thread::spawn(move || {
        use hickory_proto::op::{Message, OpCode};
        use hickory_proto::rr::{RData, Record, rdata::A};
        let mut buf = [0u8; 1500];
        while let Ok((n, from)) = s.recv_from(&mut buf) {
            let Ok(q) = Message::from_vec(&buf[..n]) else { continue };
            let mut r = Message::response(q.metadata.id, OpCode::Query);
            r.metadata.recursion_desired = q.metadata.recursion_desired;
            r.metadata.recursion_available = true;
            r.add_queries(q.queries.clone());
            for query in &q.queries {
                if query.name().to_ascii().starts_with("catalog.doppel.test")
                    && query.query_type() == hickory_proto::rr::RecordType::A
                {
                    r.add_answer(Record::from_rdata(query.name().clone(), 30, RData::A(A::new(127, 0, 0, 1))));
                }
            }
            let _ = s.send_to(&r.to_vec().unwrap(), from);
        }
    });
    (sock, port)
}

#[test]
fn dns_answers_are_recorded_and_replayed() {
    let mut w = FlaskWorld::new(1);
    let (dns, dns_port) = dns_server();
    let catalog = format!("http://catalog.doppel.test:{}", w.http_port);
    let mut c = w.doppel(
        "record",
        &["--port", &w.app_port.to_string(), "--dns-upstream", &format!("127.0.0.1:{dns_port}")],
        None,
    );
    c.env("CATALOG_URL", &catalog);
    let rec = w.spawn_recording(&mut c, "record");
    let r = curl(&[&w.url("/api/items/5")]);
    assert!(r.stdout.contains("item-5"), "{r:?}\n{}", rec.explain());
    let out = w.stop_recording(rec);
    assert!(out.contains("dns: "), "{out}");
    let mocks = read_all(&w.path().join("test-set-0/mocks.yaml"));
    assert!(mocks.contains("name: catalog.doppel.test.") && mocks.contains("A 127.0.0.1 ttl=30"), "{mocks}");

    drop(dns);
    w.stop_upstream();
    let mut t = w.doppel("test", &[], None);
    t.env("CATALOG_URL", &catalog);
    let r = run(&mut t);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("2 passed, 0 failed"), "{r:?}");
}

#[test]
fn explicit_mode_records_and_mocks_declared_dependencies() {
    let mut w = FlaskWorld::new(1);
    let (l1, l2, exposed) = (free_port(), free_port(), free_port());
    let deps = [
        "--dep".to_string(),
        format!("catalog=127.0.0.1:{}@{l1}", w.http_port),
        "--dep".to_string(),
        format!("kv=127.0.0.1:{}@{l2}", w.kv_port),
    ];
    let with_env = |c: &mut Command| {
        c.env("CATALOG_URL", format!("http://127.0.0.1:{l1}")).env("KV_ADDR", format!("127.0.0.1:{l2}"));
    };
    let mut args: Vec<String> = deps.to_vec();
    args.extend(["--port".to_string(), format!("{exposed}:{}", w.app_port)]);
    let args: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    let mut c = w.doppel("record", &args, None);
    with_env(&mut c);
    let via = |p: &str| format!("http://127.0.0.1:{exposed}{p}");
    let rec = Bg::spawn_answering(&mut c, w.dir.path(), "record", &via("/health"), Duration::from_secs(30));
    assert!(rec.stderr().contains("DOPPEL_DEP_CATALOG"), "{}", rec.explain());
    curl(&[&via("/api/items/2")]);
    curl(&["-H", "Content-Type: application/json", "-d", r#"{"sku":"X","qty":2}"#, &via("/api/orders")]);
    let out = w.stop_recording(rec);
    assert!(out.contains("recorded 3 tests"), "{out}");

    w.stop_upstream();
    let mut args: Vec<String> = deps.to_vec();
    args.extend(["--port".to_string(), w.app_port.to_string()]);
    let args: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    let mut t = w.doppel("test", &args, None);
    with_env(&mut t);
    let r = run(&mut t);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("3 passed, 0 failed"), "{r:?}");
    let mut t = w.doppel("test", &args, Some("changed"));
    with_env(&mut t);
    let r = run(&mut t);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stdout.contains("body $.total changed: expected 8.5 got 9.35"), "{r:?}");
}

/// One small recording to break in various ways.
fn recorded_world() -> FlaskWorld {
    let w = FlaskWorld::new(1);
    let rec = w.start_recording(&[]);
    curl(&[&w.url("/api/items/1")]);
    w.stop_recording(rec);
    w
}

fn expect_input_error(r: &Ran, needle: &str) {
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains(needle), "expected {needle:?} in stderr\n{r:?}");
}

#[test]
fn malformed_and_unknown_files_are_named_with_their_line() {
    let w = recorded_world();
    let test_file = w.path().join("test-set-0/tests/get-api-items-1.yaml");
    let original = read_all(&test_file);

    std::fs::write(&test_file, original.replace("  status: 200", "  status: [200")).unwrap();
    let r = run(&mut w.doppel("test", &[], None));
    let line = original.lines().position(|l| l == "  status: 200").unwrap() + 1;
    // The YAML parser notices the unclosed bracket on that line or the next.
    assert!(
        r.stderr.contains(&format!("get-api-items-1.yaml:{line}:"))
            || r.stderr.contains(&format!("get-api-items-1.yaml:{}:", line + 1)),
        "{r:?}"
    );
    expect_input_error(&r, "get-api-items-1.yaml:");

    std::fs::write(&test_file, original.replace("version: 1", "version: 99")).unwrap();
    expect_input_error(&run(&mut w.doppel("test", &[], None)), "format version 99 is not known");

    std::fs::write(&test_file, original.replace("  status: 200", "  status: 200\n  colour: blue")).unwrap();
    expect_input_error(&run(&mut w.doppel("test", &[], None)), "unknown field `colour`");
    // Nothing was overwritten by the failed runs.
    assert!(read_all(&test_file).contains("colour: blue"));
    std::fs::write(&test_file, &original).unwrap();

    let mocks = w.path().join("test-set-0/mocks.yaml");
    let m = read_all(&mocks);
    std::fs::write(&mocks, m.replacen("kind: http", "kind: gopher", 1)).unwrap();
    expect_input_error(&run(&mut w.doppel("test", &[], None)), "mocks.yaml:2:");
    std::fs::write(&mocks, &m).unwrap();

    std::fs::write(w.dir.path().join("doppel.yaml"), "noise:\n  - body: \"$.[\"\n").unwrap();
    expect_input_error(&run(&mut w.doppel("test", &[], None)), "noise rule");
    std::fs::write(w.dir.path().join("doppel.yaml"), "noise: yes\n").unwrap();
    expect_input_error(&run(&mut w.doppel("test", &[], None)), "doppel.yaml:1:");
    std::fs::remove_file(w.dir.path().join("doppel.yaml")).unwrap();

    expect_input_error(&run(&mut w.doppel("test", &["--test-set", "nope"], None)), "no test set \"nope\"");
    let r = run(&mut w.doppel("test", &[], None));
    assert_eq!(r.code, 0, "the repaired recording runs again\n{r:?}");
}

#[test]
fn clear_errors_for_commands_apps_and_ports() {
    let w = recorded_world();
    let mut c = doppel_cmd(w.dir.path(), "test", &w.path());
    c.args(["--", "/no/such/program"]);
    expect_input_error(&run(&mut c), "command not found: /no/such/program");

    let mut c = doppel_cmd(w.dir.path(), "test", &w.path());
    c.args(["--", "python3", "-c", "import sys; print('database unreachable', file=sys.stderr); sys.exit(3)"]);
    let r = run(&mut c);
    expect_input_error(&r, "the app exited before it was ready (exit code 3)");
    assert!(r.stderr.contains("database unreachable"), "{r:?}");

    let mut c = doppel_cmd(w.dir.path(), "test", &w.path());
    c.args(["--ready-timeout", "1", "--", "sleep", "30"]);
    expect_input_error(&run(&mut c), &format!("the app did not open port {}", w.app_port));

    let taken = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let mut c = doppel_cmd(w.dir.path(), "record", &w.path());
    c.args(["--port", &port, "--", "sleep", "30"]);
    expect_input_error(&run(&mut c), &format!("port {port} is already in use"));

    let r = run(Command::new(doppel_bin()).args(["test", "--bogus"]));
    assert_eq!(r.code, 2, "{r:?}");
    let r = run(Command::new(doppel_bin()).args(["record", "--port", "x", "--", "true"]));
    expect_input_error(&r, "--port \"x\"");
}

#[test]
fn a_machine_without_user_namespaces_gets_the_fix_and_the_alternative() {
    let w = recorded_world();
    let script = format!(
        "echo 0 > /proc/sys/user/max_user_namespaces && exec {} test --path {} -- python3 -c pass",
        doppel_bin().display(),
        w.path().display()
    );
    let r = run(Command::new("unshare").args(["-Ur", "sh", "-c", &script]));
    expect_input_error(&r, "unprivileged user namespaces are not available here");
    assert!(r.stderr.contains("kernel.unprivileged_userns_clone=1") && r.stderr.contains("--no-sandbox"), "{r:?}");
}

#[test]
fn the_demo_runs_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let r = run(Command::new(doppel_bin()).current_dir(dir.path()).arg("demo"));
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("demo OK") && r.stdout.contains("body $.converted"), "{r:?}");
}

/// doppel's port opens before the app's: a client that connects while the app is still starting waits and
/// is served once the app listens, instead of being accepted and reset (curl exit 56).
#[test]
fn a_client_that_connects_before_the_app_listens_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let app = "import time, http.server, os\n\
               time.sleep(2)\n\
               class H(http.server.BaseHTTPRequestHandler):\n    \
                 def do_GET(self):\n        \
                   self.send_response(200); self.send_header('Content-Length', '5'); self.end_headers(); self.wfile.write(b'early')\n    \
                 def log_message(self, *a): pass\n\
               http.server.HTTPServer(('127.0.0.1', int(os.environ['APP_PORT'])), H).serve_forever()\n";
    let mut cmd = doppel_cmd(dir.path(), "record", &dir.path().join("recordings"));
    cmd.args(["--port", &port.to_string(), "--", "python3", "-c", app]).env("APP_PORT", port.to_string());
    let mut rec = Bg::spawn(&mut cmd, dir.path(), "record");
    // doppel listens at once; the app only after two seconds.
    wait_port_open(port, Duration::from_secs(20), Duration::from_millis(5), || rec.explain());
    let r = curl(&["-w", " %{http_code}", "--max-time", "20", &format!("http://127.0.0.1:{port}/early")]);
    assert_eq!(r.code, 0, "the early client was not served: {r:?}\n{}", rec.explain());
    assert_eq!(r.stdout, "early 200", "{r:?}");
    stop_recording(&mut rec);
    assert!(rec.stdout().contains("recorded 1 test"), "{}", rec.stdout());
}

/// A connection whose parser gives up (an HTTP request with a header line that is no header) is recorded as
/// opaque bytes from there on, and the record summary says so: not only the note in mocks.yaml.
#[test]
fn a_connection_the_parser_gives_up_on_is_counted_in_the_record_summary() {
    let dir = tempfile::tempdir().unwrap();
    let (port, upstream_port) = (free_port(), free_port());
    let upstream = "import socket, os\n\
                    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
                    s.bind(('127.0.0.1', int(os.environ['UP']))); s.listen()\n\
                    while True:\n    \
                      c, _ = s.accept(); c.recv(65536); c.sendall(b'HTTP/1.1 200 OK\\r\\nContent-Length: 2\\r\\n\\r\\nok'); c.close()\n";
    let mut up = Command::new("python3");
    up.args(["-c", upstream]).env("UP", upstream_port.to_string());
    let up = Bg::spawn(&mut up, dir.path(), "upstream");
    wait_port_open(upstream_port, Duration::from_secs(10), Duration::from_millis(20), || up.explain());
    let app = "import socket, os, http.server\n\
               c = socket.create_connection(('127.0.0.1', int(os.environ['UP'])))\n\
               c.sendall(b'GET /odd HTTP/1.1\\r\\nHost: up\\r\\nthis line is no header\\r\\n\\r\\n')\n\
               assert c.recv(65536).startswith(b'HTTP/1.1 200'); c.close()\n\
               class H(http.server.BaseHTTPRequestHandler):\n    \
                 def do_GET(self):\n        \
                   self.send_response(200); self.send_header('Content-Length', '2'); self.end_headers(); self.wfile.write(b'ok')\n    \
                 def log_message(self, *a): pass\n\
               http.server.HTTPServer(('127.0.0.1', int(os.environ['APP_PORT'])), H).serve_forever()\n";
    let mut cmd = doppel_cmd(dir.path(), "record", &dir.path().join("recordings"));
    cmd.args(["--port", &port.to_string(), "--", "python3", "-c", app])
        .env("APP_PORT", port.to_string())
        .env("UP", upstream_port.to_string());
    let mut rec = Bg::spawn_answering(
        &mut cmd,
        dir.path(),
        "record",
        &format!("http://127.0.0.1:{port}/health"),
        Duration::from_secs(30),
    );
    stop_recording(&mut rec);
    let out = rec.stdout();
    assert!(
        out.contains("doppel: 1 connection could not be followed and was recorded as opaque bytes")
            && out.contains(&format!("(127.0.0.1:{upstream_port}): parsing stopped after")),
        "{out}\n{}",
        rec.explain()
    );
}
