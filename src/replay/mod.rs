//! `doppel test`: for each test set, start the app under capture with no route out, serve every outbound
//! connection and DNS query from the mocks, send each recorded request, compare, report. With `--target`,
//! send the requests to a running deployment instead (no app, no mocks).
//!
//! Rooms: `target` (where requests go), `ready` (when the app is ready), `judge` (comparing an answer),
//! `learn` (noise learned over runs), `select` (which tests run), `freeze` (the app's clock), `egress`
//! (the mock servers), `rerecord` (refreshing a recording).

pub(crate) mod egress;
pub(crate) mod freeze;
mod judge;
mod learn;
mod ready;
pub(crate) mod rerecord;
pub(crate) mod select;
pub(crate) mod target;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::capture::{AppCommand, Capture};
use crate::chain::{self, Bindings};
use crate::diff::Noise;
use crate::error::{Error, Result};
use crate::harness::{Dependencies, Harness};
use crate::noise::learn::Observation;
use crate::protocols::http::HttpResponse;
use crate::protocols::http::client;
use crate::protocols::http2;
use crate::protocols::{Miss, MockPool};
use crate::report::{self, RunReport, SetReport};
use crate::store::{self, Config, LoadedSet, NoiseRule, SpillBuffer, Store, TestCase};
use freeze::FrozenClock;
use judge::judge;
pub(crate) use judge::{Side, compare_response, compare_sides};
pub(crate) use select::{Plan, Selection};
pub(crate) use target::{Target, spill_counter};

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
pub(crate) async fn run(capture: Option<&dyn Capture>, opts: &ReplayOptions) -> Result<RunReport> {
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
    let scratch = store::scratch("replay")?;
    let tmp = scratch.path();
    for planned in &sets {
        let set_report = match opts.learn_runs {
            Some(runs) => learn::learn_set(capture, planned, opts, tmp, runs).await?,
            None => run_once(capture, planned, opts, tmp, opts.quiet).await?.report,
        };
        report.sets.push(set_report);
    }
    drop(scratch);
    report.duration_ms = started.elapsed().as_secs_f64() * 1000.0;
    report.tally();
    report::write_json(
        &report,
        &opts.store.run_report_path(opts.report_dir.as_deref(), &report.started_at),
        opts.store.privacy(),
    )?;
    if let Some(j) = &opts.junit {
        report::write_junit(&report, j, opts.store.privacy())?;
    }
    Ok(report)
}

/// Loads and checks every selected set first (a malformed file stops the run before the app starts), with
/// each test's rules and the tests the selection runs. Sets with no selected test are left out.
pub(crate) fn load_sets(opts: &ReplayOptions) -> Result<Vec<Planned>> {
    let names = opts.store.chosen_sets(&opts.sets)?;
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
            sets.push(Planned { set, rules, plan });
        }
    }
    if sets.is_empty() {
        return Err(Error::input(format!("no test matches {} (in {})", opts.selection.describe(), names.join(", "))));
    }
    Ok(sets)
}

/// A test set ready to replay: its files, each test's rules, and which tests run.
pub(crate) struct Planned {
    pub set: LoadedSet,
    pub rules: Vec<Rules>,
    pub plan: Plan,
}

/// The rules of one test: doppel.yaml's, the test's own, and its volatile flags, compiled.
#[derive(Clone)]
pub(crate) struct Rules {
    pub list: Vec<NoiseRule>,
    pub noise: Noise,
}

impl Rules {
    fn new(config: &Config, test: &TestCase, freeze_time: bool) -> crate::error::Result<Rules> {
        let list: Vec<NoiseRule> = config.noise.iter().chain(&test.noise).chain(&test.volatile).cloned().collect();
        let noise = Noise::compile(&list, default_headers(config))?
            .with_clock_tolerance(freeze_time.then_some(freeze::TOLERANCE_S));
        Ok(Rules { list, noise })
    }
}

