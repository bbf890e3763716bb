//! `doppel __http-target PORT [--forward URL] [--tls CERT KEY]`: a small, fast HTTP/1.1 server (keep-alive)
//! that load tests and the benchmark scripts (`bench/run`, `bench/load.sh`) send traffic to. Endpoints:
//!
//! - `GET /api/items/{id}`: `{"id": id, "name": "item-<id>"}`
//! - `GET /slow?ms=N`: answers after N milliseconds
//! - `GET /status/{code}`: answers with that status
//! - `GET /?size=N`: N bytes of `x`
//! - anything else: `{"ok": true}`
//!
//! With `--forward http[s]://HOST:PORT`, every request is first sent upstream (one keep-alive upstream
//! connection per client connection; HTTPS verified against `SSL_CERT_FILE`) and the upstream's body is
//! answered: the same binary then measures egress capture. With `--tls CERT KEY` it serves HTTPS.
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
    if let Some(size) = req.uri().query().and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("size=")))
        && let Ok(size) = size.parse::<usize>()
    {
        return Ok(Response::new(Full::new(Bytes::from(vec![b'x'; size]))));
    }
    Ok(json(StatusCode::OK, "{\"ok\":true}".into()))
}

/// Where `--forward` sends requests.
#[derive(Clone)]
struct Upstream {
    authority: String,
    tls: Option<(tokio_rustls::TlsConnector, rustls::pki_types::ServerName<'static>)>,
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

impl Upstream {
    fn parse(url: &str) -> Result<Upstream> {
        let (tls, rest) = match (url.strip_prefix("https://"), url.strip_prefix("http://")) {
            (Some(r), _) => (true, r),
            (None, Some(r)) => (false, r),
            _ => (false, url),
        };
        let authority = rest.trim_end_matches('/').to_string();
        if !tls {
            return Ok(Upstream { authority, tls: None });
        }
        let mut roots = rustls::RootCertStore::empty();
        let bundle = std::env::var("SSL_CERT_FILE").unwrap_or_else(|_| "/etc/ssl/certs/ca-certificates.crt".into());
        let pem = std::fs::read(&bundle).map_err(|e| Error::env(format!("{bundle}: {e}")))?;
        for cert in rustls::pki_types::pem::PemObject::pem_slice_iter(&pem).flatten() {
            let _ = roots.add(cert);
        }
        let config = rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
        let host = authority.rsplit_once(':').map(|(h, _)| h).unwrap_or(&authority).to_string();
        let name = rustls::pki_types::ServerName::try_from(host).map_err(|e| Error::input(e.to_string()))?;
        Ok(Upstream { authority, tls: Some((tokio_rustls::TlsConnector::from(std::sync::Arc::new(config)), name)) })
    }

    async fn connect(&self) -> Option<Sender> {
        let tcp = tokio::net::TcpStream::connect(&self.authority).await.ok()?;
        let _ = tcp.set_nodelay(true);
        match &self.tls {
            Some((connector, name)) => {
                let tls = connector.connect(name.clone(), tcp).await.ok()?;
                let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.ok()?;
                tokio::spawn(conn);
                Some(sender)
            }
            None => {
                let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.ok()?;
                tokio::spawn(conn);
                Some(sender)
            }
        }
    }
}

/// Sends the request's path upstream on this client connection's upstream connection; answers its body.
async fn forward(
    upstream: &Upstream,
    slot: &tokio::sync::Mutex<Option<Sender>>,
    req: Request<hyper::body::Incoming>,
) -> Response<Full<Bytes>> {
    use http_body_util::BodyExt;
    let mut slot = slot.lock().await;
    if slot.as_ref().is_none_or(|s| s.is_closed()) {
        *slot = upstream.connect().await;
    }
    let path = req.uri().path_and_query().map(|p| p.to_string()).unwrap_or_else(|| "/".into());
    if let Some(sender) = slot.as_mut()
        && let Ok(r) = Request::get(path).header("host", upstream.authority.as_str()).body(Full::new(Bytes::new()))
        && let Ok(resp) = sender.send_request(r).await
    {
        let body = resp.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        return Response::new(Full::new(body));
    }
    json(StatusCode::BAD_GATEWAY, "{\"error\":\"upstream\"}".into())
}

fn tls_acceptor(cert: &str, key: &str) -> Result<tokio_rustls::TlsAcceptor> {
    let read = |p: &str| std::fs::read(p).map_err(|e| Error::input(format!("{p}: {e}")));
    let certs: Vec<_> = rustls::pki_types::pem::PemObject::pem_slice_iter(&read(cert)?).flatten().collect();
    let key = rustls::pki_types::pem::PemObject::from_pem_slice(&read(key)?)
        .map_err(|e| Error::input(format!("{key}: {e:?}")))?;
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| Error::input(format!("{cert}: {e}")))?;
    Ok(tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config)))
}

pub async fn main(port: u16, forward_to: Option<String>, tls: Option<(String, String)>) -> Result<i32> {
    let upstream = forward_to.as_deref().map(Upstream::parse).transpose()?;
    let acceptor = tls.as_ref().map(|(c, k)| tls_acceptor(c, k)).transpose()?;
    let listener = TcpListener::bind(("127.0.0.1", port))
        .await
        .map_err(|e| Error::env(format!("cannot listen on 127.0.0.1:{port}: {e}")))?;
    let addr = listener.local_addr().map_err(|e| Error::env(e.to_string()))?;
    println!("doppel http target ready on http://{addr}");
    loop {
        let stream = crate::capture::accept(&listener).await;
        let _ = stream.set_nodelay(true);
        let upstream = upstream.clone();
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let slot = std::sync::Arc::new(tokio::sync::Mutex::new(None));
            let service = hyper::service::service_fn(move |req| {
                let upstream = upstream.clone();
                let slot = slot.clone();
                async move {
                    match &upstream {
                        Some(u) => Ok::<_, Infallible>(forward(u, &slot, req).await),
                        None => handle(req).await,
                    }
                }
            });
            let http = hyper::server::conn::http1::Builder::new();
            match acceptor {
                Some(a) => {
                    if let Ok(tls) = a.accept(stream).await {
                        let _ = http.serve_connection(TokioIo::new(tls), service).await;
                    }
                }
                None => {
                    let _ = http.serve_connection(TokioIo::new(stream), service).await;
                }
            }
        });
    }
}
