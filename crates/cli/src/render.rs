//! Rendering events and results: text lines on stderr for people, one JSON
//! object per line on stdout for machines (`--output json`).

use std::io::Write;

use cutover_core::event::{Event, EventSink};
use cutover_core::stage::{Plan, Undo};

use crate::args::Output;

/// Renders engine events as they happen.
pub struct Reporter {
    pub output: Output,
    pub quiet: bool,
}

impl EventSink for Reporter {
    fn emit(&self, event: Event) {
        if self.output == Output::Json {
            if matches!(event, Event::TableProgress { done: false, .. }) {
                // Progress without completion is rate-limited by the copy (2/s per table).
            }
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{}", serde_json::to_string(&event).unwrap_or_default());
            return;
        }
        if self.quiet && !matches!(event, Event::StageFailed { .. } | Event::Warning { .. }) {
            return;
        }
        let line = match event {
            Event::RunStarted { run_id, resumed } => {
                format!("{} run {run_id}", if resumed { "resuming" } else { "starting" })
            }
            Event::StageStarted { stage } => format!("→ {stage}"),
            Event::StageDone {
                stage,
                seconds,
                summary,
            } => format!("✓ {stage} ({seconds:.1} s): {summary}"),
            Event::StageSkipped { stage, reason } => format!("· {stage}: skipped, {reason}"),
            Event::StageFailed { stage, error } => format!("✗ {stage}: {error}"),
            Event::UndoStarted { stage } => format!("← undoing {stage}"),
            Event::StageUndone {
                stage,
                seconds,
                summary,
            } => format!("↶ {stage} undone ({seconds:.1} s): {summary}"),
            Event::TableProgress {
                table,
                rows,
                bytes,
                done: true,
            } => {
                format!("    {table}: {rows} rows, {} kB", bytes / 1000)
            }
            Event::TableProgress { .. } => return,
            Event::Warning { message } => format!("warning: {message}"),
            Event::Info { message } => message,
            Event::RunFinished {
                run_id,
                status,
                seconds,
            } => format!("run {run_id}: {status} in {seconds:.1} s"),
        };
        eprintln!("{line}");
    }
}

pub fn undo_text(undo: &Undo) -> String {
    match undo {
        Undo::Nothing => "nothing to undo".into(),
        Undo::Reversible(how) => format!("undo: {how}"),
        Undo::Irreversible(why) => format!("IRREVERSIBLE: {why}"),
    }
}

/// The plan as a JSON value (the `--output json` form of `cutover plan`).
pub fn plan_json(plan: &Plan) -> serde_json::Value {
    serde_json::json!({
        "stages": plan.stages.iter().enumerate().map(|(i, s)| serde_json::json!({
            "number": i + 1,
            "name": s.name(),
            "description": s.describe(),
            "undo": s.undo_kind(),
        })).collect::<Vec<_>>(),
        "warnings": plan.warnings,
    })
}

/// The plan as numbered text.
pub fn plan_text(plan: &Plan) -> String {
    let mut out = String::new();
    for (i, s) in plan.stages.iter().enumerate() {
        let d = s.describe();
        out.push_str(&format!(
            "{:>2}. {}{}\n    {}\n",
            i + 1,
            s.name(),
            if d.destructive {
                "  [destructive: asks for confirmation]"
            } else {
                ""
            },
            d.summary
        ));
        for line in &d.details {
            out.push_str(&format!("      - {line}\n"));
        }
        for w in &d.warnings {
            out.push_str(&format!("    WARNING: {w}\n"));
        }
        out.push_str(&format!("    {}\n", undo_text(&s.undo_kind())));
    }
    for w in &plan.warnings {
        out.push_str(&format!("WARNING: {w}\n"));
    }
    out
}