pub(crate) fn default_headers(config: &Config) -> bool {
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

pub(crate) fn header_line(set: &LoadedSet, plan: &Plan, mocks: usize) {
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
pub(crate) async fn run_once(
    capture: Option<&dyn Capture>,
    planned: &Planned,
    opts: &ReplayOptions,
    tmp: &std::path::Path,
    quiet: bool,
) -> Result<SetRun> {
    match (&opts.target, capture) {
        (Some(target), _) => Ok(target::run_against_target(planned, target, opts, tmp, quiet).await),
        (None, Some(capture)) => run_set(capture, planned, opts, tmp, quiet).await,
        (None, None) => Err(Error::input("give a command after -- or a --target")),
    }
}

/// The answer to keep from a response whose body is in memory.
pub(crate) fn answer_of(resp: &client::Response, expected: &HttpResponse, bindings: &Bindings) -> Option<Answer> {
    let body = resp.body.bytes()?.to_vec();
    let raw = Observation {
        status: resp.head.status,
        headers: resp.head.headers.clone(),
        trailers: resp.trailers.clone(),
        body,
    };
    let normalized = bindings.normalize(&raw);
    Some(Answer { raw, normalized, expected: expected.clone() })
}

async fn run_set(
    capture: &dyn Capture,
    planned: &Planned,
    opts: &ReplayOptions,
    tmp: &std::path::Path,
    quiet: bool,
) -> Result<SetRun> {
    let Planned { set, rules, plan } = planned;
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
    // The harness stops the app and the mock servers on every way out of this function.
    let deps = Dependencies::Mocks { pool: pool.clone(), ca: opts.ca.clone() };
    let harness = Harness::start(capture, &command, deps).await?;
    ready::wait_ready(&harness.app, harness.link.as_ref(), &ready::app_ports(set, plan), opts).await?;
    let mut set_report = SetReport { name: set.name.clone(), total_mocks: set.mocks.len(), ..SetReport::default() };
    set_report.warnings = set.warnings.clone();

    let mut seen_misses = 0usize;
    let mut seen_tolerated = pool.tolerated().len();
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
        let Some((recorded_request, recorded_response)) = test.http() else {
            let result = judge::not_replayable(set, file, test);
            if !quiet {
                report::print_result(&result);
            }
            set_report.results.push(result);
            answers.push(None);
            continue;
        };
        let request = chain::render_request(test, recorded_request, &bindings);
        let outcome = if let Some(exit) = harness.app.exited() {
            Err(crate::error::Error::input(format!(
                "the app exited before this test ({exit}); its last stderr lines:\n{}",
                harness.app.stderr_tail()
            )))
        } else {
            let sink = SpillBuffer::new(tmp.to_path_buf(), Arc::new(0.into()));
            target::send_to_app(harness.link.as_ref(), test, &request, set, opts, sink).await
        };
        if opts.chain
            && let Ok(resp) = &outcome
        {
            bind(plan, test, resp, &mut bindings);
        }
        let expected = chain::render_response(test, recorded_response, &bindings);
        // Misses the app hit while handling this request belong to this test.
        let all = pool.misses();
        let misses: Vec<String> = all[seen_misses..].iter().filter(|m| m.at >= began).map(|m| m.what.clone()).collect();
        seen_misses = all.len();
        answers.push(outcome.as_ref().ok().and_then(|r| answer_of(r, &expected, &bindings)));
        let mut result = judge(set, file, test, &expected, &rules[i].noise, outcome, misses, began.elapsed());
        let tolerated = pool.tolerated();
        result.tolerated.extend(tolerated[seen_tolerated..].iter().filter(|m| m.at >= began).map(|m| m.what.clone()));
        seen_tolerated = tolerated.len();
        judge::unmade_writes(&mut result, pool.unmade_writes(), &opts.config.allow_missing_writes);
        judge::privacy(&mut result, test, opts.store.privacy(), &set.dir);
        if !quiet {
            report::print_result(&result);
        }
        set_report.results.push(result);
    }
    harness.stop(opts.grace).await;
    drop(clock);
    set_report.unused_mocks = pool.usage().iter().filter(|u| **u == 0).count();
    Ok(SetRun { report: set_report, answers })
}

/// Sets the live value of every chain name `test` produces, from its actual response.
pub(crate) fn bind(plan: &Plan, test: &TestCase, resp: &client::Response, bindings: &mut Bindings) {
    if let Some(list) = plan.produces.get(&test.name) {
        bindings.bind_from(list, &resp.head.headers, resp.body.bytes().unwrap_or_default());
    }
}
