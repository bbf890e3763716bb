//! Privacy: nothing secret reaches a recording in clear. Before a test or mock is written, every string in
//! it is classified (`classify`): credentials are **sealed** (encrypted into the set's `sealed.yaml`, the
//! file shows `!sealed CLASS#N`), personal data is **pseudonymized** (same format, same pseudonym for the
//! same value under one key). Loading a set with the key puts the sealed values back; without it the
//! placeholders stay, and a test that needed one fails saying the key is missing.
//!
//! The pass works on the serde tree of a document (`serde_json::Value`), so every protocol's section is
//! covered without each protocol knowing about it: headers, bodies, query strings and forms, SQL text and
//! parameters, Redis arguments, the recorded command line.

pub(crate) mod classify;
pub(crate) mod key;
pub(crate) mod scan;
pub(crate) mod seal;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{LazyLock, Mutex};

use regex::Regex;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{Error, Result};
use classify::{Action, HeaderRule};
use key::Key;
use seal::{Closed, SealTable};

/// The `privacy:` section of doppel.yaml.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrivacyConfig {
    /// Set to false to write recordings in clear (not recommended for real traffic).
    #[serde(default)]
    pub enabled: Option<bool>,
    /// Where the seal key lives (default `~/.config/doppel/seal.key`; `DOPPEL_SEAL_KEY` wins).
    #[serde(default)]
    pub key_file: Option<String>,
    /// Classes left in clear (`ip`, `name`, `email`, ...; see the README for the list).
    #[serde(default)]
    pub skip: Vec<String>,
    /// Rules of the project's own, applied before the built-in ones.
    #[serde(default)]
    pub rules: Vec<PrivacyRule>,
}

/// One rule: where (exactly one of `header`, `field`, `body`, `regex`) and what to do.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrivacyRule {
    /// A header name (case-insensitive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    /// A field name in JSON bodies, forms and query strings (any depth).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// A JSONPath over JSON bodies (`$.customer.tax_number`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// A regular expression matched anywhere in text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
    /// `seal`, `pseudonymize` or `keep` (leave in clear, also against the built-in rules).
    pub action: RuleAction,
    /// The class shown in placeholders and the summary (default `custom`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuleAction {
    #[default]
    Seal,
    Pseudonymize,
    Keep,
}

/// A rule ready to apply.
struct Rule {
    /// None: keep in clear.
    action: Option<Action>,
    class: String,
}

#[derive(Default)]
struct Rules {
    skip: Vec<String>,
    headers: Vec<(String, Rule)>,
    fields: Vec<(String, Rule)>,
    paths: Vec<(serde_json_path::JsonPath, Rule)>,
    regexes: Vec<(Regex, Rule)>,
}

impl Rules {
    fn compile(cfg: &PrivacyConfig) -> Result<Rules> {
        let mut rules = Rules { skip: cfg.skip.clone(), ..Rules::default() };
        for s in &cfg.skip {
            if !classify::CLASSES.contains(&s.as_str()) {
                return Err(Error::input(format!(
                    "doppel.yaml: privacy.skip: unknown class {s:?} (known: {})",
                    classify::CLASSES.join(", ")
                )));
            }
        }
        for (i, r) in cfg.rules.iter().enumerate() {
            let rule = Rule {
                action: match r.action {
                    RuleAction::Seal => Some(Action::Seal),
                    RuleAction::Pseudonymize => Some(Action::Pseudonymize),
                    RuleAction::Keep => None,
                },
                class: r.class.clone().unwrap_or_else(|| "custom".into()),
            };
            if !rule.class.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
                return Err(Error::input(format!(
                    "doppel.yaml: privacy.rules[{i}].class: letters, digits and `-` only"
                )));
            }
            let wheres = [&r.header, &r.field, &r.body, &r.regex].iter().filter(|w| w.is_some()).count();
            if wheres != 1 {
                return Err(Error::input(format!(
                    "doppel.yaml: privacy.rules[{i}]: give exactly one of header, field, body, regex"
                )));
            }
            if let Some(h) = &r.header {
                rules.headers.push((h.to_ascii_lowercase(), rule));
            } else if let Some(f) = &r.field {
                rules.fields.push((f.clone(), rule));
            } else if let Some(p) = &r.body {
                let path = serde_json_path::JsonPath::parse(p)
                    .map_err(|e| Error::input(format!("doppel.yaml: privacy.rules[{i}].body: {e}")))?;
                rules.paths.push((path, rule));
            } else if let Some(x) = &r.regex {
                let re =
                    Regex::new(x).map_err(|e| Error::input(format!("doppel.yaml: privacy.rules[{i}].regex: {e}")))?;
                rules.regexes.push((re, rule));
            }
        }
        Ok(rules)
    }
}

