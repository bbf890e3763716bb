//! Structural JSON comparison under noise rules.
//!
//! Body rules are JSONPath queries; each is evaluated once against the expected and the actual document, and
//! the locations they select are kept as paths of keys and indices. The walk over both documents keeps the
//! path of the node it is at in each document (the two differ only inside arrays compared ignoring order)
//! and looks them up.

use std::collections::{BTreeSet, HashMap};

use serde_json::Value;
use serde_json_path::{NormalizedPath, PathElement};

use super::noise::Noise;
use super::{Change, Difference, render_json};

/// One step of a path into a JSON document.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Seg {
    Key(String),
    Index(usize),
}

/// Locations selected by the body rules, per document, with the id of the (first) rule selecting them.
#[derive(Debug, Default)]
struct Selected {
    ignored_expected: HashMap<Vec<Seg>, usize>,
    ignored_actual: HashMap<Vec<Seg>, usize>,
    unordered_expected: HashMap<Vec<Seg>, usize>,
    unordered_actual: HashMap<Vec<Seg>, usize>,
}

impl Selected {
    fn resolve(expected: &Value, actual: &Value, noise: &Noise) -> Selected {
        let mut sel = Selected::default();
        for rule in noise.body_rules() {
            let (exp_map, act_map) = if rule.ignore_order {
                (&mut sel.unordered_expected, &mut sel.unordered_actual)
            } else {
                (&mut sel.ignored_expected, &mut sel.ignored_actual)
            };
            for loc in rule.path.query_located(expected).locations() {
                exp_map.entry(segs_of(loc)).or_insert(rule.id);
            }
            for loc in rule.path.query_located(actual).locations() {
                act_map.entry(segs_of(loc)).or_insert(rule.id);
            }
        }
        sel
    }

    fn is_empty(&self) -> bool {
        self.ignored_expected.is_empty()
            && self.ignored_actual.is_empty()
            && self.unordered_expected.is_empty()
            && self.unordered_actual.is_empty()
    }
}

fn segs_of(loc: &NormalizedPath<'_>) -> Vec<Seg> {
    loc.iter()
        .map(|e| match e {
            PathElement::Name(n) => Seg::Key((*n).to_string()),
            PathElement::Index(i) => Seg::Index(*i),
        })
        .collect()
}

/// Renders a path in the friendly JSONPath form: `$.a.b`, `$.items[3]`, `$['odd key']`.
pub(crate) fn render_path(path: &[Seg]) -> String {
    let mut out = String::from("$");
    for seg in path {
        match seg {
            Seg::Index(i) => {
                out.push('[');
                out.push_str(&i.to_string());
                out.push(']');
            }
            Seg::Key(k) if is_identifier(k) => {
                out.push('.');
                out.push_str(k);
            }
            Seg::Key(k) => {
                out.push_str("['");
                for c in k.chars() {
                    match c {
                        '\'' => out.push_str("\\'"),
                        '\\' => out.push_str("\\\\"),
                        '\u{8}' => out.push_str("\\b"),
                        '\u{c}' => out.push_str("\\f"),
                        '\n' => out.push_str("\\n"),
                        '\r' => out.push_str("\\r"),
                        '\t' => out.push_str("\\t"),
                        c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
                        c => out.push(c),
                    }
                }
                out.push_str("']");
            }
        }
    }
    out
}

fn is_identifier(key: &str) -> bool {
    let mut chars = key.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Structural JSON diff; paths in normalized JSONPath form: $.a.b, $.items[3], $['odd key'].
/// Locations are prefixed with "body " like those of [`super::compare`].
#[cfg(test)]
pub fn json_diff(expected: &Value, actual: &Value, noise: &Noise) -> super::Comparison {
    let (differences, applied) = diff_values(expected, actual, noise);
    super::Comparison { differences, applied_noise: noise.labels(&applied) }
}

/// The differences and the ids of the rules that suppressed one.
pub(crate) fn diff_values(expected: &Value, actual: &Value, noise: &Noise) -> (Vec<Difference>, BTreeSet<usize>) {
    let selected =
        if noise.has_body_rules() { Selected::resolve(expected, actual, noise) } else { Selected::default() };
    let mut walker = Walker::new(&selected, noise, Vec::new(), Vec::new(), false);
    walker.walk(expected, actual);
    (walker.diffs, walker.applied)
}

struct Walker<'s> {
    sel: &'s Selected,
    noise: &'s Noise,
    /// Whether any rule applies at all; when not, lookups are skipped.
    any_rules: bool,
    diffs: Vec<Difference>,
    applied: BTreeSet<usize>,
    /// Path of the current node in the expected document.
    epath: Vec<Seg>,
    /// Path of the current node in the actual document.
    apath: Vec<Seg>,
    /// Only whether there is a difference matters: stop at the first.
    probe: bool,
}

