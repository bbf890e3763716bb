//! Renders an HTML report in headless Chromium: a screenshot (to look at) and the DOM after rendering (to
//! check). scripts/test installs Chromium when it is missing.

use std::path::{Path, PathBuf};
use std::process::Command;

fn browser() -> PathBuf {
    for name in ["chromium", "chromium-browser", "google-chrome"] {
        if let Ok(out) = Command::new("which").arg(name).output()
            && out.status.success()
        {
            return PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        }
    }
    panic!("headless Chromium is needed to check the HTML reports: apt-get install chromium (scripts/test does)");
}

fn run_headless(page: &Path, work: &Path, what: &str, extra: &[String]) -> std::process::Output {
    let profile = work.join(format!("chromium-profile-{what}"));
    let mut c = Command::new(browser());
    c.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1200,900",
    ])
    .arg(format!("--user-data-dir={}", profile.display()))
    .args(extra)
    .arg(format!("file://{}", page.display()));
    c.output().unwrap_or_else(|e| panic!("cannot run chromium: {e}"))
}

/// Screenshot of the page (PNG) and its rendered DOM.
pub fn render(page: &Path, work: &Path) -> (PathBuf, String) {
    let shot = work.join(format!("{}.png", page.file_stem().unwrap_or_default().to_string_lossy()));
    let out = run_headless(page, work, "shot", &[format!("--screenshot={}", shot.display())]);
    let size = std::fs::metadata(&shot).map(|m| m.len()).unwrap_or(0);
    assert!(
        size > 10_000,
        "no screenshot of {} ({size} bytes)\n{}",
        page.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run_headless(page, work, "dom", &["--dump-dom".to_string()]);
    let dom = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(dom.contains("</html>"), "no DOM for {}\n{}", page.display(), String::from_utf8_lossy(&out.stderr));
    (shot, dom)
}
