//! The error every stage and engine step returns: a kind that decides the exit
//! code, and a message that names the problem and what to do next.

use std::fmt;

/// What kind of failure this is; the CLI maps each kind to one exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// A step failed; the message says what and what to do.
    Failure,
    /// The plan file or an argument is invalid.
    BadInput,
    /// Verification found differences.
    Differences,
    /// Another run holds the target's lock.
    Locked,
    /// A safety rule refused to go on without explicit confirmation.
    Refused,
    /// This version does not support what was asked.
    NotImplemented,
    /// The operator interrupted the run.
    Interrupted,
}

#[derive(Debug)]
pub struct Error {
    pub kind: ErrorKind,
    pub message: String,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Error {
        Error {
            kind,
            message: message.into(),
        }
    }
    pub fn failure(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::Failure, message)
    }
    pub fn bad_input(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::BadInput, message)
    }
    pub fn refused(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::Refused, message)
    }
    /// Prefixes the message with what was being done ("failed to X: cause").
    pub fn context(self, what: impl fmt::Display) -> Error {
        Error {
            kind: self.kind,
            message: format!("{what}: {}", self.message),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Error {
        // sqlx's messages never contain the connection password.
        Error::failure(crate::endpoint::redact_text(&e.to_string()))
    }
}

impl From<sqlx::migrate::MigrateError> for Error {
    fn from(e: sqlx::migrate::MigrateError) -> Error {
        Error::failure(format!("journal schema migration failed: {e}"))
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Error {
        Error::failure(e.to_string())
    }
}

/// Adds context to any result whose error converts into [`Error`].
pub trait Context<T> {
    fn context(self, what: impl fmt::Display) -> Result<T>;
    fn with_context<D: fmt::Display>(self, what: impl FnOnce() -> D) -> Result<T>;
}

impl<T, E: Into<Error>> Context<T> for std::result::Result<T, E> {
    fn context(self, what: impl fmt::Display) -> Result<T> {
        self.map_err(|e| e.into().context(what))
    }
    fn with_context<D: fmt::Display>(self, what: impl FnOnce() -> D) -> Result<T> {
        self.map_err(|e| e.into().context(what()))
    }
}
