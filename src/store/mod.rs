//! The on-disk format: the only module that reads or writes test sets.
//!
//! ```text
//! doppel/                         (--path)
//!   test-set-0/
//!     set.yaml                    facts about the recording
//!     tests/get-api-users.yaml    one file per test case
//!     tests.journal               (while recording) tests appended as they complete, see `journal`
//!     mocks.yaml                  outbound exchanges, one YAML document each, appended as they complete
//!     bodies/                     bodies larger than 1 MiB, referenced from the YAML
//!   reports/                      one JSON report per `doppel test` run
//! doppel.yaml                     (project root) noise rules and defaults
//! ```
//! Tests and mocks are appended as they complete, in batches of whole documents each ended by the YAML
//! document-end marker `...`: a kill at any moment loses at most the exchanges in flight, and a document
//! cut short by a crash is recognised and dropped on load. The tests' journal becomes one file per test
//! when the recording ends (or on the next load after a kill).

pub(crate) mod body;
pub(crate) mod format;
pub(crate) mod journal;
mod reports;
mod spill;

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;

use serde::Serialize;
use serde::de::DeserializeOwned;

pub use body::Body;
pub use format::*;
pub(crate) use reports::write_report;
pub use spill::SpillBuffer;

use crate::error::{Error, Result};
use crate::privacy::Privacy;
use crate::protocols::Mock;

/// Parses YAML the way every doppel file is parsed: strict booleans, errors with line and column.
pub fn parse_yaml<T: DeserializeOwned>(text: &str, file: &Path, first_line: usize) -> Result<T> {
    let opts = serde_saphyr::options! { strict_booleans: true };
    serde_saphyr::from_str_with_options(text, opts).map_err(|e| {
        let line = e.location().map(|l| l.line() as usize + first_line - 1);
        let msg = e.to_string();
        // The library's first line already says "line L column C: ..."; keep only the message part.
        let first = msg.lines().next().unwrap_or("").trim_start_matches("error: ");
        let detail = first.split_once(": ").map(|(_, m)| m).unwrap_or(first);
        Error::input(format!("{}:{}: {}", file.display(), line.map(|l| l.to_string()).unwrap_or("?".into()), detail))
    })
}

/// Serializes to YAML with doppel's layout.
pub fn to_yaml<T: Serialize>(value: &T) -> Result<String> {
    serde_saphyr::to_string(value).map_err(|e| Error::internal(format!("cannot write YAML: {e}")))
}

/// What every file says about itself before its protocol's part is read.
#[derive(serde::Deserialize)]
struct Preamble {
    version: Option<u32>,
    #[serde(default)]
    kind: String,
}

/// Reads the version (checked first, so a newer format gets a clear message) and the kind of a document.
fn preamble(text: &str, file: &Path, first_line: usize) -> Result<String> {
    let v: Preamble = parse_yaml(text, file, first_line)?;
    match v.version {
        Some(FORMAT_VERSION) => Ok(()),
        Some(n) => Err(Error::input(format!(
            "{}:{first_line}: format version {n} is not known to this doppel (it reads version {FORMAT_VERSION}); \
             upgrade doppel or re-record",
            file.display()
        ))),
        None => Err(Error::input(format!("{}:{first_line}: missing `version` field", file.display()))),
    }
    .map(|()| v.kind)
}

fn check_version(text: &str, file: &Path, first_line: usize) -> Result<()> {
    preamble(text, file, first_line).map(|_| ())
}

/// Reads a versioned YAML file: version checked first, so a newer format gets a clear message.
fn read_versioned<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let text = fs::read_to_string(path).map_err(|e| Error::input(format!("{}: {e}", path.display())))?;
    check_version(&text, path, 1)?;
    parse_yaml(&text, path, 1)
}

pub fn now_rfc3339() -> String {
    format_time(time::OffsetDateTime::now_utc())
}

pub fn format_time(t: time::OffsetDateTime) -> String {
    let fmt = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");
    t.to_offset(time::UtcOffset::UTC).format(&fmt).unwrap_or_default()
}

/// Milliseconds since the epoch of a time written by `format_time`.
pub fn parse_time_ms(text: &str) -> Option<f64> {
    let t = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()?;
    Some(t.unix_timestamp_nanos() as f64 / 1_000_000.0)
}

/// A project's recordings directory.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
    /// What is sealed and pseudonymized on the way to disk, and opened on the way back.
    privacy: Arc<Privacy>,
}

