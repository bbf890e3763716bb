//! The sending machinery: a dispatcher thread releases requests at their intended times into a queue; a
//! pool of keep-alive connections takes them from it, one request at a time each; latency runs from the
//! intended time, so time spent waiting for a free connection counts (no coordinated omission).
//!
//! The dispatcher is an OS thread sleeping with `nanosleep` rather than a tokio timer: tokio's timer wheel
//! has millisecond ticks, which would add up to a millisecond of its own lateness to every latency. When it
//! wakes it also releases the requests due within the next [`LEAD`], so that at high rates it wakes at most
//! a few thousand times a second (each wake-up is a context switch taken from the server under test on a
//! small machine). A request sent before its intended time is measured from when it was sent.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::AsyncWriteExt;

use super::gate::format_ms;
use super::schedule::Schedule;
use super::stats::{Aggregate, Batch, ErrorClass, MismatchExample, Sample};
use crate::diff::{Comparison, Noise};
use crate::error::{Context, Error, Kind, Result};
use crate::protocols::Conn;
use crate::protocols::http::parse::ResponseHead;
use crate::protocols::http::{client, wire};
use crate::replay::Target;
use crate::store::{SpillBuffer, TestCase};

/// A recorded request ready to send many times.
pub struct Prepared {
    /// The exact bytes sent: the recorded request with the target's Host.
    pub wire: Bytes,
    /// A request with chained values (`{{ chain.* }}`): rendered for each send with the latest values the
    /// target produced, instead of `wire`.
    pub templated: Option<Templated>,
    /// Chained values this request's response produces: (name, recorded value).
    pub produces: Vec<(String, serde_json::Value)>,
    pub method: String,
    pub endpoint: u32,
    /// The request asks the server to close the connection after answering.
    pub closes: bool,
    pub recorded_status: u16,
    /// With --check: what to compare the response with.
    pub check: Option<Check>,
}

pub struct Templated {
    pub set_dir: std::path::PathBuf,
    pub test: TestCase,
}

pub struct Check {
    pub set_dir: std::path::PathBuf,
    pub test: TestCase,
    pub noise: Noise,
}

pub struct EngineConfig {
    pub target: Target,
    pub connections: usize,
    pub max_inflight: usize,
    pub timeout: Duration,
    pub quiet: bool,
    /// Where --check keeps response bodies too large for memory while comparing them.
    pub tmp: std::path::PathBuf,
}

/// What the run measured.
pub struct Outcome {
    pub started: Instant,
    pub aggregate: Aggregate,
    /// Requests the schedule released (sent or dropped).
    pub scheduled: u64,
    pub dropped_per_endpoint: Vec<u64>,
    pub asked_per_second: Vec<u64>,
    pub dropped_per_second: Vec<u64>,
    /// Ctrl-C ended the run before the schedule did.
    pub interrupted: bool,
}

struct Job {
    due: Instant,
    index: usize,
}

/// How far ahead of its intended time the dispatcher may release a request.
const LEAD: Duration = Duration::from_micros(500);

/// State shared by the dispatcher, the connections and the progress line.
struct Shared {
    aggregate: Mutex<Aggregate>,
    /// Requests released and not finished: waiting for a connection or on the wire.
    inflight: AtomicUsize,
    scheduled: AtomicU64,
    completed: AtomicU64,
    dropped: AtomicU64,
    stop: AtomicBool,
    /// The chained values the target produced so far (a later request uses the latest one).
    bindings: Mutex<crate::chain::Bindings>,
}

/// What the dispatcher counted.
struct Tally {
    dropped_per_endpoint: Vec<u64>,
    asked_per_second: Vec<u64>,
    dropped_per_second: Vec<u64>,
}

fn bump(v: &mut Vec<u64>, i: usize) {
    if v.len() <= i {
        v.resize(i + 1, 0);
    }
    v[i] += 1;
}

