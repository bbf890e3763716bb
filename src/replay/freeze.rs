//! `--freeze-time`: the app sees the clock it saw when each test was recorded. libfaketime is preloaded into
//! the app (LD_PRELOAD) and reads its clock offset from a file on every call (`FAKETIME_TIMESTAMP_FILE` with
//! `FAKETIME_NO_CACHE=1`); before each test doppel writes there the offset that puts "now" at the test's
//! recorded start, so the clock runs on from that moment as the test runs.
//!
//! The monotonic clock is left alone (`FAKETIME_DONT_FAKE_MONOTONIC=1`): faking it makes timed waits of
//! Python threads and of the JVM hang with libfaketime 0.9.10, and apps measure durations with it, not dates.
//! A statically linked program never runs the dynamic loader, so LD_PRELOAD cannot reach it: doppel refuses
//! such a command up front (no PT_INTERP in its ELF program headers).

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// With a frozen clock, a time value kept by a `like` rule may be this far from the recorded one (the
/// clock runs on while the app answers, and apps round times to the second).
pub const TOLERANCE_S: f64 = 3.0;

/// Where distributions put libfaketime.
const CANDIDATES: &[&str] = &[
    "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
    "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
    "/usr/lib/i386-linux-gnu/faketime/libfaketime.so.1",
    "/usr/lib64/faketime/libfaketime.so.1",
    "/usr/lib/faketime/libfaketime.so.1",
    "/usr/local/lib/faketime/libfaketime.so.1",
];

/// The clock file of one app run.
pub struct FrozenClock {
    file: PathBuf,
}

impl FrozenClock {
    /// Checks that the app's clock can be frozen and returns the clock and the environment the app needs.
    pub fn prepare(argv: &[String], dir: &Path) -> Result<(FrozenClock, Vec<(String, String)>)> {
        let lib = find_libfaketime().ok_or_else(|| {
            Error::env(
                "--freeze-time needs libfaketime, which is not installed here. Install it (Debian and Ubuntu: \
                 `apt-get install libfaketime`; Fedora: `dnf install libfaketime`; Alpine: `apk add libfaketime`) \
                 or point DOPPEL_LIBFAKETIME at libfaketime.so.1",
            )
        })?;
        let program = argv.first().ok_or_else(|| Error::input("give the command that runs the app after --"))?;
        check_dynamic(program)?;
        std::fs::create_dir_all(dir).map_err(|e| Error::io(format!("cannot create {}: {e}", dir.display())))?;
        let file = dir.join(format!("faketime-{}.rc", std::process::id()));
        let clock = FrozenClock { file };
        clock.write_offset(0.0)?;
        let preload = match std::env::var("LD_PRELOAD") {
            Ok(existing) if !existing.trim().is_empty() => format!("{} {existing}", lib.display()),
            _ => lib.display().to_string(),
        };
        let mut env = vec![
            ("LD_PRELOAD".to_string(), preload),
            ("FAKETIME_TIMESTAMP_FILE".to_string(), clock.file.display().to_string()),
            ("FAKETIME_NO_CACHE".to_string(), "1".to_string()),
        ];
        // The user's own choice wins (e.g. to fake the monotonic clock too).
        if std::env::var_os("FAKETIME_DONT_FAKE_MONOTONIC").is_none() {
            env.push(("FAKETIME_DONT_FAKE_MONOTONIC".to_string(), "1".to_string()));
        }
        Ok((clock, env))
    }

    /// Puts the app's clock at `recorded_at` (RFC 3339) from now on.
    pub fn set(&self, recorded_at: &str) -> Result<()> {
        let Some(at_ms) = crate::store::parse_time_ms(recorded_at) else {
            return Err(Error::input(format!("--freeze-time: recorded_at {recorded_at:?} is not an RFC 3339 time")));
        };
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64() * 1000.0)
            .unwrap_or(0.0);
        self.write_offset((at_ms - now_ms) / 1000.0)
    }

    /// libfaketime reads `+N`/`-N` seconds (fractions allowed); the file is replaced whole so a read never
    /// sees half of it.
    fn write_offset(&self, seconds: f64) -> Result<()> {
        let tmp = self.file.with_extension("tmp");
        let io = |e: std::io::Error| Error::io(format!("cannot write {}: {e}", self.file.display()));
        std::fs::write(&tmp, format!("{seconds:+.6}\n")).map_err(io)?;
        std::fs::rename(&tmp, &self.file).map_err(io)
    }
}

impl Drop for FrozenClock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.file);
    }
}

