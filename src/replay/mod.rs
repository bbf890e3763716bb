//! `doppel test`: for each test set, start the app under capture with no route out, serve every outbound
//! connection and DNS query from the mocks, send each recorded request, compare, report. With `--target`,
//! send the requests to a running deployment instead (no app, no mocks).

mod egress;

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpStream;

use crate::capture::{AppCommand, AppLink, Capture};
use crate::diff::{self, Actual, Expected, Noise};
use crate::error::{Error, Result};
use crate::protocols::http::client;
use crate::protocols::http::parse::ResponseHead;
use crate::protocols::http2;
use crate::protocols::{Miss, MockPool};
use crate::report::{self, Outcome, RunReport, SetReport, TestResult};
use crate::store::{self, Config, Header, HeaderList, HttpRequest, LoadedSet, SpillBuffer, Store, TestCase};

/// A running deployment to replay against: `http://host:port`.
#[derive(Debug, Clone)]
pub struct Target {
    pub authority: String,
}

impl Target {
    pub fn parse(url: &str) -> Result<Target> {
        let rest = url.strip_prefix("http://").ok_or_else(|| {
            if url.starts_with("https://") {
                Error::input(format!("--target {url}: https targets are not supported yet; use http://"))
            } else {
                Error::input(format!("--target {url}: expected http://HOST:PORT"))
            }
        })?;
        let authority = rest.split('/').next().unwrap_or("");
        if authority.is_empty() {
            return Err(Error::input(format!("--target {url}: no host")));
        }
        let authority = if authority.contains(':') && !authority.ends_with(']') {
            authority.to_string()
        } else {
            format!("{authority}:80")
        };
        Ok(Target { authority })
    }

    /// The target as a URL, for messages and reports.
    pub fn url(&self) -> String {
        format!("http://{}", self.authority)
    }

    /// A recorded request as it is sent to this target: a deployment behind a virtual host needs its own
    /// name in `Host`; everything else stays as recorded.
    pub fn request_for(&self, recorded: &HttpRequest) -> HttpRequest {
        let mut request = recorded.clone();
        for h in request.headers.iter_mut().filter(|h| h.name.eq_ignore_ascii_case("host")) {
            h.value = self.authority.clone().into_bytes();
        }
        request
    }

    /// Sends one request on a new connection and reads the response (bodies past the inline limit go to
    /// files under `tmp`).
    pub async fn send(
        &self,
        request: &HttpRequest,
        dir: &Path,
        tmp: &Path,
        timeout: Duration,
    ) -> std::result::Result<client::Response, String> {
        let mut conn = tokio::time::timeout(timeout, TcpStream::connect(&self.authority))
            .await
            .map_err(|_| {
                format!("cannot connect to {}: no answer within {:.1}s", self.authority, timeout.as_secs_f64())
            })?
            .map_err(|e| format!("cannot connect to {}: {e}", self.authority))?;
        let _ = conn.set_nodelay(true);
        let sink = SpillBuffer::new(tmp.to_path_buf(), spill_counter());
        client::exchange(&mut conn, request, dir, sink, timeout).await
    }
}

/// Numbers the files of large response bodies: one counter for the process, so that responses read at the
/// same time (`doppel diff`, `doppel load --check`) never share a file.
pub fn spill_counter() -> Arc<std::sync::atomic::AtomicU64> {
    static COUNTER: std::sync::OnceLock<Arc<std::sync::atomic::AtomicU64>> = std::sync::OnceLock::new();
    COUNTER.get_or_init(|| Arc::new(0.into())).clone()
}

pub struct ReplayOptions {
    pub store: Store,
    /// Test sets to run; empty means all.
    pub sets: Vec<String>,
    pub command: Option<AppCommand>,
    pub target: Option<Target>,
    /// Path (or URL on the app) that must answer below 500 before tests start.
    pub ready_url: Option<String>,
    pub ready_timeout: Duration,
    pub request_timeout: Duration,
    pub grace: Duration,
    pub config: Config,
    pub junit: Option<PathBuf>,
    pub report_dir: Option<PathBuf>,
    pub quiet: bool,
    /// doppel's CA, to answer the app's TLS connections.
    pub ca: Option<Arc<crate::tls::Ca>>,
}