pub async fn run(
    schedule: Schedule,
    prepared: Arc<Vec<Prepared>>,
    endpoints: &[String],
    cfg: EngineConfig,
) -> Result<Outcome> {
    let streams = open_connections(&cfg).await?;
    let started = Instant::now();
    let shared = Arc::new(Shared {
        aggregate: Mutex::new(Aggregate::new(started, endpoints)?),
        inflight: AtomicUsize::new(0),
        scheduled: AtomicU64::new(0),
        completed: AtomicU64::new(0),
        dropped: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        bindings: Mutex::new(crate::chain::Bindings::default()),
    });
    let cfg = Arc::new(cfg);
    let (jobs_tx, jobs_rx) = async_channel::unbounded::<Job>();
    let mut connections = tokio::task::JoinSet::new();
    for stream in streams {
        connections.spawn(connection(stream, jobs_rx.clone(), prepared.clone(), shared.clone(), cfg.clone()));
    }
    drop(jobs_rx);

    let endpoint_of: Vec<u32> = prepared.iter().map(|p| p.endpoint).collect();
    let dispatcher = {
        let shared = shared.clone();
        let max_inflight = cfg.max_inflight;
        let endpoint_count = endpoints.len();
        std::thread::Builder::new()
            .name("doppel-dispatch".into())
            .spawn(move || dispatch(&schedule, &endpoint_of, endpoint_count, started, jobs_tx, &shared, max_inflight))
            .map_err(|e| Error::internal(format!("cannot start the dispatcher thread: {e}")))?
    };
    let interrupt = {
        let shared = shared.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!("doppel load: stopping (requests in flight finish; Ctrl-C again to quit at once)");
                shared.stop.store(true, Ordering::Relaxed);
                if tokio::signal::ctrl_c().await.is_ok() {
                    std::process::exit(130);
                }
            }
        })
    };
    let progress = tokio::spawn(progress(shared.clone(), cfg.quiet, started));

    let tally = tokio::task::spawn_blocking(move || dispatcher.join())
        .await
        .map_err(|e| Error::internal(format!("the dispatcher failed: {e}")))?
        .map_err(|_| Error::internal("the dispatcher thread panicked"))?;
    while connections.join_next().await.is_some() {}
    progress.abort();
    interrupt.abort();
    // Wait for both to be gone so the shared state has one owner again.
    let _ = progress.await;
    let _ = interrupt.await;

    let interrupted = shared.stop.load(Ordering::Relaxed);
    let mut aggregate = match Arc::try_unwrap(shared) {
        Ok(s) => s.aggregate.into_inner().map_err(|_| Error::internal("the statistics lock was poisoned"))?,
        Err(s) => {
            // A progress tick may still hold a reference for a moment; take the data out instead.
            let mut guard = s.aggregate.lock().map_err(|_| Error::internal("the statistics lock was poisoned"))?;
            std::mem::replace(&mut *guard, Aggregate::new(started, endpoints)?)
        }
    };
    aggregate.close_seconds(Instant::now(), true);
    let scheduled = tally.asked_per_second.iter().sum();
    Ok(Outcome {
        started,
        aggregate,
        scheduled,
        dropped_per_endpoint: tally.dropped_per_endpoint,
        asked_per_second: tally.asked_per_second,
        dropped_per_second: tally.dropped_per_second,
        interrupted,
    })
}

/// Opens the pool before the clock starts, so connection set-up does not count against the first requests.
/// A target that accepts no connection at all is an error; connections that failed are retried on use.
async fn open_connections(cfg: &EngineConfig) -> Result<Vec<Option<Conn>>> {
    let mut opening = tokio::task::JoinSet::new();
    for _ in 0..cfg.connections {
        let target = cfg.target.clone();
        let timeout = cfg.timeout;
        opening.spawn(async move { target.connect(timeout, false).await });
    }
    let mut streams = Vec::new();
    let mut first_error = None;
    while let Some(r) = opening.join_next().await {
        match r {
            Ok(Ok(s)) => streams.push(Some(s)),
            Ok(Err(e)) => {
                first_error.get_or_insert(e.to_string());
                streams.push(None);
            }
            Err(e) => {
                first_error.get_or_insert(e.to_string());
                streams.push(None);
            }
        }
    }
    if streams.iter().all(Option::is_none) {
        return Err(Error::env(format!(
            "cannot connect to {}: {}",
            cfg.target.url(),
            first_error.unwrap_or_else(|| "no connection".into())
        )));
    }
    Ok(streams)
}

