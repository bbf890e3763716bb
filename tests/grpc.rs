//! gRPC with real grpcio (PyPI) servers and clients: the example Orders service (unary, server-streaming,
//! client-streaming, bidirectional) recorded as inbound tests under doppel and driven by a grpcio client, and
//! an HTTP gateway that calls it recorded with its calls as mocks; both replayed with nothing else running,
//! and a changed build caught naming the field, with and without the .proto. The gateway's bidirectional
//! ping-pong call (each message sent only after the previous reply) is served message by message.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::common::*;

fn example(file: &str) -> String {
    repo().join("examples/grpc").join(file).display().to_string()
}

fn proto_args() -> Vec<String> {
    vec!["--proto".into(), example("shop.proto")]
}

struct World {
    dir: tempfile::TempDir,
}

impl World {
    fn new() -> World {
        World { dir: tempfile::tempdir().unwrap() }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn doppel(&self, sub: &str, recordings: &str, extra: &[String], app: &[String]) -> Command {
        let mut c = doppel_cmd(self.dir.path(), sub, &self.path(recordings));
        c.args(extra).arg("--").args(app).env("DOPPEL_CA_DIR", self.path("ca")).env_remove("APP_VARIANT");
        c
    }
}

fn server_app() -> Vec<String> {
    vec!["python3".into(), example("server.py")]
}

/// Records the grpcio server driven by the grpcio client; returns the client's output.
fn record_server(w: &World, recordings: &str, extra: &[String], port: u16) -> String {
    let mut args = vec!["--port".to_string(), port.to_string()];
    args.extend_from_slice(extra);
    let mut cmd = w.doppel("record", recordings, &args, &server_app());
    cmd.env("APP_PORT", port.to_string());
    let mut rec =
        Bg::spawn_ready(&mut cmd, w.dir.path(), &format!("record-{recordings}"), "ready", Duration::from_secs(60));
    let client = run(Command::new("python3").arg(example("client.py")).arg(format!("127.0.0.1:{port}")));
    assert_eq!(client.code, 0, "{client:?}\n{}", rec.explain());
    stop_recording(&mut rec);
    assert!(rec.stdout().contains("recorded 5 tests"), "{}", rec.explain());
    client.stdout
}

fn replay_server(w: &World, recordings: &str, extra: &[String], port: u16, variant: Option<&str>) -> Ran {
    let mut cmd = w.doppel("test", recordings, extra, &server_app());
    cmd.env("APP_PORT", port.to_string());
    app_variant(&mut cmd, variant);
    run(&mut cmd)
}

#[test]
fn grpcio_server_recorded_as_tests_and_replayed_with_and_without_the_proto() {
    let w = World::new();
    let port = free_port();
    let out = record_server(&w, "named", &proto_args(), port);
    assert!(out.contains("\"error\": \"NOT_FOUND\""), "{out}");
    let tests = w.path("named/test-set-0/tests");
    let list = read_all(&tests.join("post-shop-orders-listorders.yaml"));
    // Decoded with the .proto: field names, every streamed message in order, the status in the trailers.
    assert!(list.contains("kind: http2") && list.contains("type: shop.Order"), "{list}");
    assert!(list.contains("total_cents: 3750") && list.contains("grpc-status: 0"), "{list}");
    let track = read_all(&tests.join("post-shop-orders-track.yaml"));
    assert!(track.contains("customer: carol") && track.contains("order_id: 5"), "{track}");
    let upload = read_all(&tests.join("post-shop-orders-uploadorders.yaml"));
    assert!(upload.contains("count: 3") && upload.contains("total_cents: 600"), "{upload}");
    let error = read_all(&tests.join("post-shop-orders-getorder-2.yaml"));
    assert!(error.contains("grpc-status: 5") && error.contains("grpc-message: no order 0"), "{error}");

    let ok = replay_server(&w, "named", &proto_args(), port, None);
    assert_eq!(ok.code, 0, "{ok:?}");
    assert!(ok.stdout.contains("5 passed, 0 failed"), "{ok:?}");
    let bad = replay_server(&w, "named", &proto_args(), port, Some("changed"));
    assert_eq!(bad.code, 1, "{bad:?}");
    assert!(bad.stdout.contains("message $[0].total_cents changed: expected 8750 got 8751"), "{bad:?}");
    assert!(bad.stdout.contains("message $[2].total_cents changed: expected 3750 got 3751"), "{bad:?}");
    // Re-recorded after an intended change, the gRPC answers stay decoded messages and the changed build
    // replays green (re-recording once wrote them as raw bodies with `messages: []`).
    let mut args = proto_args();
    args.extend(["--rerecord".to_string(), "--yes".to_string()]);
    let rr = replay_server(&w, "named", &args, port, Some("changed"));
    assert_eq!(rr.code, 0, "{rr:?}");
    let list = read_all(&tests.join("post-shop-orders-listorders.yaml"));
    assert!(list.contains("total_cents: 3751") && list.contains("type: shop.Order"), "{list}");
    let again = replay_server(&w, "named", &proto_args(), port, Some("changed"));
    assert!(again.stdout.contains("5 passed, 0 failed"), "{again:?}");

    // Without the .proto: field numbers, still compared field by field.
    let port = free_port();
    record_server(&w, "numbered", &[], port);
    let get = read_all(&w.path("numbered/test-set-0/tests/post-shop-orders-getorder.yaml"));
    assert!(get.contains("\"3\": 8750") && get.contains("\"2\": alice"), "{get}");
    assert!(!get.contains("base64"), "a message of varints and strings needs no raw bytes:\n{get}");
    let ok = replay_server(&w, "numbered", &[], port, None);
    assert!(ok.stdout.contains("5 passed, 0 failed"), "{ok:?}");
    let bad = replay_server(&w, "numbered", &[], port, Some("changed"));
    assert!(bad.stdout.contains("message $[0]['3'] changed: expected 8750 got 8751"), "{bad:?}");
}

fn gateway_app() -> Vec<String> {
    vec!["python3".into(), example("gateway.py")]
}

#[test]
fn grpcio_client_calls_recorded_as_mocks_and_replayed_with_the_server_gone() {
    let w = World::new();
    let (backend_port, app_port) = (free_port(), free_port());
    let mut backend_cmd = Command::new("python3");
    backend_cmd.arg(example("server.py")).env("APP_PORT", backend_port.to_string()).env_remove("APP_VARIANT");
    let backend = Bg::spawn_ready(&mut backend_cmd, w.dir.path(), "backend", "ready", Duration::from_secs(30));

    let gateway_in = |recordings: &str, sub: &str, extra: &[String], variant: Option<&str>| {
        let mut args = vec!["--port".to_string(), app_port.to_string()];
        args.extend_from_slice(extra);
        let mut c = w.doppel(sub, recordings, &args, &gateway_app());
        c.env("APP_PORT", app_port.to_string()).env("ORDERS_ADDR", format!("127.0.0.1:{backend_port}"));
        app_variant(&mut c, variant);
        c
    };
    let gateway = |sub: &str, extra: &[String], variant: Option<&str>| gateway_in("rec", sub, extra, variant);
    let record = |recordings: &str, extra: &[String]| {
        let mut cmd = gateway_in(recordings, "record", extra, None);
        let health = format!("http://127.0.0.1:{app_port}/health");
        let mut rec = Bg::spawn_answering(&mut cmd, w.dir.path(), recordings, &health, Duration::from_secs(60));
        for path in ["/orders/7", "/orders", "/upload", "/track", "/orders/0", "/track-pingpong"] {
            let r = curl(&[&format!("http://127.0.0.1:{app_port}{path}")]);
            let answered =
                r.stdout.contains("order_id") || r.stdout.contains("count") || r.stdout.contains("NOT_FOUND");
            assert!(answered, "{r:?}");
        }
        stop_recording(&mut rec);
        let mocks = read_all(&w.path(recordings).join("test-set-0/mocks.yaml"));
        assert!(rec.stdout().contains("recorded 7 tests and 6 mocks (http2: 6)"), "{}\n{mocks}", rec.explain());
        // The ping-pong call's replies keep how many requests the server had when it sent each.
        assert!(mocks.contains("customer: dave") || mocks.contains("\"2\": dave"), "{mocks}");
        assert!(mocks.contains("after_requests: 3"), "{mocks}");
        mocks
    };
    let mocks = record("rec", &proto_args());
    assert!(mocks.contains("target: /shop.Orders/Track") && mocks.contains("type: shop.OrderRequest"), "{mocks}");
    let numbered = record("numbered", &[]);
    assert!(numbered.contains("\"1\": carol") && !numbered.contains("type: shop."), "{numbered}");
    drop(backend);

    let ok = run(&mut gateway("test", &proto_args(), None));
    assert_eq!(ok.code, 0, "{ok:?}");
    assert!(ok.stdout.contains("7 passed, 0 failed") && ok.stdout.contains("6 of 6 mocks used"), "{ok:?}");
    let bad = run(&mut gateway("test", &proto_args(), Some("changed")));
    assert_eq!(bad.code, 1, "{bad:?}");
    assert!(bad.stdout.contains("body $.total_cents changed: expected 8750 got 8755"), "{bad:?}");
    // The ping-pong call was served with the server gone, and the changed build is caught in it too.
    assert!(bad.stdout.contains("body $[0].total_cents changed: expected 7500 got 7505"), "{bad:?}");
    // Messages recorded with field names need the .proto to be sent again: said before the app starts.
    let plain = run(&mut gateway("test", &[], None));
    assert_eq!(plain.code, 2, "{plain:?}");
    assert!(plain.stderr.contains("give the same files with --proto"), "{plain:?}");
    // A call the recording never made is a miss that names the method and the message.
    let other = run(&mut gateway("test", &proto_args(), Some("other-customer")));
    assert_eq!(other.code, 1, "{other:?}");
    assert!(other.stdout.contains("/shop.Orders/GetOrder") && other.stdout.contains("zoe"), "{other:?}");
    // The ping-pong call departs from its recording at its second message: a miss naming it, at once.
    assert!(other.stdout.contains("/shop.Orders/Track") && other.stdout.contains("differs in message 2"), "{other:?}");
    // Recorded without the .proto: matched and served by field numbers.
    let plain = run(&mut gateway_in("numbered", "test", &[], None));
    assert!(plain.stdout.contains("7 passed, 0 failed") && plain.stdout.contains("6 of 6 mocks used"), "{plain:?}");
}