/// Runs every selected test set; the report says what passed.
pub async fn run<C: Capture>(capture: Option<&C>, opts: &ReplayOptions) -> Result<RunReport> {
    let started = Instant::now();
    let mut report = RunReport {
        version: store::FORMAT_VERSION,
        started_at: store::now_rfc3339(),
        mode: match (&opts.target, capture) {
            (Some(_), _) => "target".into(),
            (None, Some(c)) => c.name().into(),
            (None, None) => "none".into(),
        },
        ..RunReport::default()
    };
    let names = if opts.sets.is_empty() { opts.store.list_sets()? } else { opts.sets.clone() };
    if names.is_empty() {
        return Err(Error::input(format!(
            "no test sets in {} (record some with `doppel record -- <command>`)",
            opts.store.root().display()
        )));
    }
    // Load and check everything first: a malformed file stops the run before the app starts.
    let mut sets = Vec::new();
    for name in &names {
        let set = opts.store.load_set(name)?;
        let noises = compile_noise(&set, &opts.config)?;
        if let Some(type_name) = http2::grpc::missing_schema(&set) {
            return Err(Error::input(format!(
                "test set {} holds gRPC messages decoded with a .proto ({type_name}); give the same files with --proto",
                set.name
            )));
        }
        sets.push((set, noises));
    }
    let tmp = std::env::temp_dir().join(format!("doppel-replay-{}", std::process::id()));
    for (set, noises) in &sets {
        let set_report = match (&opts.target, capture) {
            (Some(target), _) => run_against_target(set, noises, target, opts, &tmp).await,
            (None, Some(capture)) => run_set(capture, set, noises, opts, &tmp).await?,
            (None, None) => return Err(Error::input("give a command after -- or a --target")),
        };
        report.sets.push(set_report);
    }
    let _ = std::fs::remove_dir_all(&tmp);
    report.duration_ms = started.elapsed().as_secs_f64() * 1000.0;
    report.tally();
    let stamp = report.started_at.replace([':', '.'], "-");
    let dir = opts.report_dir.clone().unwrap_or_else(|| opts.store.reports_dir());
    report::write_json(&report, &dir.join(format!("run-{stamp}.json")))?;
    if let Some(j) = &opts.junit {
        report::write_junit(&report, j)?;
    }
    Ok(report)
}

/// The noise rules of each test of a set: doppel.yaml's rules, then the test's own.
pub(crate) fn compile_noise(set: &LoadedSet, config: &Config) -> Result<Vec<Noise>> {
    let defaults = config.default_header_noise.unwrap_or(true);
    set.tests
        .iter()
        .map(|(file, t)| {
            let rules: Vec<_> = config.noise.iter().chain(&t.noise).cloned().collect();
            Noise::compile(&rules, defaults).map_err(|e| Error::input(format!("{}: {e}", file.display())))
        })
        .collect()
}

fn header_line(set: &LoadedSet, mocks: usize) {
    println!(
        "{} {} ({} tests, {} mocks)",
        console::style("test set").bold(),
        console::style(&set.name).cyan().bold(),
        set.tests.len(),
        mocks
    );
    for w in &set.warnings {
        println!("  {} {w}", console::style("warning:").yellow());
    }
}