impl<'s> Walker<'s> {
    fn new(sel: &'s Selected, noise: &'s Noise, epath: Vec<Seg>, apath: Vec<Seg>, probe: bool) -> Walker<'s> {
        let any_rules = !sel.is_empty();
        Walker { sel, noise, any_rules, diffs: Vec::new(), applied: BTreeSet::new(), epath, apath, probe }
    }

    /// A rule selecting the current node that ignores it outright (not a `like` rule, which keeps it).
    fn ignoring(&self, id: Option<usize>) -> Option<usize> {
        id.filter(|id| self.noise.shape(*id).is_none())
    }

    fn done(&self) -> bool {
        self.probe && !self.diffs.is_empty()
    }

    fn ignored_expected(&self) -> Option<usize> {
        if !self.any_rules {
            return None;
        }
        self.sel.ignored_expected.get(self.epath.as_slice()).copied()
    }

    fn ignored_actual(&self) -> Option<usize> {
        if !self.any_rules {
            return None;
        }
        self.sel.ignored_actual.get(self.apath.as_slice()).copied()
    }

    fn unordered(&self) -> Option<usize> {
        if !self.any_rules {
            return None;
        }
        self.sel
            .unordered_expected
            .get(self.epath.as_slice())
            .or_else(|| self.sel.unordered_actual.get(self.apath.as_slice()))
            .copied()
    }

    fn push(&mut self, seg: Seg) {
        self.epath.push(seg.clone());
        self.apath.push(seg);
    }

    fn pop(&mut self) {
        self.epath.pop();
        self.apath.pop();
    }

    fn report(&mut self, location: String, change: Change, expected: Option<&Value>, actual: Option<&Value>) {
        self.diffs.push(Difference {
            location: format!("body {location}"),
            change,
            expected: expected.map(render_json),
            actual: actual.map(render_json),
            detail: None,
        });
    }

    /// Compares two nodes present on both sides.
    fn walk(&mut self, e: &Value, a: &Value) {
        if self.done() {
            return;
        }
        if let Some(id) = self.ignored_expected().or_else(|| self.ignored_actual()) {
            if !plain_equal(e, a) {
                if self.noise.accepts(id, e, a) {
                    self.applied.insert(id);
                } else {
                    let loc = render_path(&self.epath);
                    let change = if kind(e) == kind(a) { Change::Changed } else { Change::TypeChanged };
                    self.report(loc, change, Some(e), Some(a));
                    if let Some(last) = self.diffs.last_mut() {
                        last.detail = self.noise.rejection(id);
                    }
                }
            }
            return;
        }
        match (e, a) {
            (Value::Object(eo), Value::Object(ao)) => {
                for (k, ev) in eo {
                    if self.done() {
                        return;
                    }
                    self.push(Seg::Key(k.clone()));
                    match ao.get(k) {
                        Some(av) => self.walk(ev, av),
                        None => self.removed(ev),
                    }
                    self.pop();
                }
                for (k, av) in ao {
                    if self.done() {
                        return;
                    }
                    if !eo.contains_key(k) {
                        self.push(Seg::Key(k.clone()));
                        self.added(av);
                        self.pop();
                    }
                }
            }
            (Value::Array(ea), Value::Array(aa)) => match self.unordered() {
                Some(id) => self.walk_unordered(ea, aa, id),
                None => {
                    for i in 0..ea.len().max(aa.len()) {
                        if self.done() {
                            return;
                        }
                        self.push(Seg::Index(i));
                        match (ea.get(i), aa.get(i)) {
                            (Some(ev), Some(av)) => self.walk(ev, av),
                            (Some(ev), None) => self.removed(ev),
                            (None, Some(av)) => self.added(av),
                            (None, None) => {}
                        }
                        self.pop();
                    }
                }
            },
            _ if kind(e) != kind(a) => {
                let loc = render_path(&self.epath);
                self.report(loc, Change::TypeChanged, Some(e), Some(a));
            }
            _ => {
                if !plain_equal(e, a) {
                    let loc = render_path(&self.epath);
                    self.report(loc, Change::Changed, Some(e), Some(a));
                }
            }
        }
    }

    /// A node present only in the expected document, at `epath`.
    fn removed(&mut self, e: &Value) {
        let ignored = self.ignored_expected();
        self.one_sided(ignored, |s| render_path(&s.epath), Change::Removed, Some(e), None);
    }

    /// A node present only in the actual document, at `apath`.
    fn added(&mut self, a: &Value) {
        let ignored = self.ignored_actual();
        self.one_sided(ignored, |s| render_path(&s.apath), Change::Added, None, Some(a));
    }

    /// A node present on one side only: noise when a rule ignores it there, else a difference.
    fn one_sided(
        &mut self,
        ignored: Option<usize>,
        location: fn(&Self) -> String,
        change: Change,
        e: Option<&Value>,
        a: Option<&Value>,
    ) {
        match self.ignoring(ignored) {
            Some(id) => {
                self.applied.insert(id);
            }
            None => {
                let loc = location(self);
                self.report(loc, change, e, a);
            }
        }
    }

    /// Compares two arrays as multisets: every expected element must be matched by an equal (under noise)
    /// actual element not used yet. Elements left over are reported at `path[*]`.
    fn walk_unordered(&mut self, ea: &[Value], aa: &[Value], rule: usize) {
        // Elements ignored by a rule take no part.
        let mut expected_items = Vec::with_capacity(ea.len());
        for (i, e) in ea.iter().enumerate() {
            self.epath.push(Seg::Index(i));
            match self.ignoring(self.ignored_expected()) {
                Some(id) => {
                    if aa.get(i).is_none_or(|a| !plain_equal(e, a)) {
                        self.applied.insert(id);
                    }
                }
                None => expected_items.push(i),
            }
            self.epath.pop();
        }
        let mut used = vec![false; aa.len()];
        for (j, slot) in used.iter_mut().enumerate() {
            self.apath.push(Seg::Index(j));
            if let Some(id) = self.ignoring(self.ignored_actual()) {
                *slot = true;
                if ea.get(j).is_none_or(|e| !plain_equal(e, &aa[j])) {
                    self.applied.insert(id);
                }
            }
            self.apath.pop();
        }

        let mut reordered = false;
        let mut left_expected = Vec::new();
        for i in expected_items {
            // The element at the same index first: the common case of an unchanged order.
            let candidates = std::iter::once(i).chain((0..aa.len()).filter(|&j| j != i));
            let mut found = None;
            for j in candidates {
                if used.get(j).is_some_and(|u| !u) && self.elements_match(&ea[i], i, &aa[j], j) {
                    found = Some(j);
                    break;
                }
            }
            match found {
                Some(j) => {
                    used[j] = true;
                    reordered |= i != j;
                }
                None => left_expected.push(i),
            }
            if self.probe && !left_expected.is_empty() {
                break;
            }
        }
        if reordered {
            self.applied.insert(rule);
        }
        let mut star = render_path(&self.epath);
        star.push_str("[*]");
        for i in left_expected {
            self.report(star.clone(), Change::Removed, Some(&ea[i]), None);
            if self.done() {
                return;
            }
        }
        for (j, a) in aa.iter().enumerate() {
            if !used[j] {
                self.report(star.clone(), Change::Added, None, Some(a));
                if self.done() {
                    return;
                }
            }
        }
    }

    /// Whether expected element `i` equals actual element `j` once noise inside them is ignored. The rules
    /// that made them equal count as applied only when they do match.
    fn elements_match(&mut self, e: &Value, i: usize, a: &Value, j: usize) -> bool {
        if plain_equal(e, a) {
            return true;
        }
        if !self.any_rules {
            return false;
        }
        let mut epath = self.epath.clone();
        epath.push(Seg::Index(i));
        let mut apath = self.apath.clone();
        apath.push(Seg::Index(j));
        let mut probe = Walker::new(self.sel, self.noise, epath, apath, true);
        probe.walk(e, a);
        if probe.diffs.is_empty() {
            self.applied.extend(probe.applied);
            true
        } else {
            false
        }
    }
}