/// Everything of one test set, loaded and checked.
#[derive(Debug, Clone)]
pub struct LoadedSet {
    pub name: String,
    pub dir: PathBuf,
    pub meta: SetMeta,
    /// Test cases in recorded order, each with its file.
    pub tests: Vec<(PathBuf, TestCase)>,
    pub mocks: Vec<Mock>,
    /// Problems that did not stop loading (a mock cut short by a crash).
    pub warnings: Vec<String>,
}

impl Store {
    /// Takes `privacy` for everything this store writes and reads.
    pub fn with_privacy(mut self, privacy: Arc<Privacy>) -> Store {
        self.privacy = privacy;
        self
    }

    pub fn privacy(&self) -> &Arc<Privacy> {
        &self.privacy
    }

    pub fn new(root: impl Into<PathBuf>) -> Store {
        Store { root: root.into(), privacy: Arc::new(Privacy::off()) }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Test set names, in numeric order for `test-set-N`, then by name.
    pub fn list_sets(&self) -> Result<Vec<String>> {
        let entries = match fs::read_dir(&self.root) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::input(format!("{}: {e}", self.root.display()))),
        };
        let mut sets: Vec<String> = entries
            .filter_map(|e| e.ok())
            .filter(|e| e.path().join("set.yaml").is_file())
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        sets.sort_by_key(|n| (n.strip_prefix("test-set-").and_then(|x| x.parse::<u64>().ok()), n.clone()));
        Ok(sets)
    }

    /// The sets a command works on: those named (`--test-set`), else every set; an error when there are none.
    pub fn chosen_sets(&self, named: &[String]) -> Result<Vec<String>> {
        let names = if named.is_empty() { self.list_sets()? } else { named.to_vec() };
        if names.is_empty() {
            return Err(Error::input(format!(
                "no test sets in {} (record some with `doppel record -- <command>`)",
                self.root.display()
            )));
        }
        Ok(names)
    }

    /// Creates a new test set directory; never reuses an existing one.
    pub fn create_set(&self, name: Option<&str>, meta: &SetMeta) -> Result<SetWriter> {
        fs::create_dir_all(&self.root)
            .map_err(|e| Error::input(format!("cannot create {}: {e}", self.root.display())))?;
        let name = match name {
            Some(n) => {
                if n.is_empty() || n.contains('/') || n.starts_with('.') || n == "reports" {
                    return Err(Error::input(format!("{n:?} is not a usable test set name")));
                }
                n.to_string()
            }
            None => {
                let existing: BTreeSet<String> = fs::read_dir(&self.root)
                    .map_err(|e| Error::input(format!("{}: {e}", self.root.display())))?
                    .filter_map(|e| e.ok()?.file_name().into_string().ok())
                    .collect();
                (0..).map(|i| format!("test-set-{i}")).find(|n| !existing.contains(n)).unwrap_or_default()
            }
        };
        let dir = self.root.join(&name);
        match fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(Error::input(format!(
                    "test set {} already exists; doppel never overwrites a recording (choose another --test-set)",
                    dir.display()
                )));
            }
            Err(e) => return Err(Error::input(format!("cannot create {}: {e}", dir.display()))),
        }
        fs::create_dir_all(dir.join("tests"))
            .map_err(|e| Error::input(format!("cannot create {}: {e}", dir.join("tests").display())))?;
        write_atomic(&dir.join("set.yaml"), self.privacy.to_yaml(&dir, meta, None, true)?.as_bytes())?;
        SetWriter::start(name, dir, self.privacy.clone())
    }

    /// Removes a set whose recording failed before anything was recorded, so `doppel test` never runs it.
    pub fn discard_set(&self, writer: SetWriter) -> Result<()> {
        let dir = writer.dir.clone();
        let _ = writer.finish();
        fs::remove_dir_all(&dir)
            .map_err(|e| Error::io(format!("cannot remove the empty test set {}: {e}", dir.display())))
    }

    /// Writes the app ports a recording exposed into its `set.yaml`.
    pub fn set_app_ports(&self, set: &str, ports: Vec<u16>) -> Result<()> {
        let path = self.root.join(set).join("set.yaml");
        let mut meta: SetMeta = read_versioned(&path)?;
        meta.app_ports = ports;
        write_atomic(&path, self.privacy.to_yaml(&self.root.join(set), &meta, None, false)?.as_bytes())
            .map_err(|e| Error::io(format!("the app ports were not written to {}: {e}", path.display())))
    }

    pub fn load_set(&self, name: &str) -> Result<LoadedSet> {
        let dir = self.root.join(name);
        if !dir.join("set.yaml").is_file() {
            let known = self.list_sets()?;
            return Err(Error::input(format!(
                "no test set {name:?} in {} (known: {})",
                self.root.display(),
                if known.is_empty() { "none".to_string() } else { known.join(", ") }
            )));
        }
        let meta: SetMeta = read_versioned(&dir.join("set.yaml"))?;
        let mut tests = Vec::new();
        let mut warnings = Vec::new();
        // A recording killed before its end left its tests in the journal: complete it first.
        let mut unsplit = Vec::new();
        match journal::materialize(&dir) {
            Ok(journal::Outcome::Done(w)) => warnings.extend(w),
            Ok(journal::Outcome::Live) => {
                warnings.push(format!(
                    "{}: a recording is still writing this set; its tests so far are read from {}",
                    dir.display(),
                    journal::FILE
                ));
                unsplit = journal::read_in_place(&dir)?;
            }
            Err(e) => {
                warnings.push(format!("{e}; its tests are read from the journal"));
                unsplit = journal::read_in_place(&dir)?;
            }
        }
        let tests_dir = dir.join("tests");
        if tests_dir.is_dir() {
            let mut files: Vec<PathBuf> = fs::read_dir(&tests_dir)
                .map_err(|e| Error::input(format!("{}: {e}", tests_dir.display())))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
                .collect();
            files.sort();
            files.retain(|f| !unsplit.iter().any(|(p, _)| p == f));
            for f in files {
                let text = fs::read_to_string(&f).map_err(|e| Error::input(format!("{}: {e}", f.display())))?;
                let t = parse_test(&text, &f)?;
                let kind = t.kind.clone();
                tests.push((f, self.privacy.open(&dir, t, Some(&kind))));
            }
        }
        for (f, text) in unsplit {
            let t = parse_test(&text, &dir.join(journal::FILE))?;
            let kind = t.kind.clone();
            tests.push((f, self.privacy.open(&dir, t, Some(&kind))));
        }
        tests.sort_by(|a, b| a.1.recorded_at.cmp(&b.1.recorded_at).then(a.0.cmp(&b.0)));
        let (mocks, mock_warnings) = load_mocks(&dir.join("mocks.yaml"))?;
        let mocks = mocks.into_iter().map(|m| self.privacy.open(&dir, m, None)).collect();
        warnings.extend(mock_warnings);
        if let Some(why) = self.privacy.closed(&dir) {
            warnings.push(format!(
                "the sealed values of this set stay placeholders ({why}); tests that need them fail and say so"
            ));
        }
        Ok(LoadedSet { name: name.to_string(), dir, meta, tests, mocks, warnings })
    }

    /// Loads `doppel.yaml` from a project directory; a missing file is an empty config.
    pub fn load_config(path: &Path) -> Result<Config> {
        match fs::read_to_string(path) {
            Ok(text) => {
                let cfg: Config = parse_yaml(&text, path, 1)?;
                if let Some(v) = cfg.version.filter(|v| *v != FORMAT_VERSION) {
                    return Err(Error::input(format!(
                        "{}: format version {v} is not known to this doppel (it reads {FORMAT_VERSION})",
                        path.display()
                    )));
                }
                Ok(cfg)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Config::default()),
            Err(e) => Err(Error::input(format!("{}: {e}", path.display()))),
        }
    }

    pub fn reports_dir(&self) -> PathBuf {
        self.root.join("reports")
    }

    /// Rewrites one test file (used when doppel adds learned rules).
    pub fn rewrite_test(&self, path: &Path, test: &TestCase) -> Result<()> {
        // tests/<name>.yaml of the set directory.
        let dir = path.parent().and_then(Path::parent).unwrap_or(Path::new("."));
        write_atomic(path, self.privacy.to_yaml(dir, test, Some(&test.kind), false)?.as_bytes())
    }

    /// Removes one test file (dedup). Mocks and bodies are never removed.
    pub fn remove_test(path: &Path) -> Result<()> {
        fs::remove_file(path).map_err(|e| Error::io(format!("cannot remove {}: {e}", path.display())))
    }

    /// Takes the mocks recorded into `from` (a set written by a re-recording) into the set at `dir`:
    /// replacing its mocks, or appended after them with ids following theirs. The bodies written with them
    /// move along; nothing is written when one of their names is taken.
    pub fn adopt_mocks(&self, dir: &Path, from: &Path, replace: bool) -> Result<usize> {
        let (mocks, _) = load_mocks(&from.join("mocks.yaml"))?;
        let mut mocks: Vec<Mock> = mocks.into_iter().map(|m| self.privacy.open(from, m, None)).collect();
        move_bodies(&from.join("bodies"), &dir.join("bodies"))?;
        let path = dir.join("mocks.yaml");
        let mut text = String::new();
        if !replace {
            let (old, _) = load_mocks(&path)?;
            let next = old.iter().map(|m| m.id).max().unwrap_or(0) + 1;
            for (k, m) in mocks.iter_mut().enumerate() {
                m.id = next + k as u64;
            }
            text = fs::read_to_string(&path).unwrap_or_default();
            if !text.is_empty() && !text.ends_with('\n') {
                text.push('\n');
            }
        }
        for m in &mocks {
            text.push_str(&format!("---\n{}...\n", self.privacy.to_yaml(dir, m, None, false)?));
        }
        write_atomic(&path, text.as_bytes())?;
        Ok(mocks.len())
    }
}