async fn run_set<C: Capture>(
    capture: &C,
    set: &LoadedSet,
    noises: &[Noise],
    opts: &ReplayOptions,
    tmp: &std::path::Path,
) -> Result<SetReport> {
    let command = opts.command.clone().ok_or_else(|| Error::input("give the command to test after --"))?;
    let pool = Arc::new(MockPool::new(set.mocks.clone(), set.dir.clone()));
    if !opts.quiet {
        header_line(set, set.mocks.len());
    }
    let mut session = capture.start(&command).await?;
    let egress_task = egress::spawn(
        std::mem::replace(&mut session.egress, tokio::sync::mpsc::channel(1).1),
        pool.clone(),
        opts.ca.clone(),
    );
    let dns_tasks: Vec<_> = std::mem::take(&mut session.dns)
        .into_iter()
        .map(|s| tokio::spawn(crate::protocols::dns::serve(s, pool.clone())))
        .collect();

    let mut ports: Vec<u16> = set.tests.iter().map(|(_, t)| t.port).collect();
    ports.sort_unstable();
    ports.dedup();
    let ready = wait_ready(&session, &ports, opts).await;
    let mut set_report = SetReport { name: set.name.clone(), total_mocks: set.mocks.len(), ..SetReport::default() };
    set_report.warnings = set.warnings.clone();
    if let Err(e) = ready {
        session.app.stop(opts.grace).await;
        egress_task.abort();
        return Err(e);
    }

    let mut seen_misses = 0usize;
    let startup: Vec<Miss> = pool.misses();
    seen_misses += startup.len();
    set_report.startup_misses = startup.iter().map(|m| m.what.clone()).collect();
    for (i, (file, test)) in set.tests.iter().enumerate() {
        let began = Instant::now();
        let start = store::parse_time_ms(&test.recorded_at);
        pool.set_window(start.map(|s| (s, s + test.latency_ms)));
        let outcome = if let Some(exit) = session.app.exited() {
            Err(format!(
                "the app exited before this test ({exit}); its last stderr lines:\n{}",
                session.app.stderr_tail()
            ))
        } else {
            send_to_app(session.link.as_ref(), test, set, opts, tmp).await
        };
        // Misses the app hit while handling this request belong to this test.
        let all = pool.misses();
        let misses: Vec<String> = all[seen_misses..].iter().filter(|m| m.at >= began).map(|m| m.what.clone()).collect();
        seen_misses = all.len();
        let result = judge(set, file, test, &noises[i], outcome, misses, began.elapsed());
        if !opts.quiet {
            report::print_result(&result);
        }
        set_report.results.push(result);
    }
    session.app.stop(opts.grace).await;
    egress_task.abort();
    for t in dns_tasks {
        t.abort();
    }
    set_report.unused_mocks = pool.usage().iter().filter(|u| **u == 0).count();
    Ok(set_report)
}

