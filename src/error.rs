//! One error type that says whose fault a failure is, so the message and the exit code fit.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The user's input: a flag, a file, a test set.
    Input,
    /// The app under test (exited early, never opened its port).
    App,
    /// The machine: a missing tool, a permission, a port in use, a full disk.
    Environment,
    /// doppel itself: a bug.
    Internal,
}

#[derive(Debug, Clone)]
pub struct Error {
    pub kind: Kind,
    pub message: String,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn input(m: impl Into<String>) -> Error {
        Error { kind: Kind::Input, message: m.into() }
    }
    pub fn app(m: impl Into<String>) -> Error {
        Error { kind: Kind::App, message: m.into() }
    }
    pub fn env(m: impl Into<String>) -> Error {
        Error { kind: Kind::Environment, message: m.into() }
    }
    /// Failure to read or write doppel's own files.
    pub fn io(m: impl Into<String>) -> Error {
        Error { kind: Kind::Environment, message: m.into() }
    }
    pub fn internal(m: impl Into<String>) -> Error {
        Error { kind: Kind::Internal, message: m.into() }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}