/// Moves every file of `from` into `to`, refusing (before moving anything) when a name is taken.
fn move_bodies(from: &Path, to: &Path) -> Result<()> {
    let entries: Vec<PathBuf> = match fs::read_dir(from) {
        Ok(e) => e.filter_map(|e| e.ok().map(|e| e.path())).collect(),
        Err(_) => return Ok(()),
    };
    if entries.is_empty() {
        return Ok(());
    }
    fs::create_dir_all(to).map_err(|e| Error::io(format!("cannot create {}: {e}", to.display())))?;
    for e in &entries {
        if let Some(name) = e.file_name()
            && to.join(name).exists()
        {
            return Err(Error::io(format!("{} already exists; nothing was written", to.join(name).display())));
        }
    }
    for e in &entries {
        if let Some(name) = e.file_name() {
            let dst = to.join(name);
            if fs::rename(e, &dst).is_err() {
                fs::copy(e, &dst).map_err(|err| Error::io(format!("cannot move {}: {err}", e.display())))?;
            }
        }
    }
    Ok(())
}

impl LoadedSet {
    /// The bytes of a body, reading file bodies from the set directory.
    pub fn body_bytes(&self, body: &Option<Body>) -> Result<Vec<u8>> {
        body_bytes(&self.dir, body)
    }
}