#[derive(PartialEq, Eq)]
enum Kind {
    Null,
    Bool,
    Number,
    String,
    Array,
    Object,
}

fn kind(v: &Value) -> Kind {
    match v {
        Value::Null => Kind::Null,
        Value::Bool(_) => Kind::Bool,
        Value::Number(_) => Kind::Number,
        Value::String(_) => Kind::String,
        Value::Array(_) => Kind::Array,
        Value::Object(_) => Kind::Object,
    }
}

/// Equality without noise: key order never matters, and numbers compare by value (1 == 1.0).
pub(crate) fn plain_equal(e: &Value, a: &Value) -> bool {
    match (e, a) {
        (Value::Number(x), Value::Number(y)) => numbers_equal(x, y),
        (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(x, y)| plain_equal(x, y)),
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, xv)| y.get(k).is_some_and(|yv| plain_equal(xv, yv)))
        }
        _ => e == a,
    }
}

fn numbers_equal(x: &serde_json::Number, y: &serde_json::Number) -> bool {
    let int = |n: &serde_json::Number| n.as_i64().map(i128::from).or_else(|| n.as_u64().map(i128::from));
    match (int(x), int(y)) {
        (Some(x), Some(y)) => x == y,
        _ => match (x.as_f64(), y.as_f64()) {
            (Some(x), Some(y)) => x == y,
            _ => x == y,
        },
    }
}
