//! The stage contract. Every stage answers four questions: what would you do
//! (`describe`, read-only, computed when the plan is built), do it (`run`,
//! idempotent), does your postcondition hold (`check`), and put things back
//! (`undo`, or a declared reason why it cannot).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

use crate::error::{Error, ErrorKind, Result};
use crate::event::{Event, EventSink};
use crate::journal::Journal;

/// Every stage's name, as the journal, `--until`, `status` and the report
/// spell it: the one place they are written.
pub mod names {
    pub const DISCOVER: &str = "discover";
    pub const BACKUP_TARGET: &str = "backup-target";
    pub const CREATE_ROLES: &str = "create-roles";
    pub const FREEZE_SOURCE: &str = "freeze-source";
    pub const CLEAR_TARGET: &str = "clear-target";
    pub const COPY: &str = "copy";
    pub const VERIFY_DATA: &str = "verify-data";
    pub const REPLICATE: &str = "replicate";
    pub const SWITCH: &str = "switch";
    pub const RESUME: &str = "resume";
    pub const END_REPLICATION: &str = "end-replication";
    pub const VERIFY_SYNC: &str = "verify-sync";
    pub const DECOMMISSION_SOURCE: &str = "decommission-source";
    /// The prefix of each consumer's repoint stage (`repoint:<consumer>`).
    pub const REPOINT_PREFIX: &str = "repoint:";

    /// The repoint stage of consumer `name`.
    pub fn repoint(name: &str) -> String {
        format!("{REPOINT_PREFIX}{name}")
    }
}

/// What a stage will do, computed from live read-only inspection.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Description {
    /// One line: what the stage does, with counts and sizes.
    pub summary: String,
    /// Further lines (tables, sessions, occurrences...).
    pub details: Vec<String>,
    /// Things the operator must know before running.
    pub warnings: Vec<String>,
    /// Changes or destroys data on the target or the source: needs confirmation.
    pub destructive: bool,
}

/// Whether and how a stage can be undone.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "undo", content = "how", rename_all = "snake_case")]
pub enum Undo {
    /// Nothing to undo (the stage changes nothing that matters).
    Nothing,
    /// Undo does this.
    Reversible(String),
    /// Cannot be undone, for this reason; rollback stops here unless forced.
    Irreversible(String),
}

/// The result of a postcondition check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    Holds,
    Fails(String),
}

/// Everything a running stage may use. What a stage needs from the plan
/// file was resolved into the stage when the plan was built.
pub struct RunContext {
    pub source: PgPool,
    pub target: PgPool,
    pub journal: Journal,
    pub run_id: Uuid,
    pub run_dir: PathBuf,
    pub events: Arc<dyn EventSink>,
    pub cancel: CancelFlag,
}

impl RunContext {
    pub fn emit(&self, event: Event) {
        self.events.emit(event);
    }
}

/// Set by Ctrl-C; long stages look at it at safe points.
#[derive(Clone, Default)]
pub struct CancelFlag(Arc<AtomicBool>);

impl CancelFlag {
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
    /// Returns an `Interrupted` error when cancelled: call it at safe points.
    pub fn check(&self) -> Result<()> {
        if self.is_cancelled() {
            return Err(Error::new(
                ErrorKind::Interrupted,
                "interrupted; the journal records where it stopped: run the same command again to resume",
            ));
        }
        Ok(())
    }
}

#[async_trait]
pub trait Stage: Send + Sync {
    /// The stage's name in the plan and the journal (`copy`, `repoint:dashboard`).
    fn name(&self) -> String;
    /// What the stage will do, computed when the plan was built.
    fn describe(&self) -> &Description;
    /// How it can be undone.
    fn undo_kind(&self) -> Undo;
    /// Does it. Must converge when run again after being killed anywhere.
    /// Returns artefacts (paths, checksums, counts) for the journal.
    async fn run(&self, ctx: &RunContext) -> Result<serde_json::Value>;
    /// Whether the postcondition holds now.
    async fn check(&self, ctx: &RunContext) -> Result<Check>;
    /// Puts things back as they were before `run`.
    async fn undo(&self, ctx: &RunContext) -> Result<String>;
    /// Runs while the applications are paused (the online mode's repoints
    /// and resume, after the switch): the engine does not stop before it
    /// on Ctrl-C (going on is the quickest way out of the pause), and when
    /// it fails, every stage since the one that opened the pause is undone
    /// at once, so that the applications run on the source again.
    fn inside_pause(&self) -> bool {
        false
    }
}

/// The plan: the stages in the order they run. `cutover plan` prints it and
/// `cutover run` executes the same object.
pub struct Plan {
    pub stages: Vec<Box<dyn Stage>>,
    /// Warnings that concern the whole plan.
    pub warnings: Vec<String>,
}

impl Plan {
    pub fn find(&self, name: &str) -> Option<usize> {
        self.stages.iter().position(|s| s.name() == name)
    }

    /// The index of a stage named on the command line, or a clear error listing the names.
    pub fn index_of(&self, name: &str) -> Result<usize> {
        self.find(name).ok_or_else(|| {
            let names: Vec<String> = self.stages.iter().map(|s| s.name()).collect();
            Error::bad_input(format!(
                "there is no stage {name:?} in this plan; stages: {}",
                names.join(", ")
            ))
        })
    }
}
