//! `doppel diff`: sends each recorded request to a primary (the version in production) and a candidate
//! (the new build), compares the two answers field by field, and aggregates the differences per endpoint and
//! field. With a secondary (a second copy of the primary), fields that differ between primary and
//! secondary are nondeterministic (tokens, timestamps, ids): their candidate differences are noise.

mod report;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use crate::diff::{Change, Difference, Noise};
use crate::error::{Error, Result};
use crate::load::endpoint_of;
use crate::protocols::http::HttpRequest;
use crate::protocols::http::client;
use crate::replay::{self, Side, Target};
use crate::store::{self, Config, Store, TestCase};

pub use report::{DiffReport, EndpointDiff, Example};

pub struct DiffOptions {
    pub store: Store,
    /// Test sets to send; empty means all.
    pub sets: Vec<String>,
    pub primary: Target,
    pub candidate: Target,
    pub secondary: Option<Target>,
    /// Also send POST, PUT, PATCH and DELETE requests.
    pub allow_writes: bool,
    /// Numbers closer than this fraction of the larger one are noise (0.1 = 10%).
    pub relative_threshold: f64,
    /// Numbers closer than this are noise.
    pub absolute_threshold: f64,
    pub timeout: Duration,
    pub json: Option<PathBuf>,
    pub html: Option<PathBuf>,
    pub config: Config,
    pub quiet: bool,
}

/// Methods that change state: sending them to production-like deployments twice is not harmless.
pub fn is_write(method: &str) -> bool {
    matches!(method.to_ascii_uppercase().as_str(), "POST" | "PUT" | "PATCH" | "DELETE")
}

