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
        error: String,
    },
    UndoStarted {
        stage: String,
    },
    StageUndone {
        stage: String,
        seconds: f64,
        summary: String,
    },
    TableProgress {
        table: String,
        rows: u64,
        bytes: u64,
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
