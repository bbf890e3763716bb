//! `doppel __bench-server`: a fast HTTP server for the benchmark suite (bench/run). `GET /?size=N` answers N
//! bytes (default 16); with `--forward URL` every request is first sent to URL (keep-alive, one connection
//! per server connection), so the same binary measures egress capture too.

use std::convert::Infallible;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

use crate::error::{Error, Result};

fn size_of(query: Option<&str>) -> usize {
    query.and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("size="))).and_then(|v| v.parse().ok()).unwrap_or(16)
}

pub async fn main(port: u16, forward: Option<String>) -> Result<i32> {
    let listener = TcpListener::bind(("127.0.0.1", port))
        .await
        .map_err(|e| Error::env(format!("bench server: cannot listen on 127.0.0.1:{port}: {e}")))?;
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let _ = stream.set_nodelay(true);
        let forward = forward.clone();
        tokio::spawn(async move {
            // One upstream connection per client connection, opened lazily.
            let upstream: std::sync::Arc<
                tokio::sync::Mutex<Option<hyper::client::conn::http1::SendRequest<Full<Bytes>>>>,
            > = Default::default();
            let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let forward = forward.clone();
                let upstream = upstream.clone();
                async move {
                    let size = size_of(req.uri().query());
                    if let Some(authority) = forward {
                        let mut slot = upstream.lock().await;
                        if slot.as_ref().is_none_or(|s| s.is_closed())
                            && let Ok(s) = TcpStream::connect(&authority).await
                        {
                            let _ = s.set_nodelay(true);
                            if let Ok((sender, conn)) = hyper::client::conn::http1::handshake(TokioIo::new(s)).await {
                                tokio::spawn(conn);
                                *slot = Some(sender);
                            }
                        }
                        if let Some(sender) = slot.as_mut() {
                            let r = Request::get(format!("/?size={size}"))
                                .header("host", authority.as_str())
                                .body(Full::new(Bytes::new()));
                            if let Ok(r) = r
                                && let Ok(resp) = sender.send_request(r).await
                            {
                                let body = resp.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                                return Ok::<_, Infallible>(Response::new(Full::new(body)));
                            }
                        }
                        return Ok(Response::builder().status(502).body(Full::new(Bytes::new())).unwrap_or_default());
                    }
                    Ok(Response::new(Full::new(Bytes::from(vec![b'x'; size]))))
                }
            });
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
        });
    }
}
