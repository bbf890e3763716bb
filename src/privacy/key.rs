//! The seal key: 32 random bytes kept outside the recording. From `DOPPEL_SEAL_KEY` (base64, for CI), else
//! from a key file (`DOPPEL_SEAL_KEY_FILE`, `privacy.key_file` in doppel.yaml, or
//! `~/.config/doppel/seal.key`), created 0600 on first use by a recording.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

use crate::error::{Error, Result};

pub(crate) const ENV_KEY: &str = "DOPPEL_SEAL_KEY";
pub(crate) const ENV_KEY_FILE: &str = "DOPPEL_SEAL_KEY_FILE";

/// The master key and the keys derived from it (one per use, so a pseudonym never reveals the seal key).
#[derive(Clone)]
pub(crate) struct Key {
    /// Seals values (ChaCha20-Poly1305).
    pub(crate) seal: [u8; 32],
    /// Makes pseudonyms (HMAC-SHA256).
    pub(crate) pseudonym: hmac::Key,
    /// A short public fingerprint written beside sealed values, so a wrong key is named as such.
    pub(crate) id: String,
}

impl Key {
    pub(crate) fn from_bytes(master: &[u8; 32]) -> Key {
        let derive = |label: &str| {
            let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, master), label.as_bytes());
            let mut out = [0u8; 32];
            out.copy_from_slice(&tag.as_ref()[..32]);
            out
        };
        let id: String = derive("doppel key id v1")[..4].iter().map(|b| format!("{b:02x}")).collect();
        Key {
            seal: derive("doppel seal v1"),
            pseudonym: hmac::Key::new(hmac::HMAC_SHA256, &derive("doppel pseudonym v1")),
            id,
        }
    }

    /// A fresh random key (the demo, tests).
    pub(crate) fn random() -> Result<Key> {
        Ok(Key::from_bytes(&random_master()?))
    }
}

/// Where the key comes from, for messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Source {
    Env,
    File(PathBuf),
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Env => write!(f, "${ENV_KEY}"),
            Source::File(p) => write!(f, "{}", p.display()),
        }
    }
}

fn random_master() -> Result<[u8; 32]> {
    let mut master = [0u8; 32];
    SystemRandom::new().fill(&mut master).map_err(|_| Error::env("the system random generator failed"))?;
    Ok(master)
}

fn decode(text: &str, from: &Source) -> Result<[u8; 32]> {
    let bytes =
        B64.decode(text.trim()).map_err(|e| Error::input(format!("the seal key in {from} is not base64: {e}")))?;
    bytes.try_into().map_err(|b: Vec<u8>| {
        Error::input(format!("the seal key in {from} has {} bytes; it must be 32 (base64 of 32 random bytes)", b.len()))
    })
}

/// The key file to use when no environment variable gives the key.
pub(crate) fn default_file(configured: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(ENV_KEY_FILE).filter(|v| !v.is_empty()) {
        return Some(PathBuf::from(p));
    }
    if let Some(p) = configured {
        return Some(p.to_path_buf());
    }
    let config_home = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").filter(|v| !v.is_empty()).map(|h| PathBuf::from(h).join(".config")))?;
    Some(config_home.join("doppel").join("seal.key"))
}

/// Loads the key; with `create`, makes a key file (0600) when there is none. `Ok(None)`: no key anywhere.
/// Returns whether the key was created now, so the caller can say where it is.
pub(crate) fn load(configured: Option<&Path>, create: bool) -> Result<Option<(Key, Source, bool)>> {
    if let Some(v) = std::env::var_os(ENV_KEY).filter(|v| !v.is_empty()) {
        let text = v.to_string_lossy();
        return Ok(Some((Key::from_bytes(&decode(&text, &Source::Env)?), Source::Env, false)));
    }
    let Some(path) = default_file(configured) else {
        return Ok(None);
    };
    let from = Source::File(path.clone());
    match fs::read_to_string(&path) {
        Ok(text) => {
            if let Ok(meta) = fs::metadata(&path)
                && meta.permissions().mode() & 0o077 != 0
            {
                eprintln!(
                    "doppel: warning: the seal key {} is readable by others (mode {:o}); run `chmod 600 {}`",
                    path.display(),
                    meta.permissions().mode() & 0o777,
                    path.display()
                );
            }
            Ok(Some((Key::from_bytes(&decode(&text, &from)?), from, false)))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
            let master = random_master()?;
            write_new(&path, &B64.encode(master))?;
            Ok(Some((Key::from_bytes(&master), from, true)))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::env(format!("cannot read the seal key {}: {e}", path.display()))),
    }
}

/// Creates the key file exclusively, 0600, in a directory made 0700 (never through a link).
fn write_new(path: &Path, text: &str) -> Result<()> {
    let io = |e: std::io::Error| Error::env(format!("cannot create the seal key {}: {e}", path.display()));
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(io)?;
    }
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(io)?;
    f.write_all(format!("{text}\n").as_bytes()).map_err(io)?;
    f.set_permissions(fs::Permissions::from_mode(0o600)).map_err(io)
}
