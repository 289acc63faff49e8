//! Events: how stages and the engine report what happens. The CLI renders
//! them (text for people, one JSON object per line for machines); nothing in
//! the core prints.

use serde::Serialize;

/// One thing that happened. Serialised with an `event` tag; the schema is
/// documented in docs/events.md and must stay stable.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    RunStarted {
        run_id: String,
        resumed: bool,
    },
    /// `cutover run` found this plan's latest run finished: nothing runs.
    RunAlreadyFinished {
        run_id: String,
        finished_at: String,
    },
    StageStarted {
        stage: String,
    },
    StageDone {
        stage: String,
        seconds: f64,
        summary: String,
    },
    StageSkipped {
        stage: String,
        reason: String,
    },
    StageFailed {
        stage: String,
        /// What failed (without the hint).
        error: String,
        /// The server's SQLSTATE, when a database error caused it.
        #[serde(skip_serializing_if = "Option::is_none")]
        sqlstate: Option<String>,
        /// What to do about it.
        #[serde(skip_serializing_if = "Option::is_none")]
        hint: Option<String>,
    },
    UndoStarted {
        stage: String,
    },
    StageUndone {
        stage: String,
        seconds: f64,
        summary: String,
    },
    /// The copy's data phase begins: what it will move in this pass.
    CopyStarted {
        /// Tables (or block ranges of large tables) to copy.
        items: u64,
        /// Estimated bytes (heap size on the source).
        estimated_bytes: u64,
    },
    /// A table (or a range: `name [2/8]`) in flight (`done: false`, at most
    /// twice a second) or finished (`done: true`, with its exact row count).
    TableProgress {
        table: String,
        rows: u64,
        /// Bytes streamed so far.
        bytes: u64,
        /// Heap size on the source: the bar's length (0 when unknown).
        estimated_bytes: u64,
        done: bool,
    },
    Warning {
        message: String,
    },
    Info {
        message: String,
    },
    RunFinished {
        run_id: String,
        status: String,
        seconds: f64,
    },
}

/// Where events go.
pub trait EventSink: Send + Sync {
    fn emit(&self, event: Event);
}

/// Drops every event (for read-only helpers).
pub struct NoEvents;

impl EventSink for NoEvents {
    fn emit(&self, _: Event) {}
}
