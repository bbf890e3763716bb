//! `doppel test --rerecord`: after an intended change, refresh what the tests expect. The app runs in record
//! mode (its dependencies are real and recorded again as mocks); doppel sends each test's request, shows
//! how the answers differ from the recorded ones, and writes the new answers and mocks when told to (`--yes`,
//! or a yes at the terminal). Without a terminal and without `--yes` nothing is written.

use std::io::{BufRead, IsTerminal, Write};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant, SystemTime};

use super::judge::compare_response;
use super::ready::{app_ports, wait_ready};
use super::target::send_to_app;
use super::{Plan, Planned, ReplayOptions, Rules, bind, load_sets};
use crate::capture::Capture;
use crate::chain::{self, Bindings};
use crate::diff;
use crate::error::{Error, Result};
use crate::harness::{Dependencies, Harness};
use crate::protocols::Mock;
use crate::protocols::http::HttpResponse;
use crate::protocols::http::client::Response;
use crate::record::annotate::{self, Annotate};
use crate::report;
use crate::store::{self, LoadedSet, RecordSink, SetMeta, Store, TestCase};

pub struct Rerecord {
    /// Write without asking.
    pub yes: bool,
    /// doppel's CA, to decrypt the app's TLS to its dependencies.
    pub tls: Option<Arc<crate::tls::Ca>>,
}

/// One test's new answer.
struct Fresh {
    index: usize,
    test: TestCase,
    differences: Vec<diff::Difference>,
    error: Option<String>,
}

/// Everything re-recorded for one set, ready to write.
struct SetRefresh {
    set: LoadedSet,
    tmp_dir: std::path::PathBuf,
    fresh: Vec<Fresh>,
    all_tests: bool,
    mocks_changed: bool,
    old_mocks: usize,
}

/// Returns the exit code: 0 written or nothing to change, 1 changes left unwritten.
pub(crate) async fn run(capture: &dyn Capture, opts: &ReplayOptions, rr: &Rerecord) -> Result<i32> {
    let sets = load_sets(opts)?;
    // The new recordings wait in a scratch directory (removed on every way out) until they are written.
    let scratch = store::scratch("rerecord")?;
    let mut refreshed = Vec::new();
    for planned in sets {
        refreshed.push(refresh_set(capture, planned, opts, rr, scratch.path()).await?);
    }
    let changed: Vec<&SetRefresh> =
        refreshed.iter().filter(|r| r.mocks_changed || r.fresh.iter().any(|f| !f.differences.is_empty())).collect();
    let failed = refreshed.iter().flat_map(|r| &r.fresh).filter(|f| f.error.is_some()).count();
    let code = if failed > 0 {
        println!("doppel: {failed} request(s) got no answer; nothing was written");
        1
    } else if changed.is_empty() {
        println!("doppel: the answers match the recordings; nothing to write");
        0
    } else if confirm(rr.yes, &changed)? {
        for r in &refreshed {
            write(r, opts)?;
        }
        0
    } else {
        1
    };
    drop(scratch);
    Ok(code)
}

fn confirm(yes: bool, changed: &[&SetRefresh]) -> Result<bool> {
    if yes {
        return Ok(true);
    }
    let tests: usize = changed.iter().map(|r| r.fresh.len()).sum();
    if !std::io::stdin().is_terminal() {
        println!(
            "doppel: not written: there is no terminal to ask and --yes was not given (run again with --yes to \
             write {tests} test file(s))"
        );
        return Ok(false);
    }
    print!("Write the new answers to {tests} test file(s) and their mocks? [y/N] ");
    let _ = std::io::stdout().flush();
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line).map_err(|e| Error::io(format!("cannot read the answer: {e}")))?;
    let ok = matches!(line.trim(), "y" | "Y" | "yes" | "YES" | "Yes");
    if !ok {
        println!("doppel: nothing written");
    }
    Ok(ok)
}

