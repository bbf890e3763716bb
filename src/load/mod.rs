//! `doppel load`: sends the recorded requests to a running deployment on an open-loop schedule (the
//! recorded timing sped up, a fixed rate, or a ramp) over a pool of keep-alive connections, and reports
//! latency per endpoint from each request's intended send time, throughput achieved against asked, and
//! errors by class; `--fail-if` gates turn the run into a CI check.

mod endpoint;
mod engine;
mod gate;
mod report;
mod schedule;
mod stats;
pub(crate) mod svg;
pub(crate) mod target_server;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

pub use endpoint::endpoint_of;
pub use gate::Gate;
pub use report::{render_template, to_value};
pub use schedule::{Pace, Schedule, parse_duration};

use crate::error::{Error, Result};
use crate::protocols::http::{client, wire};
use crate::replay::{self, Target};
use crate::store::{self, Config, Store};

pub struct LoadOptions {
    pub store: Store,
    /// Test sets to send; empty means all.
    pub sets: Vec<String>,
    pub target: Target,
    pub pace: Pace,
    /// How long to send; `None`: one pass through the requests (a ramp: its length).
    pub duration: Option<Duration>,
    pub connections: usize,
    pub max_inflight: usize,
    pub timeout: Duration,
    /// Compare every response with its recording (noise rules apply); differences count as `mismatch`.
    pub check: bool,
    pub json: Option<PathBuf>,
    pub html: Option<PathBuf>,
    pub gates: Vec<Gate>,
    pub config: Config,
    pub quiet: bool,
    /// Fill chained values (`{{ chain.* }}`) with the ones the target produced during the run.
    pub chain: bool,
}

/// Runs the load; the exit code is 1 when a gate fails, 0 otherwise.
pub async fn run(opts: LoadOptions) -> Result<i32> {
    if opts.connections == 0 || opts.max_inflight == 0 {
        return Err(Error::input("--connections and --max-inflight must be at least 1"));
    }
    let names = opts.store.chosen_sets(&opts.sets)?;
    let plan = Plan::build(&opts, &names).await?;
    let schedule = Schedule::new(opts.pace.clone(), plan.offsets, opts.duration);
    if !opts.quiet {
        eprintln!(
            "doppel load: {} recorded requests ({} endpoints) to {}: {} for {:.1}s over {} connections",
            plan.prepared.len(),
            plan.endpoints.len(),
            opts.target.url(),
            opts.pace.describe(),
            schedule.length().as_secs_f64(),
            opts.connections
        );
    }
    let started_at = store::now_rfc3339();
    let scratch = store::scratch("load")?;
    let facts_schedule = schedule.clone();
    let outcome = engine::run(
        schedule,
        Arc::new(plan.prepared),
        &plan.endpoints,
        engine::EngineConfig {
            target: opts.target.clone(),
            connections: opts.connections,
            max_inflight: opts.max_inflight,
            timeout: opts.timeout,
            quiet: opts.quiet,
            tmp: scratch.path().to_path_buf(),
        },
    )
    .await;
    drop(scratch);
    let outcome = outcome?;
    let facts = report::RunFacts {
        target: opts.target.url(),
        started_at,
        test_sets: names,
        schedule: &facts_schedule,
        connections: opts.connections,
        max_inflight: opts.max_inflight,
        check: opts.check,
        recorded_latency: plan.recorded_latency,
    };
    let mut load_report = report::build(&facts, outcome);
    load_report.gates = opts.gates.iter().map(|g| g.check(&load_report)).collect();
    print!("{}", report::render_text(&load_report));
    if let Some(path) = &opts.json {
        report::write_json(&load_report, path, opts.store.privacy())?;
    }
    if let Some(path) = &opts.html {
        report::write_html(&load_report, path, opts.store.privacy())?;
    }
    let failed: Vec<_> = load_report.gates.iter().filter(|g| g.failed).collect();
    for g in &failed {
        eprintln!("{} gate failed: {} ({})", console::style("doppel load:").red().bold(), g.expr, g.measured);
    }
    Ok(if failed.is_empty() { 0 } else { 1 })
}

