//! Comparison of an expected (recorded) HTTP response with the actual one, noise-aware.
//!
//! Status is compared exactly; headers and trailers by case-insensitive name, skipping framing headers and
//! those the noise rules ignore; bodies structurally when both are JSON, as a line diff when both are text,
//! else byte for byte. [`compare_streams`] compares bodies too large to hold in memory.

mod json;
mod noise;

#[cfg(test)]
mod tests;

use std::collections::BTreeSet;
use std::io::Read;
use std::time::Duration;

use serde_json::Value;

use crate::protocols::http::Header;
use crate::store::body::is_json_type;

#[cfg(test)]
pub use json::json_diff;
pub(crate) use json::{Seg, diff_values, render_path};
pub use noise::Noise;

/// Headers never compared: they describe the framing of the message, which the body comparison covers.
pub const FRAMING_HEADERS: &[&str] = &["content-length", "transfer-encoding", "connection", "keep-alive"];

/// How many characters of a value a [`Difference`] shows.
const SHOWN_CHARS: usize = 200;
/// How many lines of a unified diff a [`Difference`] keeps.
const DETAIL_LINES: usize = 60;

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    Changed,
    Added,
    Removed,
    TypeChanged,
}

impl Change {
    /// How reports name the change.
    pub fn word(&self) -> &'static str {
        match self {
            Change::Changed => "changed",
            Change::Added => "added",
            Change::Removed => "removed",
            Change::TypeChanged => "type changed",
        }
    }
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Difference {
    /// "status", "header content-type", "trailer x-sum", "body $.user.name", "body $.items[2]", "body" (whole non-JSON body)
    pub location: String,
    pub change: Change,
    /// Short readable renderings (JSON values as compact JSON, strings quoted), None for Added/Removed sides.
    pub expected: Option<String>,
    pub actual: Option<String>,
    /// For text bodies: a unified diff (lines prefixed "-"/"+"/" ", a few lines of context) — None otherwise.
    pub detail: Option<String>,
}

/// The response the app gave on replay.
pub struct Actual<'a> {
    pub status: u16,
    pub headers: &'a [Header],
    pub body: &'a [u8],
    pub trailers: &'a [Header],
}

/// The response recorded in the test.
pub struct Expected<'a> {
    pub status: u16,
    pub headers: &'a [Header],
    pub body: &'a [u8],
    pub trailers: &'a [Header],
}

#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Comparison {
    pub differences: Vec<Difference>,
    /// Human-readable list of the noise rules that actually suppressed a difference in this comparison, e.g.
    /// "header date", "body $.created_at" (used by reports to say which rules were applied).
    pub applied_noise: Vec<String>,
}

impl Comparison {
    /// Whether the responses matched (once noise is ignored).
    #[cfg(test)]
    pub fn is_match(&self) -> bool {
        self.differences.is_empty()
    }
}

/// Compares a recorded response with the actual one.
pub fn compare(expected: &Expected, actual: &Actual, noise: &Noise) -> Comparison {
    let mut differences = Vec::new();
    let mut applied = BTreeSet::new();

    if expected.status != actual.status {
        differences.push(Difference {
            location: "status".to_string(),
            change: Change::Changed,
            expected: Some(expected.status.to_string()),
            actual: Some(actual.status.to_string()),
            detail: None,
        });
    }
    compare_headers("header", expected.headers, actual.headers, noise, &mut differences, &mut applied);
    compare_headers("trailer", expected.trailers, actual.trailers, noise, &mut differences, &mut applied);

    let content_type = content_type(expected.headers).or_else(|| content_type(actual.headers));
    compare_bodies(expected.body, actual.body, content_type.as_deref(), noise, &mut differences, &mut applied);

    Comparison { differences, applied_noise: noise.labels(&applied) }
}

fn content_type(headers: &[Header]) -> Option<String> {
    headers.iter().find(|h| h.name.eq_ignore_ascii_case("content-type")).map(|h| h.value_str().into_owned())
}

