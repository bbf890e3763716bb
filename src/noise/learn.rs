//! Learned noise: the same build answers the same request several times (replays of one test set, or a
//! target and a secondary of one version); the fields whose values differ between those answers are noise.
//! Only differences between answers of the same build count, never a difference with the recording, so a
//! regression cannot be learned away.

use serde_json::Value;

use crate::diff::{self, Actual, Change, Expected, Noise};
use crate::protocols::http::Header;
use crate::store::{Learned, NoiseRule};

/// One answer of the app to a test's request, with values chained from earlier answers put back to their
/// recorded form (so that an id the app generated anew is not mistaken for noise where it was reused).
#[derive(Debug, Clone)]
pub struct Observation {
    pub status: u16,
    pub headers: Vec<Header>,
    pub trailers: Vec<Header>,
    pub body: Vec<u8>,
}

/// What comparing the answers found.
#[derive(Debug, Default)]
pub struct Learning {
    /// New rules (their `learned` says when and what was seen).
    pub rules: Vec<NoiseRule>,
    /// Differences that cannot be expressed as a rule (status, text bodies), to be shown.
    pub unlearnable: Vec<String>,
}

/// How many differing values a learned rule keeps for the reviewer.
const SEEN_KEPT: usize = 4;
const SEEN_CHARS: usize = 60;

/// Compares every answer with the first under the rules that already apply (`existing`), and turns each
/// remaining difference into a rule. Arrays whose elements only moved get `ignore_order`.
pub fn learn(observations: &[Observation], existing: &[NoiseRule], default_headers: bool, today: &str) -> Learning {
    let mut out = Learning::default();
    let Some((base, others)) = observations.split_first() else { return out };
    if others.is_empty() {
        return out;
    }
    // First the arrays that only changed order, so their elements are not each learned as changed.
    let order_rules = reordered(base, others);
    let mut rules: Vec<NoiseRule> = existing.to_vec();
    rules.extend(order_rules.iter().map(|p| NoiseRule {
        body: Some(p.clone()),
        ignore_order: true,
        ..NoiseRule::default()
    }));
    let noise = match Noise::compile(&rules, default_headers) {
        Ok(n) => n,
        Err(e) => {
            out.unlearnable.push(format!("cannot learn: {e}"));
            return out;
        }
    };
    let runs = observations.len() as u32;
    let learned = |seen: Vec<String>| Some(Learned { date: today.to_string(), runs, seen });
    for p in &order_rules {
        out.rules.push(NoiseRule {
            body: Some(p.clone()),
            ignore_order: true,
            reason: Some("learned".into()),
            learned: learned(vec!["same elements in another order".into()]),
            ..NoiseRule::default()
        });
    }
    for (key, seen) in differing(base, others, &noise, &mut out.unlearnable) {
        let (header, body) = match key.strip_prefix("header ") {
            Some(h) => (Some(h.to_string()), None),
            None => (None, key.strip_prefix("body ").map(str::to_string)),
        };
        out.rules.push(NoiseRule {
            header,
            body,
            reason: Some("learned".into()),
            learned: learned(seen),
            ..NoiseRule::default()
        });
    }
    out
}

/// JSONPaths of the arrays whose elements came in another order in some answer.
fn reordered(base: &Observation, others: &[Observation]) -> Vec<String> {
    let mut paths: Vec<String> = Vec::new();
    if let Some(b) = json_of(base) {
        for o in others {
            if let Some(v) = json_of(o) {
                reordered_arrays(&b, &v, &mut Vec::new(), &mut paths);
            }
        }
    }
    paths.sort();
    paths.dedup();
    paths
}

/// The places (`header x`, `body $.y`) where the answers differ under `noise`, in order of discovery, each
/// with a few of the values seen there. A difference no rule can describe is said in `unlearnable`.
fn differing(
    base: &Observation,
    others: &[Observation],
    noise: &Noise,
    unlearnable: &mut Vec<String>,
) -> Vec<(String, Vec<String>)> {
    let mut found: Vec<(String, Vec<String>)> = Vec::new();
    for o in others {
        let c = diff::compare(
            &Expected { status: base.status, headers: &base.headers, body: &base.body, trailers: &base.trailers },
            &Actual { status: o.status, headers: &o.headers, body: &o.body, trailers: &o.trailers },
            noise,
        );
        for d in c.differences {
            let Some(key) = location_rule(&d.location) else {
                let what = format!("{} differs between answers of the same build", d.location);
                if !unlearnable.contains(&what) {
                    unlearnable.push(what);
                }
                continue;
            };
            let k = match found.iter().position(|(k, _)| *k == key) {
                Some(k) => k,
                None => {
                    found.push((key, Vec::new()));
                    found.len() - 1
                }
            };
            let seen = &mut found[k].1;
            let absent = (d.change != Change::Changed).then(|| "(absent)".to_string());
            for v in
                [d.expected.as_deref().map(shorten), d.actual.as_deref().map(shorten), absent].into_iter().flatten()
            {
                if !seen.contains(&v) && seen.len() < SEEN_KEPT {
                    seen.push(v);
                }
            }
        }
    }
    found
}

fn json_of(o: &Observation) -> Option<Value> {
    serde_json::from_slice(&o.body).ok()
}

