//! Noise rules compiled for one comparison: header names to skip and JSONPath selections over the body.

use std::collections::BTreeSet;

use serde_json_path::JsonPath;

use crate::store::format::NoiseRule;

/// Compiled noise rules for one comparison.
///
/// Every rule (and every default header) has an id; ids follow the order of the rules as given, then the
/// default headers, so the rules a comparison reports as applied come out in a stable order.
#[derive(Debug, Clone)]
pub struct Noise {
    /// Lower-case header name and rule id, from the rules.
    header_rules: Vec<(String, usize)>,
    /// Whether the default noisy headers are ignored too.
    default_headers: bool,
    /// Id of the first default header; the others follow in `DEFAULT_HEADERS` order.
    default_base: usize,
    body_rules: Vec<BodyRule>,
    /// Human-readable label of each id ("header date", "body $.created_at").
    labels: Vec<String>,
}

/// A compiled `body` rule.
#[derive(Debug, Clone)]
pub(crate) struct BodyRule {
    pub(crate) path: JsonPath,
    /// Compare the selected arrays as multisets instead of ignoring the selected nodes.
    pub(crate) ignore_order: bool,
    pub(crate) id: usize,
}

impl Noise {
    /// Header names (lower case) ignored by default.
    pub const DEFAULT_HEADERS: &'static [&'static str] = &[
        "date",
        "server-timing",
        "x-request-id",
        "x-correlation-id",
        "request-id",
        "x-amzn-trace-id",
        "traceparent",
        "tracestate",
        "x-b3-traceid",
        "x-b3-spanid",
        "x-b3-parentspanid",
        "x-b3-sampled",
        "x-runtime",
        "x-response-time",
        "age",
        "expires",
        "last-modified",
        "etag",
    ];

    /// `rules`: global rules (from doppel.yaml) followed by the test's own. `default_headers`: also ignore
    /// the default noisy headers. A bad JSONPath is an Err naming the rule, e.g. "noise rule body: \"$.[\": <why>".
    pub fn compile(rules: &[NoiseRule], default_headers: bool) -> Result<Noise, String> {
        let mut header_rules = Vec::new();
        let mut body_rules = Vec::new();
        let mut labels = Vec::new();
        for rule in rules {
            if rule.header.is_none() && rule.body.is_none() {
                return Err("noise rule has neither header nor body".to_string());
            }
            if let Some(header) = &rule.header {
                let name = header.trim().to_ascii_lowercase();
                if name.is_empty() || name.contains(char::is_whitespace) || name.contains(':') {
                    return Err(format!("noise rule header: {header:?}: not a header name"));
                }
                if rule.ignore_order && rule.body.is_none() {
                    return Err(format!("noise rule header: {header:?}: ignore_order needs a body JSONPath"));
                }
                header_rules.push((name.clone(), labels.len()));
                labels.push(format!("header {name}"));
            }
            if let Some(body) = &rule.body {
                let path = JsonPath::parse(body.trim()).map_err(|e| format!("noise rule body: {body:?}: {e}"))?;
                body_rules.push(BodyRule { path, ignore_order: rule.ignore_order, id: labels.len() });
                labels.push(if rule.ignore_order {
                    format!("body {} (ignore order)", body.trim())
                } else {
                    format!("body {}", body.trim())
                });
            }
        }
        let default_base = labels.len();
        labels.extend(Self::DEFAULT_HEADERS.iter().map(|h| format!("header {h}")));
        Ok(Noise { header_rules, default_headers, default_base, body_rules, labels })
    }

    /// No rules at all, not even the default headers: every difference counts.
    pub fn none() -> Noise {
        Noise {
            header_rules: Vec::new(),
            default_headers: false,
            default_base: 0,
            body_rules: Vec::new(),
            labels: Vec::new(),
        }
    }

    /// Whether a header (or trailer) of this name is not compared.
    pub fn ignores_header(&self, name: &str) -> bool {
        self.header_rule(name).is_some()
    }

    /// Whether any `body` rule exists.
    pub fn has_body_rules(&self) -> bool {
        !self.body_rules.is_empty()
    }

    /// The id of the rule that ignores this header, an explicit rule winning over a default one.
    pub(crate) fn header_rule(&self, name: &str) -> Option<usize> {
        if let Some((_, id)) = self.header_rules.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)) {
            return Some(*id);
        }
        if self.default_headers {
            return Self::DEFAULT_HEADERS
                .iter()
                .position(|h| h.eq_ignore_ascii_case(name))
                .map(|i| self.default_base + i);
        }
        None
    }

    pub(crate) fn body_rules(&self) -> &[BodyRule] {
        &self.body_rules
    }

    /// The labels of these rule ids, in id order, without duplicates.
    pub(crate) fn labels(&self, ids: &BTreeSet<usize>) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for label in ids.iter().filter_map(|&id| self.labels.get(id)) {
            if !out.contains(label) {
                out.push(label.clone());
            }
        }
        out
    }
}

impl Default for Noise {
    fn default() -> Noise {
        Noise::none()
    }
}