pub fn body_bytes(dir: &Path, body: &Option<Body>) -> Result<Vec<u8>> {
    let Some(b) = body else { return Ok(Vec::new()) };
    if let Some(bytes) = b.inline_bytes()? {
        return Ok(bytes);
    }
    let file = b.file.as_deref().unwrap_or_default();
    let path = dir.join(file);
    if file.contains("..") || file.starts_with('/') {
        return Err(Error::input(format!("body file {file:?} must stay inside {}", dir.display())));
    }
    fs::read(&path).map_err(|e| Error::input(format!("body file {}: {e}", path.display())))
}

/// Parses and checks the text of one test file (`path` names it in errors).
pub fn parse_test(text: &str, path: &Path) -> Result<TestCase> {
    let kind = preamble(text, path, 1)?;
    if !crate::protocols::TEST_KINDS.contains(&kind.as_str()) {
        return Err(Error::input(format!("{}: unknown test kind {kind:?}", path.display())));
    }
    let t: TestCase = format::with_kind(&kind, || parse_yaml(text, path, 1))?;
    if let Some((request, response)) = t.http() {
        for b in [&request.body, &response.body].into_iter().flatten() {
            b.validate().map_err(|e| Error::input(format!("{}: {e}", path.display())))?;
        }
    }
    Ok(t)
}

/// Splits `mocks.yaml` into documents, each with its first line number, and parses them.
fn load_mocks(path: &Path) -> Result<(Vec<Mock>, Vec<String>)> {
    let text = match fs::read(path) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), Vec::new())),
        Err(e) => return Err(Error::input(format!("{}: {e}", path.display()))),
    };
    parse_mocks(&text, path)
}

