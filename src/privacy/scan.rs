//! `doppel scan PATH`: finds credentials left in clear in recordings (for pre-commit hooks and CI), by the
//! rules a recording applies. YAML and JSON files are read as documents, so a value is judged by where it
//! stands exactly as when it was written; other text files (bodies) by the shapes of credentials.

use std::fs;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::Privacy;
use crate::error::{Error, Result};

/// One value in clear.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub file: PathBuf,
    pub line: usize,
    pub class: String,
    /// The value cut to a few characters, so the report is not itself a leak.
    pub hint: String,
}

/// Every file below `path` (or `path` itself), in name order.
fn files(path: &Path) -> Result<Vec<PathBuf>> {
    let meta = fs::symlink_metadata(path).map_err(|e| Error::input(format!("{}: {e}", path.display())))?;
    if !meta.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut out = Vec::new();
    let mut stack = vec![path.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = fs::read_dir(&dir).map_err(|e| Error::input(format!("{}: {e}", dir.display())))?;
        for e in entries.flatten() {
            let p = e.path();
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(p),
                Ok(t) if t.is_file() => out.push(p),
                _ => {}
            }
        }
    }
    out.sort();
    Ok(out)
}

fn hint(value: &str) -> String {
    let shown: String = value.chars().take(4).collect();
    format!("{shown}… ({} chars)", value.chars().count())
}

/// The line of `text` (from `first`) where `value` first stands, or `first`.
fn line_of(text: &str, value: &str, first: usize) -> usize {
    let probe: String = value.chars().take(40).collect();
    text.find(&probe).map(|at| first + text[..at].matches('\n').count()).unwrap_or(first)
}

/// The YAML documents of a file, each with its first line (`---` separated, `...` ended).
fn documents(text: &str) -> Vec<(usize, String)> {
    let mut docs = Vec::new();
    let mut current = (1, String::new());
    for (i, line) in text.split_inclusive('\n').enumerate() {
        let bare = line.trim_end();
        if bare == "---" || bare == "..." {
            if !current.1.trim().is_empty() {
                docs.push(std::mem::take(&mut current));
            }
            current = (i + 2, String::new());
        } else {
            current.1.push_str(line);
        }
    }
    if !current.1.trim().is_empty() {
        docs.push(current);
    }
    docs
}

/// Scans `path`: what is in clear, and the files read.
pub fn scan(path: &Path, privacy: &Privacy) -> Result<(Vec<Finding>, usize)> {
    let mut findings = Vec::new();
    let all = files(path)?;
    for file in &all {
        let name = file.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if name == super::seal::FILE || name.ends_with(".lock") {
            continue; // ciphertext
        }
        let Ok(bytes) = fs::read(file) else { continue };
        let Ok(text) = String::from_utf8(bytes) else { continue }; // binary bodies: nothing readable
        let ext = file.extension().and_then(|e| e.to_str()).unwrap_or_default();
        let docs: Vec<(usize, Value)> = match ext {
            "yaml" | "yml" | "journal" => documents(&text)
                .into_iter()
                .filter_map(|(first, doc)| {
                    // A journal's documents start with a `# file` line; YAML ignores it.
                    crate::store::parse_yaml::<Value>(&doc, file, first).ok().map(|v| (first, v))
                })
                .collect(),
            "json" => serde_json::from_str::<Value>(&text).map(|v| vec![(1, v)]).unwrap_or_default(),
            _ => Vec::new(),
        };
        if docs.is_empty() {
            // Text the documents did not cover (a body file, a file that did not parse): shapes only.
            for (n, line) in text.lines().enumerate() {
                let mut v = Value::String(line.to_string());
                for (class, value) in privacy.findings(&mut v) {
                    findings.push(Finding { file: file.clone(), line: n + 1, class, hint: hint(&value) });
                }
            }
            continue;
        }
        for (first, mut doc) in docs {
            for (class, value) in privacy.findings(&mut doc) {
                let line = line_of(&text, &value, 1).max(first);
                findings.push(Finding { file: file.clone(), line, class, hint: hint(&value) });
            }
        }
    }
    findings.dedup();
    Ok((findings, all.len()))
}
