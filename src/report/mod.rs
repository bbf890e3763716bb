//! Reports of a `doppel test` run: live lines in the terminal, JUnit XML for CI, a JSON file per run.

use std::io::Write;
use std::path::Path;

use console::style;
use serde::Serialize;

use crate::diff::Difference;
use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Passed,
    Failed,
}

#[derive(Debug, Clone, Serialize)]
pub struct TestResult {
    pub set: String,
    pub name: String,
    pub file: String,
    pub method: String,
    pub target: String,
    pub outcome: Outcome,
    pub expected_status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actual_status: Option<u16>,
    pub differences: Vec<Difference>,
    /// Outbound calls the mocks could not answer while this test ran.
    pub misses: Vec<String>,
    /// Noise rules that hid a difference.
    pub applied_noise: Vec<String>,
    /// Writes recorded during this test (SQL, HTTP POST/PUT/PATCH/DELETE, Redis writes) that the build did
    /// not make: each fails the test.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub missing_writes: Vec<String>,
    /// Differences a rule allowed other than noise (a missing write allowed by `--allow-missing-write`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerated: Vec<String>,
    /// Set on a failed test whose request holds sealed values that could not be opened (no seal key, or
    /// another one): the likely reason it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed: Option<String>,
    /// The request could not be completed (connection refused, timeout, invalid response).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub duration_ms: f64,
    pub recorded_latency_ms: f64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct SetReport {
    pub name: String,
    pub results: Vec<TestResult>,
    /// Mocks never used during the run.
    pub unused_mocks: usize,
    pub total_mocks: usize,
    /// Misses outside any test (during start-up).
    pub startup_misses: Vec<String>,
    pub warnings: Vec<String>,
    /// Noise rules learned in this run and written to the test files (`test: rule`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub learned: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct RunReport {
    pub version: u32,
    pub started_at: String,
    pub duration_ms: f64,
    pub mode: String,
    pub passed: usize,
    pub failed: usize,
    pub sets: Vec<SetReport>,
}

impl RunReport {
    pub fn tally(&mut self) {
        self.passed = self.sets.iter().flat_map(|s| &s.results).filter(|r| r.outcome == Outcome::Passed).count();
        self.failed = self.sets.iter().flat_map(|s| &s.results).filter(|r| r.outcome == Outcome::Failed).count();
    }
}

/// Differences one line each (with details indented below), as `render` prints them.
pub fn render_differences(differences: &[Difference]) -> String {
    let mut out = String::new();
    for d in differences {
        out.push_str(&format!("       {} {}", style(&d.location).bold(), d.change.word()));
        match (&d.expected, &d.actual) {
            (Some(e), Some(a)) => out.push_str(&format!(": expected {} got {}", style(e).green(), style(a).red())),
            (Some(e), None) => out.push_str(&format!(": expected {}", style(e).green())),
            (None, Some(a)) => out.push_str(&format!(": got {}", style(a).red())),
            (None, None) => {}
        }
        out.push('\n');
        if let Some(detail) = &d.detail {
            for line in detail.lines() {
                let styled = match line.chars().next() {
                    Some('-') => style(line).green().to_string(),
                    Some('+') => style(line).red().to_string(),
                    _ => line.to_string(),
                };
                out.push_str(&format!("         {styled}\n"));
            }
        }
    }
    out
}

/// The noise rules that hid a difference, compactly (`$.created_at, $.id, x-trace`), leaving out the
/// headers doppel ignores by default; the JSON report has them all, with their shapes and origins.
pub fn compact_noise(applied: &[String]) -> Option<String> {
    let defaults: Vec<String> = crate::diff::Noise::DEFAULT_HEADERS.iter().map(|h| format!("header {h}")).collect();
    let shown: Vec<String> = applied
        .iter()
        .filter(|l| !defaults.contains(l))
        .map(|l| {
            let l = l.strip_prefix("body ").or_else(|| l.strip_prefix("header ")).unwrap_or(l);
            let base = l.split(" like ").next().unwrap_or(l);
            let base = base.split(" (").next().unwrap_or(base);
            if l.contains("(learned") { format!("{base} (learned)") } else { base.to_string() }
        })
        .collect();
    (!shown.is_empty()).then(|| shown.join(", "))
}

/// The lines printed for one test: one for a pass, a field-level diff for a failure.
pub fn render(r: &TestResult) -> String {
    let mut out = String::new();
    let label = format!("{} {}", r.method, r.target);
    match r.outcome {
        Outcome::Passed => {
            let noise = compact_noise(&r.applied_noise).map(|n| format!("; noise: {n}")).unwrap_or_default();
            out.push_str(&format!(
                "  {} {}  {}  ({:.1} ms{})\n",
                style("PASS").green().bold(),
                r.name,
                style(label).dim(),
                r.duration_ms,
                style(noise).dim()
            ));
            for t in &r.tolerated {
                out.push_str(&format!("       {}\n", style(format!("tolerated: {t}")).dim()));
            }
        }
        Outcome::Failed => {
            out.push_str(&format!("  {} {}  {}\n", style("FAIL").red().bold(), r.name, style(label).dim()));
            if let Some(s) = &r.sealed {
                out.push_str(&format!("       {} {s}\n", style("sealed:").yellow().bold()));
            }
            if let Some(e) = &r.error {
                out.push_str(&format!("       {}\n", style(e).red()));
            }
            out.push_str(&render_differences(&r.differences));
            if let Some(n) = compact_noise(&r.applied_noise) {
                out.push_str(&format!("       {}\n", style(format!("noise applied: {n}")).dim()));
            }
            for m in &r.misses {
                out.push_str(&format!("       {} {}\n", style("mock miss:").yellow().bold(), m));
            }
            for w in &r.missing_writes {
                out.push_str(&format!("       {} {}\n", style("missing write:").yellow().bold(), w));
            }
            for t in &r.tolerated {
                out.push_str(&format!("       {}\n", style(format!("tolerated: {t}")).dim()));
            }
            out.push_str(&format!("       {}\n", style(format!("test file: {}", r.file)).dim()));
        }
    }
    out
}

pub fn print_result(r: &TestResult) {
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(render(r).as_bytes());
    let _ = stdout.flush();
}

/// The final line is exactly `N passed, M failed`, then details.
pub fn summary_line(report: &RunReport) -> String {
    let unused: usize = report.sets.iter().map(|s| s.unused_mocks).sum();
    let total: usize = report.sets.iter().map(|s| s.total_mocks).sum();
    format!(
        "{} passed, {} failed ({} test sets, {:.2}s; {} of {} mocks used)",
        report.passed,
        report.failed,
        report.sets.len(),
        report.duration_ms / 1000.0,
        total - unused,
        total
    )
}

pub fn write_json(report: &RunReport, path: &Path, privacy: &crate::privacy::Privacy) -> Result<()> {
    let text = serde_json::to_string_pretty(report).map_err(|e| Error::internal(e.to_string()))?;
    crate::store::write_report(path, &text, privacy)
}

pub fn write_junit(report: &RunReport, path: &Path, privacy: &crate::privacy::Privacy) -> Result<()> {
    use quick_junit::{NonSuccessKind, Report, TestCase, TestCaseStatus, TestSuite};
    let mut junit = Report::new("doppel");
    for set in &report.sets {
        let mut suite = TestSuite::new(set.name.as_str());
        for r in &set.results {
            let status = match r.outcome {
                Outcome::Passed => TestCaseStatus::success(),
                Outcome::Failed => {
                    let mut s = TestCaseStatus::non_success(NonSuccessKind::Failure);
                    let plain = console::strip_ansi_codes(&render(r)).into_owned();
                    let first = r
                        .error
                        .clone()
                        .or_else(|| r.differences.first().map(|d| format!("{} {}", d.location, d.change.word())))
                        .or_else(|| r.misses.first().cloned())
                        .or_else(|| r.missing_writes.first().map(|w| format!("missing write: {w}")))
                        .unwrap_or_else(|| "failed".into());
                    s.set_message(first);
                    s.set_description(plain);
                    s
                }
            };
            let mut case = TestCase::new(r.name.as_str(), status);
            case.set_classname(format!("{}.{}", set.name, r.method.to_ascii_lowercase()));
            case.set_time(std::time::Duration::from_secs_f64(r.duration_ms / 1000.0));
            suite.add_test_case(case);
        }
        junit.add_test_suite(suite);
    }
    let xml = junit.to_string().map_err(|e| Error::internal(format!("cannot write JUnit XML: {e}")))?;
    crate::store::write_report(path, &xml, privacy)
}