/// What a recording sealed and pseudonymized: distinct values per class.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    pub sealed: BTreeMap<String, usize>,
    pub pseudonymized: BTreeMap<String, usize>,
    seen: HashSet<(bool, String, u64)>,
}

impl Tally {
    fn count(&mut self, sealed: bool, class: &str, value: &str) {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        value.hash(&mut h);
        if self.seen.insert((sealed, class.to_string(), h.finish())) {
            let map = if sealed { &mut self.sealed } else { &mut self.pseudonymized };
            *map.entry(class.to_string()).or_default() += 1;
        }
    }

    pub fn is_empty(&self) -> bool {
        self.sealed.is_empty() && self.pseudonymized.is_empty()
    }

    /// `sealed 5 values (bearer-jwt 2, cookie 3); pseudonymized 4 (email 4)`.
    pub fn line(&self) -> String {
        let part = |m: &BTreeMap<String, usize>| {
            let n: usize = m.values().sum();
            let each: Vec<String> = m.iter().map(|(k, v)| format!("{k} {v}")).collect();
            (n, each.join(", "))
        };
        let (s, se) = part(&self.sealed);
        let (p, pe) = part(&self.pseudonymized);
        let mut out = Vec::new();
        if s > 0 {
            out.push(format!("sealed {s} value{} ({se})", if s == 1 { "" } else { "s" }));
        }
        if p > 0 {
            out.push(format!("pseudonymized {p} ({pe})"));
        }
        out.join("; ")
    }
}

#[derive(Default)]
struct State {
    tables: HashMap<PathBuf, SealTable>,
    /// Values pseudonymized because of where they stood (a `last_name` field): any later string equal to
    /// one gets the same pseudonym, wherever it stands.
    learned: HashMap<String, String>,
    tally: Tally,
}

impl std::fmt::Debug for Privacy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("Privacy").field("on", &self.on).field("key", &self.key.as_ref().map(|k| &k.id)).finish()
    }
}

/// The privacy rules of a run, with the seal key when there is one.
pub struct Privacy {
    on: bool,
    key: Option<Key>,
    source: Option<key::Source>,
    created: bool,
    rules: Rules,
    state: Mutex<State>,
}

static PLACEHOLDER: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"!sealed ([a-z0-9-]+#[0-9]+)").expect("a valid pattern"));
/// A placeholder inside a form or query string, percent-encoded.
static ENCODED_PLACEHOLDER: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"%21sealed(?:\+|%20)([a-z0-9-]+)%23([0-9]+)").expect("a valid pattern"));

/// Whether `text` holds a placeholder (plain or percent-encoded).
pub(crate) fn has_placeholder(text: &str) -> bool {
    text.contains("!sealed ") || text.contains("%21sealed")
}

/// The placeholder ids in `text`.
pub(crate) fn placeholders(text: &str) -> Vec<String> {
    let mut ids: Vec<String> =
        PLACEHOLDER.captures_iter(text).filter_map(|c| Some(c.get(1)?.as_str().to_string())).collect();
    ids.extend(
        ENCODED_PLACEHOLDER
            .captures_iter(text)
            .filter_map(|c| Some(format!("{}#{}", c.get(1)?.as_str(), c.get(2)?.as_str()))),
    );
    ids.sort();
    ids.dedup();
    ids
}

fn is_placeholder(text: &str) -> bool {
    PLACEHOLDER.find(text).is_some_and(|m| m.start() == 0 && m.end() == text.len())
}

impl Privacy {
    /// Recordings in clear.
    pub fn off() -> Privacy {
        Privacy { on: false, key: None, source: None, created: false, rules: Rules::default(), state: Mutex::default() }
    }

    /// The rules of doppel.yaml with the seal key of this machine; `recording` creates a key file when there
    /// is none (a replay without a key runs with the placeholders).
    pub fn load(cfg: &PrivacyConfig, recording: bool) -> Result<Privacy> {
        if cfg.enabled == Some(false) {
            return Ok(Privacy::off());
        }
        let rules = Rules::compile(cfg)?;
        let configured = cfg.key_file.as_deref().map(Path::new);
        let loaded = key::load(configured, recording)?;
        if recording && loaded.is_none() {
            return Err(Error::env(format!(
                "no place for the seal key: set {} (base64 of 32 random bytes) or {}, or HOME",
                key::ENV_KEY,
                key::ENV_KEY_FILE
            )));
        }
        let (key, source, created) = match loaded {
            Some((k, s, c)) => (Some(k), Some(s), c),
            None => (None, None, false),
        };
        Ok(Privacy { on: true, key, source, created, rules, state: Mutex::default() })
    }

