//! The report of `doppel diff`: a terminal summary, the JSON file (`--json`) and the HTML page (`--html`).

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

use super::render_response;
use crate::diff::Difference;
use crate::error::{Error, Result};
use crate::load::{render_template, to_value};
use crate::protocols::http::client;
use crate::store::TestCase;

/// How many characters of a body the examples show.
const PREVIEW_CHARS: usize = 4000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FieldKind {
    /// The candidate answers differently from the primary here.
    Difference,
    /// Differences here are expected: the field changes between primary and secondary, or only by numbers
    /// within the thresholds.
    Noise,
}

/// One request's answers side by side, for a field.
#[derive(Debug, Clone, Serialize)]
pub struct Example {
    pub test: String,
    pub request: String,
    pub location: String,
    pub change: String,
    pub expected: Option<String>,
    pub actual: Option<String>,
    pub detail: Option<String>,
    pub left_label: String,
    pub left: String,
    pub right_label: String,
    pub right: String,
}

impl Example {
    pub fn new(
        test: &TestCase,
        request: &str,
        left: &client::Response,
        (right_label, right): (&str, &client::Response),
        d: &Difference,
    ) -> Example {
        Example {
            test: test.name.clone(),
            request: request.to_string(),
            location: d.location.clone(),
            change: d.change.word().into(),
            expected: d.expected.clone(),
            actual: d.actual.clone(),
            detail: d.detail.clone(),
            left_label: "primary".into(),
            left: render_response(left),
            right_label: right_label.into(),
            right: render_response(right),
        }
    }

