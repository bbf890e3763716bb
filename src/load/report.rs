//! The report of a load run: the terminal table, the JSON file (`--json`) and the HTML page (`--html`).

use std::collections::BTreeMap;
use std::path::Path;

use hdrhistogram::Histogram;
use serde::Serialize;

use super::engine::Outcome;
use super::gate::{GateResult, format_ms};
use super::schedule::Schedule;
use super::stats::{ErrorClass, MismatchExample, SecondSummary, max_ms, mean_ms, percentile_ms};
use super::svg;
use crate::error::{Error, Result};

/// Latency percentiles in milliseconds; `None` without any response.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Latency {
    pub p50: Option<f64>,
    pub p90: Option<f64>,
    pub p99: Option<f64>,
    pub p999: Option<f64>,
    pub max: Option<f64>,
    pub mean: Option<f64>,
}

impl Latency {
    fn of(h: &Histogram<u64>) -> Latency {
        Latency {
            p50: percentile_ms(h, 50.0),
            p90: percentile_ms(h, 90.0),
            p99: percentile_ms(h, 99.0),
            p999: percentile_ms(h, 99.9),
            max: max_ms(h),
            mean: mean_ms(h),
        }
    }

    /// Of plain values (the recorded latencies), nearest rank.
    fn of_values(values: &[f64]) -> Latency {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| *x > 0.0 && x.is_finite()).collect();
        if v.is_empty() {
            return Latency::default();
        }
        v.sort_by(f64::total_cmp);
        let at = |p: f64| Some(v[((p / 100.0 * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1]);
        Latency {
            p50: at(50.0),
            p90: at(90.0),
            p99: at(99.0),
            p999: at(99.9),
            max: v.last().copied(),
            mean: Some(v.iter().sum::<f64>() / v.len() as f64),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct EndpointReport {
    /// Method and path with ids collapsed: `GET /api/items/{id}`.
    pub endpoint: String,
    pub requests: u64,
    pub responses: u64,
    pub errors: u64,
    pub errors_by_class: BTreeMap<String, u64>,
    #[serde(flatten)]
    pub latency: Latency,
    /// The latency the app had when these requests were recorded (tests' `latency_ms`).
    pub recorded: Latency,
}

#[derive(Debug, Clone, Serialize)]
pub struct HistogramBucket {
    pub from_ms: f64,
    pub to_ms: f64,
    pub count: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct PercentilePoint {
    pub percentile: f64,
    pub ms: f64,
}

/// Everything a run measured; the JSON file is this, serialized.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LoadReport {
    pub version: u32,
    pub target: String,
    pub started_at: String,
    pub test_sets: Vec<String>,
    pub schedule: String,
    pub connections: usize,
    pub max_inflight: usize,
    pub check: bool,
    /// Ctrl-C ended the run early.
    pub interrupted: bool,
    /// Seconds the schedule sends for.
    pub duration_s: f64,
    /// Seconds from the start to the last response.
    pub elapsed_s: f64,
    pub requested_rps: f64,
    /// Responses per second, over the schedule's duration or until the last response when that is later.
    pub achieved_rps: f64,
    /// Requests the schedule asked for (sent or dropped).
    pub requests: u64,
    pub sent: u64,
    pub responses: u64,
    pub errors: u64,
    pub errors_by_class: BTreeMap<String, u64>,
    /// The whole run's latency, from each request's intended send time.
    #[serde(flatten)]
    pub latency: Latency,
    /// The recorded latency of the requests in the schedule.
    pub recorded: Latency,
    pub endpoints: Vec<EndpointReport>,
    pub percentiles: Vec<PercentilePoint>,
    pub histogram: Vec<HistogramBucket>,
    /// One point per second of the run, by completion time.
    pub timeline: Vec<SecondSummary>,
    pub mismatches: Vec<MismatchExample>,
    pub gates: Vec<GateResult>,
}

/// What the report needs besides the measurements.
pub struct RunFacts<'a> {
    pub target: String,
    pub started_at: String,
    pub test_sets: Vec<String>,
    pub schedule: &'a Schedule,
    pub connections: usize,
    pub max_inflight: usize,
    pub check: bool,
    /// Per endpoint, the recorded latency of each scheduled request kind.
    pub recorded_latency: Vec<Vec<f64>>,
}

pub fn build(facts: &RunFacts, outcome: Outcome) -> LoadReport {
    let mut agg = outcome.aggregate;
    let dropped: u64 = outcome.dropped_per_endpoint.iter().sum();
    agg.errors.add(ErrorClass::Dropped, dropped);
    let mut endpoints = Vec::new();
    for (i, e) in agg.endpoints.iter_mut().enumerate() {
        let d = outcome.dropped_per_endpoint.get(i).copied().unwrap_or(0);
        e.errors.add(ErrorClass::Dropped, d);
        let requests = e.responses + e.errors.total() - errors_with_response(&e.errors);
        if requests == 0 {
            continue;
        }
        endpoints.push(EndpointReport {
            endpoint: e.name.clone(),
            requests,
            responses: e.responses,
            errors: e.errors.total(),
            errors_by_class: e.errors.by_name(),
            latency: Latency::of(&e.latency),
            recorded: Latency::of_values(facts.recorded_latency.get(i).map(Vec::as_slice).unwrap_or(&[])),
        });
    }
    endpoints.sort_by(|a, b| b.requests.cmp(&a.requests).then(a.endpoint.cmp(&b.endpoint)));

    // Seconds that only the schedule knows (everything dropped or still on the wire) get points too.
    let mut timeline: BTreeMap<u64, SecondSummary> = agg.timeline.drain(..).map(|s| (s.t, s)).collect();
    for (t, asked) in outcome.asked_per_second.iter().enumerate() {
        let point = timeline.entry(t as u64).or_insert_with(|| SecondSummary { t: t as u64, ..Default::default() });
        point.asked = *asked;
        point.errors += outcome.dropped_per_second.get(t).copied().unwrap_or(0);
    }

    let duration_s = facts.schedule.length().as_secs_f64();
    let elapsed_s = agg.last_done.map_or(0.0, |d| d.saturating_duration_since(outcome.started).as_secs_f64());
    // Stopped early, the schedule's full length would understate the rate.
    let window = if outcome.interrupted { elapsed_s } else { duration_s.max(elapsed_s) };
    let all_recorded: Vec<f64> = facts.recorded_latency.iter().flatten().copied().collect();
    LoadReport {
        version: 1,
        target: facts.target.clone(),
        started_at: facts.started_at.clone(),
        test_sets: facts.test_sets.clone(),
        schedule: facts.schedule.pace().describe(),
        connections: facts.connections,
        max_inflight: facts.max_inflight,
        check: facts.check,
        interrupted: outcome.interrupted,
        duration_s,
        elapsed_s,
        requested_rps: facts.schedule.requested_rps(),
        achieved_rps: if window > 0.0 { agg.responses as f64 / window } else { 0.0 },
        requests: outcome.scheduled,
        sent: outcome.scheduled - dropped,
        responses: agg.responses,
        errors: agg.errors.total(),
        errors_by_class: agg.errors.by_name(),
        latency: Latency::of(&agg.total),
        recorded: Latency::of_values(&all_recorded),
        endpoints,
        percentiles: percentiles(&agg.total),
        histogram: histogram(&agg.total),
        timeline: timeline.into_values().collect(),
        mismatches: agg.mismatches,
        gates: Vec::new(),
    }
}

/// Errors that still came with a response (its latency is counted among the responses).
fn errors_with_response(e: &super::stats::ErrorCounts) -> u64 {
    e.get(ErrorClass::Status4xx) + e.get(ErrorClass::Status5xx) + e.get(ErrorClass::Mismatch)
}

fn percentiles(h: &Histogram<u64>) -> Vec<PercentilePoint> {
    if h.is_empty() {
        return Vec::new();
    }
    [50.0, 75.0, 90.0, 95.0, 99.0, 99.9, 99.99, 100.0]
        .iter()
        .map(|p| PercentilePoint { percentile: *p, ms: h.value_at_percentile(*p) as f64 / 1000.0 })
        .collect()
}

/// About 40 buckets growing geometrically from the fastest to the slowest response.
fn histogram(h: &Histogram<u64>) -> Vec<HistogramBucket> {
    if h.is_empty() {
        return Vec::new();
    }
    let lo = (h.min().max(1) as f64) / 1000.0;
    let hi = (h.max().max(1) as f64) / 1000.0;
    let (lo, hi) = if hi / lo < 1.1 { (lo / 1.05, hi * 1.05) } else { (lo, hi * 1.0001) };
    let factor = (hi / lo).powf(1.0 / 40.0).max(1.01);
    let count = ((hi / lo).ln() / factor.ln()).ceil().max(1.0) as usize;
    let mut buckets: Vec<HistogramBucket> = (0..count)
        .map(|i| HistogramBucket {
            from_ms: lo * factor.powi(i as i32),
            to_ms: lo * factor.powi(i as i32 + 1),
            count: 0,
        })
        .collect();
    for v in h.iter_recorded() {
        let ms = v.value_iterated_to() as f64 / 1000.0;
        let i = ((ms / lo).ln() / factor.ln()).floor().max(0.0) as usize;
        if let Some(b) = buckets.get_mut(i.min(count - 1)) {
            b.count += v.count_at_value();
        }
    }
    buckets
}

fn show(v: Option<f64>) -> String {
    v.map(format_ms).unwrap_or_else(|| "-".into())
}

fn errors_line(by_class: &BTreeMap<String, u64>, errors: u64, requests: u64) -> String {
    if errors == 0 {
        return "none".into();
    }
    let parts: Vec<String> = ErrorClass::ALL
        .iter()
        .filter_map(|c| by_class.get(c.name()).filter(|n| **n > 0).map(|n| format!("{} {n}", c.name())))
        .collect();
    format!("{errors} ({:.2}% of {requests}): {}", 100.0 * errors as f64 / requests.max(1) as f64, parts.join(", "))
}

/// The terminal table and summary.
pub fn render_text(r: &LoadReport) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "doppel load: {} — {} for {:.1}s, {} connections, at most {} in flight{}\n",
        r.target,
        r.schedule,
        r.duration_s,
        r.connections,
        r.max_inflight,
        if r.check { ", responses checked" } else { "" }
    ));
    let width = r.endpoints.iter().map(|e| e.endpoint.chars().count()).max().unwrap_or(0).max(8);
    out.push_str(&format!(
        "{:<width$}  {:>8}  {:>6}  {:>8}  {:>8}  {:>8}  {:>8}  {:>8}  {:>12}  {:>12}\n",
        "endpoint", "requests", "errors", "p50", "p90", "p99", "p99.9", "max", "recorded p50", "recorded p99"
    ));
    let mut row = |name: &str, requests: u64, errors: u64, l: &Latency, rec: &Latency| {
        out.push_str(&format!(
            "{:<width$}  {:>8}  {:>6}  {:>8}  {:>8}  {:>8}  {:>8}  {:>8}  {:>12}  {:>12}\n",
            name,
            requests,
            errors,
            show(l.p50),
            show(l.p90),
            show(l.p99),
            show(l.p999),
            show(l.max),
            show(rec.p50),
            show(rec.p99)
        ));
    };
    for e in &r.endpoints {
        row(&e.endpoint, e.requests, e.errors, &e.latency, &e.recorded);
    }
    row("total", r.requests, r.errors, &r.latency, &r.recorded);
    let pct = if r.requested_rps > 0.0 { 100.0 * r.achieved_rps / r.requested_rps } else { 0.0 };
    out.push_str(&format!(
        "throughput: {:.1}/s achieved of {:.1}/s asked ({pct:.1}%); {} responses in {:.2}s{}\n",
        r.achieved_rps,
        r.requested_rps,
        r.responses,
        r.elapsed_s,
        if r.interrupted { " (stopped by Ctrl-C)" } else { "" }
    ));
    out.push_str(&format!("errors: {}\n", errors_line(&r.errors_by_class, r.errors, r.requests)));
    for m in &r.mismatches {
        out.push_str(&format!("  mismatch: {} (test {}): {}\n", m.endpoint, m.test, m.difference));
    }
    for g in &r.gates {
        out.push_str(&format!(
            "gate {}: {} ({})\n",
            g.expr,
            if g.failed { console::style("FAILED").red().bold().to_string() } else { "ok".into() },
            g.measured
        ));
    }
    out
}

