//! Where replayed requests go and how: the app's own ports (in TLS when the recorded client spoke TLS), or
//! a running deployment (`--target`, with `--secondary` for a three-way comparison).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpStream;

use super::judge::judge;
use super::{Planned, ReplayOptions, SetRun, answer_of, header_line};
use crate::capture::AppLink;
use crate::chain::{self, Bindings};
use crate::diff::Noise;
use crate::error::{Error, Result};
use crate::noise::learn;
use crate::protocols::Conn;
use crate::protocols::http::client;
use crate::protocols::http::parse::ResponseHead;
use crate::protocols::http::{Header, HttpRequest};
use crate::protocols::http2;
use crate::report::{self, SetReport};
use crate::store::{self, LoadedSet, NoiseRule, SpillBuffer, TestCase};

/// A running deployment to replay against: `http://host:port` or `https://host:port`.
#[derive(Clone)]
pub(crate) struct Target {
    /// `host:port` to connect to.
    pub authority: String,
    /// As written in the URL: what `Host` says.
    host: String,
    /// For https: the server name to verify and the TLS settings per protocol.
    tls: Option<TargetTls>,
}

#[derive(Clone)]
struct TargetTls {
    name: rustls::pki_types::ServerName<'static>,
    http1: Arc<rustls::ClientConfig>,
    http2: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.url())
    }
}

impl Target {
    /// An `http://` or `https://` URL; https servers are verified against the system roots plus `trust`.
    /// `flag` names the option the URL came from, for error messages.
    pub fn parse(flag: &str, url: &str, trust: &crate::tls::UpstreamTrust) -> Result<Target> {
        let Some((rest, https)) = split_scheme(url) else {
            return Err(Error::input(format!("{flag} {url}: expected http://HOST:PORT or https://HOST:PORT")));
        };
        let host = rest.split('/').next().unwrap_or("").to_string();
        if host.is_empty() {
            return Err(Error::input(format!("{flag} {url}: no host")));
        }
        let has_port = host.rsplit_once(':').is_some_and(|(h, p)| !h.is_empty() && !p.contains(']'));
        let authority = if has_port { host.clone() } else { format!("{host}:{}", if https { 443 } else { 80 }) };
        let tls = if https {
            let name_part = authority.rsplit_once(':').map(|(h, _)| h).unwrap_or(&authority);
            let name = rustls::pki_types::ServerName::try_from(name_part.trim_matches(['[', ']']).to_string())
                .map_err(|e| Error::input(format!("{flag} {url}: {e}")))?;
            let client = crate::tls::ClientTrust::new(trust, "--target-ca")?;
            Some(TargetTls {
                name,
                http1: client.config(vec![b"http/1.1".to_vec()]),
                http2: client.config(vec![b"h2".to_vec()]),
            })
        } else {
            None
        };
        Ok(Target { authority, host, tls })
    }

    /// The target as a URL, for messages and reports.
    pub fn url(&self) -> String {
        format!("{}://{}", if self.tls.is_some() { "https" } else { "http" }, self.host)
    }

    /// A recorded request as it is sent to this target: a deployment behind a virtual host needs its own
    /// name in `Host`; everything else stays as recorded.
    pub fn request_for(&self, recorded: &HttpRequest) -> HttpRequest {
        let mut request = recorded.clone();
        let names_host = |h: &&mut Header| h.name.eq_ignore_ascii_case("host") || h.name == ":authority";
        for h in request.headers.iter_mut().filter(names_host) {
            h.value = self.host.clone().into_bytes();
        }
        request
    }

    /// Opens a connection (TLS for https, negotiating h2 or http/1.1).
    pub async fn connect(&self, timeout: Duration, http2: bool) -> Result<Conn> {
        let conn = tokio::time::timeout(timeout, TcpStream::connect(&self.authority))
            .await
            .map_err(|_| {
                Error::dependency(format!(
                    "cannot connect to {}: no answer within {:.1}s",
                    self.authority,
                    timeout.as_secs_f64()
                ))
            })?
            .map_err(|e| Error::dependency(format!("cannot connect to {}: {e}", self.authority)))?;
        let _ = conn.set_nodelay(true);
        let Some(tls) = &self.tls else { return Ok(Box::new(conn)) };
        let config = if http2 { tls.http2.clone() } else { tls.http1.clone() };
        let handshake = tokio_rustls::TlsConnector::from(config).connect(tls.name.clone(), conn);
        match tokio::time::timeout(timeout, handshake).await {
            Ok(Ok(stream)) => Ok(Box::new(stream)),
            Ok(Err(e)) => Err(Error::dependency(format!("TLS with {} failed: {e}", self.url()))),
            Err(_) => Err(Error::dependency(format!(
                "TLS with {} did not complete within {:.1}s",
                self.url(),
                timeout.as_secs_f64()
            ))),
        }
    }