/// Header values by lower-case name, in order of first appearance; repeated headers joined with ", ".
fn group_headers(headers: &[Header]) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = Vec::new();
    for h in headers {
        let name = h.name.to_ascii_lowercase();
        match out.iter_mut().find(|(n, _)| *n == name) {
            Some((_, value)) => {
                value.extend_from_slice(b", ");
                value.extend_from_slice(&h.value);
            }
            None => out.push((name, h.value.clone())),
        }
    }
    out
}

fn render_header(value: &[u8]) -> String {
    format!("{:?}", String::from_utf8_lossy(value))
}

fn compare_headers(
    prefix: &str,
    expected: &[Header],
    actual: &[Header],
    noise: &Noise,
    differences: &mut Vec<Difference>,
    applied: &mut BTreeSet<usize>,
) {
    let expected = group_headers(expected);
    let actual = group_headers(actual);
    for (name, ev) in &expected {
        if FRAMING_HEADERS.contains(&name.as_str()) {
            continue;
        }
        let av = actual.iter().find(|(n, _)| n == name).map(|(_, v)| v);
        if av == Some(ev) {
            continue;
        }
        let mut detail = None;
        if let Some(id) = noise.header_rule(name) {
            // A `like` rule keeps the header: it must be there, in the recorded shape.
            let text = |v: &[u8]| Value::String(String::from_utf8_lossy(v).into_owned());
            match av {
                Some(av) if noise.accepts(id, &text(ev), &text(av)) => {
                    applied.insert(id);
                    continue;
                }
                None if noise.shape(id).is_none() => {
                    applied.insert(id);
                    continue;
                }
                _ => detail = noise.rejection(id),
            }
        }
        differences.push(Difference {
            location: format!("{prefix} {name}"),
            change: if av.is_some() { Change::Changed } else { Change::Removed },
            expected: Some(render_header(ev)),
            actual: av.map(|v| render_header(v)),
            detail,
        });
    }
    for (name, av) in &actual {
        if FRAMING_HEADERS.contains(&name.as_str()) || expected.iter().any(|(n, _)| n == name) {
            continue;
        }
        let mut detail = None;
        if let Some(id) = noise.header_rule(name) {
            if noise.shape(id).is_none() {
                applied.insert(id);
                continue;
            }
            detail = noise.rejection(id);
        }
        differences.push(Difference {
            location: format!("{prefix} {name}"),
            change: Change::Added,
            expected: None,
            actual: Some(render_header(av)),
            detail,
        });
    }
}

/// Whether the bytes start like a JSON object or array.
fn looks_like_json(body: &[u8]) -> bool {
    matches!(body.iter().find(|b| !b.is_ascii_whitespace()), Some(b'{' | b'['))
}

fn parse_json(body: &[u8], json_type: bool) -> Option<Value> {
    if json_type || looks_like_json(body) { serde_json::from_slice(body).ok() } else { None }
}

fn compare_bodies(
    expected: &[u8],
    actual: &[u8],
    content_type: Option<&str>,
    noise: &Noise,
    differences: &mut Vec<Difference>,
    applied: &mut BTreeSet<usize>,
) {
    if expected == actual {
        return;
    }
    let json_type = is_json_type(content_type);
    if let (Some(e), Some(a)) = (parse_json(expected, json_type), parse_json(actual, json_type)) {
        let (diffs, ids) = json::diff_values(&e, &a, noise);
        differences.extend(diffs);
        applied.extend(ids);
        return;
    }
    match (text(expected), text(actual)) {
        (Some(e), Some(a)) => differences.push(text_difference(e, a)),
        _ => differences.push(binary_difference(expected, actual)),
    }
}

/// The body as text: UTF-8 without NUL bytes.
fn text(body: &[u8]) -> Option<&str> {
    std::str::from_utf8(body).ok().filter(|s| !s.contains('\0'))
}

