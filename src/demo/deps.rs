//! The demo's dependencies: an HTTP exchange-rates API and a "ledger" that speaks a small line protocol doppel
//! does not parse (so it is recorded and replayed as opaque bytes).

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

async fn rates(req: Request<hyper::body::Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let body = match req.uri().path() {
        "/v1/latest" => serde_json::json!({
            "base": "USD",
            "rates": {"EUR": 0.92, "GBP": 0.79, "JPY": 151.3},
            "provider": "demo-rates",
        }),
        _ => {
            return Ok(Response::builder()
                .status(404)
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from_static(b"{\"error\":\"not found\"}")))
                .unwrap_or_default());
        }
    };
    Ok(Response::builder()
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap_or_default())
}

/// Serves the rates API on `listener` until the task is dropped.
pub async fn serve_rates(listener: TcpListener) {
    loop {
        let stream = crate::capture::accept(&listener).await;
        tokio::spawn(async move {
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), hyper::service::service_fn(rates))
                .await;
        });
    }
}

/// The ledger: `APPEND <text>\n` -> `OK <id>\n`, `COUNT\n` -> `COUNT <n>\n`.
pub async fn serve_ledger(listener: TcpListener) {
    let next = Arc::new(AtomicU64::new(1001));
    loop {
        let stream = crate::capture::accept(&listener).await;
        let next = next.clone();
        tokio::spawn(async move {
            let (r, mut w) = stream.into_split();
            let mut lines = BufReader::new(r).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let reply = if line.starts_with("APPEND ") {
                    format!("OK {}\n", next.fetch_add(1, Ordering::SeqCst))
                } else if line == "COUNT" {
                    format!("COUNT {}\n", next.load(Ordering::SeqCst) - 1001)
                } else {
                    "ERR unknown command\n".to_string()
                };
                if w.write_all(reply.as_bytes()).await.is_err() {
                    break;
                }
            }
        });
    }
}

/// `doppel __demo-deps`: runs both dependencies in the foreground (ports from DEMO_RATES_PORT and
/// DEMO_LEDGER_PORT, default 9301 and 9302), for trying the demo service by hand.
pub async fn main() -> crate::error::Result<i32> {
    let port = |var: &str, default: u16| std::env::var(var).ok().and_then(|v| v.parse().ok()).unwrap_or(default);
    let bind = |p: u16| async move {
        TcpListener::bind(("127.0.0.1", p))
            .await
            .map_err(|e| crate::error::Error::env(format!("cannot listen on 127.0.0.1:{p}: {e}")))
    };
    let rates = bind(port("DEMO_RATES_PORT", 9301)).await?;
    let ledger = bind(port("DEMO_LEDGER_PORT", 9302)).await?;
    println!(
        "demo dependencies: rates API on {}, ledger on {}",
        rates.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        ledger.local_addr().map(|a| a.to_string()).unwrap_or_default()
    );
    tokio::join!(serve_rates(rates), serve_ledger(ledger));
    Ok(0)
}