    /// Sends one request on a new connection and reads the response (bodies past the inline limit go to
    /// files under `tmp`).
    pub async fn send(
        &self,
        request: &HttpRequest,
        dir: &Path,
        tmp: &Path,
        timeout: Duration,
    ) -> Result<client::Response> {
        let mut conn = self.connect(timeout, false).await?;
        let sink = SpillBuffer::new(tmp.to_path_buf(), spill_counter());
        client::exchange(&mut conn, request, dir, sink, timeout).await
    }
}

/// `http://REST` or `https://REST`: the rest, and whether it is https.
pub(crate) fn split_scheme(url: &str) -> Option<(&str, bool)> {
    url.strip_prefix("http://").map(|r| (r, false)).or_else(|| url.strip_prefix("https://").map(|r| (r, true)))
}

/// Speaks TLS to the app's own port, as the recorded client did, with the server name it asked for. The
/// app's certificate is accepted whatever it is: it is the app under test, not a server to be trusted.
pub(crate) async fn tls_to_app(conn: TcpStream, name: &str, http2: bool) -> Result<Conn> {
    let name = if name.is_empty() { "localhost" } else { name };
    let server_name = rustls::pki_types::ServerName::try_from(name.to_string())
        .map_err(|e| Error::dependency(format!("the recorded TLS server name {name:?}: {e}")))?;
    // Built once: every test of a TLS port connects anew.
    static CONFIGS: std::sync::OnceLock<[Arc<rustls::ClientConfig>; 2]> = std::sync::OnceLock::new();
    let [http1_config, http2_config] = CONFIGS.get_or_init(|| {
        let any = crate::tls::ClientTrust::any();
        [any.config(vec![b"http/1.1".to_vec()]), any.config(vec![b"h2".to_vec()])]
    });
    let config = if http2 { http2_config } else { http1_config };
    let stream = tokio_rustls::TlsConnector::from(config.clone())
        .connect(server_name, conn)
        .await
        .map_err(|e| Error::dependency(format!("TLS with the app (as {name}) failed: {e}")))?;
    Ok(Box::new(stream))
}

/// Numbers the files of large response bodies: one counter for the process, so that responses read at the
/// same time (`doppel diff`, `doppel load --check`) never share a file.
pub(crate) fn spill_counter() -> Arc<std::sync::atomic::AtomicU64> {
    static COUNTER: std::sync::OnceLock<Arc<std::sync::atomic::AtomicU64>> = std::sync::OnceLock::new();
    COUNTER.get_or_init(|| Arc::new(0.into())).clone()
}

/// Sends a test's request to the app (in TLS when the recorded client spoke TLS); its response body goes
/// to `sink` (spilling to disk when large).
pub(crate) async fn send_to_app(
    link: &dyn AppLink,
    test: &TestCase,
    request: &HttpRequest,
    set: &LoadedSet,
    opts: &ReplayOptions,
    sink: SpillBuffer,
) -> Result<client::Response> {
    let port = test.port;
    let http2 = test.kind == http2::KIND;
    let conn = link
        .connect(port)
        .await
        .map_err(|e| Error::dependency(format!("cannot connect to the app's port {port}: {e}")))?;
    let _ = conn.set_nodelay(true);
    let mut conn: Conn = match &test.tls {
        Some(name) => tls_to_app(conn, name, http2).await?,
        None => Box::new(conn),
    };
    if http2 {
        return http2_exchange(conn, request, &set.dir, sink, opts.request_timeout).await;
    }
    client::exchange(&mut conn, request, &set.dir, sink, opts.request_timeout).await
}

/// Sends a request to a running deployment, its Host header naming the deployment.
async fn send_to_target(
    target: &Target,
    request: &HttpRequest,
    set: &LoadedSet,
    opts: &ReplayOptions,
    tmp: &std::path::Path,
    http2: bool,
) -> Result<client::Response> {
    let request = target.request_for(request);
    if http2 {
        let conn = target.connect(opts.request_timeout, true).await?;
        let sink = SpillBuffer::new(tmp.to_path_buf(), spill_counter());
        return http2_exchange(conn, &request, &set.dir, sink, opts.request_timeout).await;
    }
    target.send(&request, &set.dir, tmp, opts.request_timeout).await
}

/// Sends an HTTP/2 test request (its own connection, prior knowledge) and returns the response in the shape
/// the HTTP/1 client gives, so judging is the same.
async fn http2_exchange(
    conn: Conn,
    request: &HttpRequest,
    dir: &std::path::Path,
    mut body: SpillBuffer,
    timeout: Duration,
) -> Result<client::Response> {
    let began = Instant::now();
    let answer = http2::client::exchange(conn, request, dir, timeout).await?;
    body.push(&answer.body).map_err(|e| Error::dependency(format!("cannot buffer the response body: {e}")))?;
    Ok(client::Response {
        head: ResponseHead {
            status: answer.status,
            reason: String::new(),
            version: "HTTP/2".into(),
            headers: answer.headers,
        },
        body,
        trailers: answer.trailers,
        elapsed: began.elapsed(),
    })
}

