//! Defects found while restructuring (the House issue), each shown with the real binary: an accept loop
//! that spun at full speed when out of descriptors, an app left running after `doppel test` stopped early,
//! and a set.yaml update whose failure was swallowed.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::*;

/// CPU time (user + system) of a process so far, in clock ticks.
fn cpu_ticks(pid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
    // After the command name: state(0) ... utime(11) stime(12).
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

#[test]
fn out_of_descriptors_the_recorder_waits_instead_of_spinning() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let app_port = free_port();
    // doppel records a small HTTP server with only 64 descriptors to spend.
    let script = format!(
        "ulimit -n 64; exec {} record --path {} --no-sandbox --port {port}:{app_port} -- {} __http-target {app_port}",
        doppel_bin().display(),
        dir.path().join("rec").display(),
        doppel_bin().display()
    );
    let mut rec = Bg::spawn(Command::new("sh").arg("-c").arg(&script), dir.path(), "record");
    wait_port_open(port, Duration::from_secs(30), Duration::from_millis(50), || rec.explain());
    wait_port_open(app_port, Duration::from_secs(30), Duration::from_millis(50), || rec.explain());
    // More idle connections than descriptors: the rest wait in the listen backlog, and accept fails.
    let held: Vec<std::net::TcpStream> =
        (0..100).filter_map(|_| std::net::TcpStream::connect(("127.0.0.1", port)).ok()).collect();
    assert!(held.len() >= 64, "only {} connections", held.len());
    std::thread::sleep(Duration::from_millis(500));
    let (before, started) = (cpu_ticks(rec.pid()), Instant::now());
    std::thread::sleep(Duration::from_secs(2));
    let ticks_per_s = 100.0;
    let busy = (cpu_ticks(rec.pid()) - before) as f64 / ticks_per_s / started.elapsed().as_secs_f64();
    drop(held);
    stop_recording(&mut rec);
    // A loop retrying accept at full speed keeps a core busy (busy ≈ 1.0); waiting between tries, ≈ 0.
    assert!(busy < 0.3, "doppel used {busy:.2} of a core while out of descriptors\n{}", rec.explain());
    assert!(rec.stderr().contains("cannot accept a connection"), "the wait is said\n{}", rec.explain());
}

/// A test set written by hand: two tests of an app on `port`, the second with an unreadable time.
fn set_with_a_bad_second_time(recordings: &Path, port: u16) {
    let set = recordings.join("test-set-0");
    std::fs::create_dir_all(set.join("tests")).unwrap();
    std::fs::write(
        set.join("set.yaml"),
        format!("version: 1\ncreated_at: \"2026-11-26T20:00:00.000Z\"\ncommand: [app]\napp_ports: [{port}]\ncapture: explicit\n"),
    )
    .unwrap();
    let test = |name: &str, at: &str| {
        format!(
            "version: 1\nname: {name}\nkind: http\nrecorded_at: \"{at}\"\nport: {port}\nrequest:\n  method: GET\n  \
             target: /\n  headers:\n  - \"Host: localhost\"\nresponse:\n  status: 200\n"
        )
    };
    std::fs::write(set.join("tests/get-a.yaml"), test("get-a", "2026-11-26T20:00:00.000Z")).unwrap();
    std::fs::write(set.join("tests/get-b.yaml"), test("get-b", "not a time")).unwrap();
}

#[test]
fn a_replay_that_stops_early_stops_the_app_too() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let recordings = dir.path().join("rec");
    set_with_a_bad_second_time(&recordings, port);
    let pid_file = dir.path().join("app.pid");
    let app = format!(
        "import http.server, os\nopen({:?}, 'w').write(str(os.getpid()))\n\
         http.server.HTTPServer(('127.0.0.1', {port}), http.server.SimpleHTTPRequestHandler).serve_forever()\n",
        pid_file.display().to_string()
    );
    let mut c = doppel_cmd(dir.path(), "test", &recordings);
    c.args(["--no-sandbox", "--port", &port.to_string(), "--freeze-time", "--", "python3", "-c", &app]);
    let r = run(&mut c);
    // The second test's time cannot be read: the run stops there, with an input error...
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("is not an RFC 3339 time"), "{r:?}");
    // ...and the app it started is gone (it used to be left running in explicit mode).
    let pid: i32 = read_all(&pid_file).trim().parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let zombie = state.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'));
    assert!(state.is_empty() || zombie, "the app (pid {pid}) still runs after doppel test ended: {state}");
}

#[test]
fn a_set_yaml_that_cannot_be_updated_is_reported() {
    let w = FlaskWorld::new(1);
    let mut rec = w.start_recording(&[]);
    curl(&[&w.url("/api/items/1")]);
    // Something replaced set.yaml while recording: the recorder cannot write the app's ports into it.
    let set_yaml = w.path().join("test-set-0/set.yaml");
    std::fs::remove_file(&set_yaml).unwrap();
    std::fs::create_dir(&set_yaml).unwrap();
    stop_recording(&mut rec);
    let stderr = rec.stderr();
    assert!(stderr.contains("warning:") && stderr.contains("set.yaml"), "the failure is said:\n{}", rec.explain());
}