/// Parses the text of a `mocks.yaml` (`path` names it in errors): the mocks, and warnings for a last
/// document cut short.
pub fn parse_mocks(text: &str, path: &Path) -> Result<(Vec<Mock>, Vec<String>)> {
    let mut docs: Vec<(usize, String, bool)> = Vec::new(); // (first line, text, ended with `...`)
    let mut current: Option<(usize, String)> = None;
    for (i, line) in text.split_inclusive('\n').enumerate() {
        let bare = line.trim_end();
        if bare == "---" {
            if let Some((start, doc)) = current.take() {
                docs.push((start, doc, false));
            }
            current = Some((i + 2, String::new()));
        } else if bare == "..." && line.ends_with('\n') {
            if let Some((start, doc)) = current.take() {
                docs.push((start, doc, true));
            }
        } else if let Some((_, doc)) = current.as_mut() {
            doc.push_str(line);
        } else if !bare.is_empty() && !bare.starts_with('#') {
            return Err(Error::input(format!("{}:{}: text outside a `---` document", path.display(), i + 1)));
        }
    }
    if let Some((start, doc)) = current.take() {
        docs.push((start, doc, false));
    }
    let mut mocks = Vec::new();
    let mut warnings = Vec::new();
    let last = docs.len().saturating_sub(1);
    for (n, (start, doc, complete)) in docs.into_iter().enumerate() {
        if !complete && n == last {
            warnings.push(format!(
                "{}:{}: the last mock was cut short (doppel was stopped while writing it); it is ignored",
                path.display(),
                start
            ));
            continue;
        }
        check_version(&doc, path, start)?;
        let mock: Mock = parse_yaml(&doc, path, start)?;
        mock.validate().map_err(|e| Error::input(format!("{}:{start}: {e}", path.display())))?;
        mocks.push(mock);
    }
    Ok((mocks, warnings))
}

fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let io = |e: std::io::Error| Error::io(format!("cannot write {}: {e}", path.display()));
    let mut f = File::create(&tmp).map_err(io)?;
    f.write_all(data).map_err(io)?;
    drop(f);
    fs::rename(&tmp, path).map_err(io)
}

/// What the recorder hands to the store.
pub enum Record {
    Test(Box<TestCase>),
    Mock(Box<Mock>),
}

/// Messages to the writer thread: records, storage failures met elsewhere, and the end of the recording.
enum ToWriter {
    Record(Record),
    /// An inbound request seen whole, before the app's calls to its dependencies are written: its fields
    /// tell the privacy rules which values are names, phones, passwords, so those mocks get the same
    /// pseudonyms and placeholders.
    Learn(serde_json::Value),
    Error(String),
    Stop,
}

/// Counts of what was written, per kind.
#[derive(Debug, Default, Clone)]
pub struct WriteSummary {
    pub tests: usize,
    pub mocks_by_kind: std::collections::BTreeMap<String, usize>,
    /// Exchanges that could not be stored.
    pub failed: usize,
    /// The first storage errors, word for word.
    pub errors: Vec<String>,
    /// Connections whose parser gave up, so the rest of each was recorded as opaque bytes.
    pub degraded: usize,
    /// The first of those reasons (`connection N (dest): why`).
    pub degraded_reasons: Vec<String>,
}

/// Writes one test set as exchanges complete, on its own thread so that proxies never wait on the disk.
pub struct SetWriter {
    pub name: String,
    pub dir: PathBuf,
    tx: Option<mpsc::Sender<ToWriter>>,
    thread: Option<thread::JoinHandle<()>>,
    summary: Arc<Mutex<WriteSummary>>,
    next_mock_id: Arc<std::sync::atomic::AtomicU64>,
    next_blob: Arc<std::sync::atomic::AtomicU64>,
    learns: bool,
}

/// A cheap handle the proxies use to submit records.
#[derive(Clone)]
pub struct RecordSink {
    tx: mpsc::Sender<ToWriter>,
    /// Whether the writer wants `learn` (privacy on).
    learns: bool,
    dir: PathBuf,
    next_mock_id: Arc<std::sync::atomic::AtomicU64>,
    next_blob: Arc<std::sync::atomic::AtomicU64>,
}

impl RecordSink {
    pub fn submit(&self, record: Record) {
        // After the writer stopped, a late record belongs to an exchange that was still in flight at the end.
        let _ = self.tx.send(ToWriter::Record(record));
    }

    /// A recorded exchange could not be stored (a body could not be written to disk, say): counted and shown
    /// in the summary.
    pub fn report_error(&self, error: String) {
        let _ = self.tx.send(ToWriter::Error(error));
    }

    /// Shows the writer an inbound request as soon as it is whole (see `ToWriter::Learn`).
    pub fn learn(&self, request: impl FnOnce() -> serde_json::Value) {
        if self.learns {
            let _ = self.tx.send(ToWriter::Learn(request()));
        }
    }

