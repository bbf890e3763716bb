//! Chained values: a value one response produced (an id, a token, a cookie, a Location) and a later request
//! of the same test set used. `detect` finds them when a recording ends and writes templates in place, in
//! the later requests and expected responses:
//!
//! ```yaml
//! target: /api/users/{{ chain.post-api-users.body.id }}
//! headers:
//! - "Authorization: Bearer {{ chain.post-api-login.body.token }}"
//! chain:                                   # what each template held when recorded
//!   post-api-users.body.id: 0d9e4f0a-...
//! ```
//!
//! A name is `<test>.body<JSONPath without $>`, `<test>.header.<name>` or `<test>.cookie.<name>`. In replay
//! each template takes the value the app produced this time ([`Bindings`]), or the recorded one when the
//! producing test gave none (or with `--no-chain`).

pub(crate) mod detect;

use std::collections::BTreeMap;

use serde_json::Value;
use serde_json_path::JsonPath;

use crate::noise::learn::Observation;
use crate::protocols::http::{Header, HeaderList, HttpRequest, HttpResponse};
use crate::store::{Body, TestCase};

const OPEN: &str = "{{";
const CLOSE: &str = "}}";
const PREFIX: &str = "chain.";

/// The template text for a name: `{{ chain.NAME }}`.
pub fn template(name: &str) -> String {
    format!("{OPEN} {PREFIX}{name} {CLOSE}")
}

/// Where in a response a chained value comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A JSONPath into the body (`$.id`, `$.items[0].token`).
    Body(String),
    /// A response header, lower case.
    Header(String),
    /// A cookie set with Set-Cookie.
    Cookie(String),
}

/// A parsed chain name: the producing test and where its value is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    pub test: String,
    pub source: Source,
}

impl Reference {
    pub fn name(&self) -> String {
        match &self.source {
            Source::Body(path) => format!("{}.body{}", self.test, path.strip_prefix('$').unwrap_or(path)),
            Source::Header(h) => format!("{}.header.{h}", self.test),
            Source::Cookie(c) => format!("{}.cookie.{c}", self.test),
        }
    }

    /// `post-api-users.body.id` -> test `post-api-users`, body `$.id`. Test names never hold a dot.
    pub fn parse(name: &str) -> Option<Reference> {
        let (test, rest) = name.split_once('.')?;
        let source = if let Some(h) = rest.strip_prefix("header.") {
            Source::Header(h.to_ascii_lowercase())
        } else if let Some(c) = rest.strip_prefix("cookie.") {
            Source::Cookie(c.to_string())
        } else {
            Source::Body(format!("${}", rest.strip_prefix("body")?))
        };
        Some(Reference { test: test.to_string(), source })
    }

    /// The value at this place in an actual response (`body` parsed as JSON when it is).
    pub fn extract(&self, headers: &[Header], body: Option<&Value>) -> Option<Value> {
        match &self.source {
            Source::Body(path) => {
                let path = JsonPath::parse(path).ok()?;
                path.query(body?).first().cloned()
            }
            Source::Header(h) => headers.get_str(h).map(Value::String),
            Source::Cookie(c) => set_cookie_value(headers, c).map(Value::String),
        }
    }
}

/// The value of cookie `name` in a response's Set-Cookie headers.
pub fn set_cookie_value(headers: &[Header], name: &str) -> Option<String> {
    headers.iter().filter(|h| h.name.eq_ignore_ascii_case("set-cookie")).find_map(|h| {
        let v = h.value_str();
        let first = v.split(';').next()?.trim();
        let (n, value) = first.split_once('=')?;
        (n.trim() == name).then(|| value.trim().to_string())
    })
}

/// Live values of one replay: what each chain name held when recorded and what the app produced now.
#[derive(Debug, Clone, Default)]
pub struct Bindings {
    /// name -> (recorded, live)
    values: BTreeMap<String, (Value, Value)>,
}

impl Bindings {
    pub fn bind(&mut self, name: String, recorded: Value, live: Value) {
        self.values.insert(name, (recorded, live));
    }

    /// Binds the live value of each chain name in `produces` (with its recorded value) from a response's
    /// headers and body, for the requests after it that use them.
    pub fn bind_from(&mut self, produces: &[(String, Value)], headers: &[Header], body: &[u8]) {
        if produces.is_empty() {
            return;
        }
        let json = serde_json::from_slice::<Value>(body).ok();
        for (name, recorded) in produces {
            if let Some(r) = Reference::parse(name)
                && let Some(live) = r.extract(headers, json.as_ref())
            {
                self.bind(name.clone(), recorded.clone(), live);
            }
        }
    }