fn text_difference(expected: &str, actual: &str) -> Difference {
    let diff = similar::TextDiff::configure().timeout(Duration::from_millis(500)).diff_lines(expected, actual);
    let unified = diff.unified_diff().context_radius(3).to_string();
    let lines: Vec<&str> = unified.lines().collect();
    let mut detail = lines.iter().take(DETAIL_LINES).copied().collect::<Vec<_>>().join("\n");
    if lines.len() > DETAIL_LINES {
        detail.push_str(&format!("\n({} more lines)", lines.len() - DETAIL_LINES));
    }
    Difference {
        location: "body".to_string(),
        change: Change::Changed,
        expected: Some(shorten(expected)),
        actual: Some(shorten(actual)),
        detail: Some(detail),
    }
}

/// The first [`SHOWN_CHARS`] characters, with an ellipsis when cut.
fn shorten(s: &str) -> String {
    match s.char_indices().nth(SHOWN_CHARS) {
        Some((at, _)) => format!("{}…", &s[..at]),
        None => s.to_string(),
    }
}

/// A JSON value as compact JSON, cut when long.
pub(crate) fn render_json(value: &Value) -> String {
    shorten(&value.to_string())
}

fn binary_difference(expected: &[u8], actual: &[u8]) -> Difference {
    let offset = expected.iter().zip(actual).position(|(e, a)| e != a).unwrap_or(expected.len().min(actual.len()));
    let side = |body: &[u8]| match body.get(offset) {
        Some(b) => format!("{} bytes; first difference at offset {offset}: 0x{b:02x}", body.len()),
        None => format!("{} bytes; first difference at offset {offset}: end of body", body.len()),
    };
    Difference {
        location: "body".to_string(),
        change: Change::Changed,
        expected: Some(side(expected)),
        actual: Some(side(actual)),
        detail: None,
    }
}

/// Compares two large bodies as streams of known length (never holding both in memory): equal -> no
/// difference; otherwise one Difference at "body" saying the size differs or the first differing byte offset.
pub fn compare_streams(
    mut ef: impl Read,
    expected_len: u64,
    mut af: impl Read,
    actual_len: u64,
) -> std::io::Result<Option<Difference>> {
    if expected_len != actual_len {
        return Ok(Some(Difference {
            location: "body".to_string(),
            change: Change::Changed,
            expected: Some(format!("{expected_len} bytes")),
            actual: Some(format!("{actual_len} bytes")),
            detail: None,
        }));
    }
    const CHUNK: usize = 64 * 1024;
    let mut eb = vec![0u8; CHUNK];
    let mut ab = vec![0u8; CHUNK];
    let mut offset: u64 = 0;
    loop {
        let en = read_full(&mut ef, &mut eb)?;
        let an = read_full(&mut af, &mut ab)?;
        let n = en.min(an);
        if let Some(at) = eb[..n].iter().zip(&ab[..n]).position(|(e, a)| e != a) {
            let at_offset = offset + at as u64;
            return Ok(Some(Difference {
                location: "body".to_string(),
                change: Change::Changed,
                expected: Some(format!(
                    "{expected_len} bytes; first difference at offset {at_offset}: 0x{:02x}",
                    eb[at]
                )),
                actual: Some(format!("{actual_len} bytes; first difference at offset {at_offset}: 0x{:02x}", ab[at])),
                detail: None,
            }));
        }
        if en != an {
            // A file changed size while being read.
            let at_offset = offset + n as u64;
            let ended = |read: usize| {
                if read == n { "end of file" } else { "more data" }
            };
            return Ok(Some(Difference {
                location: "body".to_string(),
                change: Change::Changed,
                expected: Some(format!("first difference at offset {at_offset}: {}", ended(en))),
                actual: Some(format!("first difference at offset {at_offset}: {}", ended(an))),
                detail: None,
            }));
        }
        if n == 0 {
            return Ok(None);
        }
        offset += n as u64;
    }
}

/// Reads until `buf` is full or the end of the file; returns how many bytes were read.
fn read_full(file: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}
