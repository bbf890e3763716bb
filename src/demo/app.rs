//! The demo service (`doppel __demo-app`): a small orders API that calls the rates API over HTTP and writes
//! orders to the ledger over its own TCP protocol. `DEMO_VARIANT=changed` is the "new build" with a bug.
//!
//! Configuration: DEMO_APP_PORT (default 8090), DEMO_RATES_ADDR (default 127.0.0.1:9301),
//! DEMO_LEDGER_ADDR (default 127.0.0.1:9302).

use std::convert::Infallible;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

use crate::error::{Error, Result};

fn env(var: &str, default: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| default.to_string())
}

fn reply(status: StatusCode, body: Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap_or_default()
}

async fn fetch_rates() -> std::result::Result<Value, String> {
    let addr = env("DEMO_RATES_ADDR", "127.0.0.1:9301");
    let stream = TcpStream::connect(&addr).await.map_err(|e| format!("rates API {addr}: {e}"))?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let req = Request::get("/v1/latest?base=USD")
        .header("host", addr.as_str())
        .header("accept", "application/json")
        .body(Full::new(Bytes::new()))
        .map_err(|e| e.to_string())?;
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let body = resp.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
    serde_json::from_slice(&body).map_err(|e| format!("rates API answered something else than JSON: {e}"))
}

async fn ledger_append(entry: &str) -> std::result::Result<u64, String> {
    let addr = env("DEMO_LEDGER_ADDR", "127.0.0.1:9302");
    let stream = TcpStream::connect(&addr).await.map_err(|e| format!("ledger {addr}: {e}"))?;
    let (r, mut w) = stream.into_split();
    w.write_all(format!("APPEND {entry}\n").as_bytes()).await.map_err(|e| e.to_string())?;
    let line = BufReader::new(r).lines().next_line().await.map_err(|e| e.to_string())?.unwrap_or_default();
    line.strip_prefix("OK ").and_then(|id| id.trim().parse().ok()).ok_or_else(|| format!("ledger said {line:?}"))
}

fn query_param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query.split('&').find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
}

async fn handle(req: Request<hyper::body::Incoming>) -> std::result::Result<Response<Full<Bytes>>, Infallible> {
    let changed = std::env::var("DEMO_VARIANT").is_ok_and(|v| v == "changed");
    let (parts, body) = req.into_parts();
    let query = parts.uri.query().unwrap_or("").to_string();
    let resp = match (parts.method.clone(), parts.uri.path()) {
        (Method::GET, "/health") => reply(StatusCode::OK, json!({"status": "ok"})),
        (Method::GET, "/quote") => {
            let amount: f64 = query_param(&query, "amount").and_then(|a| a.parse().ok()).unwrap_or(0.0);
            let currency = query_param(&query, "currency").unwrap_or("EUR").to_string();
            match fetch_rates().await {
                Ok(rates) => match rates["rates"][&currency].as_f64() {
                    Some(rate) => {
                        // The "new build" rounds down instead of to nearest: a regression the demo catches.
                        let converted = if changed {
                            (amount * rate * 100.0).floor() / 100.0
                        } else {
                            (amount * rate * 100.0).round() / 100.0
                        };
                        reply(
                            StatusCode::OK,
                            json!({"amount": amount, "currency": currency, "rate": rate, "converted": converted}),
                        )
                    }
                    None => reply(StatusCode::BAD_REQUEST, json!({"error": format!("unknown currency {currency}")})),
                },
                Err(e) => reply(StatusCode::BAD_GATEWAY, json!({"error": e})),
            }
        }
        (Method::POST, "/orders") => {
            let bytes = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
            match serde_json::from_slice::<Value>(&bytes) {
                Ok(order) => {
                    let item = order["item"].as_str().unwrap_or("").to_string();
                    let qty = order["qty"].as_u64().unwrap_or(1);
                    let price = 19.99 * qty as f64;
                    match ledger_append(&format!("{item} x{qty}")).await {
                        Ok(id) => reply(
                            StatusCode::CREATED,
                            json!({"id": id, "item": item, "qty": qty, "total": (price * 100.0).round() / 100.0, "status": "accepted"}),
                        ),
                        Err(e) => reply(StatusCode::SERVICE_UNAVAILABLE, json!({"error": e})),
                    }
                }
                Err(e) => reply(StatusCode::BAD_REQUEST, json!({"error": format!("invalid JSON: {e}")})),
            }
        }
        _ => reply(StatusCode::NOT_FOUND, json!({"error": "not found"})),
    };
    Ok(resp)
}

pub async fn main() -> Result<i32> {
    let port = env("DEMO_APP_PORT", "8090");
    let listener = TcpListener::bind(format!("127.0.0.1:{port}"))
        .await
        .map_err(|e| Error::env(format!("demo app: cannot listen on 127.0.0.1:{port}: {e}")))?;
    eprintln!("demo app: listening on 127.0.0.1:{port}");
    loop {
        let stream = crate::capture::accept(&listener).await;
        tokio::spawn(async move {
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), hyper::service::service_fn(handle))
                .await;
        });
    }
}
