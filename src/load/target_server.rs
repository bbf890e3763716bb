//! `doppel __http-target PORT`: a small, fast HTTP/1.1 server (keep-alive) that load tests and
//! `bench/load.sh` send traffic to. Endpoints:
//!
//! - `GET /api/items/{id}`: `{"id": id, "name": "item-<id>"}`
//! - `GET /slow?ms=N`: answers after N milliseconds
//! - `GET /status/{code}`: answers with that status
//! - anything else: `{"ok": true}`
//!
//! `TARGET_VARIANT=changed` answers `/api/items/{id}` with another name, for `--check` tests.

use std::convert::Infallible;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::error::{Error, Result};

fn json(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("application/json"));
    resp
}

async fn handle(req: Request<hyper::body::Incoming>) -> std::result::Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path();
    if let Some(id) = path.strip_prefix("/api/items/") {
        let changed = std::env::var("TARGET_VARIANT").is_ok_and(|v| v == "changed");
        let name = if changed { format!("Item {id}") } else { format!("item-{id}") };
        return Ok(json(StatusCode::OK, serde_json::json!({"id": id.parse::<u64>().ok(), "name": name}).to_string()));
    }
    if path == "/slow" {
        let ms: u64 = req
            .uri()
            .query()
            .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("ms=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or(100);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        return Ok(json(StatusCode::OK, format!("{{\"slept_ms\":{ms}}}")));
    }
    if let Some(code) = path.strip_prefix("/status/").and_then(|c| c.parse::<u16>().ok())
        && let Ok(status) = StatusCode::from_u16(code)
    {
        return Ok(json(status, format!("{{\"status\":{code}}}")));
    }
    Ok(json(StatusCode::OK, "{\"ok\":true}".into()))
}

pub async fn main(port: u16) -> Result<i32> {
    let listener = TcpListener::bind(("127.0.0.1", port))
        .await
        .map_err(|e| Error::env(format!("cannot listen on 127.0.0.1:{port}: {e}")))?;
    let addr = listener.local_addr().map_err(|e| Error::env(e.to_string()))?;
    println!("doppel http target ready on http://{addr}");
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(_) => {
                // Out of file descriptors for a moment: keep serving the connections already open.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(handle);
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
        });
    }
}
