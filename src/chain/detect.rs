//! Finding chained values when a recording ends.
//!
//! The rule: a response value is a *source* when it is
//! - a string of at least [`MIN_CHARS`] characters with no whitespace and at least one digit (ids, tokens,
//!   UUIDs, JWTs; words and short codes like `free` or `true` never are), or an integer of at least
//!   [`MIN_DIGITS`] digits (small numbers such as `1` or `42` are too common to link anything), and
//! - not seen in any request sent before that response: the app produced it, the client did not already
//!   know it (an echoed name or a value the client chose is not a chain; form and query values count
//!   percent-decoded).
//!
//! A later request that holds a source (a whole value, or a token of one: a path segment, the part after
//! `Bearer `, a cookie value) gets a template there: that is a value that flowed. The expected response of
//! that same test gets one only where it gives back a value its own request carried (`GET /users/{id}`
//! answering the id): there the new build's value will show up again. A value no request carried is never
//! templated in an expectation, so a constant repeated in every answer is compared as recorded.
//!
//! A value produced again by a later response whose request did not carry it (two JWTs issued in the same
//! second, a constant in every answer) was produced independently: the later test becomes its source, and
//! the two answers are not chained to each other.
use std::collections::{BTreeMap, HashMap, HashSet};

use serde_json::Value;

use super::{Reference, Source, set_cookie_value, template};
use crate::diff::{FRAMING_HEADERS, Noise, Seg, render_path};
use crate::noise::shape;
use crate::protocols::http::{Header, HttpRequest};
use crate::store::{Body, TestCase};

/// Shortest string that can be chained.
pub const MIN_CHARS: usize = 8;
/// Fewest digits of an integer that can be chained.
pub const MIN_DIGITS: usize = 5;

/// Request headers that describe the message or the client, never values an app hands out.
const PLAIN_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "content-type",
    "accept",
    "accept-encoding",
    "accept-language",
    "user-agent",
    "expect",
    "te",
    "upgrade",
    "keep-alive",
    "cache-control",
    "pragma",
    "origin",
    "referer",
];

struct Known {
    name: String,
    value: Value,
}

/// Which sources a template may use at one place.
type Allowed<'a> = &'a dyn Fn(&Known) -> bool;

/// How many templates were written.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Detected {
    pub templates: usize,
    pub tests: usize,
}

/// Templates chained values in `tests` (in recorded order), filling each test's `chain:` map.
pub fn detect(tests: &mut [TestCase]) -> Detected {
    let mut sources: HashMap<String, Known> = HashMap::new();
    let mut seen: HashSet<String> = HashSet::new();
    let mut detected = Detected::default();
    for test in tests.iter_mut() {
        let name = test.name.clone();
        let Some((req, resp)) = test.http_mut() else { continue };
        // What the client knew when it sent this request (before any rewriting).
        remember_request(req, &mut seen);
        let original_response = resp.clone();

        let mut used: BTreeMap<String, Value> = BTreeMap::new();
        let mut count = 0;
        let any: Allowed = &|_| true;
        if let Some(t) = template_text(&req.target, &sources, any, &mut used) {
            req.target = t;
            count += 1;
        }
        template_headers(&mut req.headers, true, &sources, any, &mut used, &mut count);
        template_body(&mut req.body, &sources, any, &mut used, &mut count);
        // The expectation follows only the values this request carried.
        let carried = used.clone();
        let echoed: Allowed = &|k| carried.contains_key(&k.name);
        template_headers(&mut resp.headers, false, &sources, echoed, &mut used, &mut count);
        template_body(&mut resp.body, &sources, echoed, &mut used, &mut count);
        if !used.is_empty() {
            detected.tests += 1;
            detected.templates += count;
            test.chain.extend(used);
        }

        // This response's values become sources for the tests after it.
        let mut here: HashSet<String> = HashSet::new();
        for (source, value) in produced(&original_response.headers, original_response.body.as_ref()) {
            let text = super::text_of(&value);
            if !chainable(&value) || here.contains(&text) {
                continue;
            }
            match sources.get(&text) {
                // Given back because the request carried it: the earlier source stays.
                Some(k) if carried.contains_key(&k.name) => continue,
                // Produced again on its own: the newest producer is the source.
                Some(_) => {}
                // The client knew it before any response produced it.
                None if seen.contains(&text) => continue,
                None => {}
            }
            let name = Reference { test: name.clone(), source }.name();
            here.insert(text.clone());
            sources.insert(text, Known { name, value });
        }
    }
    detected
}

