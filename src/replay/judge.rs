//! Judging one answer: the response the app gave against the one expected, under the test's noise rules.

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::Answer;
use crate::diff::{self, Actual, Expected, Noise};
use crate::error::{Context, Kind};
use crate::protocols::UnmadeWrite;
use crate::protocols::http::client;
use crate::protocols::http::{Header, HttpResponse};
use crate::protocols::http2;
use crate::report::{Outcome, TestResult};
use crate::store::{self, LoadedSet, TestCase};

/// The result of `test` before it ran: what it is, nothing compared yet.
fn result_of(set: &LoadedSet, file: &Path, test: &TestCase) -> TestResult {
    let (method, target, expected_status) = match test.http() {
        Some((q, r)) => (q.method.clone(), q.target.clone(), r.status),
        None => (test.kind.clone(), String::new(), 0),
    };
    TestResult {
        set: set.name.clone(),
        name: test.name.clone(),
        file: file.display().to_string(),
        method,
        target,
        outcome: Outcome::Passed,
        expected_status,
        actual_status: None,
        differences: Vec::new(),
        misses: Vec::new(),
        applied_noise: Vec::new(),
        missing_writes: Vec::new(),
        tolerated: Vec::new(),
        sealed: None,
        error: None,
        duration_ms: 0.0,
        recorded_latency_ms: test.latency_ms,
    }
}

/// A test of a kind this replay cannot send: it fails, saying so (never passes untried).
pub(crate) fn not_replayable(set: &LoadedSet, file: &Path, test: &TestCase) -> TestResult {
    let mut result = result_of(set, file, test);
    result.error = Some(format!("a {} test cannot be replayed against the app by this doppel", test.kind));
    settle(&mut result);
    result
}

/// Compares one response with the expected one and builds the test result.
#[allow(clippy::too_many_arguments)]
pub(crate) fn judge(
    set: &LoadedSet,
    file: &Path,
    test: &TestCase,
    expected: &HttpResponse,
    noise: &Noise,
    outcome: crate::error::Result<client::Response>,
    misses: Vec<String>,
    took: Duration,
) -> TestResult {
    let mut result = result_of(set, file, test);
    result.misses = misses;
    result.duration_ms = took.as_secs_f64() * 1000.0;
    match outcome {
        Err(e) => result.error = Some(e.to_string()),
        Ok(resp) => {
            result.actual_status = Some(resp.head.status);
            match compare_response(&set.dir, test, expected, &resp, noise) {
                Ok(c) => {
                    result.differences = c.differences;
                    result.applied_noise = c.applied_noise;
                }
                Err(e) => result.error = Some(e.to_string()),
            }
            resp.body.discard();
        }
    }
    settle(&mut result);
    result
}

/// Adds the writes recorded during the test that the build did not make: each fails the test unless a rule
/// (`--allow-missing-write`, `allow_missing_writes:` in doppel.yaml) allows it, and then the result says so.
pub(crate) fn unmade_writes(result: &mut TestResult, unmade: Vec<UnmadeWrite>, allowed: &[String]) {
    for w in unmade {
        let line = format!("{} ({} {}, mock {})", w.what, w.kind, w.dest, w.mock);
        match allowed.iter().find(|pattern| allows(pattern, &w)) {
            Some(pattern) => result.tolerated.push(format!("recorded write not made, allowed by `{pattern}`: {line}")),
            None => result.missing_writes.push(format!("recorded, not made by this build: {line}")),
        }
    }
    settle(result);
}

/// Whether an allow pattern covers a write: `*`, its protocol, its destination, or the start of the
/// statement or request (case and runs of spaces aside).
fn allows(pattern: &str, w: &UnmadeWrite) -> bool {
    let norm = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ").to_ascii_lowercase();
    let p = norm(pattern);
    p == "*" || p == w.kind || p == w.dest.to_ascii_lowercase() || norm(&w.what).starts_with(&p)
}

/// What the recording's privacy rules change in a verdict. A value the recording pseudonymized (an address
/// the app has in its own configuration, say) matches when the new build's value pseudonymizes to it, and
/// the result says so. A failed test whose request carries sealed values that cannot be opened here says
/// that the seal key is missing: the app got placeholders instead of the credentials.
pub(crate) fn privacy(result: &mut TestResult, test: &TestCase, privacy: &crate::privacy::Privacy, dir: &Path) {
    let unquote = |s: &Option<String>| s.as_deref().and_then(|s| serde_json::from_str::<String>(s).ok());
    result.differences.retain(|d| {
        if !matches!(d.change, diff::Change::Changed) {
            return true;
        }
        let (Some(expected), Some(actual)) = (unquote(&d.expected), unquote(&d.actual)) else { return true };
        if privacy.pseudonymize_text(&actual).is_some_and(|p| p == expected) {
            result.tolerated.push(format!("{}: the new value pseudonymizes to the recorded one", d.location));
            return false;
        }
        true
    });
    settle(result);
    if result.outcome == Outcome::Failed
        && let Some(why) = privacy.closed(dir)
        && let Some((request, _)) = test.http()
    {
        let text = serde_json::to_string(request).unwrap_or_default();
        let ids = crate::privacy::placeholders(&text);
        if !ids.is_empty() {
            result.sealed =
                Some(format!("the request sends sealed values ({}) as placeholders: {why}", ids.join(", ")));
        }
    }
}

fn settle(result: &mut TestResult) {
    let failed = result.error.is_some()
        || !result.differences.is_empty()
        || !result.misses.is_empty()
        || !result.missing_writes.is_empty();
    result.outcome = if failed { Outcome::Failed } else { Outcome::Passed };
}

/// Compares a kept answer again, under new rules.
pub(crate) fn rejudge(set: &LoadedSet, result: &mut TestResult, answer: &Answer, noise: &Noise) {
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
) -> crate::error::Result<diff::Comparison> {
    // gRPC: messages compared as decoded JSON, field by field.
    if test.kind == http2::KIND
        && http2::client::is_grpc_response(expected)
        && let Some((request, _)) = test.http()
    {
        let body = resp.body.bytes().unwrap_or_default();
        let h = &resp.head;
        let target = &request.target;
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
    pub(crate) fn recorded(set_dir: &Path, expected: &'a HttpResponse) -> crate::error::Result<Side<'a>> {
        let body = match expected.body.as_ref().and_then(|b| b.file.as_ref()) {
            Some(file) => SideBody::File { path: set_dir.join(file), len: store::body_len(&expected.body) },
            None => SideBody::Memory(Cow::Owned(store::body_bytes(set_dir, &expected.body)?)),
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
pub(crate) fn compare_sides(expected: &Side, actual: &Side, noise: &Noise) -> crate::error::Result<diff::Comparison> {
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
                    let ((ef, el), (af, al)) = (store::open_body_file(e)?, store::open_body_file(a)?);
                    diff::compare_streams(ef, el, af, al).context(Kind::Environment, || "comparing bodies".into())?
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