    /// With a key made for this run only (the demo, whose recording is thrown away).
    pub fn ephemeral() -> Result<Privacy> {
        Ok(Privacy {
            on: true,
            key: Some(Key::random()?),
            source: None,
            created: false,
            rules: Rules::default(),
            state: Mutex::default(),
        })
    }

    pub fn is_on(&self) -> bool {
        self.on
    }

    /// Says where a key created by this run is, once.
    pub fn key_note(&self) -> Option<String> {
        match (&self.source, self.created) {
            (Some(s), true) => Some(format!(
                "created the seal key {s} (0600): keep it out of the repository; in CI set {} to its content",
                key::ENV_KEY
            )),
            _ => None,
        }
    }

    pub fn tally(&self) -> Tally {
        self.state.lock().map(|s| s.tally.clone()).unwrap_or_default()
    }

    fn with_table<R>(&self, dir: &Path, f: impl FnOnce(&mut State, &mut SealTable) -> Result<R>) -> Result<R> {
        let mut state = self.state.lock().map_err(|_| Error::internal("privacy state lock poisoned"))?;
        let mut table = match state.tables.remove(dir) {
            Some(t) => t,
            None => SealTable::load(dir, self.key.as_ref())?,
        };
        let out = f(&mut state, &mut table);
        state.tables.insert(dir.to_path_buf(), table);
        out
    }

    /// Why the sealed values of the set at `dir` cannot be opened here, or None when they can (or there
    /// are none).
    pub fn closed(&self, dir: &Path) -> Option<String> {
        if !self.on {
            return None;
        }
        self.with_table(dir, |_, t| {
            Ok(match (t.is_empty(), t.closed()) {
                (true, _) | (_, None) => None,
                (false, Some(Closed::NoKey)) => Some(format!(
                    "the seal key is missing (set {} or put the key file at {})",
                    key::ENV_KEY,
                    key::default_file(None)
                        .map(|p| p.display().to_string())
                        .unwrap_or_else(|| "~/.config/doppel/seal.key".into())
                )),
                (false, Some(Closed::WrongKey { sealed_with, have })) => {
                    Some(format!("the seal key here ({have}) is not the one this set was sealed with ({sealed_with})"))
                }
            })
        })
        .ok()
        .flatten()
    }

    /// The YAML of `doc` for the set at `dir`, with credentials sealed and (for `fresh` traffic, not a
    /// rewrite of what was loaded) personal data pseudonymized.
    pub(crate) fn to_yaml<T: Serialize + DeserializeOwned>(
        &self,
        dir: &Path,
        doc: &T,
        kind: Option<&str>,
        fresh: bool,
    ) -> Result<String> {
        if !self.on {
            return crate::store::to_yaml(doc);
        }
        let mut value = serde_json::to_value(doc).map_err(|e| Error::internal(format!("cannot write: {e}")))?;
        self.to_value(dir, &mut value, fresh)?;
        // Back through the document's own type, so its layout (flow sequences, block text) stays its own.
        let typed = match kind {
            Some(k) => crate::store::format::with_kind(k, || serde_json::from_value::<T>(value.clone())),
            None => serde_json::from_value::<T>(value.clone()),
        };
        match typed {
            Ok(t) => crate::store::to_yaml(&t),
            Err(_) => crate::store::to_yaml(&value),
        }
    }

    /// The rules applied to `value` in place (see `to_yaml`).
    fn to_value(&self, dir: &Path, value: &mut Value, fresh: bool) -> Result<()> {
        let Some(key) = &self.key else {
            // No key (a replay writing learned rules back without one): placeholders stay placeholders, and a
            // new credential can only be redacted.
            self.redact(value);
            return Ok(());
        };
        self.with_table(dir, |state, table| {
            let mut pass = Pass {
                rules: &self.rules,
                key: Some(key),
                table: Some(table),
                learned: &mut state.learned,
                tally: &mut state.tally,
                fresh,
                done: HashSet::new(),
                error: None,
                findings: None,
            };
            pass.walk(value, Ctx::default());
            match pass.error.take() {
                Some(e) => Err(e),
                None => Ok(()),
            }
        })
    }

    /// Credentials in `value` replaced by `!redacted CLASS` (not recoverable), placeholders kept: for what
    /// is written outside a test set (reports) and writes without a key.
    pub(crate) fn redact(&self, value: &mut Value) {
        if !self.on {
            return;
        }
        if let Ok(mut state) = self.state.lock() {
            let state = &mut *state;
            let mut pass = Pass {
                rules: &self.rules,
                key: None,
                table: None,
                learned: &mut state.learned,
                tally: &mut Tally::default(),
                fresh: false,
                done: HashSet::new(),
                error: None,
                findings: None,
            };
            pass.walk(value, Ctx::default());
        }
    }

