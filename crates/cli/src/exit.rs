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
//! | 6    | not implemented in this version (reserved) |
//! | 130  | interrupted (Ctrl-C); the journal records where it stopped |

use std::fmt;
use std::process::ExitCode;

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

/// An error that carries its exit code; anything else exits with [`Code::Failure`].
#[derive(Debug)]
pub struct CodedError {
    pub code: Code,
    pub message: String,
}

impl fmt::Display for CodedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for CodedError {}

/// Builds an error with a given exit code.
pub fn coded(code: Code, message: impl Into<String>) -> anyhow::Error {
    CodedError {
        code,
        message: message.into(),
    }
    .into()
}

pub(crate) fn code_for(err: &anyhow::Error) -> Code {
    use cutover_core::ErrorKind;
    for e in err.chain() {
        if let Some(c) = e.downcast_ref::<CodedError>() {
            return c.code;
        }
        if let Some(c) = e.downcast_ref::<cutover_core::Error>() {
            return match c.kind {
                ErrorKind::Failure => Code::Failure,
                ErrorKind::BadInput => Code::BadInput,
                ErrorKind::Differences => Code::Differences,
                ErrorKind::Locked => Code::Locked,
                ErrorKind::Refused => Code::Refused,
                ErrorKind::NotImplemented => Code::NotImplemented,
                ErrorKind::Interrupted => Code::Interrupted,
            };
        }
    }
    Code::Failure
}

/// The whole error chain on one line: "outer: cause: root cause".
pub(crate) fn render(err: &anyhow::Error) -> String {
    format!("{err:#}")
}