pub fn write_json(r: &LoadReport, path: &Path, privacy: &crate::privacy::Privacy) -> Result<()> {
    let text = serde_json::to_string_pretty(r).map_err(|e| Error::internal(format!("cannot write JSON: {e}")))?;
    write_file(path, &text, privacy)
}

fn write_file(path: &Path, text: &str, privacy: &crate::privacy::Privacy) -> Result<()> {
    crate::store::write_report(path, text, privacy)
}

/// A row of the HTML tables, already formatted.
#[derive(Serialize)]
struct HtmlRow {
    endpoint: String,
    requests: u64,
    errors: u64,
    errors_detail: String,
    p50: String,
    p90: String,
    p99: String,
    p999: String,
    max: String,
    recorded_p50: String,
    recorded_p99: String,
}

fn html_row(
    endpoint: &str,
    requests: u64,
    errors: u64,
    by_class: &BTreeMap<String, u64>,
    l: &Latency,
    rec: &Latency,
) -> HtmlRow {
    HtmlRow {
        endpoint: endpoint.into(),
        requests,
        errors,
        errors_detail: errors_line(by_class, errors, requests),
        p50: show(l.p50),
        p90: show(l.p90),
        p99: show(l.p99),
        p999: show(l.p999),
        max: show(l.max),
        recorded_p50: show(rec.p50),
        recorded_p99: show(rec.p99),
    }
}