    pub fn next_mock_id(&self) -> u64 {
        self.next_mock_id.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    /// A body buffer that moves to `bodies/` when it grows past the inline limit.
    pub fn spill_buffer(&self) -> SpillBuffer {
        SpillBuffer::new(self.dir.join("bodies"), self.next_blob.clone())
    }
}

impl RecordSink {
    /// A sink whose records go nowhere (fuzzing): bodies that spill go to a scratch directory under `dir`.
    pub(crate) fn discard(dir: PathBuf) -> RecordSink {
        let (tx, _) = mpsc::channel();
        RecordSink { tx, learns: false, dir, next_mock_id: Arc::new(1.into()), next_blob: Arc::new(1.into()) }
    }
}

/// Records kept in memory, for observer tests: what an observer submitted, read back the way the store
/// would read it from disk (each record written as YAML and parsed again), with spilled bodies in a
/// temporary directory.
#[cfg(test)]
pub(crate) struct MemorySink {
    rx: mpsc::Receiver<ToWriter>,
    sink: RecordSink,
    /// Where spilled bodies go, removed with the sink.
    _bodies: tempfile::TempDir,
}

#[cfg(test)]
impl MemorySink {
    pub(crate) fn new() -> MemorySink {
        let dir = tempfile::tempdir().expect("a temporary directory for test bodies");
        let (tx, rx) = mpsc::channel();
        let sink = RecordSink {
            tx,
            learns: false,
            dir: dir.path().to_path_buf(),
            next_mock_id: Arc::new(1.into()),
            next_blob: Arc::new(1.into()),
        };
        MemorySink { rx, sink, _bodies: dir }
    }

    /// The context of connection 1 in `role`, opened now.
    pub(crate) fn ctx(&self, role: crate::protocols::Role) -> crate::protocols::RecordCtx {
        crate::protocols::RecordCtx {
            sink: self.sink.clone(),
            role,
            connection: 1,
            opened_at: std::time::SystemTime::now(),
            opened: std::time::Instant::now(),
        }
    }

    fn records(&self) -> Vec<Record> {
        self.rx.try_iter().filter_map(|m| if let ToWriter::Record(r) = m { Some(r) } else { None }).collect()
    }

    /// The mocks submitted since the last call, each through YAML and back.
    pub(crate) fn mocks(&self) -> Vec<Mock> {
        let mut text = String::new();
        for r in self.records() {
            if let Record::Mock(m) = r {
                text.push_str(&format!("---\n{}...\n", to_yaml(&m).expect("a mock serializes")));
            }
        }
        parse_mocks(&text, Path::new("memory/mocks.yaml")).expect("written mocks parse again").0
    }

    /// The tests submitted since the last call, each through YAML and back.
    pub(crate) fn tests(&self) -> Vec<TestCase> {
        self.records()
            .into_iter()
            .filter_map(|r| if let Record::Test(t) = r { Some(t) } else { None })
            .map(|t| {
                parse_test(&to_yaml(&t).expect("a test serializes"), Path::new("memory/test.yaml")).expect("parses")
            })
            .collect()
    }
}

impl SetWriter {
    fn start(name: String, dir: PathBuf, privacy: Arc<Privacy>) -> Result<SetWriter> {
        let (tx, rx) = mpsc::channel::<ToWriter>();
        let summary = Arc::new(Mutex::new(WriteSummary::default()));
        let sum = summary.clone();
        let set_dir = dir.clone();
        let learns = privacy.is_on();
        let thread = thread::Builder::new()
            .name("doppel-store".into())
            .spawn(move || writer_loop(rx, &set_dir, &sum, &privacy))
            .map_err(|e| Error::internal(format!("cannot start the store writer: {e}")))?;
        Ok(SetWriter {
            name,
            dir,
            tx: Some(tx),
            thread: Some(thread),
            summary,
            next_mock_id: Arc::new(1.into()),
            next_blob: Arc::new(1.into()),
            learns,
        })
    }

    pub fn sink(&self) -> RecordSink {
        RecordSink {
            tx: self.tx.clone().unwrap_or_else(|| mpsc::channel().0),
            learns: self.learns,
            dir: self.dir.clone(),
            next_mock_id: self.next_mock_id.clone(),
            next_blob: self.next_blob.clone(),
        }
    }

