//! `doppel test`: for each test set, start the app under capture with no route out, serve every outbound
//! connection and DNS query from the mocks, send each recorded request, compare, report. With `--target`,
//! send the requests to a running deployment instead (no app, no mocks).

mod egress;
pub mod freeze;
pub mod rerecord;
pub mod select;

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpStream;

use crate::capture::{AppCommand, AppLink, Capture};
use crate::chain::{self, Bindings, Reference};
use crate::diff::{self, Actual, Expected, Noise};
use crate::error::{Error, Result};
use crate::noise::learn::{self, Observation};
use crate::protocols::http::client;
use crate::protocols::http::parse::ResponseHead;
use crate::protocols::http2;
use crate::protocols::{Conn, Miss, MockPool};
use crate::report::{self, Outcome, RunReport, SetReport, TestResult};
use crate::store::{
    self, Config, Header, HeaderList, HttpRequest, HttpResponse, LoadedSet, NoiseRule, SpillBuffer, Store, TestCase,
};
use freeze::FrozenClock;
pub use select::{Plan, Selection};

/// A running deployment to replay against: `http://host:port` or `https://host:port`.
#[derive(Clone)]
pub struct Target {
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
    pub async fn connect(&self, timeout: Duration, http2: bool) -> std::result::Result<Conn, String> {
        let conn = tokio::time::timeout(timeout, TcpStream::connect(&self.authority))
            .await
            .map_err(|_| {
                format!("cannot connect to {}: no answer within {:.1}s", self.authority, timeout.as_secs_f64())
            })?
            .map_err(|e| format!("cannot connect to {}: {e}", self.authority))?;
        let _ = conn.set_nodelay(true);
        let Some(tls) = &self.tls else { return Ok(Box::new(conn)) };
        let config = if http2 { tls.http2.clone() } else { tls.http1.clone() };
        let handshake = tokio_rustls::TlsConnector::from(config).connect(tls.name.clone(), conn);
        match tokio::time::timeout(timeout, handshake).await {
            Ok(Ok(stream)) => Ok(Box::new(stream)),
            Ok(Err(e)) => Err(format!("TLS with {} failed: {e}", self.url())),
            Err(_) => Err(format!("TLS with {} did not complete within {:.1}s", self.url(), timeout.as_secs_f64())),
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
    ) -> std::result::Result<client::Response, String> {
        let mut conn = self.connect(timeout, false).await?;
        let sink = SpillBuffer::new(tmp.to_path_buf(), spill_counter());
        client::exchange(&mut conn, request, dir, sink, timeout).await
    }
}

/// `http://REST` or `https://REST`: the rest, and whether it is https.
fn split_scheme(url: &str) -> Option<(&str, bool)> {
    url.strip_prefix("http://").map(|r| (r, false)).or_else(|| url.strip_prefix("https://").map(|r| (r, true)))
}

/// Speaks TLS to the app's own port, as the recorded client did, with the server name it asked for. The
/// app's certificate is accepted whatever it is: it is the app under test, not a server to be trusted.
async fn tls_to_app(conn: TcpStream, name: &str, http2: bool) -> std::result::Result<Conn, String> {
    let name = if name.is_empty() { "localhost" } else { name };
    let server_name = rustls::pki_types::ServerName::try_from(name.to_string())
        .map_err(|e| format!("the recorded TLS server name {name:?}: {e}"))?;
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
        .map_err(|e| format!("TLS with the app (as {name}) failed: {e}"))?;
    Ok(Box::new(stream))
}

/// The app ports the planned tests go to, with the TLS server name their clients used (if they spoke TLS).
pub(crate) fn app_ports(set: &LoadedSet, plan: &Plan) -> Vec<(u16, Option<String>)> {
    let mut ports: Vec<(u16, Option<String>)> =
        plan.tests.iter().map(|i| (set.tests[*i].1.port, set.tests[*i].1.tls.clone())).collect();
    ports.sort_by_key(|(p, _)| *p);
    ports.dedup_by_key(|(p, _)| *p);
    ports
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
    /// Which tests run (`--test`, `--tag`); empty runs all.
    pub selection: Selection,
    /// Fill chain templates with the values the app produces in this run (false: the recorded values).
    pub chain: bool,
    /// Run the app with its clock at each test's recorded time.
    pub freeze_time: bool,
    /// Replay each set this many times and write the fields that differ between runs as learned noise.
    pub learn_runs: Option<usize>,
    /// A second deployment of the target's version: fields that differ between the two are noise.
    pub secondary: Option<Target>,
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
    let sets = load_sets(opts)?;
    let tmp = std::env::temp_dir().join(format!("doppel-replay-{}", std::process::id()));
    for (set, rules, plan) in &sets {
        let set_report = match opts.learn_runs {
            Some(runs) => learn_set(capture, set, plan, rules, opts, &tmp, runs).await?,
            None => run_once(capture, set, plan, rules, opts, &tmp, opts.quiet).await?.report,
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

/// Loads and checks every selected set first (a malformed file stops the run before the app starts), with
/// each test's rules and the tests the selection runs. Sets with no selected test are left out.
pub(crate) fn load_sets(opts: &ReplayOptions) -> Result<Vec<(LoadedSet, Vec<Rules>, Plan)>> {
    let names = if opts.sets.is_empty() { opts.store.list_sets()? } else { opts.sets.clone() };
    if names.is_empty() {
        return Err(Error::input(format!(
            "no test sets in {} (record some with `doppel record -- <command>`)",
            opts.store.root().display()
        )));
    }
    let mut sets = Vec::new();
    for name in &names {
        let set = opts.store.load_set(name)?;
        if let Some(type_name) = http2::grpc::missing_schema(&set) {
            return Err(Error::input(format!(
                "test set {} holds gRPC messages decoded with a .proto ({type_name}); give the same files with --proto",
                set.name
            )));
        }
        let rules = compile_noise(&set, &opts.config, opts.freeze_time)?;
        let plan = Plan::new(&set, &opts.selection);
        // A set with no test at all still runs when nothing was selected (its app must start cleanly).
        if !plan.tests.is_empty() || opts.selection.is_all() {
            sets.push((set, rules, plan));
        }
    }
    if sets.is_empty() {
        return Err(Error::input(format!("no test matches {} (in {})", opts.selection.describe(), names.join(", "))));
    }
    Ok(sets)
}

/// The rules of one test: doppel.yaml's, the test's own, and its volatile flags, compiled.
#[derive(Clone)]
pub(crate) struct Rules {
    pub list: Vec<NoiseRule>,
    pub noise: Noise,
}

impl Rules {
    fn new(config: &Config, test: &TestCase, freeze_time: bool) -> std::result::Result<Rules, String> {
        let list: Vec<NoiseRule> = config.noise.iter().chain(&test.noise).chain(&test.volatile).cloned().collect();
        let noise = Noise::compile(&list, default_headers(config))?
            .with_clock_tolerance(freeze_time.then_some(freeze::TOLERANCE_S));
        Ok(Rules { list, noise })
    }
}

fn default_headers(config: &Config) -> bool {
    config.default_header_noise.unwrap_or(true)
}

pub(crate) fn compile_noise(set: &LoadedSet, config: &Config, freeze_time: bool) -> Result<Vec<Rules>> {
    set.tests
        .iter()
        .map(|(file, t)| {
            Rules::new(config, t, freeze_time).map_err(|e| Error::input(format!("{}: {e}", file.display())))
        })
        .collect()
}

fn header_line(set: &LoadedSet, plan: &Plan, mocks: usize) {
    let selected = if plan.tests.len() == set.tests.len() {
        format!("{} tests", set.tests.len())
    } else {
        format!("{} of {} tests", plan.tests.len(), set.tests.len())
    };
    println!(
        "{} {} ({selected}, {} mocks)",
        console::style("test set").bold(),
        console::style(&set.name).cyan().bold(),
        mocks
    );
    for w in &set.warnings {
        println!("  {} {w}", console::style("warning:").yellow());
    }
    if !plan.feeders.is_empty() {
        let names: Vec<&str> = plan.feeders.iter().map(|i| set.tests[*i].1.name.as_str()).collect();
        println!(
            "  {} {} (selected tests use values from their responses)",
            console::style("also running").dim(),
            names.join(", ")
        );
    }
}

/// What the app answered to one test, kept for learning noise and judging again with new rules.
#[derive(Clone)]
pub(crate) struct Answer {
    /// As received.
    pub raw: Observation,
    /// With values chained from earlier answers put back to their recorded form.
    pub normalized: Observation,
    /// The response expected in this run (chain templates filled in).
    pub expected: HttpResponse,
}

/// One replay of one set: the report and, per planned test, the answer when it could be kept (it came, and
/// its body was small enough to hold).
pub(crate) struct SetRun {
    pub report: SetReport,
    pub answers: Vec<Option<Answer>>,
}

/// Replays a set once, against the app under capture or against the target.
async fn run_once<C: Capture>(
    capture: Option<&C>,
    set: &LoadedSet,
    plan: &Plan,
    rules: &[Rules],
    opts: &ReplayOptions,
    tmp: &std::path::Path,
    quiet: bool,
) -> Result<SetRun> {
    match (&opts.target, capture) {
        (Some(target), _) => Ok(run_against_target(set, plan, rules, target, opts, tmp, quiet).await),
        (None, Some(capture)) => run_set(capture, set, plan, rules, opts, tmp, quiet).await,
        (None, None) => Err(Error::input("give a command after -- or a --target")),
    }
}

/// Replays a set `runs` times against the same build, writes the fields that differ between the runs into
/// the test files as learned rules, and judges the last run with them.
async fn learn_set<C: Capture>(
    capture: Option<&C>,
    set: &LoadedSet,
    plan: &Plan,
    rules: &[Rules],
    opts: &ReplayOptions,
    tmp: &std::path::Path,
    runs: usize,
) -> Result<SetReport> {
    if !opts.quiet {
        header_line(set, plan, if opts.target.is_some() { 0 } else { set.mocks.len() });
        println!("  learning noise: {runs} runs of the same build");
    }
    let mut all = Vec::new();
    for _ in 0..runs {
        all.push(run_once(capture, set, plan, rules, opts, tmp, true).await?);
    }
    let today = store::now_rfc3339().chars().take(10).collect::<String>();
    let mut rules = rules.to_vec();
    let mut learned_lines = Vec::new();
    for (k, &i) in plan.tests.iter().enumerate() {
        let (file, test) = &set.tests[i];
        let seen: Vec<Observation> =
            all.iter().filter_map(|run| run.answers.get(k)?.as_ref().map(|a| a.normalized.clone())).collect();
        if seen.len() < 2 {
            continue;
        }
        let learning = learn::learn(&seen, &rules[i].list, default_headers(&opts.config), &today);
        for u in &learning.unlearnable {
            if !opts.quiet {
                println!(
                    "  {} {}: {u} (not learned: it may be a real difference)",
                    console::style("warning:").yellow(),
                    test.name
                );
            }
        }
        let fresh: Vec<NoiseRule> = learning
            .rules
            .into_iter()
            .filter(|r| {
                !test.noise.iter().any(|n| n.header == r.header && n.body == r.body && n.ignore_order == r.ignore_order)
            })
            .collect();
        if fresh.is_empty() {
            continue;
        }
        let mut updated = test.clone();
        updated.noise.extend(fresh.iter().cloned());
        Store::rewrite_test(file, &updated)?;
        let described: Vec<String> = fresh.iter().map(describe_learned).collect();
        if !opts.quiet {
            println!("  {} {}: {}", console::style("learned").magenta().bold(), test.name, described.join(", "));
        }
        learned_lines.extend(described.iter().map(|d| format!("{}: {d}", test.name)));
        rules[i] = Rules::new(&opts.config, &updated, opts.freeze_time)
            .map_err(|e| Error::input(format!("{}: {e}", file.display())))?;
    }
    let Some(mut last) = all.pop() else { return Ok(SetReport::default()) };
    for (k, &i) in plan.tests.iter().enumerate() {
        if let (Some(result), Some(Some(answer))) = (last.report.results.get_mut(k), last.answers.get(k)) {
            rejudge(set, result, answer, &rules[i].noise);
        }
        if let Some(result) = last.report.results.get(k)
            && !opts.quiet
        {
            report::print_result(result);
        }
    }
    last.report.learned = learned_lines;
    Ok(last.report)
}

/// `body $.shard (seen 3, 7)`, `body $.tags (ignore order)`.
fn describe_learned(r: &NoiseRule) -> String {
    let what = match (&r.header, &r.body) {
        (Some(h), _) => format!("header {h}"),
        (None, Some(b)) => format!("body {b}"),
        (None, None) => String::new(),
    };
    if r.ignore_order {
        return format!("{what} (ignore order)");
    }
    match r.learned.as_ref().filter(|l| !l.seen.is_empty()) {
        Some(l) => format!("{what} (seen {})", l.seen.join(", ")),
        None => what,
    }
}

/// Sets the live value of every chain name `test` produces, from its actual response.
fn bind(plan: &Plan, test: &TestCase, resp: &client::Response, bindings: &mut Bindings) {
    let Some(list) = plan.produces.get(&test.name) else { return };
    let json = resp.body.bytes().and_then(|b| serde_json::from_slice::<serde_json::Value>(b).ok());
    for (name, recorded) in list {
        if let Some(r) = Reference::parse(name)
            && let Some(live) = r.extract(&resp.head.headers, json.as_ref())
        {
            bindings.bind(name.clone(), recorded.clone(), live);
        }
    }
}

/// The answer to keep from a response whose body is in memory.
fn answer_of(resp: &client::Response, expected: &HttpResponse, bindings: &Bindings) -> Option<Answer> {
    let body = resp.body.bytes()?.to_vec();
    let raw = Observation {
        status: resp.head.status,
        headers: resp.head.headers.clone(),
        trailers: resp.trailers.clone(),
        body,
    };
    let normalized = normalize(&raw, bindings);
    Some(Answer { raw, normalized, expected: expected.clone() })
}

/// Puts chained values the app produced in this run back to their recorded form, so two runs compare equal
/// where they only differ by the ids each run created.
fn normalize(raw: &Observation, bindings: &Bindings) -> Observation {
    if bindings.is_empty() {
        return raw.clone();
    }
    let headers = |hs: &[Header]| -> Vec<Header> {
        hs.iter()
            .map(|h| match std::str::from_utf8(&h.value) {
                Ok(v) => Header::new(h.name.clone(), bindings.unrender_text(v)),
                Err(_) => h.clone(),
            })
            .collect()
    };
    let body = match serde_json::from_slice::<serde_json::Value>(&raw.body) {
        Ok(mut v) => {
            bindings.unrender_json(&mut v);
            serde_json::to_vec(&v).unwrap_or_else(|_| raw.body.clone())
        }
        Err(_) => match std::str::from_utf8(&raw.body) {
            Ok(t) => bindings.unrender_text(t).into_bytes(),
            Err(_) => raw.body.clone(),
        },
    };
    Observation { status: raw.status, headers: headers(&raw.headers), trailers: headers(&raw.trailers), body }
}

async fn run_set<C: Capture>(
    capture: &C,
    set: &LoadedSet,
    plan: &Plan,
    rules: &[Rules],
    opts: &ReplayOptions,
    tmp: &std::path::Path,
    quiet: bool,
) -> Result<SetRun> {
    let mut command = opts.command.clone().ok_or_else(|| Error::input("give the command to test after --"))?;
    let pool = Arc::new(MockPool::new(set.mocks.clone(), set.dir.clone()));
    // The frozen clock starts at the first test's recorded time, before the app reads any clock.
    let clock = if opts.freeze_time {
        let (clock, env) = FrozenClock::prepare(&command.argv, tmp)?;
        if let Some(&first) = plan.tests.first() {
            clock.set(&set.tests[first].1.recorded_at)?;
        }
        command.env.extend(env);
        Some(clock)
    } else {
        None
    };
    if !quiet {
        header_line(set, plan, set.mocks.len());
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

    let ports = app_ports(set, plan);
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
    let mut bindings = Bindings::default();
    let mut answers = Vec::new();
    for &i in &plan.tests {
        let (file, test) = &set.tests[i];
        if let Some(clock) = &clock {
            clock.set(&test.recorded_at)?;
        }
        let began = Instant::now();
        let start = store::parse_time_ms(&test.recorded_at);
        pool.set_window(start.map(|s| (s, s + test.latency_ms)));
        pool.set_rewrites(bindings.rewrites());
        let request = chain::render_request(test, &bindings);
        let outcome = if let Some(exit) = session.app.exited() {
            Err(format!(
                "the app exited before this test ({exit}); its last stderr lines:\n{}",
                session.app.stderr_tail()
            ))
        } else {
            let sink = SpillBuffer::new(tmp.to_path_buf(), Arc::new(0.into()));
            send_to_app(session.link.as_ref(), test, &request, set, opts, sink).await
        };
        if opts.chain
            && let Ok(resp) = &outcome
        {
            bind(plan, test, resp, &mut bindings);
        }
        let expected = chain::render_response(test, &bindings);
        // Misses the app hit while handling this request belong to this test.
        let all = pool.misses();
        let misses: Vec<String> = all[seen_misses..].iter().filter(|m| m.at >= began).map(|m| m.what.clone()).collect();
        seen_misses = all.len();
        answers.push(outcome.as_ref().ok().and_then(|r| answer_of(r, &expected, &bindings)));
        let result = judge(set, file, test, &expected, &rules[i].noise, outcome, misses, began.elapsed());
        if !quiet {
            report::print_result(&result);
        }
        set_report.results.push(result);
    }
    session.app.stop(opts.grace).await;
    egress_task.abort();
    for t in dns_tasks {
        t.abort();
    }
    drop(clock);
    set_report.unused_mocks = pool.usage().iter().filter(|u| **u == 0).count();
    Ok(SetRun { report: set_report, answers })
}

async fn wait_ready(
    session: &crate::capture::Session,
    ports: &[(u16, Option<String>)],
    opts: &ReplayOptions,
) -> Result<()> {
    let deadline = Instant::now() + opts.ready_timeout;
    loop {
        if let Some(exit) = session.app.exited() {
            return Err(Error::app(format!(
                "the app exited before it was ready ({exit}). Its last stderr lines:\n{}",
                session.app.stderr_tail()
            )));
        }
        let open = session.link.listening_ports();
        let missing: Vec<u16> = ports.iter().map(|(p, _)| *p).filter(|p| !open.contains(p)).collect();
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
    let (port, path, tls) = ready_target(url, ports)?;
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
        let conn = match session.link.connect(port).await {
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

/// `--ready-url` as `/health` (first test port, in TLS when its tests were), `http://localhost:8080/health`
/// or `https://localhost:8443/health`: the port, the path and the TLS server name to use.
fn ready_target(url: &str, ports: &[(u16, Option<String>)]) -> Result<(u16, String, Option<String>)> {
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

/// Sends a test's request to the app (in TLS when the recorded client spoke TLS); its response body goes
/// to `sink` (spilling to disk when large).
pub(crate) async fn send_to_app(
    link: &dyn AppLink,
    test: &TestCase,
    request: &HttpRequest,
    set: &LoadedSet,
    opts: &ReplayOptions,
    sink: SpillBuffer,
) -> std::result::Result<client::Response, String> {
    let port = test.port;
    let http2 = test.kind == http2::KIND;
    let conn = link.connect(port).await.map_err(|e| format!("cannot connect to the app's port {port}: {e}"))?;
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
) -> std::result::Result<client::Response, String> {
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
    request: &store::HttpRequest,
    dir: &std::path::Path,
    mut body: SpillBuffer,
    timeout: Duration,
) -> std::result::Result<client::Response, String> {
    let began = Instant::now();
    let answer = http2::client::exchange(conn, request, dir, timeout).await?;
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

/// Replays against a deployment. With a secondary (a second deployment of the same version), each request
/// goes to both; the fields that differ between their answers are noise for that test (Diffy's approach):
/// what two identical builds disagree on cannot be a regression.
async fn run_against_target(
    set: &LoadedSet,
    plan: &Plan,
    rules: &[Rules],
    target: &Target,
    opts: &ReplayOptions,
    tmp: &std::path::Path,
    quiet: bool,
) -> SetRun {
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
        let began = Instant::now();
        let outcome =
            send_to_target(target, &chain::render_request(test, &bindings), set, opts, tmp, test.kind == http2::KIND)
                .await;
        if opts.chain
            && let Ok(resp) = &outcome
        {
            bind(plan, test, resp, &mut bindings);
        }
        let expected = chain::render_response(test, &bindings);
        let answer = outcome.as_ref().ok().and_then(|r| answer_of(r, &expected, &bindings));
        let mut noise = rules[i].noise.clone();
        if let Some(secondary) = &opts.secondary {
            let other = send_to_target(
                secondary,
                &chain::render_request(test, &secondary_bindings),
                set,
                opts,
                tmp,
                test.kind == http2::KIND,
            )
            .await;
            if let Ok(resp) = &other {
                if opts.chain {
                    bind(plan, test, resp, &mut secondary_bindings);
                }
                let other_expected = chain::render_response(test, &secondary_bindings);
                if let (Some(a), Some(b)) = (&answer, answer_of(resp, &other_expected, &secondary_bindings)) {
                    let defaults = default_headers(&opts.config);
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

/// Compares one response with the expected one and builds the test result.
#[allow(clippy::too_many_arguments)]
fn judge(
    set: &LoadedSet,
    file: &std::path::Path,
    test: &TestCase,
    expected: &HttpResponse,
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
            match compare_response(&set.dir, test, expected, &resp, noise) {
                Ok(c) => {
                    result.differences = c.differences;
                    result.applied_noise = c.applied_noise;
                }
                Err(e) => result.error = Some(e),
            }
            resp.body.discard();
        }
    }
    settle(&mut result);
    result
}

fn settle(result: &mut TestResult) {
    result.outcome = if result.error.is_some() || !result.differences.is_empty() || !result.misses.is_empty() {
        Outcome::Failed
    } else {
        Outcome::Passed
    };
}

/// Compares a kept answer again, under new rules.
fn rejudge(set: &LoadedSet, result: &mut TestResult, answer: &Answer, noise: &Noise) {
    let Ok(expected_body) = set.body_bytes(&answer.expected.body) else { return };
    let e = &answer.expected;
    let c = diff::compare(
        &Expected { status: e.status, headers: &e.headers, body: &expected_body, trailers: &e.trailers },
        &Actual {
            status: answer.raw.status,
            headers: &answer.raw.headers,
            body: &answer.raw.body,
            trailers: &answer.raw.trailers,
        },
        noise,
    );
    result.differences = c.differences;
    result.applied_noise = c.applied_noise;
    settle(result);
}

/// Compares a live response with `expected`, the response recorded in `test` with its chained values
/// filled in (file bodies live in `set_dir`).
pub(crate) fn compare_response(
    set_dir: &Path,
    test: &TestCase,
    expected: &HttpResponse,
    resp: &client::Response,
    noise: &Noise,
) -> std::result::Result<diff::Comparison, String> {
    // gRPC: messages compared as decoded JSON, field by field.
    if test.kind == http2::KIND && http2::client::is_grpc_response(expected) {
        let body = resp.body.bytes().unwrap_or_default();
        let h = &resp.head;
        let target = &test.request.target;
        return Ok(http2::client::compare_grpc(target, expected, h.status, &h.headers, body, &resp.trailers, noise));
    }
    compare_sides(&Side::recorded(set_dir, expected)?, &Side::live(resp), noise)
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
    /// A recorded response (file bodies live in `set_dir`).
    pub(crate) fn recorded(set_dir: &Path, expected: &'a HttpResponse) -> std::result::Result<Side<'a>, String> {
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

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn ready_urls_name_the_port_and_tls() {
        let ports = [(8443, Some("localhost".to_string())), (9000, None)];
        assert_eq!(ready_target("/health", &ports).unwrap(), (8443, "/health".into(), Some("localhost".into())));
        assert_eq!(ready_target("http://localhost:9000/ok", &ports).unwrap(), (9000, "/ok".into(), None));
        assert_eq!(ready_target("https://api.local/", &ports).unwrap(), (443, "/".into(), Some("api.local".into())));
        assert!(ready_target("ftp://x/", &ports).is_err());
    }
}