pub fn write_html(r: &LoadReport, path: &Path, privacy: &crate::privacy::Privacy) -> Result<()> {
    let seconds: Vec<&SecondSummary> = r.timeline.iter().collect();
    let line = |name: &str, color: &'static str, dashed: bool, f: &dyn Fn(&SecondSummary) -> Option<f64>| svg::Series {
        name: name.into(),
        color,
        dashed,
        points: seconds.iter().filter_map(|s| f(s).map(|v| (s.t as f64, v))).collect(),
    };
    let latency_chart = svg::line_chart(
        "latency-over-time",
        "Latency over time (from the intended send time)",
        "seconds since start",
        "milliseconds",
        &[
            line("p50", "#2ca02c", false, &|s| s.p50),
            line("p90", "#1f77b4", false, &|s| s.p90),
            line("p99", "#d62728", false, &|s| s.p99),
            line("max", "#7f7f7f", true, &|s| s.max),
        ],
    );
    let throughput_chart = svg::line_chart(
        "throughput-over-time",
        "Requests per second",
        "seconds since start",
        "requests per second",
        &[
            line("asked", "#7f7f7f", true, &|s| Some(s.asked as f64)),
            line("responses", "#1f77b4", false, &|s| Some(s.responses as f64)),
            line("errors", "#d62728", false, &|s| Some(s.errors as f64)),
        ],
    );
    let bars: Vec<(f64, f64, u64)> = r.histogram.iter().map(|b| (b.from_ms, b.to_ms, b.count)).collect();
    let histogram_chart =
        svg::log_histogram("latency-histogram", "Latency distribution", "milliseconds (log scale)", "responses", &bars);
    let mut rows: Vec<HtmlRow> = r
        .endpoints
        .iter()
        .map(|e| html_row(&e.endpoint, e.requests, e.errors, &e.errors_by_class, &e.latency, &e.recorded))
        .collect();
    rows.push(html_row("total", r.requests, r.errors, &r.errors_by_class, &r.latency, &r.recorded));
    let failed_gates = r.gates.iter().filter(|g| g.failed).count();
    let context = minijinja::context! {
        report => to_value(r),
        rows => to_value(&rows),
        percentiles => to_value(
            r.percentiles.iter().map(|p| (format!("{}", p.percentile), format_ms(p.ms))).collect::<Vec<_>>()
        ),
        achieved_pct => format!("{:.1}", if r.requested_rps > 0.0 { 100.0 * r.achieved_rps / r.requested_rps } else { 0.0 }),
        requested_rps => format!("{:.1}", r.requested_rps),
        achieved_rps => format!("{:.1}", r.achieved_rps),
        p50 => show(r.latency.p50),
        p99 => show(r.latency.p99),
        p999 => show(r.latency.p999),
        max => show(r.latency.max),
        errors_line => errors_line(&r.errors_by_class, r.errors, r.requests),
        failed_gates => failed_gates,
        latency_chart => minijinja::Value::from_safe_string(latency_chart),
        throughput_chart => minijinja::Value::from_safe_string(throughput_chart),
        histogram_chart => minijinja::Value::from_safe_string(histogram_chart),
    };
    let html = render_template("load-report.html", include_str!("report.html"), context)?;
    write_file(path, &html, privacy)
}

/// A serializable value for a template.
pub fn to_value<T: Serialize>(value: T) -> minijinja::Value {
    minijinja::Value::from(minijinja::value::Serde(value))
}

/// Renders a template; names ending in `.html` escape every value that is not marked safe.
pub fn render_template(name: &str, source: &str, context: minijinja::Value) -> Result<String> {
    let mut env = minijinja::Environment::new();
    env.add_template(name, source).map_err(|e| Error::internal(format!("report template {name}: {e}")))?;
    env.get_template(name)
        .and_then(|t| t.render(context))
        .map_err(|e| Error::internal(format!("cannot render the report {name}: {e}")))
}