    pub fn failed(test: &TestCase, request: &str, left: &client::Response, error: &dyn std::fmt::Display) -> Example {
        Example {
            test: test.name.clone(),
            request: request.to_string(),
            location: "response".into(),
            change: "failed".into(),
            expected: Some(format!("{} {}", left.head.status, left.head.reason)),
            actual: Some(error.to_string()),
            detail: None,
            left_label: "primary".into(),
            left: render_response(left),
            right_label: "candidate".into(),
            right: format!("(no response: {error})"),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct FieldDiff {
    /// `status`, `header content-type`, `body $.items[*].price`, `body`, `response` (the candidate failed).
    pub field: String,
    pub kind: FieldKind,
    /// Candidate answers that differ from the primary's in this field (beyond the thresholds).
    pub differences: u64,
    /// Candidate answers whose number here differs only within the thresholds.
    pub within_threshold: u64,
    /// Requests for which the primary and the secondary differed in this field.
    pub noise_seen: u64,
    pub reason: String,
    pub example: Option<Example>,
    pub noise_example: Option<Example>,
}

#[derive(Debug, Clone, Serialize)]
pub struct EndpointDiff {
    pub endpoint: String,
    pub compared: u64,
    pub fields: Vec<FieldDiff>,
    /// Noise rules (doppel.yaml, the tests' own, default headers) that hid a difference, with counts.
    pub rules_applied: BTreeMap<String, u64>,
}

impl EndpointDiff {
    pub fn new(endpoint: &str) -> EndpointDiff {
        EndpointDiff { endpoint: endpoint.into(), compared: 0, fields: Vec::new(), rules_applied: BTreeMap::new() }
    }

    pub fn field(&mut self, name: &str) -> &mut FieldDiff {
        let at = match self.fields.iter().position(|f| f.field == name) {
            Some(i) => i,
            None => {
                self.fields.push(FieldDiff {
                    field: name.into(),
                    kind: FieldKind::Difference,
                    differences: 0,
                    within_threshold: 0,
                    noise_seen: 0,
                    reason: String::new(),
                    example: None,
                    noise_example: None,
                });
                self.fields.len() - 1
            }
        };
        &mut self.fields[at]
    }

    pub fn differing(&self) -> usize {
        self.fields.iter().filter(|f| f.kind == FieldKind::Difference).count()
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct SendError {
    pub endpoint: String,
    pub test: String,
    /// `primary`, `secondary` or `candidate`.
    pub side: String,
    pub message: String,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct DiffReport {
    pub version: u32,
    pub started_at: String,
    pub primary: String,
    pub candidate: String,
    pub secondary: Option<String>,
    pub test_sets: Vec<String>,
    pub relative_threshold: f64,
    pub absolute_threshold: f64,
    /// Requests answered by the primary and compared.
    pub compared: u64,
    /// Writes not sent (no --allow-writes), per endpoint.
    pub skipped_writes: BTreeMap<String, u64>,
    pub errors: Vec<SendError>,
    /// Fields (per endpoint) where the candidate differs beyond noise: the run fails when above 0.
    pub differing_fields: usize,
    pub noisy_fields: usize,
    pub endpoints: Vec<EndpointDiff>,
}

impl DiffReport {
    pub fn note_error(&mut self, endpoint: &str, test: &TestCase, side: &str, message: impl std::fmt::Display) {
        self.errors.push(SendError {
            endpoint: endpoint.into(),
            test: test.name.clone(),
            side: side.into(),
            message: message.to_string(),
        });
    }

    /// Classifies every field and orders endpoints and fields: differences first.
    pub fn finish(&mut self, mut endpoints: Vec<EndpointDiff>) {
        let thresholds = describe_thresholds(self.relative_threshold, self.absolute_threshold);
        for e in &mut endpoints {
            for f in &mut e.fields {
                if f.noise_seen > 0 {
                    f.kind = FieldKind::Noise;
                    f.reason = format!("differs between primary and secondary ({} of {})", f.noise_seen, e.compared);
                } else if f.differences == 0 {
                    f.kind = FieldKind::Noise;
                    f.reason = format!("numbers within {thresholds}");
                } else {
                    f.kind = FieldKind::Difference;
                    f.reason = format!("candidate differs from primary in {} of {}", f.differences, e.compared);
                }
            }
            e.fields.sort_by(|a, b| {
                (a.kind != FieldKind::Difference, std::cmp::Reverse(a.differences), &a.field).cmp(&(
                    b.kind != FieldKind::Difference,
                    std::cmp::Reverse(b.differences),
                    &b.field,
                ))
            });
        }
        endpoints.sort_by(|a, b| (a.differing() == 0, &a.endpoint).cmp(&(b.differing() == 0, &b.endpoint)));
        self.differing_fields = endpoints.iter().map(EndpointDiff::differing).sum();
        self.noisy_fields = endpoints.iter().map(|e| e.fields.len() - e.differing()).sum();
        self.endpoints = endpoints;
    }
}

fn describe_thresholds(relative: f64, absolute: f64) -> String {
    format!("the thresholds (relative {relative}, absolute {absolute})")
}

/// The start of a body as text (invalid UTF-8 shown as replacement characters); JSON indented, so that
/// two answers read side by side.
pub fn preview(bytes: &[u8]) -> String {
    let pretty =
        serde_json::from_slice::<serde_json::Value>(bytes).ok().and_then(|v| serde_json::to_string_pretty(&v).ok());
    let text = match pretty {
        Some(p) => std::borrow::Cow::Owned(p),
        None => String::from_utf8_lossy(bytes),
    };
    match text.char_indices().nth(PREVIEW_CHARS) {
        Some((at, _)) => format!("{}\n… ({} bytes in all)", &text[..at], bytes.len()),
        None => text.into_owned(),
    }
}

/// The recorded request as text for reports.
pub fn render_request(r: &crate::protocols::http::HttpRequest) -> String {
    let mut out = format!("{} {} {}\n", r.method, r.target, r.version);
    for h in &r.headers {
        out.push_str(&format!("{}: {}\n", h.name, h.value_str()));
    }
    if let Some(body) = &r.body {
        out.push('\n');
        match body.inline_bytes() {
            Ok(Some(bytes)) => out.push_str(&preview(&bytes)),
            _ => out.push_str(&format!("({} bytes, not shown)", body.size.unwrap_or(0))),
        }
    }
    out
}

fn example_line(x: &Example) -> String {
    match (&x.expected, &x.actual) {
        (Some(e), Some(a)) => format!("{}: primary {e}, {} {a}", x.change, x.right_label),
        (Some(e), None) => format!("{}: primary {e}", x.change),
        (None, Some(a)) => format!("{}: {} {a}", x.change, x.right_label),
        (None, None) => x.change.clone(),
    }
}

pub fn render_text(r: &DiffReport) -> String {
    let mut out = format!(
        "doppel diff: primary {}, candidate {}{}\n",
        r.primary,
        r.candidate,
        r.secondary.as_ref().map(|s| format!(", secondary {s}")).unwrap_or_default()
    );
    for e in &r.endpoints {
        let word = if e.compared == 1 { "request" } else { "requests" };
        if e.fields.is_empty() {
            out.push_str(&format!("{}: {} {word} compared, no differences\n", e.endpoint, e.compared));
            continue;
        }
        out.push_str(&format!("{}: {} {word} compared\n", e.endpoint, e.compared));
        let width = e.fields.iter().map(|f| f.field.chars().count()).max().unwrap_or(0);
        for f in &e.fields {
            let (tag, count) = match f.kind {
                FieldKind::Difference => (console::style("DIFF ").red().bold().to_string(), f.differences),
                FieldKind::Noise => (console::style("noise").dim().to_string(), f.differences + f.within_threshold),
            };
            let example = match (f.kind, &f.example, &f.noise_example) {
                (FieldKind::Difference, Some(x), _) => format!("  e.g. {}", example_line(x)),
                (FieldKind::Noise, _, Some(x)) => format!("  ({}; e.g. {})", f.reason, example_line(x)),
                _ => format!("  ({})", f.reason),
            };
            out.push_str(&format!("  {tag}  {:<width$}  {count} of {}{example}\n", f.field, e.compared));
        }
    }
    if !r.skipped_writes.is_empty() {
        let list: Vec<String> = r.skipped_writes.iter().map(|(e, n)| format!("{e} ({n})")).collect();
        out.push_str(&format!("skipped writes: {} — send them with --allow-writes\n", list.join(", ")));
    }
    for e in r.errors.iter().take(10) {
        out.push_str(&format!("error: {} {} ({}): {}\n", e.side, e.endpoint, e.test, e.message));
    }
    if r.errors.len() > 10 {
        out.push_str(&format!("... and {} more errors (see --json)\n", r.errors.len() - 10));
    }
    let endpoints_with = r.endpoints.iter().filter(|e| e.differing() > 0).count();
    if r.differing_fields > 0 {
        out.push_str(&format!(
            "result: the candidate differs in {} field{} of {} endpoint{} ({} noisy field{} ignored)\n",
            r.differing_fields,
            if r.differing_fields == 1 { "" } else { "s" },
            endpoints_with,
            if endpoints_with == 1 { "" } else { "s" },
            r.noisy_fields,
            if r.noisy_fields == 1 { "" } else { "s" },
        ));
    } else {
        out.push_str(&format!(
            "result: no differences beyond noise in {} compared requests ({} noisy field{} ignored)\n",
            r.compared,
            r.noisy_fields,
            if r.noisy_fields == 1 { "" } else { "s" }
        ));
    }
    out
}

fn write_file(path: &Path, text: &str, privacy: &crate::privacy::Privacy) -> Result<()> {
    crate::store::write_report(path, text, privacy)
}

pub fn write_json(r: &DiffReport, path: &Path, privacy: &crate::privacy::Privacy) -> Result<()> {
    let text = serde_json::to_string_pretty(r).map_err(|e| Error::internal(format!("cannot write JSON: {e}")))?;
    write_file(path, &text, privacy)
}

pub fn write_html(r: &DiffReport, path: &Path, privacy: &crate::privacy::Privacy) -> Result<()> {
    let context = minijinja::context! {
        report => to_value(r),
        endpoints_with => r.endpoints.iter().filter(|e| e.differing() > 0).count(),
    };
    let html = render_template("diff-report.html", include_str!("report.html"), context)?;
    write_file(path, &html, privacy)
}