/// The requests of the selected test sets, ready to send, with their recorded timing.
struct Plan {
    prepared: Vec<engine::Prepared>,
    /// Seconds from the first recorded request, sets one after the other.
    offsets: Vec<f64>,
    endpoints: Vec<String>,
    /// Recorded latency of the requests, per endpoint.
    recorded_latency: Vec<Vec<f64>>,
}

impl Plan {
    async fn build(opts: &LoadOptions, names: &[String]) -> Result<Plan> {
        let mut plan =
            Plan { prepared: Vec::new(), offsets: Vec::new(), endpoints: Vec::new(), recorded_latency: Vec::new() };
        let mut base = 0.0;
        for name in names {
            let set = opts.store.load_set(name)?;
            let noises = if opts.check {
                Some(replay::compile_noise(&set, &opts.config, false)?.into_iter().map(|r| r.noise).collect::<Vec<_>>())
            } else {
                None
            };
            let times: Vec<Option<f64>> = set.tests.iter().map(|(_, t)| store::parse_time_ms(&t.recorded_at)).collect();
            // Which tests produce the chained values others use: (test name) -> [(value name, recorded)].
            let mut produces: std::collections::HashMap<String, Vec<(String, serde_json::Value)>> = Default::default();
            for (_, t) in &set.tests {
                for (name, recorded) in &t.chain {
                    if let Some(r) = crate::chain::Reference::parse(name) {
                        let list = produces.entry(r.test).or_default();
                        if !list.iter().any(|(n, _)| n == name) {
                            list.push((name.clone(), recorded.clone()));
                        }
                    }
                }
            }
            let first = times.iter().flatten().copied().fold(f64::INFINITY, f64::min);
            let mut previous = 0.0;
            for (i, (file, test)) in set.tests.iter().enumerate() {
                let Some((recorded_request, recorded_response)) = test.http() else { continue };
                // A test without a readable time keeps its place right after the one before it.
                let offset =
                    times[i].filter(|_| first.is_finite()).map_or(previous, |t| ((t - first) / 1000.0).max(previous));
                previous = offset;
                let request = crate::protocols::http2::as_http1(opts.target.request_for(recorded_request));
                let bytes = client::encode_request(&request, &set.dir)
                    .await
                    .map_err(|e| Error::input(format!("{}: {e}", file.display())))?;
                let name = endpoint_of(&recorded_request.method, &recorded_request.target);
                let endpoint = match plan.endpoints.iter().position(|e| *e == name) {
                    Some(i) => i,
                    None => {
                        plan.endpoints.push(name);
                        plan.recorded_latency.push(Vec::new());
                        plan.endpoints.len() - 1
                    }
                };
                plan.recorded_latency[endpoint].push(test.latency_ms);
                plan.prepared.push(engine::Prepared {
                    wire: Bytes::from(bytes),
                    templated: (!test.chain.is_empty() && opts.chain)
                        .then(|| engine::Templated { set_dir: set.dir.clone(), test: test.clone() }),
                    produces: if opts.chain {
                        produces.get(&test.name).cloned().unwrap_or_default()
                    } else {
                        Vec::new()
                    },
                    method: request.method.clone(),
                    endpoint: endpoint as u32,
                    closes: wire::wants_close(&request.version, &request.headers),
                    recorded_status: recorded_response.status,
                    check: noises.as_ref().map(|n| engine::Check {
                        set_dir: set.dir.clone(),
                        test: test.clone(),
                        noise: n[i].clone(),
                    }),
                });
                plan.offsets.push(base + offset);
            }
            // The next set starts one mean gap after this one ends.
            let n = set.tests.len();
            let gap = if n > 1 && previous > 0.0 { previous / (n - 1) as f64 } else { 1.0 };
            base += previous + gap;
        }
        if plan.prepared.is_empty() {
            return Err(Error::input(format!("the test sets {} have no tests", names.join(", "))));
        }
        Ok(plan)
    }
}
