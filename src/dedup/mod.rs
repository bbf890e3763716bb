//! `doppel dedup`: recordings of real traffic repeat themselves (the same endpoint called for a thousand
//! ids). Tests of the same shape are grouped, the first `keep` of each group (in recorded order) stay, the
//! others' test files go. A test's shape is its method, its route with ids collapsed (numbers, UUIDs, hex
//! and random ids, chain templates), its request header names, the schema of its request and response
//! bodies (keys and value types, not values) and its status. Mocks are never removed: a kept test may need
//! any of them. A test whose response feeds a kept test's chain templates is kept too.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;

use serde_json::Value;

use crate::chain::Reference;
use crate::diff::FRAMING_HEADERS;
use crate::error::Result;
use crate::noise::shape::Shape;
use crate::protocols::http::{HttpRequest, HttpResponse};
use crate::store::{Body, LoadedSet, Store};

/// One group of tests of the same shape.
#[derive(Debug, Clone)]
pub struct Group {
    /// `METHOD /route -> status`, for the report.
    pub label: String,
    pub kept: Vec<String>,
    pub removed: Vec<(String, PathBuf)>,
    /// Tests kept beyond `keep` because a kept test uses values from their responses.
    pub kept_for_chain: Vec<String>,
}

/// Groups the tests of a set and decides which stay.
pub fn plan(set: &LoadedSet, keep: usize) -> Vec<Group> {
    let mut groups: Vec<Group> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut members: Vec<Vec<usize>> = Vec::new();
    for (i, (_, test)) in set.tests.iter().enumerate() {
        let Some((request, response)) = test.http() else { continue };
        let shape = shape_of(request, response);
        let g = *index.entry(shape).or_insert_with(|| {
            groups.push(Group {
                label: format!("{} {} -> {}", request.method, route(&request.target), response.status),
                kept: Vec::new(),
                removed: Vec::new(),
                kept_for_chain: Vec::new(),
            });
            members.push(Vec::new());
            groups.len() - 1
        });
        members[g].push(i);
    }
    let mut kept: BTreeSet<usize> = members.iter().flat_map(|m| m.iter().take(keep.max(1)).copied()).collect();
    // Producers of chained values used by kept tests stay (and their own producers).
    let by_name: HashMap<&str, usize> = set.tests.iter().enumerate().map(|(i, (_, t))| (t.name.as_str(), i)).collect();
    let mut feeders = BTreeSet::new();
    let mut todo: Vec<usize> = kept.iter().copied().collect();
    while let Some(i) = todo.pop() {
        for name in set.tests[i].1.chain.keys() {
            if let Some(r) = Reference::parse(name)
                && let Some(&p) = by_name.get(r.test.as_str())
                && kept.insert(p)
            {
                feeders.insert(p);
                todo.push(p);
            }
        }
    }
    for (g, m) in groups.iter_mut().zip(&members) {
        for &i in m {
            let (path, test) = &set.tests[i];
            if feeders.contains(&i) {
                g.kept_for_chain.push(test.name.clone());
            } else if kept.contains(&i) {
                g.kept.push(test.name.clone());
            } else {
                g.removed.push((test.name.clone(), path.clone()));
            }
        }
    }
    groups
}

/// Removes the test files a plan drops; returns how many.
pub fn apply(groups: &[Group]) -> Result<usize> {
    let mut n = 0;
    for g in groups {
        for (_, path) in &g.removed {
            Store::remove_test(path)?;
            n += 1;
        }
    }
    Ok(n)
}

/// The shape of a test as one line (see the module documentation).
pub fn shape_of(request: &HttpRequest, response: &HttpResponse) -> String {
    let mut headers: Vec<String> = request
        .headers
        .iter()
        .map(|h| h.name.to_ascii_lowercase())
        .filter(|n| !FRAMING_HEADERS.contains(&n.as_str()))
        .collect();
    headers.sort();
    headers.dedup();
    format!(
        "{} {} | headers {} | request {} | status {} | response {}",
        request.method,
        route(&request.target),
        headers.join(","),
        body_schema(&request.body),
        response.status,
        body_schema(&response.body)
    )
}

