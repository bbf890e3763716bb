//! When the app is ready for the tests: its recorded ports are open, and `--ready-url` answers below 500.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::target::{split_scheme, tls_to_app};
use super::{Plan, ReplayOptions};
use crate::capture::AppHandle;
use crate::capture::AppLink;
use crate::error::{Error, Result};
use crate::protocols::Conn;
use crate::protocols::http::client;
use crate::protocols::http::{Header, HttpRequest};
use crate::store::{LoadedSet, SpillBuffer};

/// The app ports the planned tests go to, with the TLS server name their clients used (if they spoke TLS).
pub(crate) fn app_ports(set: &LoadedSet, plan: &Plan) -> Vec<(u16, Option<String>)> {
    let mut ports: Vec<(u16, Option<String>)> =
        plan.tests.iter().map(|i| (set.tests[*i].1.port, set.tests[*i].1.tls.clone())).collect();
    ports.sort_by_key(|(p, _)| *p);
    ports.dedup_by_key(|(p, _)| *p);
    ports
}

/// Waits until the app listens on every port of `ports`, then until `--ready-url` answers below 500.
pub(crate) async fn wait_ready(
    app: &AppHandle,
    link: &dyn AppLink,
    ports: &[(u16, Option<String>)],
    opts: &ReplayOptions,
) -> Result<()> {
    let deadline = Instant::now() + opts.ready_timeout;
    loop {
        if let Some(exit) = app.exited() {
            return Err(Error::app(format!(
                "the app exited before it was ready ({exit}). Its last stderr lines:\n{}",
                app.stderr_tail()
            )));
        }
        let open = link.listening_ports();
        let missing: Vec<u16> = ports.iter().map(|(p, _)| *p).filter(|p| !open.contains(p)).collect();
        if missing.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            return Err(Error::app(format!(
                "the app did not open port {} within {:.0}s (the tests were recorded on it). Its last stderr lines:\n{}",
                missing.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(", "),
                opts.ready_timeout.as_secs_f64(),
                app.stderr_tail()
            )));
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let Some(url) = &opts.ready_url else { return Ok(()) };
    let (port, path, tls) = ready_target(url, ports)?;
    loop {
        let probe = HttpRequest {
            method: "GET".into(),
            target: path.clone(),
            version: "HTTP/1.1".into(),
            headers: vec![Header::new("Host", format!("localhost:{port}")), Header::new("Connection", "close")],
            body: None,
            messages: vec![],
            trailers: vec![],
        };
        let conn = match link.connect(port).await {
            Ok(conn) => match &tls {
                Some(name) => tls_to_app(conn, name, false).await.ok(),
                None => Some(Box::new(conn) as Conn),
            },
            Err(_) => None,
        };
        if let Some(mut conn) = conn {
            let sink = SpillBuffer::new(std::env::temp_dir(), Arc::new(0.into()));
            if let Ok(r) =
                client::exchange(&mut conn, &probe, std::path::Path::new("."), sink, Duration::from_secs(5)).await
                && r.head.status < 500
            {
                return Ok(());
            }
        }
        if app.exited().is_some() || Instant::now() > deadline {
            return Err(Error::app(format!(
                "--ready-url {url} did not answer below 500 within {:.0}s. The app's last stderr lines:\n{}",
                opts.ready_timeout.as_secs_f64(),
                app.stderr_tail()
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `--ready-url` as `/health` (first test port, in TLS when its tests were), `http://localhost:8080/health`
/// or `https://localhost:8443/health`: the port, the path and the TLS server name to use.
pub(crate) fn ready_target(url: &str, ports: &[(u16, Option<String>)]) -> Result<(u16, String, Option<String>)> {
    if url.starts_with('/') {
        let (port, tls) = ports.first().cloned().ok_or_else(|| Error::input("--ready-url: no test port known"))?;
        return Ok((port, url.to_string(), tls));
    }
    let Some((rest, https)) = split_scheme(url) else {
        return Err(Error::input(format!(
            "--ready-url {url}: expected /PATH, http://HOST:PORT/PATH or https://HOST:PORT/PATH"
        )));
    };
    let (authority, path) = rest.split_once('/').map(|(a, p)| (a, format!("/{p}"))).unwrap_or((rest, "/".into()));
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => (h, p.parse().map_err(|_| Error::input(format!("--ready-url {url}: bad port")))?),
        None => (authority, if https { 443 } else { 80 }),
    };
    Ok((port, path, https.then(|| host.to_string())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_urls_name_the_port_and_tls() {
        let ports = [(8443, Some("localhost".to_string())), (9000, None)];
        assert_eq!(ready_target("/health", &ports).unwrap(), (8443, "/health".into(), Some("localhost".into())));
        assert_eq!(ready_target("http://localhost:9000/ok", &ports).unwrap(), (9000, "/ok".into(), None));
        assert_eq!(ready_target("https://api.local/", &ports).unwrap(), (443, "/".into(), Some("api.local".into())));
        assert!(ready_target("ftp://x/", &ports).is_err());
    }
}