/// Whether a value may link two tests (see the module documentation).
fn chainable(value: &Value) -> bool {
    match value {
        Value::String(s) => {
            s.chars().count() >= MIN_CHARS
                && !s.contains(char::is_whitespace)
                && s.chars().any(|c| c.is_ascii_digit())
                && !s.contains("{{")
        }
        Value::Number(n) => n.as_u64().is_some_and(|n| n.to_string().len() >= MIN_DIGITS),
        _ => false,
    }
}

/// Every value of a response that could be a source: body leaves, whole header values, cookie values.
fn produced(headers: &[Header], body: Option<&Body>) -> Vec<(Source, Value)> {
    let mut out = Vec::new();
    if let Some(json) = body.and_then(|b| b.json.as_ref()) {
        leaves(json, &mut Vec::new(), &mut |path, v| out.push((Source::Body(render_path(path)), v.clone())));
    }
    for h in headers {
        let name = h.name.to_ascii_lowercase();
        if name == "set-cookie" {
            let v = h.value_str();
            if let Some((cookie, _)) = v.split(';').next().and_then(|c| c.split_once('=')) {
                let cookie = cookie.trim().to_string();
                if let Some(value) = set_cookie_value(std::slice::from_ref(h), &cookie) {
                    out.push((Source::Cookie(cookie), Value::String(value)));
                }
            }
            continue;
        }
        if FRAMING_HEADERS.contains(&name.as_str()) || Noise::DEFAULT_HEADERS.contains(&name.as_str()) {
            continue;
        }
        out.push((Source::Header(name), Value::String(h.value_str().into_owned())));
    }
    out
}

fn leaves(value: &Value, path: &mut Vec<Seg>, f: &mut dyn FnMut(&[Seg], &Value)) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                path.push(Seg::Key(k.clone()));
                leaves(v, path, f);
                path.pop();
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                path.push(Seg::Index(i));
                leaves(v, path, f);
                path.pop();
            }
        }
        leaf => f(path, leaf),
    }
}

/// Adds every whole value and token of a request to what the client knew.
fn remember_request(request: &HttpRequest, seen: &mut HashSet<String>) {
    let mut add = |text: &str| {
        seen.insert(text.to_string());
        for (token, is_token) in shape::tokens(text) {
            if is_token {
                seen.insert(token.to_string());
            }
        }
    };
    add(&request.target);
    if let Some((_, query)) = request.target.split_once('?') {
        for (_, v) in form_urlencoded::parse(query.as_bytes()) {
            add(&v);
        }
    }
    for h in &request.headers {
        add(&h.value_str());
    }
    if let Some(b) = &request.body {
        if let Some(json) = &b.json {
            leaves(json, &mut Vec::new(), &mut |_, v| add(&super::text_of(v)));
        }
        if let Some(t) = &b.text {
            add(t);
            if is_form(request) {
                for (_, v) in form_urlencoded::parse(t.as_bytes()) {
                    add(&v);
                }
            }
        }
    }
}

fn is_form(request: &HttpRequest) -> bool {
    request.headers.iter().any(|h| {
        h.name.eq_ignore_ascii_case("content-type")
            && h.value_str().to_ascii_lowercase().starts_with("application/x-www-form-urlencoded")
    })
}

