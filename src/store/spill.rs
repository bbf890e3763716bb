//! A body buffer that stays in memory while small and moves to a file when it grows, so a 100 MB body is
//! never held in memory.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::body::{Body, INLINE_LIMIT};

pub struct SpillBuffer {
    dir: PathBuf,
    counter: Arc<AtomicU64>,
    mem: Vec<u8>,
    file: Option<(File, String)>,
    len: u64,
}

impl SpillBuffer {
    pub fn new(dir: PathBuf, counter: Arc<AtomicU64>) -> SpillBuffer {
        SpillBuffer { dir, counter, mem: Vec::new(), file: None, len: 0 }
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn push(&mut self, data: &[u8]) -> io::Result<()> {
        self.len += data.len() as u64;
        if let Some((f, _)) = &mut self.file {
            return f.write_all(data);
        }
        if self.mem.len() + data.len() <= INLINE_LIMIT {
            self.mem.extend_from_slice(data);
            return Ok(());
        }
        fs::create_dir_all(&self.dir)?;
        let name = format!("body-{}-{}.bin", std::process::id(), self.counter.fetch_add(1, Ordering::Relaxed));
        let mut f = File::create(self.dir.join(&name))?;
        f.write_all(&self.mem)?;
        f.write_all(data)?;
        self.mem = Vec::new();
        self.file = Some((f, name));
        Ok(())
    }

    /// In-memory bytes while the body is small; `None` once it moved to a file.
    pub fn bytes(&self) -> Option<&[u8]> {
        self.file.is_none().then_some(&self.mem[..])
    }

    /// The file holding the body once it moved out of memory.
    pub fn file_path(&self) -> Option<PathBuf> {
        self.file.as_ref().map(|(_, name)| self.dir.join(name))
    }

    /// The body as written in YAML: inline for small bodies, `bodies/<file>` for large ones.
    pub fn into_body(self) -> Option<Body> {
        match self.file {
            Some((_, name)) => {
                let dir_name = self.dir.file_name().map(|d| d.to_string_lossy().into_owned()).unwrap_or_default();
                Some(Body::file(format!("{dir_name}/{name}"), self.len))
            }
            None => Body::from_bytes(&self.mem),
        }
    }

    /// Removes a spilled file that will not be referenced (an exchange that was dropped).
    pub fn discard(self) {
        if let Some((_, name)) = self.file {
            let _ = fs::remove_file(self.dir.join(name));
        }
    }
}