async fn refresh_set(
    capture: &dyn Capture,
    planned: Planned,
    opts: &ReplayOptions,
    rr: &Rerecord,
    tmp: &std::path::Path,
) -> Result<SetRefresh> {
    let Planned { set, rules, plan } = planned;
    let command = opts.command.clone().ok_or_else(|| Error::input("give the command that runs the app after --"))?;
    println!(
        "{} {} ({} tests, against the real dependencies)",
        console::style("re-record").bold(),
        console::style(&set.name).cyan().bold(),
        plan.tests.len()
    );
    // The new mocks go to a scratch set first; they replace the old ones only when written.
    let scratch = Store::new(tmp.join(&set.name)).with_privacy(opts.store.privacy().clone());
    let meta = SetMeta { created_at: store::now_rfc3339(), ..set.meta.clone() };
    let writer = scratch.create_set(Some(&set.name), &meta)?;
    let tmp_dir = writer.dir.clone();
    let sink = writer.sink();
    let tls = match &rr.tls {
        Some(ca) => Some(Arc::new(crate::tls::Interceptor::new(ca.clone(), &Default::default())?)),
        None => None,
    };
    let deps = Dependencies::Real { sink: sink.clone(), tls, dns_upstream: None, ids: Arc::new(AtomicU64::new(1)) };
    let harness = Harness::start(capture, &command, deps).await?;
    let ready = wait_ready(&harness.app, harness.link.as_ref(), &app_ports(&set, &plan), opts).await;
    let fresh = match &ready {
        Ok(()) => resend(&harness, &set, &rules, &plan, opts, &sink).await,
        Err(_) => Vec::new(),
    };
    harness.stop(opts.grace).await;
    drop(sink);
    let summary = writer.finish();
    ready?;
    let new_mocks: usize = summary.mocks_by_kind.values().sum();
    let recorded = scratch.load_set(&set.name)?;
    let mocks_changed = signature(&set.mocks) != signature(&recorded.mocks);
    let all_tests = plan.tests.len() == set.tests.len();
    println!(
        "  mocks: {} recorded before, {} now{}",
        set.mocks.len(),
        new_mocks,
        if mocks_changed { " (different calls)" } else { " (the same calls)" }
    );
    Ok(SetRefresh { old_mocks: set.mocks.len(), set, tmp_dir, fresh, all_tests, mocks_changed })
}

/// Sends each planned test's request to the app running against its real dependencies, and keeps its new
/// answer.
async fn resend(
    harness: &Harness,
    set: &LoadedSet,
    rules: &[Rules],
    plan: &Plan,
    opts: &ReplayOptions,
    sink: &RecordSink,
) -> Vec<Fresh> {
    let mut fresh = Vec::new();
    let mut bindings = Bindings::default();
    for &i in &plan.tests {
        let (_, test) = &set.tests[i];
        let Some((recorded_request, recorded_response)) = test.http() else {
            let e = format!("a {} test cannot be re-recorded by this doppel", test.kind);
            println!("  {} {}  {}", console::style("NO ANSWER").red().bold(), test.name, e);
            fresh.push(Fresh { index: i, test: test.clone(), differences: Vec::new(), error: Some(e) });
            continue;
        };
        let sent_at = SystemTime::now();
        let began = Instant::now();
        let request = chain::render_request(test, recorded_request, &bindings);
        // Large answers spill straight into the scratch set's bodies/, beside the new mocks.
        let outcome = send_to_app(harness.link.as_ref(), test, &request, set, opts, sink.spill_buffer()).await;
        let resp = match outcome {
            Ok(r) => r,
            Err(e) => {
                println!("  {} {}  {}", console::style("NO ANSWER").red().bold(), test.name, e);
                fresh.push(Fresh { index: i, test: test.clone(), differences: Vec::new(), error: Some(e.to_string()) });
                continue;
            }
        };
        if opts.chain {
            bind(plan, test, &resp, &mut bindings);
        }
        let expected = chain::render_response(test, recorded_response, &bindings);
        let differences = compare(set, test, &expected, &resp, &rules[i]);
        let mut updated = test.clone();
        updated.recorded_at = store::format_time(time::OffsetDateTime::from(sent_at));
        updated.latency_ms = (resp.elapsed.as_secs_f64() * 1_000_000.0).round() / 1000.0;
        if let Some((q, r)) = updated.http_mut() {
            *q = request;
            *r = as_recorded(&recorded_request.target, resp);
        }
        // Re-derived from the new answers when written.
        updated.chain.clear();
        updated.volatile.clear();
        print_change(test, &differences, began.elapsed());
        fresh.push(Fresh { index: i, test: updated, differences, error: None });
    }
    fresh
}