    /// `text` (a report) with credentials replaced: values sealed in the sets this run loaded by their
    /// placeholder, what the shapes give away (JWTs, API keys, passwords in URLs) by `!redacted CLASS`.
    pub(crate) fn redact_text(&self, text: &str) -> String {
        if !self.on {
            return text.to_string();
        }
        let mut out = text.to_string();
        if let Ok(state) = self.state.lock() {
            let mut known: Vec<(String, String)> = state.tables.values().flat_map(SealTable::known).collect();
            // Longest first, so a value inside a longer one does not cut it.
            known.sort_by_key(|k| std::cmp::Reverse(k.0.len()));
            for (value, id) in known.iter().filter(|(v, _)| v.len() >= 6) {
                if out.contains(value.as_str()) {
                    out = out.replace(value.as_str(), &format!("{}{id}", seal::PREFIX));
                }
            }
        }
        let mut v = Value::String(out);
        self.redact(&mut v);
        match v {
            Value::String(s) => s,
            _ => text.to_string(),
        }
    }

    /// The credentials `value` holds in clear, as (class, value), by the same rules as a recording.
    pub(crate) fn findings(&self, value: &mut Value) -> Vec<(String, String)> {
        let mut learned = HashMap::new();
        let mut pass = Pass {
            rules: &self.rules,
            key: None,
            table: None,
            learned: &mut learned,
            tally: &mut Tally::default(),
            fresh: false,
            done: HashSet::new(),
            error: None,
            findings: Some(Vec::new()),
        };
        pass.walk(value, Ctx::default());
        pass.findings.unwrap_or_default()
    }

    /// Runs the rules over an inbound request without writing it: the values its fields classify are
    /// remembered (and sealed ones get their placeholder), so a dependency call written before the test
    /// gets the same replacements.
    pub(crate) fn learn(&self, dir: &Path, mut request: Value) -> Result<()> {
        if !self.on || self.key.is_none() {
            return Ok(());
        }
        self.to_value(dir, &mut request, true)
    }

    /// `doc` loaded from the set at `dir` with its sealed values put back, when the key opens them.
    pub(crate) fn open<T: Serialize + DeserializeOwned>(&self, dir: &Path, doc: T, kind: Option<&str>) -> T {
        if !self.on || self.key.is_none() {
            return doc;
        }
        let Ok(mut value) = serde_json::to_value(&doc) else { return doc };
        let opened = self.with_table(dir, |_, table| {
            if table.is_empty() || table.closed().is_some() {
                return Ok(false);
            }
            Ok(open_value(&mut value, table))
        });
        if !matches!(opened, Ok(true)) {
            return doc;
        }
        let back = match kind {
            Some(k) => crate::store::format::with_kind(k, || serde_json::from_value::<T>(value)),
            None => serde_json::from_value::<T>(value),
        };
        back.unwrap_or(doc)
    }

    /// `text` as the recording would have written it: for comparing what a new build answered with a
    /// recorded value that was pseudonymized (an address the app has in its own configuration, say).
    pub(crate) fn pseudonymize_text(&self, text: &str) -> Option<String> {
        let key = self.key.as_ref().filter(|_| self.on)?;
        let mut out = String::with_capacity(text.len());
        let mut last = 0;
        for (r, c) in classify::spans(text, &self.rules.skip) {
            if c.action != Action::Pseudonymize {
                continue;
            }
            out.push_str(&text[last..r.start]);
            out.push_str(&classify::pseudonym(&key.pseudonym, c.name, &text[r.clone()]));
            last = r.end;
        }
        if last == 0 {
            return None;
        }
        out.push_str(&text[last..]);
        Some(out)
    }
}

/// Puts sealed values back into `v`; true when anything changed. Bodies that changed get a Content-Length
/// that fits them again.
fn open_value(v: &mut Value, table: &SealTable) -> bool {
    match v {
        Value::String(s) => {
            if !has_placeholder(s) {
                return false;
            }
            let opened = PLACEHOLDER.replace_all(s, |c: &regex::Captures| {
                table.open(&c[1]).map(str::to_string).unwrap_or_else(|| c[0].to_string())
            });
            let opened = ENCODED_PLACEHOLDER.replace_all(&opened, |c: &regex::Captures| {
                let id = format!("{}#{}", &c[1], &c[2]);
                table
                    .open(&id)
                    .map(|v| form_urlencoded::byte_serialize(v.as_bytes()).collect::<String>())
                    .unwrap_or_else(|| c[0].to_string())
            });
            let changed = *s != opened;
            *s = opened.into_owned();
            changed
        }
        Value::Array(a) => a.iter_mut().fold(false, |acc, x| open_value(x, table) | acc),
        Value::Object(o) => {
            let body_before = framed_body(o);
            let changed = o.values_mut().fold(false, |acc, x| open_value(x, table) | acc);
            if changed {
                fix_length(o, body_before);
            }
            changed
        }
        _ => false,
    }
}

