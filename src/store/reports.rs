//! Reports written for people and CI (`doppel test`'s JSON and JUnit, `doppel load` and `doppel diff`'s
//! JSON and HTML): every one goes through `write_report`, which makes its directory and replaces the file
//! whole (a reader never sees half a report).

use std::path::{Path, PathBuf};

use super::{Store, write_atomic};
use crate::error::{Context, Kind, Result};

/// Writes a report to `path`, creating its directory. Reports live outside the sealed recording, so the
/// credentials in them are redacted first (`privacy::Privacy::redact_text`).
pub(crate) fn write_report(path: &Path, text: &str, privacy: &crate::privacy::Privacy) -> Result<()> {
    let text = privacy.redact_text(text);
    let text = text.as_bytes();
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).context(Kind::Environment, || format!("cannot create {}", dir.display()))?;
    }
    write_atomic(path, text)
}

impl Store {
    /// Where the JSON report of a `doppel test` run that started at `started_at` goes by default.
    pub(crate) fn run_report_path(&self, dir: Option<&Path>, started_at: &str) -> PathBuf {
        let stamp = started_at.replace([':', '.'], "-");
        dir.map(Path::to_path_buf).unwrap_or_else(|| self.reports_dir()).join(format!("run-{stamp}.json"))
    }
}
