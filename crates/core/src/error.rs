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

#[derive(Debug, Clone)]
pub struct Error {
    pub kind: ErrorKind,
    pub message: String,
    /// The server's SQLSTATE, when a database error caused this one: the
    /// classification uses it, never the (translated) text.
    pub sqlstate: Option<String>,
    /// What to do about it, rendered on its own line.
    pub hint: Option<String>,
    /// The error this one comes from (a database error, an I/O error), for
    /// `source()`; the message already says what it said.
    pub cause: Option<std::sync::Arc<dyn std::error::Error + Send + Sync>>,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Error {
        Error {
            kind,
            message: message.into(),
            sqlstate: None,
            hint: None,
            cause: None,
        }
    }
    /// Sets what to do about it (shown on its own line).
    pub fn with_hint(mut self, hint: impl Into<String>) -> Error {
        self.hint = Some(hint.into());
        self
    }
    pub fn with_sqlstate(mut self, code: Option<String>) -> Error {
        self.sqlstate = code;
        self
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
            message: format!("{what}: {}", self.message),
            ..self
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        if let Some(hint) = &self.hint {
            write!(f, "\n  hint: {hint}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.cause
            .as_deref()
            .map(|c| c as &(dyn std::error::Error + 'static))
    }
}

impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Error {
        // sqlx's messages never contain the connection password.
        let code = sqlstate(&e);
        let mut err = Error::failure(crate::redact::redact_text(&e.to_string())).with_sqlstate(code);
        if let sqlx::Error::Database(db) = &e
            && let Some(pg) = db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
            && let Some(hint) = pg.hint()
        {
            err.hint = Some(hint.to_string());
        }
        err.cause = Some(std::sync::Arc::new(e));
        err
    }
}

/// The SQLSTATE of a database error.
pub fn sqlstate(e: &sqlx::Error) -> Option<String> {
    match e {
        sqlx::Error::Database(db) => db.code().map(|c| c.into_owned()),
        _ => None,
    }
}

/// SQLSTATEs cutover tells apart (PostgreSQL's appendix A).
pub mod codes {
    pub const INVALID_AUTHORIZATION: &str = "28000";
    pub const INVALID_PASSWORD: &str = "28P01";
    pub const INVALID_CATALOG_NAME: &str = "3D000";
    pub const INSUFFICIENT_PRIVILEGE: &str = "42501";
    pub const TOO_MANY_CONNECTIONS: &str = "53300";
    pub const CANNOT_CONNECT_NOW: &str = "57P03";
    pub const UNDEFINED_OBJECT: &str = "42704";
    pub const LOCK_NOT_AVAILABLE: &str = "55P03";
    pub const QUERY_CANCELED: &str = "57014";
}

impl From<sqlx::migrate::MigrateError> for Error {
    fn from(e: sqlx::migrate::MigrateError) -> Error {
        Error::failure(format!("journal schema migration failed: {e}"))
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Error {
        let message = e.to_string();
        Error {
            cause: Some(std::sync::Arc::new(e)),
            ..Error::failure(message)
        }
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
