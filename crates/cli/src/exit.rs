//! Exit codes, in one place. docs/troubleshooting.md lists the same table.
//!
//! | code | meaning |
//! | ---- | ------- |
//! | 0    | success |
//! | 1    | failure: a command or stage failed; the message says what and what to do |
//! | 2    | bad input: command line or plan file invalid (clap also uses 2) |
//! | 3    | differences found: `verify` found data that differs, `doctor` found a split brain |
//! | 4    | locked: another `cutover run` holds this target |
//! | 5    | refused for safety: confirmation missing, target ahead of source, same database |
//! | 6    | not implemented in this version (reserved)  |
//! | 130  | interrupted (Ctrl-C); the journal records where it stopped |

use std::process::ExitCode;

use cutover_core::ErrorKind;

/// A process exit code with a meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Code {
    Success = 0,
    Failure = 1,
    BadInput = 2,
    Differences = 3,
    Locked = 4,
    Refused = 5,
    NotImplemented = 6,
    Interrupted = 130,
}

impl From<Code> for ExitCode {
    fn from(code: Code) -> ExitCode {
        ExitCode::from(code as u8)
    }
}

/// The one table from an error's kind to its exit code.
impl From<ErrorKind> for Code {
    fn from(kind: ErrorKind) -> Code {
        match kind {
            ErrorKind::Failure => Code::Failure,
            ErrorKind::BadInput => Code::BadInput,
            ErrorKind::Differences => Code::Differences,
            ErrorKind::Locked => Code::Locked,
            ErrorKind::Refused => Code::Refused,
            ErrorKind::NotImplemented => Code::NotImplemented,
            ErrorKind::Interrupted => Code::Interrupted,
        }
    }
}

/// An error of a given kind (and so exit code) raised by a command itself.
pub fn coded(kind: ErrorKind, message: impl Into<String>) -> anyhow::Error {
    cutover_core::Error::new(kind, message).into()
}

/// The exit code of the first cutover error in the chain; anything else
/// (a file that cannot be read, ...) is a failure.
pub(crate) fn code_for(err: &anyhow::Error) -> Code {
    err.chain()
        .find_map(|e| e.downcast_ref::<cutover_core::Error>())
        .map(|e| e.kind.into())
        .unwrap_or(Code::Failure)
}

/// The error on one line, "outer: cause: root cause", then its hint on a
/// line of its own. A cutover error's message already says what its cause
/// said (the database's message, redacted), so the chain stops there.
pub(crate) fn render(err: &anyhow::Error) -> String {
    let mut parts = vec![];
    let mut hint = None;
    for e in err.chain() {
        if let Some(c) = e.downcast_ref::<cutover_core::Error>() {
            parts.push(c.message.clone());
            hint = c.hint.clone();
            break;
        }
        parts.push(e.to_string());
    }
    let mut out = parts.join(": ");
    if let Some(h) = hint {
        out.push_str(&format!("\n  hint: {h}"));
    }
    out
}