/// The body of an HTTP message object with a Content-Length header, to see afterwards whether it changed.
fn framed_body(o: &Map<String, Value>) -> Option<Value> {
    let headers = o.get("headers")?.as_array()?;
    let framed =
        headers.iter().any(|h| h.as_str().is_some_and(|h| h.to_ascii_lowercase().starts_with("content-length:")));
    framed.then(|| o.get("body").cloned()).flatten()
}

/// After a body changed length, its Content-Length says the new length (so the bytes sent stay an HTTP
/// message the other side can read).
fn fix_length(o: &mut Map<String, Value>, before: Option<Value>) {
    let Some(before) = before else { return };
    let Some(body) = o.get("body").filter(|b| **b != before) else { return };
    let Ok(body) = serde_json::from_value::<crate::store::Body>(body.clone()) else { return };
    let Ok(Some(bytes)) = body.inline_bytes() else { return };
    if let Some(Value::Array(headers)) = o.get_mut("headers") {
        for h in headers.iter_mut() {
            if let Value::String(line) = h
                && let Some((name, _)) = line.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                *line = format!("{name}: {}", bytes.len());
            }
        }
    }
}

/// Where a value stands while walking a document.
#[derive(Default, Clone)]
struct Ctx {
    /// The key it stands under.
    key: Option<String>,
    /// Inside an app's payload (a JSON body, gRPC messages), where field names are the app's own.
    payload: bool,
    /// In an object that describes a person (has an email field, or stands under `user:`, `customer:`...).
    person: bool,
}

struct Pass<'a> {
    rules: &'a Rules,
    /// None: redact instead of seal, and no pseudonyms (reports, writes without a key).
    key: Option<&'a Key>,
    table: Option<&'a mut SealTable>,
    learned: &'a mut HashMap<String, String>,
    tally: &'a mut Tally,
    fresh: bool,
    /// Strings a project rule produced or kept: left alone by the built-in rules.
    done: HashSet<String>,
    error: Option<Error>,
    /// Scanning (`doppel scan`): credentials found in clear are listed here and left as they are.
    findings: Option<Vec<(String, String)>>,
}

