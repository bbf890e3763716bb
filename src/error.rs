//! One error type that says whose fault a failure is, so the message and the exit code fit: the user's input,
//! the app under test, a dependency (a deployment or server doppel talks to), the machine, or doppel itself.
//! An error carries its cause (`source`), and `context` turns a library's error into one of these with what
//! doppel was doing when it happened.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The user's input: a flag, a file, a test set.
    Input,
    /// The app under test (exited early, never opened its port, answered something unreadable).
    App,
    /// Something doppel talks to on the user's behalf: a deployment (`--target`), an upstream server.
    Dependency,
    /// The machine: a missing tool, a permission, a port in use, a full disk.
    Environment,
    /// doppel itself: a bug.
    Internal,
}

impl Kind {
    /// How the kind reads in front of a message.
    fn label(self) -> &'static str {
        match self {
            Kind::Input => "input error",
            Kind::App => "the app under test",
            Kind::Dependency => "a dependency",
            Kind::Environment => "environment error",
            Kind::Internal => "internal error (a bug in doppel; please report it)",
        }
    }
}

/// Exit codes, as the README documents them: 0 all passed, 1 a test failed, 2 the run could not be done as
/// asked (input, the app, a dependency or the machine; the message says which), 70 a bug in doppel.
pub(crate) const EXIT_CANNOT_RUN: i32 = 2;
pub(crate) const EXIT_INTERNAL: i32 = 70;

pub struct Error {
    pub kind: Kind,
    pub message: String,
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn new(kind: Kind, message: impl Into<String>) -> Error {
        Error { kind, message: message.into(), source: None }
    }
    pub fn input(m: impl Into<String>) -> Error {
        Error::new(Kind::Input, m)
    }
    pub fn app(m: impl Into<String>) -> Error {
        Error::new(Kind::App, m)
    }
    pub fn dependency(m: impl Into<String>) -> Error {
        Error::new(Kind::Dependency, m)
    }
    pub fn env(m: impl Into<String>) -> Error {
        Error::new(Kind::Environment, m)
    }
    /// Failure to read or write doppel's own files.
    pub fn io(m: impl Into<String>) -> Error {
        Error::new(Kind::Environment, m)
    }
    pub fn internal(m: impl Into<String>) -> Error {
        Error::new(Kind::Internal, m)
    }

    /// The same error, with `cause` as its source (shown after the message).
    pub fn caused_by(mut self, cause: impl std::error::Error + Send + Sync + 'static) -> Error {
        self.source = Some(Box::new(cause));
        self
    }

    /// The exit code of a run that ends with this error.
    pub fn exit_code(&self) -> i32 {
        if self.kind == Kind::Internal { EXIT_INTERNAL } else { EXIT_CANNOT_RUN }
    }

    /// The message with whose fault it is in front, for the terminal.
    pub fn labelled(&self) -> String {
        format!("{}: {self}", self.kind.label())
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {self}", self.kind)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        if let Some(cause) = &self.source {
            write!(f, ": {cause}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_deref().map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// Turns a library's error into doppel's, saying what doppel was doing: `fs::read(p).context(Kind::Input,
/// || format!("cannot read {}", p.display()))` reads as "cannot read x.yaml: No such file or directory".
pub trait Context<T> {
    fn context(self, kind: Kind, doing: impl FnOnce() -> String) -> Result<T>;
}

impl<T, E: std::error::Error + Send + Sync + 'static> Context<T> for std::result::Result<T, E> {
    fn context(self, kind: Kind, doing: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| Error::new(kind, doing()).caused_by(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cause_follows_the_message_and_the_kind_picks_the_exit_code() {
        let e = std::fs::read("/nonexistent/doppel.yaml")
            .context(Kind::Input, || "cannot read /nonexistent/doppel.yaml".into())
            .unwrap_err();
        assert!(e.to_string().starts_with("cannot read /nonexistent/doppel.yaml: No such file"), "{e}");
        assert!(std::error::Error::source(&e).is_some());
        assert_eq!(e.exit_code(), EXIT_CANNOT_RUN);
        assert_eq!(Error::internal("x").exit_code(), EXIT_INTERNAL);
        assert!(Error::app("it exited").labelled().starts_with("the app under test: it exited"));
    }
}