/// The text with every known source (a token, else the whole text) written as a template.
fn template_text(
    text: &str,
    sources: &HashMap<String, Known>,
    allowed: Allowed,
    used: &mut BTreeMap<String, Value>,
) -> Option<String> {
    let usable = |k: &&Known| allowed(k);
    let mut out = String::new();
    let mut changed = false;
    for (piece, is_token) in shape::tokens(text) {
        match sources.get(piece).filter(usable).filter(|_| is_token) {
            Some(k) => {
                out.push_str(&template(&k.name));
                used.insert(k.name.clone(), k.value.clone());
                changed = true;
            }
            None => out.push_str(piece),
        }
    }
    if changed {
        return Some(out);
    }
    let k = sources.get(text).filter(usable)?;
    used.insert(k.name.clone(), k.value.clone());
    Some(template(&k.name))
}

/// Templates header values (a request's plain headers, such as `Host`, never).
fn template_headers(
    headers: &mut [Header],
    request: bool,
    sources: &HashMap<String, Known>,
    allowed: Allowed,
    used: &mut BTreeMap<String, Value>,
    count: &mut usize,
) {
    for h in headers.iter_mut() {
        let name = h.name.to_ascii_lowercase();
        if FRAMING_HEADERS.contains(&name.as_str()) || (request && PLAIN_HEADERS.contains(&name.as_str())) {
            continue;
        }
        let Ok(value) = std::str::from_utf8(&h.value) else { continue };
        if let Some(t) = template_text(value, sources, allowed, used) {
            h.value = t.into_bytes();
            *count += 1;
        }
    }
}

fn template_body(
    body: &mut Option<Body>,
    sources: &HashMap<String, Known>,
    allowed: Allowed,
    used: &mut BTreeMap<String, Value>,
    count: &mut usize,
) {
    let Some(b) = body.as_mut() else { return };
    if let Some(json) = b.json.as_mut() {
        template_json(json, sources, allowed, used, count);
    }
    if let Some(t) = &b.text
        && let Some(new) = template_text(t, sources, allowed, used)
    {
        b.text = Some(new);
        *count += 1;
    }
}