impl Pass<'_> {
    /// What replaces `value` of `class`; the value itself when the class is skipped or (in a rewrite) it is
    /// personal data, which was pseudonymized when first written.
    fn apply(&mut self, action: Action, class: &str, value: &str) -> String {
        // A chain template stands for a value recorded (and sealed) in the test's `chain:` section.
        if value.is_empty()
            || self.rules.skip.iter().any(|s| s == class)
            || has_placeholder(value)
            || value.contains("{{")
        {
            return value.to_string();
        }
        match action {
            Action::Seal if self.findings.is_some() => {
                if !value.starts_with("!redacted ") {
                    self.findings.get_or_insert_default().push((class.to_string(), value.to_string()));
                }
                value.to_string()
            }
            Action::Seal => match (self.key, self.table.as_deref_mut()) {
                (Some(key), Some(table)) => match table.seal(key, class, value) {
                    Ok(id) => {
                        self.tally.count(true, class, value);
                        format!("{}{id}", seal::PREFIX)
                    }
                    Err(e) => {
                        self.error.get_or_insert(e);
                        value.to_string()
                    }
                },
                _ => format!("!redacted {class}"),
            },
            Action::Pseudonymize if !self.fresh => value.to_string(),
            Action::Pseudonymize => {
                let Some(key) = self.key else { return value.to_string() };
                if let Some(p) = self.learned.get(value) {
                    return p.clone();
                }
                self.tally.count(false, class, value);
                classify::pseudonym(&key.pseudonym, class, value)
            }
        }
    }

    /// `apply` for a value classified by where it stands: remembered, so it is replaced wherever else it
    /// appears later.
    fn apply_placed(&mut self, action: Action, class: &str, value: &str) -> String {
        let out = self.apply(action, class, value);
        if action == Action::Pseudonymize && out != value && value.chars().count() >= 3 {
            // The forms an app derives from a value it received (lower-cased, upper-cased, a slug) get the
            // same derivation of the pseudonym.
            for (from, to) in [
                (value.to_string(), out.clone()),
                (value.to_lowercase(), out.to_lowercase()),
                (value.to_uppercase(), out.to_uppercase()),
                (slug(value), slug(&out)),
            ] {
                if from.chars().count() >= 3 && from != to {
                    self.learned.entry(from).or_insert(to);
                }
            }
        }
        self.done.insert(out.clone());
        out
    }

    fn walk(&mut self, v: &mut Value, ctx: Ctx) {
        match v {
            Value::String(s) => {
                let new = self.string(s, &ctx);
                *s = new;
            }
            Value::Array(a) => {
                if ctx.key.as_deref() == Some("command") && !ctx.payload {
                    self.command(a);
                    return;
                }
                for x in a.iter_mut() {
                    self.walk(x, ctx.clone());
                }
            }
            Value::Object(o) => self.object(o, ctx),
            _ => {}
        }
    }

    fn object(&mut self, o: &mut Map<String, Value>, ctx: Ctx) {
        let person = ctx.payload
            && (o.keys().any(|k| k.to_ascii_lowercase().contains("email"))
                || ctx.key.as_deref().is_some_and(classify::is_person_key));
        let body_before = framed_body(o);
        for (k, child) in o.iter_mut() {
            let inner = Ctx { key: Some(k.clone()), payload: ctx.payload, person };
            match (k.as_str(), &mut *child) {
                ("headers" | "trailers", Value::Array(lines)) if !ctx.payload => {
                    for line in lines.iter_mut() {
                        if let Value::String(s) = line {
                            *s = self.header_line(s);
                        }
                    }
                }
                ("json", _) if ctx.key.as_deref() == Some("body") && !ctx.payload => {
                    self.project_paths(child);
                    self.walk(child, Ctx { key: None, payload: true, person: false });
                }
                ("messages", _) if !ctx.payload => self.walk(child, Ctx { key: None, payload: true, person: false }),
                ("target", Value::String(s)) if !ctx.payload => *s = self.target(s),
                ("text", Value::String(s)) if ctx.key.as_deref() == Some("body") && looks_like_form(s) => {
                    *s = self.form(s)
                }
                _ => self.walk(child, inner),
            }
        }
        fix_length(o, body_before);
    }

    /// A string standing under `ctx.key`.
    fn string(&mut self, s: &str, ctx: &Ctx) -> String {
        if self.done.contains(s) {
            return s.to_string();
        }
        if ctx.payload
            && let Some(k) = &ctx.key
        {
            if let Some((_, rule)) = self.rules.fields.iter().find(|(f, _)| f.eq_ignore_ascii_case(k)) {
                return match rule.action {
                    Some(a) => {
                        let class = rule.class.clone();
                        self.apply_placed(a, &class, s)
                    }
                    None => {
                        self.done.insert(s.to_string());
                        s.to_string()
                    }
                };
            }
            if let Some(c) = classify::field(k) {
                return self.apply_placed(c.action, c.name, s);
            }
            if ctx.person && k.eq_ignore_ascii_case("name") {
                return self.apply_placed(Action::Pseudonymize, "name", s);
            }
        }
        self.text(s)
    }

    /// Free text: project regexes, values sealed or learned before, then what shapes give away.
    fn text(&mut self, s: &str) -> String {
        if s.is_empty() || self.done.contains(s) || is_placeholder(s) {
            return s.to_string();
        }
        if let Some(p) = self.learned.get(s) {
            return p.clone();
        }
        let mut out = s.to_string();
        for i in 0..self.rules.regexes.len() {
            let (re, rule) = &self.rules.regexes[i];
            let (re, action, class) = (re.clone(), rule.action, rule.class.clone());
            let mut replaced = String::new();
            let mut last = 0;
            for m in re.find_iter(&out) {
                replaced.push_str(&out[last..m.start()]);
                replaced.push_str(&match action {
                    Some(a) => self.apply(a, &class, m.as_str()),
                    None => m.as_str().to_string(),
                });
                last = m.end();
            }
            if last > 0 {
                replaced.push_str(&out[last..]);
                self.done.insert(replaced.clone());
                return replaced;
            }
        }
        out = self.known_tokens(&out);
        let spans = classify::spans(&out, &self.rules.skip);
        if spans.is_empty() {
            return self.quoted_literals(out);
        }
        let mut replaced = String::with_capacity(out.len());
        let mut last = 0;
        for (r, c) in spans {
            if is_inside_placeholder(&out, r.start) {
                continue;
            }
            replaced.push_str(&out[last..r.start]);
            replaced.push_str(&self.apply(c.action, c.name, &out[r.clone()]));
            last = r.end;
        }
        replaced.push_str(&out[last..]);
        self.quoted_literals(replaced)
    }

    /// Tokens of `s` that are values sealed before (a token sent on to a dependency in a place no rule
    /// names): the same placeholder.
    fn known_tokens(&mut self, s: &str) -> String {
        let Some(table) = self.table.as_deref() else { return s.to_string() };
        if table.is_empty() {
            return s.to_string();
        }
        let token = |c: char| c.is_ascii_alphanumeric() || "._~+/-=".contains(c);
        let mut out = String::with_capacity(s.len());
        let mut rest = s;
        while let Some(start) = rest.find(token) {
            out.push_str(&rest[..start]);
            let len = rest[start..].find(|c: char| !token(c)).unwrap_or(rest.len() - start);
            let word = &rest[start..start + len];
            let bare = word.trim_end_matches('=');
            match table.id_of(word).or_else(|| table.id_of(bare)) {
                Some(id) if word.len() >= 6 => out.push_str(&format!("{}{id}", seal::PREFIX)),
                _ => out.push_str(word),
            }
            rest = &rest[start + len..];
        }
        out.push_str(rest);
        out
    }

    /// Text holding a value learned by its field as a whole word (`VALUES ('Ada Lovelace')`, a slug
    /// `ada-lovelace-x7f2`): its pseudonym there too.
    fn quoted_literals(&mut self, mut s: String) -> String {
        // Past a few hundred learned values, only whole strings are replaced (see `text`): a scan per value
        // would cost more than the recording.
        if self.learned.is_empty() || self.learned.len() > 512 {
            return s;
        }
        for (from, to) in self.learned.iter().filter(|(f, _)| f.len() >= 4) {
            if s.contains(from.as_str()) {
                s = replace_words(&s, from, to);
            }
        }
        s
    }

    /// `Name: value`: by the header's name, then as text.
    fn header_line(&mut self, line: &str) -> String {
        let Some((name, value)) = line.split_once(": ") else { return line.to_string() };
        if name.ends_with(':') || name.is_empty() {
            return line.to_string(); // `Name:: base64` (not text) or a pseudo-header's empty name
        }
        let lower = name.to_ascii_lowercase();
        if let Some((_, rule)) = self.rules.headers.iter().find(|(h, _)| *h == lower) {
            let (action, class) = (rule.action, rule.class.clone());
            let v = match action {
                Some(a) => self.apply(a, &class, value),
                None => value.to_string(),
            };
            return format!("{name}: {v}");
        }
        let v = match classify::header(name) {
            HeaderRule::Authorization => {
                let class = classify::authorization_class(value);
                self.apply(Action::Seal, class, value)
            }
            HeaderRule::Cookie => value
                .split("; ")
                .map(|pair| match pair.split_once('=') {
                    Some((n, v)) => format!("{n}={}", self.apply(Action::Seal, "cookie", v)),
                    None => pair.to_string(),
                })
                .collect::<Vec<_>>()
                .join("; "),
            HeaderRule::SetCookie => {
                let (first, attrs) = value.split_once(';').map(|(a, b)| (a, Some(b))).unwrap_or((value, None));
                let first = match first.split_once('=') {
                    Some((n, v)) => format!("{n}={}", self.apply(Action::Seal, "cookie", v)),
                    None => first.to_string(),
                };
                let attrs = attrs.map(|a| format!(";{}", self.text(a))).unwrap_or_default();
                format!("{first}{attrs}")
            }
            HeaderRule::Whole(c) => self.apply(c.action, c.name, value),
            HeaderRule::Text => self.text(value),
        };
        format!("{name}: {v}")
    }

    /// A request target: the path as text, the query as a form.
    fn target(&mut self, t: &str) -> String {
        match t.split_once('?') {
            Some((path, query)) => format!("{}?{}", self.text(path), self.form(query)),
            None => self.text(t),
        }
    }

    /// `a=1&password=x`: each value by its field name, else as text; a changed value is percent-encoded
    /// again, the others keep their bytes.
    fn form(&mut self, q: &str) -> String {
        q.split('&')
            .map(|pair| {
                let Some((k_raw, _)) = pair.split_once('=') else { return self.text(pair) };
                let Some((k, v)) = form_urlencoded::parse(pair.as_bytes()).next() else { return pair.to_string() };
                let ctx = Ctx { key: Some(k.into_owned()), payload: true, person: false };
                let new = self.string(&v, &ctx);
                if new == v {
                    pair.to_string()
                } else {
                    format!("{k_raw}={}", form_urlencoded::byte_serialize(new.as_bytes()).collect::<String>())
                }
            })
            .collect::<Vec<_>>()
            .join("&")
    }

    /// A command line (set.yaml) or a Redis command: `NAME=value` variables and `--flag value` arguments
    /// named like secrets are sealed, AUTH passwords too.
    fn command(&mut self, args: &mut [Value]) {
        let first = args.first().and_then(Value::as_str).map(str::to_ascii_uppercase);
        if first.as_deref() == Some("AUTH") {
            for a in args.iter_mut().skip(1).rev().take(1) {
                if let Value::String(s) = a {
                    *s = self.apply(Action::Seal, "password", s);
                }
            }
            return;
        }
        let mut secret_next = false;
        for a in args.iter_mut() {
            let Value::String(s) = a else { continue };
            if secret_next {
                *s = self.apply(Action::Seal, "secret", s);
                secret_next = false;
                continue;
            }
            if first.as_deref() == Some("HELLO") && s.eq_ignore_ascii_case("AUTH") {
                continue;
            }
            let flag = s.strip_prefix("--").or_else(|| s.strip_prefix('-'));
            match (flag, s.split_once('=')) {
                (Some(f), Some((name, v)))
                    if classify::field(name.trim_start_matches('-')).is_some_and(|c| c.action == Action::Seal) =>
                {
                    let _ = f;
                    let class = classify::field(name.trim_start_matches('-')).map(|c| c.name).unwrap_or("secret");
                    *s = format!("{name}={}", self.apply(Action::Seal, class, v));
                }
                (Some(f), None) if classify::field(f).is_some_and(|c| c.action == Action::Seal) => secret_next = true,
                (None, Some((name, v)))
                    if is_env_name(name) && classify::field(name).is_some_and(|c| c.action == Action::Seal) =>
                {
                    let class = classify::field(name).map(|c| c.name).unwrap_or("secret");
                    *s = format!("{name}={}", self.apply(Action::Seal, class, v));
                }
                _ => *s = self.text(s),
            }
        }
        // HELLO 3 AUTH user password: the password.
        if first.as_deref() == Some("HELLO") {
            let at = args.iter().position(|a| a.as_str().is_some_and(|s| s.eq_ignore_ascii_case("AUTH")));
            if let Some(i) = at
                && let Some(Value::String(p)) = args.get_mut(i + 2)
            {
                *p = self.apply(Action::Seal, "password", p);
            }
        }
    }

    /// Project JSONPath rules over a JSON body.
    fn project_paths(&mut self, json: &mut Value) {
        for i in 0..self.rules.paths.len() {
            let pointers: Vec<String> =
                self.rules.paths[i].0.query_located(json).locations().map(|l| l.to_json_pointer()).collect();
            let (action, class) = (self.rules.paths[i].1.action, self.rules.paths[i].1.class.clone());
            for p in pointers {
                let Some(Value::String(s)) = json.pointer_mut(&p) else { continue };
                let new = match action {
                    Some(a) => self.apply_placed(a, &class, s),
                    None => s.clone(),
                };
                self.done.insert(new.clone());
                *s = new;
            }
        }
    }
}