/// `/api/users/42/orders/5f0c...?page=2&q=x` -> `/api/users/{n}/orders/{id}?page&q`.
pub fn route(target: &str) -> String {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut out: Vec<String> = Vec::new();
    for seg in path.split('/') {
        out.push(collapse(seg).unwrap_or_else(|| seg.to_string()));
    }
    let mut route = out.join("/");
    if !query.is_empty() {
        let mut keys: Vec<&str> = query.split('&').map(|p| p.split('=').next().unwrap_or(p)).collect();
        keys.sort_unstable();
        keys.dedup();
        route.push('?');
        route.push_str(&keys.join("&"));
    }
    route
}

/// The placeholder for a path segment that is an id, if it is one.
fn collapse(seg: &str) -> Option<String> {
    if seg.is_empty() {
        return None;
    }
    if seg.contains("{{") {
        return Some("{id}".into());
    }
    if seg.bytes().all(|b| b.is_ascii_digit()) {
        return Some("{n}".into());
    }
    // Hex ids shorter than a random token (ObjectIds, short hashes) count too.
    let hexish =
        seg.len() >= 8 && seg.bytes().all(|b| b.is_ascii_hexdigit()) && seg.bytes().any(|b| b.is_ascii_digit());
    if hexish {
        return Some("{id}".into());
    }
    Shape::of(seg, now_seconds()).map(|_| "{id}".into())
}

fn now_seconds() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

fn body_schema(body: &Option<Body>) -> String {
    match body {
        None => "none".into(),
        Some(b) if b.json.is_some() => b.json.as_ref().map(schema).unwrap_or_default(),
        Some(b) if b.text.is_some() => "text".into(),
        Some(b) if b.file.is_some() => "file".into(),
        Some(_) => "binary".into(),
    }
}

/// Keys and value types of a JSON document: `{"id":number,"tags":[string]}`. Array elements are merged.
pub fn schema(value: &Value) -> String {
    match value {
        Value::Null => "null".into(),
        Value::Bool(_) => "bool".into(),
        Value::Number(_) => "number".into(),
        Value::String(_) => "string".into(),
        Value::Array(items) => {
            let kinds: BTreeSet<String> = items.iter().map(schema).collect();
            format!("[{}]", kinds.into_iter().collect::<Vec<_>>().join("|"))
        }
        Value::Object(map) => {
            let fields: BTreeMap<&String, String> = map.iter().map(|(k, v)| (k, schema(v))).collect();
            let inner: Vec<String> = fields.iter().map(|(k, v)| format!("{k:?}:{v}")).collect();
            format!("{{{}}}", inner.join(","))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_collapse_ids() {
        assert_eq!(route("/api/items/42"), "/api/items/{n}");
        assert_eq!(route("/api/users/5f0c4e1e-8a43-4c1a-9a55-0d1b8d2b8f27/orders"), "/api/users/{id}/orders");
        assert_eq!(route("/api/objs/65a1f3c2e4b0a1b2c3d4e5f6"), "/api/objs/{id}");
        assert_eq!(route("/api/users/{{ chain.post-api-users.body.id }}"), "/api/users/{id}");
        assert_eq!(route("/api/search?q=a&page=2&q=b"), "/api/search?page&q");
        assert_eq!(route("/api/items/featured"), "/api/items/featured");
    }

    #[test]
    fn schemas_keep_keys_and_types_only() {
        let a = serde_json::json!({"id": 1, "name": "a", "tags": ["x"], "owner": {"id": 2}});
        let b = serde_json::json!({"owner": {"id": 9}, "tags": ["y", "z"], "name": "b", "id": 7});
        assert_eq!(schema(&a), schema(&b));
        assert_ne!(schema(&a), schema(&serde_json::json!({"id": "1", "name": "a", "tags": ["x"], "owner": {"id": 2}})));
    }
}
