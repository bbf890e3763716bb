//! The sealed values of one test set, in `sealed.yaml` beside its tests: each placeholder id
//! (`bearer-jwt#3`) with its value encrypted under the seal key (ChaCha20-Poly1305 from ring, the id as
//! associated data so entries cannot be swapped). Appended one line per new value as recording goes, so a
//! kill keeps every value a written test refers to.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};

use super::key::Key;
use crate::error::{Error, Result};

pub(crate) const FILE: &str = "sealed.yaml";

/// What a placeholder looks like in a recording: `!sealed CLASS#N`.
pub(crate) const PREFIX: &str = "!sealed ";

/// Why the values of a set cannot be opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Closed {
    /// No seal key on this machine.
    NoKey,
    /// A key, but not the one the set was sealed with.
    WrongKey { sealed_with: String, have: String },
}

#[derive(Default)]
pub(crate) struct SealTable {
    path: PathBuf,
    /// The key id the file was written with (None: no file yet).
    key_id: Option<String>,
    by_value: HashMap<String, String>,
    by_id: HashMap<String, String>,
    /// Entries on disk, opened or not.
    entries: usize,
    closed: Option<Closed>,
}

fn cipher(key: &Key) -> Result<LessSafeKey> {
    let unbound = UnboundKey::new(&CHACHA20_POLY1305, &key.seal).map_err(|_| Error::internal("bad seal key length"))?;
    Ok(LessSafeKey::new(unbound))
}

impl SealTable {
    /// Reads `sealed.yaml` of the set at `dir` (none yet is an empty table) and opens what `key` can open.
    pub(crate) fn load(dir: &Path, key: Option<&Key>) -> Result<SealTable> {
        let path = dir.join(FILE);
        let mut table = SealTable { path: path.clone(), ..SealTable::default() };
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(table),
            Err(e) => return Err(Error::input(format!("{}: {e}", path.display()))),
        };
        let mut encrypted = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = || Error::input(format!("{}:{}: expected `CLASS#N: BASE64` or `key: ID`", path.display(), i + 1));
            let (name, value) = line.split_once(": ").ok_or_else(bad)?;
            if name == "key" {
                table.key_id = Some(value.trim().to_string());
            } else if name.contains('#') {
                encrypted.push((name.to_string(), value.trim().to_string(), i + 1));
            } else {
                return Err(bad());
            }
        }
        table.entries = encrypted.len();
        table.closed = match (key, &table.key_id) {
            (None, _) => Some(Closed::NoKey),
            (Some(k), Some(id)) if *id != k.id => {
                Some(Closed::WrongKey { sealed_with: id.clone(), have: k.id.clone() })
            }
            _ => None,
        };
        if let (Some(k), None) = (key, &table.closed) {
            let cipher = cipher(k)?;
            for (id, b64, line) in encrypted {
                let bad = |why: &str| Error::input(format!("{}:{line}: sealed value {id} {why}", path.display()));
                let mut bytes = B64.decode(&b64).map_err(|_| bad("is not base64"))?;
                if bytes.len() < NONCE_LEN {
                    return Err(bad("is cut short"));
                }
                let mut data = bytes.split_off(NONCE_LEN);
                let nonce = Nonce::try_assume_unique_for_key(&bytes).map_err(|_| bad("has a bad nonce"))?;
                let plain = cipher
                    .open_in_place(nonce, Aad::from(id.as_bytes()), &mut data)
                    .map_err(|_| bad("does not open with this key (edited, or sealed with another key)"))?;
                let value = String::from_utf8(plain.to_vec()).map_err(|_| bad("is not text"))?;
                table.by_value.insert(value.clone(), id.clone());
                table.by_id.insert(id, value);
            }
        }
        Ok(table)
    }

    pub(crate) fn closed(&self) -> Option<&Closed> {
        self.closed.as_ref()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.entries == 0
    }

    /// The value behind placeholder id `id`, when the table is open.
    pub(crate) fn open(&self, id: &str) -> Option<&str> {
        self.by_id.get(id).map(String::as_str)
    }

    /// Every opened value with its placeholder id.
    pub(crate) fn known(&self) -> Vec<(String, String)> {
        self.by_value.iter().map(|(v, id)| (v.clone(), id.clone())).collect()
    }

    /// The placeholder id of a value sealed before.
    pub(crate) fn id_of(&self, value: &str) -> Option<String> {
        self.by_value.get(value).cloned()
    }

    /// The placeholder id for `value` of `class`, sealing it (and appending it to the file) when new.
    pub(crate) fn seal(&mut self, key: &Key, class: &str, value: &str) -> Result<String> {
        if let Some(id) = self.by_value.get(value) {
            return Ok(id.clone());
        }
        if let Some(Closed::WrongKey { sealed_with, have }) = &self.closed {
            return Err(Error::input(format!(
                "{}: this set was sealed with key {sealed_with}, the seal key here is {have}; new values cannot be \
                 sealed beside the old ones (use the set's key, or re-record the set)",
                self.path.display()
            )));
        }
        let id = format!("{class}#{}", self.entries + 1);
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new().fill(&mut nonce).map_err(|_| Error::env("the system random generator failed"))?;
        let mut data = value.as_bytes().to_vec();
        cipher(key)?
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(id.as_bytes()), &mut data)
            .map_err(|_| Error::internal("sealing failed"))?;
        let mut line = String::new();
        if self.key_id.is_none() {
            line.push_str(&format!(
                "# Values sealed by doppel (ChaCha20-Poly1305 under the seal key; see `doppel scan` and the README).\n\
                 # Each `!sealed CLASS#N` in this set stands for the entry of that name.\nkey: {}\n",
                key.id
            ));
        }
        let mut all = nonce.to_vec();
        all.extend_from_slice(&data);
        line.push_str(&format!("{id}: {}\n", B64.encode(all)));
        let io = |e: std::io::Error| Error::io(format!("cannot write {}: {e}", self.path.display()));
        let mut f = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&self.path)
            .map_err(io)?;
        f.write_all(line.as_bytes()).map_err(io)?;
        self.key_id = Some(key.id.clone());
        self.entries += 1;
        self.by_value.insert(value.to_string(), id.clone());
        self.by_id.insert(id.clone(), value.to_string());
        Ok(id)
    }
}