/// `text` with each occurrence of `from` that is not part of a longer word replaced by `to`.
fn replace_words(text: &str, from: &str, to: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut last = 0;
    for (at, _) in text.match_indices(from) {
        if at < last {
            continue;
        }
        let before = text[..at].chars().next_back();
        let after = text[at + from.len()..].chars().next();
        if before.is_some_and(char::is_alphanumeric) || after.is_some_and(char::is_alphanumeric) {
            continue;
        }
        out.push_str(&text[last..at]);
        out.push_str(to);
        last = at + from.len();
    }
    out.push_str(&text[last..]);
    out
}

/// `Ada Lovelace` as URL slugs write it: `ada-lovelace`.
fn slug(text: &str) -> String {
    let mut out = String::new();
    for c in text.chars() {
        if c.is_alphanumeric() {
            out.extend(c.to_lowercase());
        } else if !out.ends_with('-') && !out.is_empty() {
            out.push('-');
        }
    }
    out.trim_end_matches('-').to_string()
}

fn is_env_name(name: &str) -> bool {
    !name.is_empty() && name.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
}

fn is_inside_placeholder(text: &str, at: usize) -> bool {
    PLACEHOLDER.find_iter(text).any(|m| m.start() <= at && at < m.end())
}

/// `a=1&b=two`: a form or query string rather than prose.
fn looks_like_form(s: &str) -> bool {
    !s.is_empty()
        && !s.contains(char::is_whitespace)
        && !s.starts_with('{')
        && !s.starts_with('[')
        && s.split('&').all(|p| p.split_once('=').is_some_and(|(k, _)| !k.is_empty()))
}

#[cfg(test)]
mod tests;