    /// Waits until everything submitted so far is on disk; later submissions are dropped.
    pub fn finish(mut self) -> WriteSummary {
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(ToWriter::Stop);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.summary.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

/// Documents waiting to be appended to one file, with one write per batch (whole documents only, so a
/// kill leaves complete documents and at most one detectably cut last one).
struct Appender {
    path: PathBuf,
    /// Hold the file's lock while open (the tests' journal: see `journal::open_for_writing`).
    locked: bool,
    file: Option<File>,
    pending: String,
    /// What each pending document counts as in the summary: a mock kind, or None for a test.
    kinds: Vec<Option<String>>,
}

impl Appender {
    fn new(path: PathBuf, locked: bool) -> Appender {
        Appender { path, locked, file: None, pending: String::new(), kinds: Vec::new() }
    }

    fn push(&mut self, document: &str, kind: Option<String>) {
        self.pending.push_str(document);
        self.kinds.push(kind);
    }

    fn flush(&mut self, summary: &Mutex<WriteSummary>) {
        if self.pending.is_empty() {
            return;
        }
        let path = &self.path;
        let file = match &mut self.file {
            Some(f) => Ok(f),
            None => if self.locked {
                journal::open_for_writing(path)
            } else {
                OpenOptions::new().create(true).append(true).open(path)
            }
            .map(|f| self.file.insert(f))
            .map_err(|e| Error::io(format!("cannot open {}: {e}", path.display()))),
        };
        let written = file.and_then(|f| {
            f.write_all(self.pending.as_bytes()).map_err(|e| Error::io(format!("cannot write {}: {e}", path.display())))
        });
        match written {
            Ok(()) => {
                if let Ok(mut s) = summary.lock() {
                    for k in self.kinds.drain(..) {
                        match k {
                            Some(kind) => *s.mocks_by_kind.entry(kind).or_default() += 1,
                            None => s.tests += 1,
                        }
                    }
                }
            }
            // Every document of the batch is lost: each counts as a failed exchange.
            Err(e) => {
                for _ in self.kinds.drain(..) {
                    note_error(summary, e.to_string());
                }
            }
        }
        self.pending.clear();
    }
}

fn writer_loop(rx: mpsc::Receiver<ToWriter>, dir: &Path, summary: &Mutex<WriteSummary>, privacy: &Privacy) {
    let mut names: std::collections::HashSet<String> = std::collections::HashSet::new();
    // Next suffix to try per base name: keeps naming O(1) when thousands of tests share a path.
    let mut next_suffix: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    let mut tests = Appender::new(dir.join(journal::FILE), true);
    let mut mocks = Appender::new(dir.join("mocks.yaml"), false);
    let mut stop = false;
    while !stop {
        // Block for the first message, then take whatever else is already queued (bounded).
        let Ok(first) = rx.recv() else { break };
        let mut batch = vec![first];
        while batch.len() < 512 {
            match rx.try_recv() {
                Ok(m) => batch.push(m),
                Err(_) => break,
            }
        }
        for msg in batch {
            let record = match msg {
                ToWriter::Record(r) => r,
                ToWriter::Error(e) => {
                    note_error(summary, e);
                    continue;
                }
                ToWriter::Learn(request) => {
                    if let Err(e) = privacy.learn(dir, request) {
                        note_error(summary, e.to_string());
                    }
                    continue;
                }
                ToWriter::Stop => {
                    stop = true;
                    break;
                }
            };
            match record {
                Record::Test(mut test) => {
                    let base = match test.http() {
                        Some((request, _)) => slug(&request.method, &request.target),
                        None => slug(&test.kind, "/"),
                    };
                    let counter = next_suffix.entry(base.clone()).or_insert(1);
                    let name = loop {
                        let candidate = if *counter == 1 { base.clone() } else { format!("{base}-{counter}") };
                        *counter += 1;
                        if !names.contains(&candidate) {
                            break candidate;
                        }
                    };
                    names.insert(name.clone());
                    test.name = name.clone();
                    match privacy.to_yaml(dir, &*test, Some(&test.kind), true) {
                        Ok(y) => tests.push(&journal::document(&format!("{name}.yaml"), &y), None),
                        Err(e) => note_error(summary, e.to_string()),
                    }
                }
                Record::Mock(mock) => match privacy.to_yaml(dir, &*mock, None, true) {
                    Ok(y) => {
                        note_degraded(summary, &mock);
                        mocks.push(&format!("---\n{y}...\n"), Some(mock.kind.clone()))
                    }
                    Err(e) => note_error(summary, e.to_string()),
                },
            }
        }
        tests.flush(summary);
        mocks.flush(summary);
    }
    drop(tests);
    // The recording is over: one file per test.
    if let Err(e) = journal::materialize(dir) {
        note_error(summary, format!("{e} (the tests stay in {}; the next load completes them)", journal::FILE));
    }
}

/// Counts a connection that fell back to opaque bytes after its parser gave up (the proxy writes why in the
/// mock's note), so the record summary says so and not only the file.
fn note_degraded(summary: &Mutex<WriteSummary>, mock: &crate::protocols::Mock) {
    let Some(note) = mock.tcp.as_ref().and_then(|t| t.note.as_deref()) else { return };
    if !note.starts_with(crate::protocols::tcp::GAVE_UP) {
        return;
    }
    if let Ok(mut s) = summary.lock() {
        s.degraded += 1;
        if s.degraded_reasons.len() < 3 {
            s.degraded_reasons.push(format!("connection {} ({}): {note}", mock.connection, mock.dest));
        }
    }
}

/// Counts a storage failure; the first few are printed as they happen, all are in the summary.
fn note_error(summary: &Mutex<WriteSummary>, error: String) {
    if let Ok(mut s) = summary.lock() {
        s.failed += 1;
        if s.errors.len() < 5 {
            eprintln!("doppel: {error}");
            s.errors.push(error);
        }
    }
}

/// `POST /api/users/42?x=1` -> `post-api-users-42`.
pub fn slug(method: &str, target: &str) -> String {
    let path = target.split(['?', '#']).next().unwrap_or("");
    let mut out = method.to_ascii_lowercase();
    let mut dash = true;
    for c in path.chars() {
        if c.is_ascii_alphanumeric() {
            if dash {
                out.push('-');
                dash = false;
            }
            out.push(c.to_ascii_lowercase());
        } else {
            dash = true;
        }
        if out.len() > 80 {
            break;
        }
    }
    if out == method.to_ascii_lowercase() {
        out.push_str("-root");
    }
    out
}

/// A body as pieces of at most 64 KiB, reading file bodies as it goes (never the whole file at once).
pub fn body_pieces(
    dir: &Path,
    body: &Option<Body>,
) -> Result<Box<dyn Iterator<Item = std::io::Result<Vec<u8>>> + Send>> {
    let Some(b) = body else { return Ok(Box::new(std::iter::empty())) };
    if let Some(bytes) = b.inline_bytes()? {
        return Ok(Box::new(std::iter::once(Ok(bytes))));
    }
    let file = b.file.as_deref().unwrap_or_default();
    if file.contains("..") || file.starts_with('/') {
        return Err(Error::input(format!("body file {file:?} must stay inside {}", dir.display())));
    }
    let path = dir.join(file);
    let mut f = File::open(&path).map_err(|e| Error::input(format!("body file {}: {e}", path.display())))?;
    Ok(Box::new(std::iter::from_fn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        match std::io::Read::read(&mut f, &mut buf) {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some(Ok(buf))
            }
            Err(e) => Some(Err(e)),
        }
    })))
}

