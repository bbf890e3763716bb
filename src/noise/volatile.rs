//! Record-time flags: response values that look volatile (timestamps, UUIDs, epoch times, JWTs, random
//! tokens) become `volatile:` rules in the test file. Each keeps the value's shape (`like`), so in replay the
//! value may change but must still be, say, a UUID: a field turned into `null` or a date turned into a word is
//! still caught, and every other field is compared as before.

use std::collections::BTreeMap;

use serde_json::Value;

use super::shape::Shape;
use crate::diff::{FRAMING_HEADERS, Noise, Seg, render_path};
use crate::protocols::http::HttpResponse;
use crate::store::NoiseRule;

/// The volatile rules for a recorded response. `recorded_ms` is when it was recorded (ms since the epoch).
pub fn detect(response: &HttpResponse, recorded_ms: Option<f64>) -> Vec<NoiseRule> {
    let around = recorded_ms.map(|ms| ms / 1000.0).unwrap_or_else(now_seconds);
    let mut rules = Vec::new();
    for (name, value) in grouped_headers(response) {
        if FRAMING_HEADERS.contains(&name.as_str()) || Noise::DEFAULT_HEADERS.contains(&name.as_str()) {
            continue;
        }
        if let Some(shape) = Shape::of(&value, around).filter(|_| !value.contains("{{")) {
            rules.push(rule(Some(name), None, &shape));
        }
    }
    if let Some(json) = response.body.as_ref().and_then(|b| b.json.as_ref()) {
        let mut found = Vec::new();
        walk(json, &mut Vec::new(), around, &mut found);
        rules.extend(generalize(found).into_iter().map(|(path, shape)| rule(None, Some(path), &shape)));
    }
    rules
}

fn now_seconds() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

fn rule(header: Option<String>, body: Option<String>, shape: &Shape) -> NoiseRule {
    NoiseRule { header, body, like: Some(shape.render()), reason: Some(reason(shape)), ..NoiseRule::default() }
}

fn reason(shape: &Shape) -> String {
    let rendered = shape.render();
    let first = rendered.split('{').nth(1).and_then(|s| s.split(['}', ':']).next()).unwrap_or("");
    let what = match first {
        "uuid" => "a UUID",
        "timestamp" | "http_date" => "a timestamp",
        "epoch_s" | "epoch_ms" => "an epoch time",
        "jwt" => "a JWT",
        "password_hash" => "a password hash",
        "suffix" => "a random slug suffix",
        _ => "a random token",
    };
    format!("looks like {what}")
}

/// Header values by lower-case name, repeated headers joined as the diff joins them.
fn grouped_headers(response: &HttpResponse) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for h in &response.headers {
        let name = h.name.to_ascii_lowercase();
        let value = h.value_str().into_owned();
        match out.iter_mut().find(|(n, _)| *n == name) {
            Some((_, v)) => {
                v.push_str(", ");
                v.push_str(&value);
            }
            None => out.push((name, value)),
        }
    }
    out
}

fn walk(value: &Value, path: &mut Vec<Seg>, around: f64, found: &mut Vec<(Vec<Seg>, Shape)>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                path.push(Seg::Key(k.clone()));
                walk(v, path, around, found);
                path.pop();
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                path.push(Seg::Index(i));
                walk(v, path, around, found);
                path.pop();
            }
        }
        // A chained value is compared through its template, not by shape (and its template text is not a value).
        Value::String(s) if s.contains("{{") => {}
        leaf => {
            if let Some(shape) = Shape::of_json(leaf, around) {
                found.push((path.clone(), shape));
            }
        }
    }
}

/// `$.items[0].id` and `$.items[1].id` of one shape become `$.items[*].id`: a field volatile in one element
/// is volatile in all, and the array may have another length next time. Paths whose elements disagree on
/// the shape stay exact.
fn generalize(found: Vec<(Vec<Seg>, Shape)>) -> Vec<(String, Shape)> {
    let mut groups: BTreeMap<String, Vec<(Vec<Seg>, Shape)>> = BTreeMap::new();
    let mut order = Vec::new();
    for (path, shape) in found {
        let key = wildcard_path(&path);
        if !groups.contains_key(&key) {
            order.push(key.clone());
        }
        groups.entry(key).or_default().push((path, shape));
    }
    let mut out = Vec::new();
    for key in order {
        let Some(members) = groups.remove(&key) else { continue };
        let same = members.windows(2).all(|w| w[0].1 == w[1].1);
        if same {
            out.extend(members.into_iter().next().map(|(_, shape)| (key, shape)));
        } else {
            out.extend(members.into_iter().map(|(p, s)| (render_path(&p), s)));
        }
    }
    out
}

/// A path with every array index written as `[*]`.
fn wildcard_path(path: &[Seg]) -> String {
    let mut out = String::from("$");
    for seg in path {
        match seg {
            Seg::Index(_) => out.push_str("[*]"),
            key => out.push_str(&render_path(std::slice::from_ref(key))[1..]),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocols::http::Header;
    use crate::store::Body;

    #[test]
    fn flags_volatile_fields_with_their_shape_and_leaves_the_rest() {
        let body = serde_json::json!({
            "id": "5f0c4e1e-8a43-4c1a-9a55-0d1b8d2b8f27",
            "name": "Ann",
            "plan": "free",
            "created_at": "2026-11-27T10:00:00.123456+00:00",
            "api_key": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b",
            "items": [{"sku": "A-1", "token": "Qm9vdF9z3Xk-aL0qP7wZ1nT8yR4cV2bE"},
                      {"sku": "B-2", "token": "Zz9vdF9z3Xk-aL0qP7wZ1nT8yR4cV2bQ"}],
            "seen": 1795730921,
            "count": 3
        });
        let response = HttpResponse {
            status: 201,
            reason: String::new(),
            version: "HTTP/1.1".into(),
            headers: vec![
                Header::new("Content-Type", "application/json"),
                Header::new("Date", "Fri, 27 Nov 2026 10:00:00 GMT"),
                Header::new("X-Trace", "5f0c4e1e-8a43-4c1a-9a55-0d1b8d2b8f27"),
            ],
            body: Some(Body { json: Some(body), ..Body::default() }),
            messages: vec![],
            trailers: vec![],
        };
        let rules = detect(&response, Some(1_795_730_000_000.0));
        let got: Vec<(String, String)> = rules
            .iter()
            .map(|r| (r.header.clone().or(r.body.clone()).unwrap_or_default(), r.like.clone().unwrap_or_default()))
            .collect();
        let want = [
            ("x-trace", "{uuid}"),
            ("$.id", "{uuid}"),
            ("$.created_at", "{timestamp}"),
            ("$.api_key", "{hex:40}"),
            ("$.items[*].token", "{token:32}"),
            ("$.seen", "{epoch_s}"),
        ];
        let want: Vec<(String, String)> = want.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect();
        assert_eq!(got, want);
        assert_eq!(rules[2].reason.as_deref(), Some("looks like a timestamp"));
    }

    #[test]
    fn chain_templates_get_no_shape_rule() {
        let body = serde_json::json!({"user": {"token": "{{ chain.post-signup.body.user.token }}"}, "id": "{{ chain.x.body.id }}"});
        let response = HttpResponse {
            status: 200,
            reason: String::new(),
            version: "HTTP/1.1".into(),
            headers: vec![Header::new("X-Token", "{{ chain.post-signup.header.x-token }}")],
            body: Some(Body { json: Some(body), ..Body::default() }),
            messages: vec![],
            trailers: vec![],
        };
        assert_eq!(detect(&response, Some(1_795_730_000_000.0)), Vec::new());
    }
}