/// `body $.items[3].price` -> `body $.items[*].price`: the same field in every element counts together.
pub fn field_of(location: &str) -> String {
    let mut out = String::with_capacity(location.len());
    let mut rest = location;
    while let Some(open) = rest.find('[') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        match after.find(']') {
            Some(close) if close > 0 && after[..close].bytes().all(|b| b.is_ascii_digit()) => {
                out.push_str("[*]");
                rest = &after[close + 1..];
            }
            _ => {
                out.push('[');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// Whether a changed number stays within the thresholds.
fn within_threshold(d: &Difference, relative: f64, absolute: f64) -> bool {
    if d.change != Change::Changed || (relative <= 0.0 && absolute <= 0.0) {
        return false;
    }
    let number = |v: &Option<String>| v.as_deref().and_then(|s| s.parse::<f64>().ok()).filter(|x| x.is_finite());
    match (number(&d.expected), number(&d.actual)) {
        (Some(a), Some(b)) => {
            let delta = (a - b).abs();
            delta <= absolute || delta <= relative * a.abs().max(b.abs())
        }
        _ => false,
    }
}

pub async fn run(opts: DiffOptions) -> Result<i32> {
    let names = opts.store.chosen_sets(&opts.sets)?;
    let mut sets = Vec::new();
    for name in &names {
        let set = opts.store.load_set(name)?;
        // Only the rules people wrote: which fields are noise is what the secondary is for, so fields flagged
        // as volatile at record time are compared (and classified by the secondary), not hidden.
        let defaults = opts.config.default_header_noise.unwrap_or(true);
        let noises = set
            .tests
            .iter()
            .map(|(file, t)| {
                let rules: Vec<_> = opts.config.noise.iter().chain(&t.noise).cloned().collect();
                crate::diff::Noise::compile(&rules, defaults)
                    .map_err(|e| Error::input(format!("{}: {e}", file.display())))
            })
            .collect::<Result<Vec<_>>>()?;
        sets.push((set, noises));
    }
    let mut report = DiffReport {
        version: 1,
        started_at: store::now_rfc3339(),
        primary: opts.primary.url(),
        candidate: opts.candidate.url(),
        secondary: opts.secondary.as_ref().map(Target::url),
        test_sets: names.clone(),
        relative_threshold: opts.relative_threshold,
        absolute_threshold: opts.absolute_threshold,
        ..DiffReport::default()
    };
    // Only HTTP tests can be sent to a deployment.
    let requests = || sets.iter().flat_map(|(s, _)| &s.tests).filter_map(|(_, t)| t.http());
    let writes = requests().filter(|(q, _)| is_write(&q.method)).count();
    let total = requests().count();
    if total == 0 {
        return Err(Error::input(format!("the test sets {} have no tests", names.join(", "))));
    }
    if !opts.allow_writes && writes == total {
        return Err(Error::input(format!(
            "all {total} recorded requests are writes (POST, PUT, PATCH, DELETE); pass --allow-writes to send them"
        )));
    }
    if !opts.quiet {
        eprintln!(
            "doppel diff: {} requests to primary {}, candidate {}{}",
            if opts.allow_writes { total } else { total - writes },
            report.primary,
            report.candidate,
            report.secondary.as_ref().map(|s| format!(", secondary {s}")).unwrap_or_default()
        );
    }
    let scratch = store::scratch("diff")?;
    let tmp = scratch.path();
    let mut endpoints: BTreeMap<String, EndpointDiff> = BTreeMap::new();
    for (set, noises) in &sets {
        for (i, (_, test)) in set.tests.iter().enumerate() {
            let Some((request, _)) = test.http() else { continue };
            let endpoint = endpoint_of(&request.method, &request.target);
            if !opts.allow_writes && is_write(&request.method) {
                *report.skipped_writes.entry(endpoint).or_default() += 1;
                continue;
            }
            let entry = endpoints.entry(endpoint.clone()).or_insert_with(|| EndpointDiff::new(&endpoint));
            compare_one(&opts, &set.dir, test, &noises[i], tmp, entry, &mut report).await;
        }
    }
    drop(scratch);
    report.finish(endpoints.into_values().collect());
    if report.compared == 0 {
        let why = report.errors.first().map(|e| e.message.clone()).unwrap_or_default();
        return Err(Error::env(format!("no request could be compared: the primary answered none ({why})")));
    }
    print!("{}", report::render_text(&report));
    if let Some(path) = &opts.json {
        report::write_json(&report, path, opts.store.privacy())?;
    }
    if let Some(path) = &opts.html {
        report::write_html(&report, path, opts.store.privacy())?;
    }
    Ok(if report.differing_fields > 0 { 1 } else { 0 })
}

/// The differences of one comparison by field, each field once (an array whose elements differ is one
/// difference of the request): the first difference beyond the thresholds, else the first one, and
/// whether any was beyond them.
fn per_field(
    differences: &[Difference],
    within: impl Fn(&Difference) -> bool,
) -> BTreeMap<String, (&Difference, bool)> {
    let mut fields: BTreeMap<String, (&Difference, bool)> = BTreeMap::new();
    for d in differences {
        let beyond = !within(d);
        match fields.entry(field_of(&d.location)) {
            std::collections::btree_map::Entry::Vacant(v) => {
                v.insert((d, beyond));
            }
            std::collections::btree_map::Entry::Occupied(mut o) => {
                if beyond && !o.get().1 {
                    o.insert((d, true));
                }
            }
        }
    }
    fields
}

/// Sends one recorded request to every deployment at once and files the differences.
async fn compare_one(
    opts: &DiffOptions,
    set_dir: &std::path::Path,
    test: &TestCase,
    noise: &Noise,
    tmp: &std::path::Path,
    endpoint: &mut EndpointDiff,
    report: &mut DiffReport,
) {
    let Some((recorded, _)) = test.http() else { return };
    let send = |target: &Target| {
        let request: HttpRequest = target.request_for(recorded);
        let target = target.clone();
        async move { target.send(&request, set_dir, tmp, opts.timeout).await }
    };
    let secondary = async {
        match &opts.secondary {
            Some(s) => Some(send(s).await),
            None => None,
        }
    };
    let (primary, candidate, secondary) = tokio::join!(send(&opts.primary), send(&opts.candidate), secondary);
    let request_text = report::render_request(recorded);
    let primary = match primary {
        Ok(p) => p,
        Err(e) => {
            report.note_error(&endpoint.endpoint, test, "primary", e);
            for r in [candidate.ok(), secondary.and_then(|s| s.ok())].into_iter().flatten() {
                r.body.discard();
            }
            return;
        }
    };
    endpoint.compared += 1;
    report.compared += 1;

    // Fields where the primary and its copy disagree are nondeterministic.
    match secondary {
        Some(Ok(s)) => {
            match replay::compare_sides(&Side::live(&primary), &Side::live(&s), noise) {
                Ok(c) => {
                    for (field, (d, _)) in per_field(&c.differences, |_| false) {
                        let f = endpoint.field(&field);
                        f.noise_seen += 1;
                        if f.noise_example.is_none() {
                            f.noise_example = Some(Example::new(test, &request_text, &primary, ("secondary", &s), d));
                        }
                    }
                }
                Err(e) => report.note_error(&endpoint.endpoint, test, "secondary", e),
            }
            s.body.discard();
        }
        Some(Err(e)) => report.note_error(&endpoint.endpoint, test, "secondary", e),
        None => {}
    }

    match candidate {
        Ok(c) => {
            match replay::compare_sides(&Side::live(&primary), &Side::live(&c), noise) {
                Ok(comparison) => {
                    for rule in comparison.applied_noise {
                        *endpoint.rules_applied.entry(rule).or_default() += 1;
                    }
                    let within = |d: &Difference| within_threshold(d, opts.relative_threshold, opts.absolute_threshold);
                    for (field, (d, beyond)) in per_field(&comparison.differences, within) {
                        let f = endpoint.field(&field);
                        if beyond {
                            f.differences += 1;
                        } else {
                            f.within_threshold += 1;
                        }
                        if f.example.is_none() || (beyond && f.differences == 1) {
                            f.example = Some(Example::new(test, &request_text, &primary, ("candidate", &c), d));
                        }
                    }
                }
                Err(e) => report.note_error(&endpoint.endpoint, test, "candidate", e),
            }
            c.body.discard();
        }
        Err(e) => {
            // The primary answered and the candidate did not: that is a difference of the candidate.
            let f = endpoint.field("response");
            f.differences += 1;
            if f.example.is_none() {
                f.example = Some(Example::failed(test, &request_text, &primary, &e));
            }
        }
    }
    primary.body.discard();
}

/// The response as text for reports: status line, headers, and the start of the body.
pub fn render_response(resp: &client::Response) -> String {
    let mut out = format!("{} {} {}\n", resp.head.version, resp.head.status, resp.head.reason);
    for h in &resp.head.headers {
        out.push_str(&format!("{}: {}\n", h.name, h.value_str()));
    }
    out.push('\n');
    match resp.body.bytes() {
        Some(bytes) => out.push_str(&report::preview(bytes)),
        None => out.push_str(&format!("({} bytes, not shown)", resp.body.len())),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_collapse_indices() {
        assert_eq!(field_of("body $.items[3].price"), "body $.items[*].price");
        assert_eq!(field_of("body $[0]"), "body $[*]");
        assert_eq!(field_of("header date"), "header date");
    }

    #[test]
    fn numeric_thresholds() {
        let d = |e: &str, a: &str| Difference {
            location: "body $.x".into(),
            change: Change::Changed,
            expected: Some(e.into()),
            actual: Some(a.into()),
            detail: None,
        };
        assert!(within_threshold(&d("10", "10.4"), 0.0, 0.5));
        assert!(!within_threshold(&d("10", "10.6"), 0.0, 0.5));
        assert!(within_threshold(&d("100", "109"), 0.1, 0.0));
        assert!(!within_threshold(&d("100", "120"), 0.1, 0.0));
        assert!(!within_threshold(&d("\"10\"", "\"10.1\""), 0.5, 0.5), "strings are not numbers");
        assert!(!within_threshold(&d("10", "10"), 0.0, 0.0), "thresholds off");
        assert!(is_write("post") && is_write("DELETE") && !is_write("GET") && !is_write("HEAD"));
    }
}