/// Replays against a deployment. With a secondary (a second deployment of the same version), each request
/// goes to both; the fields that differ between their answers are noise for that test (Diffy's approach):
/// what two identical builds disagree on cannot be a regression.
pub(crate) async fn run_against_target(
    planned: &Planned,
    target: &Target,
    opts: &ReplayOptions,
    tmp: &std::path::Path,
    quiet: bool,
) -> SetRun {
    let Planned { set, rules, plan } = planned;
    if !quiet {
        header_line(set, plan, 0);
    }
    let mut set_report = SetReport { name: set.name.clone(), warnings: set.warnings.clone(), ..SetReport::default() };
    let mut answers = Vec::new();
    // Each deployment creates its own ids: each gets its own chain values.
    let mut bindings = Bindings::default();
    let mut secondary_bindings = Bindings::default();
    let today = store::now_rfc3339().chars().take(10).collect::<String>();
    for &i in &plan.tests {
        let (file, test) = &set.tests[i];
        let Some((recorded_request, recorded_response)) = test.http() else {
            let result = super::judge::not_replayable(set, file, test);
            if !quiet {
                report::print_result(&result);
            }
            set_report.results.push(result);
            answers.push(None);
            continue;
        };
        let http2 = test.kind == http2::KIND;
        let began = Instant::now();
        let request = chain::render_request(test, recorded_request, &bindings);
        let outcome = send_to_target(target, &request, set, opts, tmp, http2).await;
        if opts.chain
            && let Ok(resp) = &outcome
        {
            super::bind(plan, test, resp, &mut bindings);
        }
        let expected = chain::render_response(test, recorded_response, &bindings);
        let answer = outcome.as_ref().ok().and_then(|r| answer_of(r, &expected, &bindings));
        let mut noise = rules[i].noise.clone();
        if let Some(secondary) = &opts.secondary {
            let request = chain::render_request(test, recorded_request, &secondary_bindings);
            let other = send_to_target(secondary, &request, set, opts, tmp, http2).await;
            if let Ok(resp) = &other {
                if opts.chain {
                    super::bind(plan, test, resp, &mut secondary_bindings);
                }
                let other_expected = chain::render_response(test, recorded_response, &secondary_bindings);
                if let (Some(a), Some(b)) = (&answer, answer_of(resp, &other_expected, &secondary_bindings)) {
                    let defaults = super::default_headers(&opts.config);
                    let found = learn::learn(&[a.normalized.clone(), b.normalized], &rules[i].list, defaults, &today);
                    let extra: Vec<NoiseRule> =
                        found.rules.into_iter().map(|r| NoiseRule { learned: None, reason: None, ..r }).collect();
                    if !extra.is_empty()
                        && let Ok(n) = Noise::compile_with_extra(
                            &rules[i].list,
                            &extra,
                            "differs between target and secondary",
                            defaults,
                        )
                    {
                        noise = n;
                    }
                }
            }
            if let Ok(r) = other {
                r.body.discard();
            }
        }
        answers.push(answer);
        let result = judge(set, file, test, &expected, &noise, outcome, Vec::new(), began.elapsed());
        if !quiet {
            report::print_result(&result);
        }
        set_report.results.push(result);
    }
    SetRun { report: set_report, answers }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocols::http::HeaderList;

    fn get(headers: Vec<Header>) -> HttpRequest {
        HttpRequest {
            method: "GET".into(),
            target: "/a".into(),
            version: "HTTP/1.1".into(),
            headers,
            body: None,
            messages: vec![],
            trailers: vec![],
        }
    }

    #[test]
    fn targets_take_http_and_https_urls_with_default_ports() {
        let trust = crate::tls::UpstreamTrust::default();
        let plain = Target::parse("--target", "http://staging", &trust).unwrap();
        assert_eq!((plain.authority.as_str(), plain.url()), ("staging:80", "http://staging".to_string()));
        let tls = Target::parse("--target", "https://staging.example.com/base", &trust).unwrap();
        assert_eq!(tls.authority, "staging.example.com:443");
        assert_eq!(tls.url(), "https://staging.example.com");
        let v6 = Target::parse("--primary", "https://[::1]:8443", &trust).unwrap();
        assert_eq!(v6.authority, "[::1]:8443");
        let bad = Target::parse("--primary", "ftp://x", &trust).unwrap_err();
        assert!(bad.message.starts_with("--primary ftp://x: expected http://"), "{}", bad.message);
        let missing = crate::tls::UpstreamTrust { extra_roots: vec!["/nonexistent/ca.pem".into()], insecure: false };
        let e = Target::parse("--target", "https://x", &missing).unwrap_err();
        assert!(e.message.starts_with("--target-ca /nonexistent/ca.pem:"), "{}", e.message);
    }

    #[test]
    fn requests_to_a_target_name_it_in_host_and_authority() {
        let t = Target::parse("--target", "https://staging:8443", &Default::default()).unwrap();
        let sent = t.request_for(&get(vec![Header::new(":authority", "localhost:1"), Header::new("Host", "x:1")]));
        assert_eq!(sent.headers.get_str(":authority").as_deref(), Some("staging:8443"));
        assert_eq!(sent.headers.get_str("host").as_deref(), Some("staging:8443"));
    }
}