/// A private scratch directory for one run (`what`: replay, load, ...), for response bodies too large to
/// hold in memory; created fresh (mode 0700, a name nobody can guess) and removed when dropped.
pub(crate) fn scratch(what: &str) -> Result<tempfile::TempDir> {
    tempfile::Builder::new().prefix(&format!("doppel-{what}-")).tempdir().map_err(|e| {
        Error::env(format!("cannot create a scratch directory in {}: {e}", std::env::temp_dir().display()))
    })
}

/// A body file (of a test set, or a response spilled while replaying) to read as a stream, with its length.
pub(crate) fn open_body_file(path: &Path) -> Result<(File, u64)> {
    let io = |e: std::io::Error| Error::io(format!("cannot read body file {}: {e}", path.display()));
    let f = File::open(path).map_err(io)?;
    let len = f.metadata().map_err(io)?.len();
    Ok((f, len))
}

/// Size of a body in bytes.
pub fn body_len(body: &Option<Body>) -> u64 {
    match body {
        None => 0,
        Some(b) => b.size.unwrap_or_else(|| b.inline_bytes().ok().flatten().map(|v| v.len() as u64).unwrap_or(0)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_are_readable() {
        assert_eq!(slug("GET", "/api/users/42?x=1"), "get-api-users-42");
        assert_eq!(slug("POST", "/"), "post-root");
        assert_eq!(slug("GET", "/a//b.json"), "get-a-b-json");
    }

    #[test]
    fn truncated_last_mock_is_dropped_and_malformed_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("mocks.yaml");
        let good = "---\nversion: 1\nid: 1\nkind: tcp\ndest: 1.2.3.4:5\nstarted_at: x\ntcp:\n  chunks: []\n...\n";
        fs::write(&p, format!("{good}---\nversion: 1\nid: 2\nki")).unwrap();
        let (m, w) = load_mocks(&p).unwrap();
        assert_eq!(m.len(), 1);
        assert_eq!(w.len(), 1);
        fs::write(&p, format!("{good}---\nversion: 1\nid: two\n...\n{good}")).unwrap();
        let err = load_mocks(&p).unwrap_err().to_string();
        assert!(err.contains("mocks.yaml:12:"), "{err}");
        fs::write(&p, good.replace("version: 1", "version: 9")).unwrap();
        let err = load_mocks(&p).unwrap_err().to_string();
        assert!(err.contains("format version 9"), "{err}");
    }
}
