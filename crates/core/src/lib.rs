//! cutover's model and engine: the plan file, the stage contract, the journal
//! and the engine that runs, resumes and rolls back stages. No terminal here:
//! stages report through [`event::Event`]s that a front end renders.

pub mod artefacts;
pub mod endpoint;
pub mod engine;
pub mod error;
pub mod event;
pub mod identity;
pub mod journal;
pub mod loaded;
pub mod objects;
pub mod plan_file;
pub mod redact;
pub mod stage;
pub mod tls;
pub mod units;

pub use error::{Error, ErrorKind, Result};