/// Releases each request at its intended time; beyond --max-inflight it drops it instead.
fn dispatch(
    schedule: &Schedule,
    endpoint_of: &[u32],
    endpoint_count: usize,
    started: Instant,
    jobs: async_channel::Sender<Job>,
    shared: &Shared,
    max_inflight: usize,
) -> Tally {
    let mut tally = Tally {
        dropped_per_endpoint: vec![0; endpoint_count],
        asked_per_second: Vec::new(),
        dropped_per_second: Vec::new(),
    };
    let mut k = 0u64;
    while let Some((at, index)) = schedule.at(k) {
        k += 1;
        let due = started + Duration::from_secs_f64(at);
        if shared.stop.load(Ordering::Relaxed) || (due > Instant::now() + LEAD && !sleep_until(due, &shared.stop)) {
            break;
        }
        let second = at as usize;
        bump(&mut tally.asked_per_second, second);
        shared.scheduled.fetch_add(1, Ordering::Relaxed);
        if shared.inflight.load(Ordering::Acquire) >= max_inflight {
            bump(&mut tally.dropped_per_second, second);
            if let Some(e) = endpoint_of.get(index).and_then(|e| tally.dropped_per_endpoint.get_mut(*e as usize)) {
                *e += 1;
            }
            shared.dropped.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        shared.inflight.fetch_add(1, Ordering::AcqRel);
        if jobs.try_send(Job { due, index }).is_err() {
            break; // every connection is gone
        }
    }
    tally
}

/// Sleeps until `due`; false when the run was stopped meanwhile.
fn sleep_until(due: Instant, stop: &AtomicBool) -> bool {
    loop {
        if stop.load(Ordering::Relaxed) {
            return false;
        }
        let now = Instant::now();
        if now >= due {
            return true;
        }
        // Short sleeps keep Ctrl-C responsive during long gaps of a recorded schedule.
        std::thread::sleep((due - now).min(Duration::from_millis(50)));
    }
}

/// One keep-alive connection: takes requests from the queue until it is closed and empty.
async fn connection(
    mut stream: Option<Conn>,
    jobs: async_channel::Receiver<Job>,
    prepared: Arc<Vec<Prepared>>,
    shared: Arc<Shared>,
    cfg: Arc<EngineConfig>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    let mut batch = Batch::new();
    while let Ok(job) = jobs.recv().await {
        let Some(request) = prepared.get(job.index) else { continue };
        let sent = Instant::now();
        let result = send(&mut stream, request, &mut buf, &cfg, &shared).await;
        let done = Instant::now();
        shared.inflight.fetch_sub(1, Ordering::AcqRel);
        shared.completed.fetch_add(1, Ordering::Relaxed);
        // From the intended time, so waiting for a free connection counts; from the send when released early.
        let latency = done.saturating_duration_since(job.due.min(sent));
        let sample = match result {
            Ok(answer) => Sample {
                endpoint: request.endpoint,
                latency: Some(latency),
                done,
                error: answer.error,
                mismatch: answer.mismatch,
            },
            Err(class) => {
                Sample { endpoint: request.endpoint, latency: None, done, error: Some(class), mismatch: None }
            }
        };
        batch.push(sample);
        if batch.due(jobs.is_empty()) {
            batch.flush_into(&shared.aggregate);
        }
    }
    batch.flush_into(&shared.aggregate);
}

/// Records the chained values a response produced, for the requests that use them.
fn bind(
    produces: &[(String, serde_json::Value)],
    headers: &[crate::protocols::http::Header],
    body: &[u8],
    shared: &Shared,
) {
    if let Ok(mut bindings) = shared.bindings.lock() {
        bindings.bind_from(produces, headers, body);
    }
}

struct Answer {
    /// A status error or a mismatch, when the response is not what the recording leads to expect.
    error: Option<ErrorClass>,
    mismatch: Option<MismatchExample>,
}

/// Sends one request on the connection (opening one when needed) and reads the answer.
async fn send(
    stream: &mut Option<Conn>,
    request: &Prepared,
    buf: &mut [u8],
    cfg: &EngineConfig,
    shared: &Shared,
) -> std::result::Result<Answer, ErrorClass> {
    let rendered = render(request, cfg, shared).await?;
    let wire = rendered.as_ref().unwrap_or(&request.wire);
    // A keep-alive connection the server closed while it was idle: real clients retry such requests on a
    // new connection when they are safe to repeat, and so does doppel.
    let mut may_retry = stream.is_some() && matches!(request.method.as_str(), "GET" | "HEAD" | "OPTIONS");
    loop {
        if stream.is_none() {
            *stream = Some(cfg.target.connect(cfg.timeout, false).await.map_err(|_| ErrorClass::Connect)?);
        }
        let Some(conn) = stream.as_mut() else { return Err(ErrorClass::Connect) };
        let exchange = async {
            conn.write_all(wire).await.context(Kind::App, || "sending failed".into())?;
            read_answer(conn, request, buf, cfg, shared).await
        };
        let (head, compared) = match tokio::time::timeout(cfg.timeout, exchange).await {
            Err(_) => {
                *stream = None;
                return Err(ErrorClass::Timeout);
            }
            Ok(Err(_)) => {
                *stream = None;
                if std::mem::take(&mut may_retry) {
                    continue;
                }
                return Err(ErrorClass::Io);
            }
            Ok(Ok(answer)) => answer,
        };
        if request.closes
            || wire::wants_close(&head.version, &head.headers)
            || wire::delimited_by_close(&request.method, &head)
        {
            *stream = None;
        }
        return Ok(classify(request, &head, compared));
    }
}

/// The bytes to send when the request carries chained values: filled with the latest values the target
/// produced (the recorded ones until then). `None`: the prepared bytes as they are.
async fn render(
    request: &Prepared,
    cfg: &EngineConfig,
    shared: &Shared,
) -> std::result::Result<Option<Bytes>, ErrorClass> {
    let Some(t) = &request.templated else { return Ok(None) };
    let bindings = shared.bindings.lock().map(|b| b.clone()).unwrap_or_default();
    let (recorded, _) = t.test.http().ok_or(ErrorClass::Io)?;
    let req = cfg.target.request_for(&crate::chain::render_request(&t.test, recorded, &bindings));
    let req = crate::protocols::http2::as_http1(req);
    Ok(Some(Bytes::from(client::encode_request(&req, &t.set_dir).await.map_err(|_| ErrorClass::Io)?)))
}

/// Reads the response: its head, and with `--check` how it compares with the recording. The body is kept
/// only as long as something needs it (chained values, the comparison).
async fn read_answer(
    conn: &mut Conn,
    request: &Prepared,
    buf: &mut [u8],
    cfg: &EngineConfig,
    shared: &Shared,
) -> Result<(ResponseHead, Option<Result<Comparison>>)> {
    let Some(check) = &request.check else {
        if request.produces.is_empty() {
            return client::read_response(conn, &request.method, buf, |_| Ok(())).await.map(|(head, _)| (head, None));
        }
        // Keep the (small) body: later requests use values from it.
        let mut body = Vec::new();
        let (head, _) = client::read_response(conn, &request.method, buf, |piece| {
            if body.len() < 1 << 20 {
                body.extend_from_slice(piece);
            }
            Ok(())
        })
        .await?;
        bind(&request.produces, &head.headers, &body, shared);
        return Ok((head, None));
    };
    let started = Instant::now();
    let mut body = SpillBuffer::new(cfg.tmp.clone(), crate::replay::spill_counter());
    let (head, trailers) = client::read_response(conn, &request.method, buf, |piece| {
        body.push(piece).context(Kind::Environment, || "cannot buffer the response body".into())
    })
    .await?;
    let response = client::Response { head: head.clone(), body, trailers, elapsed: started.elapsed() };
    if !request.produces.is_empty()
        && let Some(bytes) = response.body.bytes()
    {
        bind(&request.produces, &head.headers, bytes, shared);
    }
    let compared = match check.test.http() {
        Some((_, expected)) => {
            crate::replay::compare_response(&check.set_dir, &check.test, expected, &response, &check.noise)
        }
        None => Err(Error::input(format!("a {} test is not an HTTP request", check.test.kind))),
    };
    response.body.discard();
    Ok((head, Some(compared)))
}

/// What an answer counts as: an error status the recording did not have, or (with `--check`) a mismatch,
/// with an example of it.
fn classify(request: &Prepared, head: &ResponseHead, compared: Option<Result<Comparison>>) -> Answer {
    let status = head.status;
    let status_error = (status >= 400 && status != request.recorded_status).then_some(if status >= 500 {
        ErrorClass::Status5xx
    } else {
        ErrorClass::Status4xx
    });
    let mismatch = match (&request.check, compared) {
        (Some(check), Some(Ok(c))) if !c.differences.is_empty() => {
            let d = &c.differences[0];
            let shown = match (&d.expected, &d.actual) {
                (Some(e), Some(a)) => format!("{}: expected {e} got {a}", d.location),
                (Some(e), None) => format!("{}: expected {e}, missing", d.location),
                (None, Some(a)) => format!("{}: unexpected {a}", d.location),
                (None, None) => d.location.clone(),
            };
            Some(MismatchExample { endpoint: String::new(), test: check.test.name.clone(), difference: shown })
        }
        (Some(check), Some(Err(e))) => {
            Some(MismatchExample { endpoint: String::new(), test: check.test.name.clone(), difference: e.to_string() })
        }
        _ => None,
    };
    let error = status_error.or(mismatch.as_ref().map(|_| ErrorClass::Mismatch));
    Answer { error, mismatch: if status_error.is_none() { mismatch } else { None } }
}

/// The live line on stderr, once a second; also closes seconds the live view no longer needs.
async fn progress(shared: Arc<Shared>, quiet: bool, started: Instant) {
    let mut tick =
        tokio::time::interval_at(tokio::time::Instant::now() + Duration::from_secs(1), Duration::from_secs(1));
    let (mut last_scheduled, mut last_completed) = (0u64, 0u64);
    loop {
        tick.tick().await;
        let now = Instant::now();
        let (p50, p99, errors) = match shared.aggregate.lock() {
            Ok(mut a) => {
                let (p50, p99, _) = a.recent(now);
                a.close_seconds(now, false);
                (p50, p99, a.errors.total())
            }
            Err(_) => return,
        };
        if quiet {
            continue;
        }
        let scheduled = shared.scheduled.load(Ordering::Relaxed);
        let completed = shared.completed.load(Ordering::Relaxed);
        let errors = errors + shared.dropped.load(Ordering::Relaxed);
        let show = |v: Option<f64>| v.map(format_ms).unwrap_or_else(|| "-".into());
        eprintln!(
            "doppel load: {:>4}s  {:>8.1}/s (asked {:.1}/s)  in flight {}  errors {}  p50 {}  p99 {} (last {}s)",
            now.saturating_duration_since(started).as_secs(),
            (completed - last_completed) as f64,
            (scheduled - last_scheduled) as f64,
            shared.inflight.load(Ordering::Relaxed),
            errors,
            show(p50),
            show(p99),
            super::stats::WINDOW_SECONDS
        );
        last_scheduled = scheduled;
        last_completed = completed;
    }
}
