//! Tests in flight: while recording, each test is appended to `tests.journal` in the set directory (one
//! YAML document per test, its file name in a comment on the first line, ended by `...`), because creating
//! one file per exchange on the hot path costs the kernel far more than appending (a new inode and two
//! directory entries per test: it was most of doppel's CPU under load). When the recording ends, the journal
//! becomes one file per test under `tests/` and is removed. After a kill, the next load of the set does
//! the same: complete documents become files, a last document cut short is dropped.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

pub const FILE: &str = "tests.journal";

/// The journal document of one test: `name` is its file name in `tests/`, `yaml` the file's content.
pub fn document(name: &str, yaml: &str) -> String {
    let mut doc = String::with_capacity(yaml.len() + name.len() + 16);
    doc.push_str("---\n# ");
    doc.push_str(name);
    doc.push('\n');
    doc.push_str(yaml);
    if !yaml.ends_with('\n') {
        doc.push('\n');
    }
    doc.push_str("...\n");
    doc
}

/// The complete documents of a journal as (file name, content), and whether a last one was cut short.
pub fn split(text: &str) -> (Vec<(String, String)>, bool) {
    let mut done = Vec::new();
    let mut current: Option<(Option<String>, String)> = None;
    for line in text.split_inclusive('\n') {
        let bare = line.trim_end_matches('\n');
        if bare == "---" {
            current = Some((None, String::new()));
            continue;
        }
        let Some((name, body)) = &mut current else { continue };
        if bare == "..." && line.ends_with('\n') {
            if let Some(name) = name.take() {
                done.push((name, std::mem::take(body)));
            }
            current = None;
        } else if name.is_none() {
            *name = Some(bare.strip_prefix("# ").unwrap_or_default().to_string());
        } else {
            body.push_str(line);
        }
    }
    (done, current.is_some())
}

/// What became of a set's journal.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    /// Turned into test files and removed; with a warning when a last document was cut short by a kill.
    Done(Option<String>),
    /// A recording is still writing it (it holds the journal's lock): left alone.
    Live,
}

/// Opens the journal for appending and locks it for as long as the file stays open, so that nobody turns
/// it into files while the recording still writes it.
pub fn open_for_writing(path: &Path) -> std::io::Result<fs::File> {
    use std::os::unix::fs::MetadataExt;
    loop {
        let file = fs::OpenOptions::new().create(true).append(true).open(path)?;
        file.lock()?;
        // Someone may have turned the file into tests and removed it between our open and our lock (a
        // journal left by a kill): then start a new one.
        match fs::metadata(path) {
            Ok(m) if m.ino() == file.metadata()?.ino() => return Ok(file),
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Turns the journal of the set at `dir` (if any) into test files and removes it, unless a recording is
/// still writing it.
pub fn materialize(dir: &Path) -> Result<Outcome> {
    let path = dir.join(FILE);
    let io = |e: std::io::Error| Error::io(format!("{}: {e}", path.display()));
    let mut file = match fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Outcome::Done(None)),
        Err(e) => return Err(io(e)),
    };
    match file.try_lock() {
        Ok(()) => {}
        Err(fs::TryLockError::WouldBlock) => return Ok(Outcome::Live),
        Err(fs::TryLockError::Error(e)) => return Err(io(e)),
    }
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut file, &mut bytes).map_err(io)?;
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let (docs, cut) = split(&text);
    let tests = dir.join("tests");
    fs::create_dir_all(&tests).map_err(|e| Error::io(format!("cannot create {}: {e}", tests.display())))?;
    for (name, body) in docs {
        let file = tests.join(safe_name(&name, &path)?);
        // No temporary file: until the journal is removed below, it stays the source of every test in it.
        fs::File::create(&file)
            .and_then(|mut f| f.write_all(body.as_bytes()))
            .map_err(|e| Error::io(format!("cannot write {}: {e}", file.display())))?;
    }
    fs::remove_file(&path).map_err(|e| Error::io(format!("cannot remove {}: {e}", path.display())))?;
    Ok(Outcome::Done(cut.then(|| {
        format!("{}: the last test was cut short (doppel was stopped while writing it); it is ignored", path.display())
    })))
}

/// The tests of a journal that could not be turned into files, read as they are (name -> content).
pub fn read_in_place(dir: &Path) -> Result<Vec<(PathBuf, String)>> {
    let path = dir.join(FILE);
    let text = fs::read(&path).map_err(|e| Error::io(format!("{}: {e}", path.display())))?;
    let (docs, _) = split(&String::from_utf8_lossy(&text));
    docs.into_iter().map(|(name, body)| Ok((dir.join("tests").join(safe_name(&name, &path)?), body))).collect()
}

fn safe_name<'a>(name: &'a str, journal: &Path) -> Result<&'a str> {
    if name.is_empty() || name.contains('/') || name.starts_with('.') || !name.ends_with(".yaml") {
        return Err(Error::input(format!("{}: {name:?} is not a test file name", journal.display())));
    }
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_split_back_and_a_cut_one_is_dropped() {
        let a = document("get-a.yaml", "version: 1\nname: get-a\n");
        let b = document("get-b.yaml", "version: 1\nname: get-b\nbody: |\n  ---\n  ...\n");
        let text = format!("{a}{b}---\n# get-c.yaml\nversion: 1\nna");
        let (docs, cut) = split(&text);
        assert!(cut);
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0], ("get-a.yaml".to_string(), "version: 1\nname: get-a\n".to_string()));
        assert!(docs[1].1.contains("  ---\n  ...\n"), "indented markers are content: {:?}", docs[1]);
        // Split at every byte boundary: never more documents than were complete, never a partial one.
        for i in 0..text.len() {
            let (d, _) = split(&text[..i]);
            assert!(d.len() <= 2 && d.iter().all(|(n, _)| n == "get-a.yaml" || n == "get-b.yaml"));
        }
    }

    #[test]
    fn materializing_writes_files_and_removes_the_journal() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!("{}---\n# get-b.yaml\nversion", document("get-a.yaml", "version: 1\n"));
        fs::write(dir.path().join(FILE), text).unwrap();
        let Outcome::Done(Some(warning)) = materialize(dir.path()).unwrap() else { panic!() };
        assert!(warning.contains("cut short"));
        assert_eq!(fs::read_to_string(dir.path().join("tests/get-a.yaml")).unwrap(), "version: 1\n");
        assert!(!dir.path().join(FILE).exists() && !dir.path().join("tests/get-b.yaml").exists());
        assert_eq!(materialize(dir.path()).unwrap(), Outcome::Done(None), "nothing left to do");
        // While a recording holds the journal, it is left alone.
        let writing = open_for_writing(&dir.path().join(FILE)).unwrap();
        assert_eq!(materialize(dir.path()).unwrap(), Outcome::Live);
        drop(writing);
        assert_eq!(materialize(dir.path()).unwrap(), Outcome::Done(None));
        fs::write(dir.path().join(FILE), document("../evil.yaml", "x")).unwrap();
        assert!(materialize(dir.path()).is_err());
    }
}