fn template_json(
    value: &mut Value,
    sources: &HashMap<String, Known>,
    allowed: Allowed,
    used: &mut BTreeMap<String, Value>,
    count: &mut usize,
) {
    match value {
        Value::Object(map) => {
            for v in map.values_mut() {
                template_json(v, sources, allowed, used, count);
            }
        }
        Value::Array(items) => {
            for v in items.iter_mut() {
                template_json(v, sources, allowed, used, count);
            }
        }
        Value::String(s) => {
            if let Some(t) = template_text(s, sources, allowed, used) {
                *s = t;
                *count += 1;
            }
        }
        Value::Number(n) => {
            // A whole number: its template renders back as a number.
            if let Some(k) = sources.get(&n.to_string()).filter(|k| k.value.is_number() && allowed(k)) {
                used.insert(k.name.clone(), k.value.clone());
                *value = Value::String(template(&k.name));
                *count += 1;
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::{Bindings, render_request, render_response};
    use crate::protocols::http::{HttpRequest, HttpResponse};

    fn test(
        name: &str,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        req: Option<Value>,
        resp: Value,
    ) -> TestCase {
        let body = |v: Option<Value>| v.map(|j| Body { json: Some(j), ..Body::default() });
        let mut t = TestCase::new_http(
            "http",
            "2026-11-27T10:00:00.000Z".into(),
            1.0,
            8080,
            None,
            HttpRequest {
                method: method.into(),
                target: target.into(),
                version: "HTTP/1.1".into(),
                headers: headers.iter().map(|(n, v)| Header::new(*n, *v)).collect(),
                body: body(req),
                messages: vec![],
                trailers: vec![],
            },
            HttpResponse {
                status: 200,
                reason: String::new(),
                version: "HTTP/1.1".into(),
                headers: vec![Header::new("Content-Type", "application/json")],
                body: body(Some(resp)),
                messages: vec![],
                trailers: vec![],
            },
        );
        t.name = name.into();
        t
    }

    const JWT: &str = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbm4ifQ.c2lnbmF0dXJlMTIz";
    const UID: &str = "5f0c4e1e-8a43-4c1a-9a55-0d1b8d2b8f27";

    #[test]
    fn ids_and_tokens_are_chained_and_common_values_are_not() {
        let mut tests = vec![
            test(
                "post-api-login",
                "POST",
                "/api/login",
                &[],
                Some(serde_json::json!({"user": "ann-1234567"})),
                serde_json::json!({"token": JWT, "user": "ann-1234567", "ok": true, "n": 1}),
            ),
            test(
                "post-api-users",
                "POST",
                "/api/users",
                &[("Authorization", &format!("Bearer {JWT}"))],
                Some(serde_json::json!({"name": "Ann", "n": 1})),
                serde_json::json!({"id": UID, "seq": 1234567, "name": "Ann"}),
            ),
            test(
                "get-api-users-x",
                "GET",
                &format!("/api/users/{UID}?n=1"),
                &[("Authorization", &format!("Bearer {JWT}"))],
                Some(serde_json::json!({"seq": 1234567, "flag": true})),
                serde_json::json!({"id": UID, "seq": 1234567}),
            ),
        ];
        let d = detect(&mut tests);
        assert_eq!(d.tests, 2);
        let users = &tests[1];
        assert_eq!(users.http().unwrap().0.headers[0].value_str(), "Bearer {{ chain.post-api-login.body.token }}");
        assert_eq!(users.chain.keys().collect::<Vec<_>>(), vec!["post-api-login.body.token"]);
        // The user name was sent by the client first: it is not a chain.
        assert!(!users.chain.contains_key("post-api-login.body.user"));
        let get = &tests[2];
        let (request, response) = get.http().unwrap();
        assert_eq!(request.target, "/api/users/{{ chain.post-api-users.body.id }}?n=1");
        let body = request.body.as_ref().and_then(|b| b.json.clone()).unwrap();
        assert_eq!(body, serde_json::json!({"seq": "{{ chain.post-api-users.body.seq }}", "flag": true}));
        // The expected response follows the values its request carried.
        let resp = response.body.as_ref().and_then(|b| b.json.clone()).unwrap();
        assert_eq!(
            resp,
            serde_json::json!({"id": "{{ chain.post-api-users.body.id }}", "seq": "{{ chain.post-api-users.body.seq }}"})
        );
        assert_eq!(get.chain.get("post-api-users.body.id"), Some(&Value::String(UID.into())));

        // Rendering with no live values gives back exactly what was recorded.
        let plain = Bindings::default();
        let r = render_request(get, request, &plain);
        assert_eq!(r.target, format!("/api/users/{UID}?n=1"));
        assert_eq!(r.body.and_then(|b| b.json), Some(serde_json::json!({"seq": 1234567, "flag": true})));
        // With live values, the new ones go in.
        let mut live = Bindings::default();
        live.bind("post-api-users.body.id".into(), Value::String(UID.into()), Value::String("new-uuid-0001".into()));
        live.bind("post-api-users.body.seq".into(), serde_json::json!(1234567), serde_json::json!(7654321));
        let r = render_request(get, request, &live);
        assert_eq!(r.target, "/api/users/new-uuid-0001?n=1");
        assert_eq!(r.body.and_then(|b| b.json), Some(serde_json::json!({"seq": 7654321, "flag": true})));
        let e = render_response(get, response, &live);
        assert_eq!(e.body.and_then(|b| b.json), Some(serde_json::json!({"id": "new-uuid-0001", "seq": 7654321})));
    }

    #[test]
    fn cookies_and_locations_are_sources() {
        let mut login = test("post-login", "POST", "/login", &[], None, serde_json::json!({}));
        let (_, response) = login.http_mut().unwrap();
        response.headers.push(Header::new("Set-Cookie", "sid=s3cr3t-Abc123xyz; Path=/; HttpOnly"));
        response.headers.push(Header::new("Location", "/api/things/77aa88bb99"));
        let mut tests = vec![
            login,
            test(
                "get-x",
                "GET",
                "/api/things/77aa88bb99",
                &[("Cookie", "theme=dark; sid=s3cr3t-Abc123xyz")],
                None,
                serde_json::json!({}),
            ),
        ];
        detect(&mut tests);
        let (request, _) = tests[1].http().unwrap();
        assert_eq!(request.headers[0].value_str(), "theme=dark; sid={{ chain.post-login.cookie.sid }}");
        assert_eq!(request.target, "{{ chain.post-login.header.location }}");
    }

    fn json_of(t: &TestCase, request: bool) -> Value {
        let (req, resp) = t.http().unwrap();
        let body = if request { &req.body } else { &resp.body };
        body.as_ref().and_then(|b| b.json.clone()).unwrap()
    }

    #[test]
    fn a_constant_in_every_answer_is_never_chained() {
        let pad = "0123456789abcdef0123456789abcdef";
        let mut tests: Vec<TestCase> = (0..6)
            .map(|i| test(&format!("get-ok-{i}"), "GET", "/ok", &[], None, serde_json::json!({"ok": true, "pad": pad})))
            .collect();
        let d = detect(&mut tests);
        assert_eq!(d, Detected::default());
        for t in &tests {
            assert!(t.chain.is_empty(), "{} was chained: {:?}", t.name, t.chain);
            assert_eq!(json_of(t, false)["pad"], pad);
        }
    }

    #[test]
    fn equal_tokens_issued_independently_are_not_chained_to_each_other() {
        let mut tests = vec![
            test(
                "post-signup",
                "POST",
                "/signup",
                &[],
                Some(serde_json::json!({"email": "a@b.c"})),
                serde_json::json!({"token": JWT}),
            ),
            test(
                "post-login",
                "POST",
                "/login",
                &[],
                Some(serde_json::json!({"email": "a@b.c"})),
                serde_json::json!({"token": JWT}),
            ),
            test(
                "get-me",
                "GET",
                "/me",
                &[("Authorization", &format!("Bearer {JWT}"))],
                None,
                serde_json::json!({"token": JWT}),
            ),
        ];
        detect(&mut tests);
        // The login's answer is compared as recorded, not filled from the sign-up's.
        assert!(tests[1].chain.is_empty());
        assert_eq!(json_of(&tests[1], false)["token"], JWT);
        // The later request uses the newest producer; its answer gives back what the request carried.
        let (request, _) = tests[2].http().unwrap();
        assert_eq!(request.headers[0].value_str(), "Bearer {{ chain.post-login.body.token }}");
        assert_eq!(json_of(&tests[2], false)["token"], "{{ chain.post-login.body.token }}");
    }

    #[test]
    fn values_the_client_sent_percent_encoded_are_not_chains() {
        let mut signup =
            test("post-signup", "POST", "/signup?ref=ann%2B42%40example.com", &[], None, serde_json::json!({}));
        let (request, _) = signup.http_mut().unwrap();
        request.headers.push(Header::new("Content-Type", "application/x-www-form-urlencoded"));
        request.body = Some(Body { text: Some("email=bob%2B7%40example.com&name=Bob".into()), ..Body::default() });
        let answer = serde_json::json!({"email": "bob+7@example.com", "ref": "ann+42@example.com"});
        let mut tests = vec![
            test("get-profile", "GET", "/profile", &[], None, serde_json::json!({})),
            signup,
            test("get-by-email", "GET", "/users", &[], Some(answer.clone()), serde_json::json!({})),
        ];
        // The profile answer (before the sign-up) produced nothing; the sign-up answers what the client sent.
        if let Some((_, resp)) = tests[1].http_mut() {
            resp.body = Some(Body { json: Some(answer.clone()), ..Body::default() });
        }
        detect(&mut tests);
        assert!(tests.iter().all(|t| t.chain.is_empty()), "{:?}", tests.iter().map(|t| &t.chain).collect::<Vec<_>>());
        assert_eq!(json_of(&tests[2], true), answer);
    }
}
