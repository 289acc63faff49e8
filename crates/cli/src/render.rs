//! Rendering events and results: text lines on stderr for people, one JSON
//! object per line on stdout for machines (`--output json`).

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use cutover_core::event::{Event, EventSink};
use cutover_core::stage::{Plan, Undo};

use crate::args::Output;

/// The terminal's progress display, shared with the log writer so that log
/// lines are printed above the bars, never through them.
static BARS: std::sync::OnceLock<MultiProgress> = std::sync::OnceLock::new();

/// Where `tracing` writes: stderr, suspending the bars while it does.
pub struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match BARS.get() {
            Some(multi) => multi.suspend(|| std::io::stderr().write(buf)),
            None => std::io::stderr().write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// Renders engine events as they happen: progress bars on a terminal, text
/// lines on stderr otherwise, one JSON object per line on stdout with
/// `--output json`.
pub struct Reporter {
    output: Output,
    quiet: bool,
    bars: Option<Bars>,
}

struct Bars {
    multi: MultiProgress,
    stages: Mutex<HashMap<String, ProgressBar>>,
    tables: Mutex<HashMap<String, (ProgressBar, u64)>>,
    overall: Mutex<Option<ProgressBar>>,
}

impl Reporter {
    /// Bars only for people at a terminal.
    pub fn new(output: Output, quiet: bool) -> Reporter {
        let bars = (output == Output::Text && !quiet && std::io::stderr().is_terminal()).then(|| {
            let multi = BARS.get_or_init(MultiProgress::new).clone();
            Bars {
                multi,
                stages: Mutex::default(),
                tables: Mutex::default(),
                overall: Mutex::default(),
            }
        });
        Reporter { output, quiet, bars }
    }
}

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}

/// The text line of an event, `None` for those without one.
fn line(event: &Event) -> Option<String> {
    Some(match event {
        Event::RunStarted { run_id, resumed } => {
            format!("{} run {run_id}", if *resumed { "resuming" } else { "starting" })
        }
        Event::RunAlreadyFinished { run_id, finished_at } => format!(
            "run {run_id} finished on {finished_at}: nothing to do. The applications write to the target since then, \
             so no stage runs again by itself; `cutover verify` compares again, `cutover report` has the record, \
             `cutover run --restart` starts a new cutover"
        ),
        Event::StageStarted { stage } => format!("→ {stage}"),
        Event::StageDone {
            stage,
            seconds,
            summary,
        } => format!("✓ {stage} ({seconds:.1} s): {summary}"),
        Event::StageSkipped { stage, reason } => format!("· {stage}: skipped, {reason}"),
        Event::StageFailed {
            stage, error, hint, ..
        } => match hint {
            Some(h) => format!("✗ {stage}: {error}\n  hint: {h}"),
            None => format!("✗ {stage}: {error}"),
        },
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
            ..
        } => {
            format!(
                "    {table}: {rows} rows, {}",
                cutover_core::units::bytes(*bytes as i64)
            )
        }
        Event::TableProgress { .. } | Event::CopyStarted { .. } => return None,
        Event::Warning { message } => format!("warning: {message}"),
        Event::Info { message } => message.clone(),
        Event::RunFinished {
            run_id,
            status,
            seconds,
        } => format!("run {run_id}: {status} in {seconds:.1} s"),
    })
}

impl EventSink for Reporter {
    fn emit(&self, event: Event) {
        if self.output == Output::Json {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{}", serde_json::to_string(&event).unwrap_or_default());
            return;
        }
        if self.quiet && !matches!(event, Event::StageFailed { .. } | Event::Warning { .. }) {
            return;
        }
        match &self.bars {
            Some(bars) => bars.show(&event),
            None => {
                if let Some(l) = line(&event) {
                    eprintln!("{l}");
                }
            }
        }
    }
}

impl Bars {
    fn show(&self, event: &Event) {
        match event {
            Event::StageStarted { stage } | Event::UndoStarted { stage } => {
                let pb = self.multi.add(ProgressBar::new_spinner());
                pb.set_style(style("{spinner:.cyan} {msg} {elapsed}"));
                pb.set_message(line(event).unwrap_or_default());
                pb.enable_steady_tick(Duration::from_millis(120));
                self.stages.lock().unwrap().insert(stage.clone(), pb);
            }
            Event::StageDone { stage, .. }
            | Event::StageFailed { stage, .. }
            | Event::StageUndone { stage, .. } => {
                if let Some(pb) = self.overall.lock().unwrap().take() {
                    pb.finish_and_clear();
                }
                for (_, (pb, _)) in self.tables.lock().unwrap().drain() {
                    pb.finish_and_clear();
                }
                // The result line goes above the bars, where it stays (a
                // finished bar is redrawn with the others and can vanish
                // when the display is cleared at the end).
                let text = line(event).unwrap_or_default();
                if let Some(pb) = self.stages.lock().unwrap().remove(stage) {
                    pb.finish_and_clear();
                }
                let _ = self.multi.println(text);
            }
            Event::CopyStarted {
                estimated_bytes,
                items,
            } => {
                let pb = self.multi.add(ProgressBar::new((*estimated_bytes).max(1)));
                pb.set_style(style(
                    "  copy [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta} ({msg})",
                ));
                pb.set_message(format!("0/{items} tables"));
                *self.overall.lock().unwrap() = Some(pb);
            }
            Event::TableProgress {
                table,
                bytes,
                estimated_bytes,
                done,
                ..
            } => {
                let mut tables = self.tables.lock().unwrap();
                let overall = self.overall.lock().unwrap();
                let (pb, seen) = tables.entry(table.clone()).or_insert_with(|| {
                    let pb = self.multi.add(ProgressBar::new((*estimated_bytes).max(1)));
                    pb.set_style(style("    {msg:32} [{bar:20}] {bytes} {bytes_per_sec}"));
                    pb.set_message(table.clone());
                    (pb, 0)
                });
                if let Some(o) = overall.as_ref() {
                    o.inc(bytes.saturating_sub(*seen));
                }
                *seen = *bytes;
                pb.set_position(*bytes);
                if *done {
                    let pb = tables.remove(table).map(|(pb, _)| pb);
                    if let Some(pb) = pb {
                        pb.finish_and_clear();
                    }
                    if let Some(o) = overall.as_ref() {
                        let finished = o
                            .message()
                            .split('/')
                            .next()
                            .and_then(|n| n.parse::<u64>().ok())
                            .unwrap_or(0)
                            + 1;
                        let total = o.message().split('/').nth(1).unwrap_or("").to_string();
                        o.set_message(format!("{finished}/{total}"));
                    }
                    if let Some(l) = line(event) {
                        let _ = self.multi.println(l);
                    }
                }
            }
            other => {
                if let Some(l) = line(other) {
                    let _ = self.multi.println(l);
                }
            }
        }
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