async fn wait_ready(session: &crate::capture::Session, ports: &[u16], opts: &ReplayOptions) -> Result<()> {
    let deadline = Instant::now() + opts.ready_timeout;
    loop {
        if let Some(exit) = session.app.exited() {
            return Err(Error::app(format!(
                "the app exited before it was ready ({exit}). Its last stderr lines:\n{}",
                session.app.stderr_tail()
            )));
        }
        let open = session.link.listening_ports();
        let missing: Vec<u16> = ports.iter().copied().filter(|p| !open.contains(p)).collect();
        if missing.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            return Err(Error::app(format!(
                "the app did not open port {} within {:.0}s (the tests were recorded on it). Its last stderr lines:\n{}",
                missing.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(", "),
                opts.ready_timeout.as_secs_f64(),
                session.app.stderr_tail()
            )));
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let Some(url) = &opts.ready_url else { return Ok(()) };
    let (port, path) = ready_target(url, ports)?;
    loop {
        let probe = store::HttpRequest {
            method: "GET".into(),
            target: path.clone(),
            version: "HTTP/1.1".into(),
            headers: vec![Header::new("Host", format!("localhost:{port}")), Header::new("Connection", "close")],
            body: None,
            messages: vec![],
            trailers: vec![],
        };
        if let Ok(mut conn) = session.link.connect(port).await {
            let sink = SpillBuffer::new(std::env::temp_dir(), Arc::new(0.into()));
            if let Ok(r) =
                client::exchange(&mut conn, &probe, std::path::Path::new("."), sink, Duration::from_secs(5)).await
                && r.head.status < 500
            {
                return Ok(());
            }
        }
        if session.app.exited().is_some() || Instant::now() > deadline {
            return Err(Error::app(format!(
                "--ready-url {url} did not answer below 500 within {:.0}s. The app's last stderr lines:\n{}",
                opts.ready_timeout.as_secs_f64(),
                session.app.stderr_tail()
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `--ready-url` as `/health` (first test port) or `http://localhost:8080/health`.
fn ready_target(url: &str, ports: &[u16]) -> Result<(u16, String)> {
    if url.starts_with('/') {
        let port = ports.first().copied().ok_or_else(|| Error::input("--ready-url: no test port known"))?;
        return Ok((port, url.to_string()));
    }
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| Error::input(format!("--ready-url {url}: expected /PATH or http://HOST:PORT/PATH")))?;
    let (authority, path) = rest.split_once('/').map(|(a, p)| (a, format!("/{p}"))).unwrap_or((rest, "/".into()));
    let port = authority.rsplit_once(':').and_then(|(_, p)| p.parse().ok()).unwrap_or(80);
    Ok((port, path))
}

async fn send_to_app(
    link: &dyn AppLink,
    test: &TestCase,
    set: &LoadedSet,
    opts: &ReplayOptions,
    tmp: &std::path::Path,
) -> std::result::Result<client::Response, String> {
    let mut conn =
        link.connect(test.port).await.map_err(|e| format!("cannot connect to the app's port {}: {e}", test.port))?;
    let _ = conn.set_nodelay(true);
    if test.kind == http2::KIND {
        return http2_exchange(conn, &test.request, &set.dir, tmp, opts.request_timeout).await;
    }
    let sink = SpillBuffer::new(tmp.to_path_buf(), Arc::new(0.into()));
    client::exchange(&mut conn, &test.request, &set.dir, sink, opts.request_timeout).await
}

/// Sends an HTTP/2 test request (its own connection, prior knowledge) and returns the response in the shape
/// the HTTP/1 client gives, so judging is the same.
async fn http2_exchange(
    conn: TcpStream,
    request: &store::HttpRequest,
    dir: &std::path::Path,
    tmp: &std::path::Path,
    timeout: Duration,
) -> std::result::Result<client::Response, String> {
    let began = Instant::now();
    let answer = http2::client::exchange(conn, request, dir, timeout).await?;
    let mut body = SpillBuffer::new(tmp.to_path_buf(), Arc::new(0.into()));
    body.push(&answer.body).map_err(|e| format!("cannot buffer the response body: {e}"))?;
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

async fn run_against_target(
    set: &LoadedSet,
    noises: &[Noise],
    target: &Target,
    opts: &ReplayOptions,
    tmp: &std::path::Path,
) -> SetReport {
    if !opts.quiet {
        header_line(set, 0);
    }
    let mut set_report = SetReport { name: set.name.clone(), warnings: set.warnings.clone(), ..SetReport::default() };
    for (i, (file, test)) in set.tests.iter().enumerate() {
        let began = Instant::now();
        let request = target.request_for(&test.request);
        let outcome = if test.kind == http2::KIND {
            async {
                let conn = TcpStream::connect(&target.authority)
                    .await
                    .map_err(|e| format!("cannot connect to {}: {e}", target.authority))?;
                let _ = conn.set_nodelay(true);
                http2_exchange(conn, &request, &set.dir, tmp, opts.request_timeout).await
            }
            .await
        } else {
            target.send(&request, &set.dir, tmp, opts.request_timeout).await
        };
        let result = judge(set, file, test, &noises[i], outcome, Vec::new(), began.elapsed());
        if !opts.quiet {
            report::print_result(&result);
        }
        set_report.results.push(result);
    }
    set_report
}

/// Compares one response with its recording and builds the test result.
fn judge(
    set: &LoadedSet,
    file: &std::path::Path,
    test: &TestCase,
    noise: &Noise,
    outcome: std::result::Result<client::Response, String>,
    misses: Vec<String>,
    took: Duration,
) -> TestResult {
    let mut result = TestResult {
        set: set.name.clone(),
        name: test.name.clone(),
        file: file.display().to_string(),
        method: test.request.method.clone(),
        target: test.request.target.clone(),
        outcome: Outcome::Passed,
        expected_status: test.response.status,
        actual_status: None,
        differences: Vec::new(),
        misses,
        applied_noise: Vec::new(),
        error: None,
        duration_ms: took.as_secs_f64() * 1000.0,
        recorded_latency_ms: test.latency_ms,
    };
    match outcome {
        Err(e) => result.error = Some(e),
        Ok(resp) => {
            result.actual_status = Some(resp.head.status);
            match compare_response(&set.dir, test, &resp, noise) {
                Ok(c) => {
                    result.differences = c.differences;
                    result.applied_noise = c.applied_noise;
                }
                Err(e) => result.error = Some(e),
            }
            resp.body.discard();
        }
    }
    if result.error.is_some() || !result.differences.is_empty() || !result.misses.is_empty() {
        result.outcome = Outcome::Failed;
    }
    result
}

/// Compares a live response with the one recorded in `test` (whose file bodies live in `set_dir`).
pub(crate) fn compare_response(
    set_dir: &Path,
    test: &TestCase,
    resp: &client::Response,
    noise: &Noise,
) -> std::result::Result<diff::Comparison, String> {
    let expected = &test.response;
    // gRPC: messages compared as decoded JSON, field by field.
    if test.kind == http2::KIND && http2::client::is_grpc_response(expected) {
        let body = resp.body.bytes().unwrap_or_default();
        let h = &resp.head;
        let target = &test.request.target;
        return Ok(http2::client::compare_grpc(target, expected, h.status, &h.headers, body, &resp.trailers, noise));
    }
    compare_sides(&Side::recorded(set_dir, test)?, &Side::live(resp), noise)
}

/// One response being compared: its head, and its body in memory or, when large, in a file.
pub(crate) struct Side<'a> {
    pub status: u16,
    pub headers: &'a [Header],
    pub trailers: &'a [Header],
    pub body: SideBody<'a>,
}

pub(crate) enum SideBody<'a> {
    Memory(Cow<'a, [u8]>),
    File { path: PathBuf, len: u64 },
}

impl<'a> Side<'a> {
    /// The response recorded in a test.
    pub(crate) fn recorded(set_dir: &Path, test: &'a TestCase) -> std::result::Result<Side<'a>, String> {
        let expected = &test.response;
        let body = match expected.body.as_ref().and_then(|b| b.file.as_ref()) {
            Some(file) => SideBody::File { path: set_dir.join(file), len: store::body_len(&expected.body) },
            None => {
                SideBody::Memory(Cow::Owned(store::body_bytes(set_dir, &expected.body).map_err(|e| e.to_string())?))
            }
        };
        Ok(Side { status: expected.status, headers: &expected.headers, trailers: &expected.trailers, body })
    }

    /// A response just received.
    pub(crate) fn live(resp: &'a client::Response) -> Side<'a> {
        let body = match (resp.body.bytes(), resp.body.file_path()) {
            (Some(bytes), _) => SideBody::Memory(Cow::Borrowed(bytes)),
            (None, path) => SideBody::File { path: path.unwrap_or_default(), len: resp.body.len() },
        };
        Side { status: resp.head.status, headers: &resp.head.headers, trailers: &resp.trailers, body }
    }
}

/// Compares two responses under noise rules; bodies too large for memory are compared by streaming.
pub(crate) fn compare_sides(
    expected: &Side,
    actual: &Side,
    noise: &Noise,
) -> std::result::Result<diff::Comparison, String> {
    let compare_with = |expected_body: &[u8], actual_body: &[u8]| {
        diff::compare(
            &Expected {
                status: expected.status,
                headers: expected.headers,
                body: expected_body,
                trailers: expected.trailers,
            },
            &Actual { status: actual.status, headers: actual.headers, body: actual_body, trailers: actual.trailers },
            noise,
        )
    };
    match (&expected.body, &actual.body) {
        (SideBody::Memory(e), SideBody::Memory(a)) => Ok(compare_with(e, a)),
        (e, a) => {
            // At least one side is large: compare heads as usual, the bodies by streaming.
            let mut c = compare_with(&[], &[]);
            let body_diff = match (e, a) {
                (SideBody::File { path: e, .. }, SideBody::File { path: a, .. }) => {
                    diff::compare_files(e, a).map_err(|err| format!("comparing bodies: {err}"))?
                }
                _ => {
                    let len = |b: &SideBody| match b {
                        SideBody::Memory(m) => m.len() as u64,
                        SideBody::File { len, .. } => *len,
                    };
                    Some(diff::Difference {
                        location: "body".into(),
                        change: diff::Change::Changed,
                        expected: Some(format!("{} bytes", len(e))),
                        actual: Some(format!("{} bytes", len(a))),
                        detail: None,
                    })
                }
            };
            c.differences.extend(body_diff);
            Ok(c)
        }
    }
}

/// Content type of a response, for callers that care.
pub fn content_type(headers: &[Header]) -> Option<String> {
    headers.get_str("content-type")
}