/// A live answer in the form `doppel record` writes it: a gRPC body as its decoded messages, as the
/// recorder keeps them (a body left undecoded would differ from the recording at the next replay).
fn as_recorded(path: &str, resp: Response) -> HttpResponse {
    let grpc = crate::protocols::http2::grpc::is_grpc(&resp.head.headers);
    let (body, messages) = crate::protocols::http2::body_or_messages(resp.body, grpc, path, false);
    let head = resp.head;
    HttpResponse {
        status: head.status,
        reason: head.reason,
        version: head.version,
        headers: head.headers,
        body,
        messages,
        trailers: resp.trailers,
    }
}

/// How the new answer differs from the expected one, under the test's rules.
fn compare(
    set: &LoadedSet,
    test: &TestCase,
    expected: &HttpResponse,
    resp: &Response,
    rules: &Rules,
) -> Vec<diff::Difference> {
    match compare_response(&set.dir, test, expected, resp, &rules.noise) {
        Ok(c) => c.differences,
        Err(e) => vec![diff::Difference {
            location: "body".into(),
            change: diff::Change::Changed,
            expected: None,
            actual: None,
            detail: Some(e.to_string()),
        }],
    }
}

fn print_change(test: &TestCase, differences: &[diff::Difference], took: Duration) {
    if differences.is_empty() {
        println!("  {} {}  ({:.1} ms)", console::style("same").green(), test.name, took.as_secs_f64() * 1000.0);
        return;
    }
    println!("  {} {}", console::style("changes").yellow().bold(), test.name);
    print!("{}", report::render_differences(differences));
}

/// What the app asked of its dependencies, in a form that ignores timings and ids: two recordings with the
/// same signature made the same calls.
fn signature(mocks: &[Mock]) -> Vec<String> {
    let mut out: Vec<String> = mocks
        .iter()
        .map(|m| match &m.http {
            Some(h) => format!("{} {} {} {}", m.kind, m.dest, h.request.method, h.request.target),
            None => format!("{} {}", m.kind, m.dest),
        })
        .collect();
    out.sort();
    out
}

fn write(r: &SetRefresh, opts: &ReplayOptions) -> Result<()> {
    let mut tests: Vec<TestCase> = r.set.tests.iter().map(|(_, t)| t.clone()).collect();
    let refreshed: std::collections::BTreeSet<usize> = r.fresh.iter().map(|f| f.index).collect();
    for f in &r.fresh {
        tests[f.index] = f.test.clone();
    }
    // Tests that were not re-recorded keep their templates; the re-recorded ones get theirs again.
    let flags = Annotate { chain: opts.chain, volatile: opts.config.volatile.unwrap_or(true), tags: Vec::new() };
    let kept_volatile: Vec<_> = tests.iter().map(|t| t.volatile.clone()).collect();
    annotate::annotate(&mut tests, &flags);
    for (i, t) in tests.iter_mut().enumerate() {
        if !refreshed.contains(&i) {
            t.volatile = kept_volatile[i].clone();
        }
    }
    let n = opts.store.adopt_mocks(&r.set.dir, &r.tmp_dir, r.all_tests)?;
    let mut written = 0;
    for ((path, before), after) in r.set.tests.iter().zip(&tests) {
        if before != after {
            opts.store.rewrite_test(path, after)?;
            written += 1;
        }
    }
    println!(
        "doppel: wrote {written} test file(s) of {} and {} {n} mock(s) ({} before)",
        r.set.name,
        if r.all_tests { "replaced the mocks with" } else { "added" },
        r.old_mocks
    );
    Ok(())
}