/// A value as a reviewer reads it: strings without their JSON quotes, cut when long.
fn shorten(s: &str) -> String {
    let s = match serde_json::from_str::<Value>(s) {
        Ok(Value::String(text)) => text,
        _ => s.to_string(),
    };
    match s.char_indices().nth(SEEN_CHARS) {
        Some((at, _)) => format!("{}…", &s[..at]),
        None => s.to_string(),
    }
}

/// The rule location for a difference: `header x`, `body $.a[*].b` (indices generalized), or `None` for
/// what no rule can express (status, a whole text body).
fn location_rule(location: &str) -> Option<String> {
    if let Some(h) = location.strip_prefix("header ") {
        return Some(format!("header {h}"));
    }
    let path = location.strip_prefix("body ")?;
    Some(format!("body {}", wildcard_indices(path.trim_end_matches("[*]"))))
}

/// `$.items[3].token` -> `$.items[*].token`; quoted keys (`$['a[1]']`) are left alone.
pub fn wildcard_indices(path: &str) -> String {
    let mut out = String::new();
    let mut chars = path.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '[' && chars.peek() == Some(&'\'') {
            // A quoted key: copy through its closing quote, honouring escapes.
            out.push(c);
            if let Some(q) = chars.next() {
                out.push(q);
            }
            while let Some(k) = chars.next() {
                out.push(k);
                if k == '\\' {
                    if let Some(e) = chars.next() {
                        out.push(e);
                    }
                } else if k == '\'' {
                    break;
                }
            }
            continue;
        }
        if c == '[' && chars.peek().is_some_and(|d| d.is_ascii_digit()) {
            while chars.peek().is_some_and(|d| d.is_ascii_digit()) {
                chars.next();
            }
            if chars.peek() == Some(&']') {
                chars.next();
            }
            out.push_str("[*]");
            continue;
        }
        out.push(c);
    }
    out
}

/// Paths (with `[*]` for indices) of arrays that hold the same elements in another order.
fn reordered_arrays(a: &Value, b: &Value, path: &mut Vec<diff::Seg>, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for (k, xv) in x {
                if let Some(yv) = y.get(k) {
                    path.push(diff::Seg::Key(k.clone()));
                    reordered_arrays(xv, yv, path, out);
                    path.pop();
                }
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            if x != y && x.len() == y.len() && sorted(x) == sorted(y) {
                out.push(wildcard_indices(&diff::render_path(path)));
                return;
            }
            for (i, (xv, yv)) in x.iter().zip(y).enumerate() {
                path.push(diff::Seg::Index(i));
                reordered_arrays(xv, yv, path, out);
                path.pop();
            }
        }
        _ => {}
    }
}

fn sorted(items: &[Value]) -> Vec<String> {
    let mut v: Vec<String> = items.iter().map(|i| i.to_string()).collect();
    v.sort();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(body: Value) -> Observation {
        Observation {
            status: 200,
            headers: vec![Header::new("Content-Type", "application/json")],
            trailers: vec![],
            body: body.to_string().into_bytes(),
        }
    }

    #[test]
    fn learns_only_what_differs_between_answers() {
        let runs = [
            obs(serde_json::json!({"id": 1, "shard": 3, "tags": ["a", "b", "c"], "items": [{"n": 1, "nonce": "x"}]})),
            obs(serde_json::json!({"id": 1, "shard": 7, "tags": ["c", "a", "b"], "items": [{"n": 1, "nonce": "y"}]})),
            obs(serde_json::json!({"id": 1, "shard": 3, "tags": ["a", "b", "c"], "items": [{"n": 1, "nonce": "z"}]})),
        ];
        let l = learn(&runs, &[], true, "2026-11-27");
        let got: Vec<(String, bool)> =
            l.rules.iter().map(|r| (r.body.clone().unwrap_or_default(), r.ignore_order)).collect();
        assert_eq!(got, vec![("$.tags".into(), true), ("$.shard".into(), false), ("$.items[*].nonce".into(), false)]);
        let shard = &l.rules[1];
        assert_eq!(shard.reason.as_deref(), Some("learned"));
        let learned = shard.learned.as_ref().unwrap();
        assert_eq!((learned.date.as_str(), learned.runs), ("2026-11-27", 3));
        assert_eq!(learned.seen, vec!["3", "7"]);
        assert!(l.unlearnable.is_empty());
    }

    #[test]
    fn existing_rules_are_not_learned_again_and_status_is_never_noise() {
        let mut a = obs(serde_json::json!({"at": "x"}));
        let b = obs(serde_json::json!({"at": "y"}));
        let existing = [NoiseRule { body: Some("$.at".into()), ..NoiseRule::default() }];
        assert!(learn(&[a.clone(), b.clone()], &existing, true, "d").rules.is_empty());
        a.status = 500;
        let l = learn(&[a, b], &existing, true, "d");
        assert!(l.rules.is_empty());
        assert_eq!(l.unlearnable, vec!["status differs between answers of the same build"]);
    }

    #[test]
    fn indices_become_wildcards_but_quoted_keys_stay() {
        assert_eq!(wildcard_indices("$.a[12].b[0]"), "$.a[*].b[*]");
        assert_eq!(wildcard_indices("$['x[1]'][2]"), "$['x[1]'][*]");
    }
}