    /// Puts chained values the app produced in this run back to their recorded form, so two runs compare
    /// equal where they only differ by the ids each run created.
    pub fn normalize(&self, raw: &Observation) -> Observation {
        if self.is_empty() {
            return raw.clone();
        }
        let headers = |hs: &[Header]| -> Vec<Header> {
            hs.iter()
                .map(|h| match std::str::from_utf8(&h.value) {
                    Ok(v) => Header::new(h.name.clone(), self.unrender_text(v)),
                    Err(_) => h.clone(),
                })
                .collect()
        };
        let body = match serde_json::from_slice::<Value>(&raw.body) {
            Ok(mut v) => {
                self.unrender_json(&mut v);
                serde_json::to_vec(&v).unwrap_or_else(|_| raw.body.clone())
            }
            Err(_) => match std::str::from_utf8(&raw.body) {
                Ok(t) => self.unrender_text(t).into_bytes(),
                Err(_) => raw.body.clone(),
            },
        };
        Observation { status: raw.status, headers: headers(&raw.headers), trailers: headers(&raw.trailers), body }
    }

    pub fn live(&self, name: &str) -> Option<&Value> {
        self.values.get(name).map(|(_, live)| live)
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// Recorded text -> live text of every value that changed, for matching mocks recorded with the old value.
    pub fn rewrites(&self) -> Vec<(String, String)> {
        self.values.values().map(|(r, l)| (text_of(r), text_of(l))).filter(|(r, l)| r != l && !r.is_empty()).collect()
    }

    /// Puts recorded values back where the live ones are, in a text (headers, text bodies).
    pub fn unrender_text(&self, text: &str) -> String {
        let mut out = text.to_string();
        for (recorded, live) in self.values.values() {
            let (r, l) = (text_of(recorded), text_of(live));
            if l.len() >= 4 && l != r {
                out = out.replace(&l, &r);
            }
        }
        out
    }

    /// Puts recorded values back where the live ones are, in a JSON document.
    pub fn unrender_json(&self, value: &mut Value) {
        match value {
            Value::Object(map) => map.values_mut().for_each(|v| self.unrender_json(v)),
            Value::Array(items) => items.iter_mut().for_each(|v| self.unrender_json(v)),
            Value::String(s) => {
                if let Some((recorded, _)) = self.values.values().find(|(_, live)| live.as_str() == Some(s.as_str())) {
                    *value = recorded.clone();
                } else {
                    *s = self.unrender_text(s);
                }
            }
            Value::Number(_) => {
                if let Some((recorded, _)) = self.values.values().find(|(_, live)| live == value) {
                    *value = recorded.clone();
                }
            }
            _ => {}
        }
    }
}

/// A value as it appears in text: strings bare, other values as JSON.
pub fn text_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Replaces every `{{ chain.NAME }}` in `text` with `lookup(NAME)` as text; unknown names stay as written.
pub fn render_text(text: &str, lookup: &dyn Fn(&str) -> Option<Value>) -> String {
    if !text.contains(OPEN) {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(OPEN) {
        out.push_str(&rest[..at]);
        let after = &rest[at + OPEN.len()..];
        match parse_name(after) {
            Some((name, used)) => {
                match lookup(name) {
                    Some(v) => out.push_str(&text_of(&v)),
                    None => out.push_str(&rest[at..at + OPEN.len() + used]),
                }
                rest = &after[used..];
            }
            None => {
                out.push_str(OPEN);
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// After `{{`: ` chain.NAME }}` -> (NAME, bytes consumed including `}}`).
fn parse_name(after: &str) -> Option<(&str, usize)> {
    let end = after.find(CLOSE)?;
    let inner = after[..end].trim();
    let name = inner.strip_prefix(PREFIX)?;
    (!name.is_empty() && !name.contains(char::is_whitespace)).then_some((name, end + CLOSE.len()))
}

/// The name when `text` is exactly one template.
fn whole_template(text: &str) -> Option<&str> {
    let after = text.trim().strip_prefix(OPEN)?;
    let (name, used) = parse_name(after)?;
    after[used..].is_empty().then_some(name)
}

/// Renders templates inside a JSON document: a string that is exactly one template takes the value with its
/// type (a number stays a number); templates inside longer strings are replaced as text.
pub fn render_json(value: &Value, lookup: &dyn Fn(&str) -> Option<Value>) -> Value {
    match value {
        Value::Object(map) => Value::Object(map.iter().map(|(k, v)| (k.clone(), render_json(v, lookup))).collect()),
        Value::Array(items) => Value::Array(items.iter().map(|v| render_json(v, lookup)).collect()),
        Value::String(s) => match whole_template(s).and_then(lookup) {
            Some(v) => v,
            None => Value::String(render_text(s, lookup)),
        },
        other => other.clone(),
    }
}

fn render_body(body: &Option<Body>, lookup: &dyn Fn(&str) -> Option<Value>) -> Option<Body> {
    let b = body.as_ref()?;
    let mut out = b.clone();
    if let Some(j) = &b.json {
        out.json = Some(render_json(j, lookup));
    }
    if let Some(t) = &b.text {
        out.text = Some(render_text(t, lookup));
    }
    Some(out)
}

fn render_headers(headers: &[Header], lookup: &dyn Fn(&str) -> Option<Value>) -> Vec<Header> {
    headers
        .iter()
        .map(|h| match std::str::from_utf8(&h.value) {
            Ok(v) if v.contains(OPEN) => Header::new(h.name.clone(), render_text(v, lookup)),
            _ => h.clone(),
        })
        .collect()
}

/// A lookup for one test: the live value when bound, else what the test recorded.
fn lookup_for<'a>(test: &'a TestCase, bindings: &'a Bindings) -> impl Fn(&str) -> Option<Value> + 'a {
    move |name: &str| bindings.live(name).cloned().or_else(|| test.chain.get(name).cloned())
}

/// The request of HTTP test `test` to send: templates filled in, Content-Length kept true to the new body.
pub fn render_request(test: &TestCase, req: &HttpRequest, bindings: &Bindings) -> HttpRequest {
    if test.chain.is_empty() {
        return req.clone();
    }
    let lookup = lookup_for(test, bindings);
    let body = render_body(&req.body, &lookup);
    let mut headers = render_headers(&req.headers, &lookup);
    if body != req.body {
        let len = body.as_ref().and_then(|b| b.inline_bytes().ok().flatten()).map(|b| b.len());
        for h in headers.iter_mut().filter(|h| h.name.eq_ignore_ascii_case("content-length")) {
            if let Some(n) = len {
                h.value = n.to_string().into_bytes();
            }
        }
    }
    HttpRequest {
        method: req.method.clone(),
        target: render_text(&req.target, &lookup),
        version: req.version.clone(),
        headers,
        body,
        messages: req.messages.clone(),
        trailers: render_headers(&req.trailers, &lookup),
    }
}

/// The response of HTTP test `test` to expect: templates filled in with the values the app produced this
/// time.
pub fn render_response(test: &TestCase, resp: &HttpResponse, bindings: &Bindings) -> HttpResponse {
    if test.chain.is_empty() {
        return resp.clone();
    }
    let lookup = lookup_for(test, bindings);
    HttpResponse {
        status: resp.status,
        reason: resp.reason.clone(),
        version: resp.version.clone(),
        headers: render_headers(&resp.headers, &lookup),
        body: render_body(&resp.body, &lookup),
        messages: resp.messages.clone(),
        trailers: render_headers(&resp.trailers, &lookup),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for name in
            ["post-api-users.body.id", "post-api-login.header.location", "get-x.cookie.sid", "a.body.items[0].id"]
        {
            let r = Reference::parse(name).unwrap();
            assert_eq!(r.name(), name);
        }
        assert_eq!(Reference::parse("t.body.id").unwrap().source, Source::Body("$.id".into()));
        assert!(Reference::parse("nodot").is_none());
    }

    #[test]
    fn templates_render_with_types_and_unknown_names_stay() {
        let lookup = |n: &str| match n {
            "a.body.id" => Some(serde_json::json!(123456)),
            "b.body.token" => Some(serde_json::json!("tok-1")),
            _ => None,
        };
        assert_eq!(render_text("Bearer {{ chain.b.body.token }}", &lookup), "Bearer tok-1");
        assert_eq!(render_text("/u/{{chain.a.body.id}}/x", &lookup), "/u/123456/x");
        assert_eq!(
            render_text("{{ chain.zzz.body.q }} {{ not a template", &lookup),
            "{{ chain.zzz.body.q }} {{ not a template"
        );
        let v = serde_json::json!({"id": "{{ chain.a.body.id }}", "note": "for {{ chain.a.body.id }}"});
        assert_eq!(render_json(&v, &lookup), serde_json::json!({"id": 123456, "note": "for 123456"}));
    }

    #[test]
    fn live_values_can_be_put_back() {
        let mut b = Bindings::default();
        b.bind("t.body.id".into(), serde_json::json!("old-id-1234"), serde_json::json!("new-id-5678"));
        b.bind("t.body.n".into(), serde_json::json!(111111), serde_json::json!(222222));
        let mut v = serde_json::json!({"id": "new-id-5678", "url": "/x/new-id-5678", "n": 222222, "m": 5});
        b.unrender_json(&mut v);
        assert_eq!(v, serde_json::json!({"id": "old-id-1234", "url": "/x/old-id-1234", "n": 111111, "m": 5}));
        assert_eq!(b.rewrites().len(), 2);
    }

    #[test]
    fn cookies_are_read_from_set_cookie() {
        let h = vec![Header::new("Set-Cookie", "theme=dark"), Header::new("Set-Cookie", "sid=abc123456; Path=/")];
        assert_eq!(set_cookie_value(&h, "sid").as_deref(), Some("abc123456"));
        assert_eq!(set_cookie_value(&h, "nope"), None);
    }
}
