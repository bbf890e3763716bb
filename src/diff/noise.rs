//! Noise rules compiled for one comparison: header names to skip and JSONPath selections over the body.

use std::collections::BTreeSet;

use serde_json::Value;
use serde_json_path::JsonPath;

use crate::noise::shape::Shape;
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
    /// The shape a rule's values must keep (`like`), per id; rules without one ignore the value.
    shapes: Vec<Option<Shape>>,
    /// With a frozen clock: time slots of shapes must be within this many seconds of the recorded value.
    clock_tolerance: Option<f64>,
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
    pub fn compile(rules: &[NoiseRule], default_headers: bool) -> crate::error::Result<Noise> {
        Self::build(rules.iter().map(|r| (r, None)), default_headers)
    }

    /// Like [`Noise::compile`], plus `extra` rules found during this run (not written anywhere), whose labels
    /// say where they came from: `body $.x (differs between target and secondary)`.
    pub fn compile_with_extra(
        rules: &[NoiseRule],
        extra: &[NoiseRule],
        origin: &str,
        default_headers: bool,
    ) -> crate::error::Result<Noise> {
        let all = rules.iter().map(|r| (r, None)).chain(extra.iter().map(|r| (r, Some(origin))));
        Self::build(all, default_headers)
    }

    fn build<'r>(
        rules: impl Iterator<Item = (&'r NoiseRule, Option<&'r str>)>,
        default_headers: bool,
    ) -> crate::error::Result<Noise> {
        let mut header_rules = Vec::new();
        let mut body_rules = Vec::new();
        let mut labels = Vec::new();
        let mut shapes = Vec::new();
        for (rule, origin) in rules {
            if rule.header.is_none() && rule.body.is_none() {
                return Err(crate::error::Error::input("noise rule has neither header nor body"));
            }
            let shape = rule.like.as_deref().map(Shape::parse).transpose()?;
            if shape.is_some() && rule.ignore_order {
                return Err(crate::error::Error::input("a noise rule cannot have both like and ignore_order"));
            }
            // How the rule came about, for reports: a learned rule says so.
            let mut suffix = String::new();
            if let Some(s) = &shape {
                suffix.push_str(&format!(" like {}", s.render()));
            }
            if let Some(l) = &rule.learned {
                suffix.push_str(&format!(" (learned {})", l.date));
            }
            if let Some(o) = origin {
                suffix.push_str(&format!(" ({o})"));
            }
            if let Some(header) = &rule.header {
                let name = header.trim().to_ascii_lowercase();
                if name.is_empty() || name.contains(char::is_whitespace) || name.contains(':') {
                    return Err(crate::error::Error::input(format!(
                        "noise rule header: {header:?}: not a header name"
                    )));
                }
                if rule.ignore_order && rule.body.is_none() {
                    return Err(crate::error::Error::input(format!(
                        "noise rule header: {header:?}: ignore_order needs a body JSONPath"
                    )));
                }
                header_rules.push((name.clone(), labels.len()));
                labels.push(format!("header {name}{suffix}"));
                shapes.push(shape.clone());
            }
            if let Some(body) = &rule.body {
                let path = JsonPath::parse(body.trim())
                    .map_err(|e| crate::error::Error::input(format!("noise rule body: {body:?}: {e}")))?;
                body_rules.push(BodyRule { path, ignore_order: rule.ignore_order, id: labels.len() });
                labels.push(if rule.ignore_order {
                    format!("body {} (ignore order){suffix}", body.trim())
                } else {
                    format!("body {}{suffix}", body.trim())
                });
                shapes.push(shape);
            }
        }
        let default_base = labels.len();
        labels.extend(Self::DEFAULT_HEADERS.iter().map(|h| format!("header {h}")));
        Ok(Noise { header_rules, default_headers, default_base, body_rules, labels, shapes, clock_tolerance: None })
    }

    /// With a frozen clock, time values kept by a `like` rule must also be within `seconds` of the recording.
    pub fn with_clock_tolerance(mut self, seconds: Option<f64>) -> Noise {
        self.clock_tolerance = seconds;
        self
    }

    /// The shape rule `id` keeps, if it is a `like` rule.
    pub(crate) fn shape(&self, id: usize) -> Option<&Shape> {
        self.shapes.get(id).and_then(|s| s.as_ref())
    }

    /// Whether rule `id` lets `actual` stand for `expected`: always for an ignoring rule; for a `like` rule
    /// when the value keeps the shape (and, with a frozen clock, the time).
    pub(crate) fn accepts(&self, id: usize, expected: &Value, actual: &Value) -> bool {
        let Some(shape) = self.shape(id) else { return true };
        if !shape.matches_json(actual) {
            return false;
        }
        match self.clock_tolerance {
            Some(tolerance) if shape.has_time() => shape.times_close(expected, actual, tolerance),
            _ => true,
        }
    }

    /// Why rule `id` did not accept a value, for the report.
    pub(crate) fn rejection(&self, id: usize) -> Option<String> {
        let shape = self.shape(id)?;
        Some(match self.clock_tolerance {
            Some(t) if shape.has_time() => {
                format!("expected a value like {} within {t}s of the recorded time (frozen clock)", shape.render())
            }
            _ => format!("expected a value like {}", shape.render()),
        })
    }

    /// No rules at all, not even the default headers: every difference counts.
    pub fn none() -> Noise {
        Noise {
            header_rules: Vec::new(),
            default_headers: false,
            default_base: 0,
            body_rules: Vec::new(),
            labels: Vec::new(),
            shapes: Vec::new(),
            clock_tolerance: None,
        }
    }

    /// Whether a header (or trailer) of this name is not compared.
    #[cfg(test)]
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