fn find_libfaketime() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("DOPPEL_LIBFAKETIME") {
        return Some(PathBuf::from(p)).filter(|p| p.is_file());
    }
    if let Some(p) = CANDIDATES.iter().map(PathBuf::from).find(|p| p.is_file()) {
        return Some(p);
    }
    // Other multiarch directories: /usr/lib/<triplet>/faketime/.
    std::fs::read_dir("/usr/lib")
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("faketime/libfaketime.so.1"))
        .find(|p| p.is_file())
}

/// Resolves a command name the way exec does: a path as given, a bare name through $PATH.
fn resolve(program: &str) -> Option<PathBuf> {
    if program.contains('/') {
        return Some(PathBuf::from(program));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(program)).find(|p| p.is_file())
}

/// Refuses a statically linked program (and a script whose interpreter is one).
fn check_dynamic(program: &str) -> Result<()> {
    let Some(path) = resolve(program) else {
        // Not found: starting the app will say so in its own words.
        return Ok(());
    };
    let mut head = Vec::new();
    let read = std::fs::File::open(&path).and_then(|f| f.take(256).read_to_end(&mut head));
    if read.is_err() {
        return Ok(());
    }
    if let Some(line) = head.strip_prefix(b"#!") {
        let line = String::from_utf8_lossy(line.split(|b| *b == b'\n').next().unwrap_or_default()).into_owned();
        let mut words = line.split_whitespace();
        let interpreter = words.next().unwrap_or_default();
        // `#!/usr/bin/env python3`: the program that matters is python3.
        let interpreter = if interpreter.ends_with("/env") {
            words.find(|w| !w.starts_with('-')).unwrap_or(interpreter)
        } else {
            interpreter
        };
        return check_dynamic(interpreter);
    }
    match elf_interpreter(&path) {
        Ok(Some(false)) => Err(Error::input(format!(
            "--freeze-time cannot freeze the clock of {}: it is statically linked (its ELF program headers have \
             no PT_INTERP), so the dynamic loader never runs and cannot preload libfaketime into it. Go programs \
             built with CGO_ENABLED=0 and static musl or crt-static builds are like this. Build it dynamically \
             linked, or test without --freeze-time.",
            path.display()
        ))),
        _ => Ok(()),
    }
}

/// `Some(true)` for a dynamically linked ELF (it names a program interpreter), `Some(false)` for a static
/// one, `None` when the file is not ELF. A dozen fixed offsets of the ELF header are all this needs, so
/// they are read here rather than through an object-file crate.
pub fn elf_interpreter(path: &Path) -> std::io::Result<Option<bool>> {
    use std::io::{Seek, SeekFrom};
    let mut f = std::fs::File::open(path)?;
    let mut ident = [0u8; 64];
    let n = f.read(&mut ident)?;
    if n < 52 || &ident[..4] != b"\x7fELF" {
        return Ok(None);
    }
    let is64 = ident[4] == 2;
    let little = ident[5] == 1;
    let u16_at = |b: &[u8], at: usize| {
        let x = [b[at], b[at + 1]];
        if little { u16::from_le_bytes(x) } else { u16::from_be_bytes(x) }
    };
    let u32_at = |b: &[u8], at: usize| {
        let x = [b[at], b[at + 1], b[at + 2], b[at + 3]];
        if little { u32::from_le_bytes(x) } else { u32::from_be_bytes(x) }
    };
    let u64_at = |b: &[u8], at: usize| {
        let mut x = [0u8; 8];
        x.copy_from_slice(&b[at..at + 8]);
        if little { u64::from_le_bytes(x) } else { u64::from_be_bytes(x) }
    };
    let (phoff, phentsize, phnum) = if is64 {
        if n < 64 {
            return Ok(None);
        }
        (u64_at(&ident, 0x20), u16_at(&ident, 0x36), u16_at(&ident, 0x38))
    } else {
        (u64::from(u32_at(&ident, 0x1c)), u16_at(&ident, 0x2a), u16_at(&ident, 0x2c))
    };
    const PT_INTERP: u32 = 3;
    let mut entry = vec![0u8; usize::from(phentsize).max(4)];
    for i in 0..u64::from(phnum) {
        f.seek(SeekFrom::Start(phoff + i * u64::from(phentsize)))?;
        f.read_exact(&mut entry)?;
        if u32_at(&entry, 0) == PT_INTERP {
            return Ok(Some(true));
        }
    }
    Ok(Some(false))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dynamic_binaries_have_an_interpreter() {
        // The test binary itself is dynamically linked on every supported target (glibc).
        let me = std::env::current_exe().unwrap();
        assert_eq!(elf_interpreter(&me).unwrap(), Some(true));
        let dir = tempfile::tempdir().unwrap();
        let text = dir.path().join("x.txt");
        std::fs::write(&text, "hello").unwrap();
        assert_eq!(elf_interpreter(&text).unwrap(), None);
    }
}
