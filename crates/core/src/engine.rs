//! The engine: runs a plan's stages in order, skips what the journal says is
//! done (and still holds), records every transition before and after it
//! happens, and rolls completed stages back in reverse order.

use std::time::Instant;

use crate::error::{Error, ErrorKind, Result};
use crate::event::Event;
use crate::journal::StageState;
use crate::stage::{Check, Plan, RunContext, Undo};

/// Which part of the plan to run.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// Stop after this stage.
    pub until: Option<String>,
    /// Run only this stage.
    pub only: Option<String>,
}

/// What `run` decided for one stage before starting.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Decision {
    /// Done in the journal: verify its check, then skip or redo.
    DoneBefore,
    /// Never started, interrupted, failed or undone: run it.
    Run,
}

/// Runs the selected stages. `confirm` is asked once, before anything runs,
/// with the destructive stages that will run; it returns an error to refuse.
pub async fn run(
    plan: &Plan,
    ctx: &RunContext,
    selection: &Selection,
    confirm: &dyn Fn(&[String]) -> Result<()>,
) -> Result<()> {
    let started = Instant::now();
    let (first, last) = match (&selection.only, &selection.until) {
        (Some(only), _) => {
            let i = plan.index_of(only)?;
            (i, i)
        }
        (None, Some(until)) => (0, plan.index_of(until)?),
        (None, None) => (0, plan.stages.len().saturating_sub(1)),
    };
    let states = ctx.journal.stage_states(ctx.run_id).await?;
    let decisions: Vec<Decision> = plan.stages[first..=last]
        .iter()
        .map(|s| match states.get(&s.name()) {
            Some(st) if st.is_done() => Decision::DoneBefore,
            _ => Decision::Run,
        })
        .collect();
    let destructive: Vec<String> = plan.stages[first..=last]
        .iter()
        .zip(&decisions)
        .filter(|(s, d)| **d == Decision::Run && s.describe().destructive)
        .map(|(s, _)| s.name())
        .collect();
    if !destructive.is_empty() {
        confirm(&destructive)?;
    }
    ctx.journal.set_run_status(ctx.run_id, "running").await?;

    for (offset, stage) in plan.stages[first..=last].iter().enumerate() {
        let index = first + offset;
        let name = stage.name();
        if let Err(e) = ctx.cancel.check() {
            ctx.journal.set_run_status(ctx.run_id, "interrupted").await?;
            return Err(e);
        }
        if decisions[offset] == Decision::DoneBefore {
            // A later stage that started has built on this one's result (the
            // copy fills what clear emptied): its own check then no longer
            // applies, and redoing it would destroy later work.
            let later_started = plan.stages[index + 1..].iter().any(|s| {
                states
                    .get(&s.name())
                    .is_some_and(|st: &StageState| st.event != "undone")
            });
            if later_started {
                ctx.emit(Event::StageSkipped {
                    stage: name,
                    reason: "done; later stages build on it".into(),
                });
                continue;
            }
            match stage.check(ctx).await {
                Ok(Check::Holds) => {
                    ctx.emit(Event::StageSkipped {
                        stage: name,
                        reason: "done; its check holds".into(),
                    });
                    continue;
                }
                Ok(Check::Fails(why)) => ctx.emit(Event::Warning {
                    message: format!(
                        "stage {name} was done but its check fails now ({why}); running it again"
                    ),
                }),
                Err(e) => return Err(e.context(format!("checking stage {name}"))),
            }
        }
        run_stage(ctx, stage.as_ref()).await?;
    }

    let states = ctx.journal.stage_states(ctx.run_id).await?;
    let all_done = plan
        .stages
        .iter()
        .all(|s| states.get(&s.name()).is_some_and(|st| st.is_done()));
    let status = if all_done { "done" } else { "paused" };
    ctx.journal.set_run_status(ctx.run_id, status).await?;
    ctx.emit(Event::RunFinished {
        run_id: ctx.run_id.to_string(),
        status: status.into(),
        seconds: started.elapsed().as_secs_f64(),
    });
    Ok(())
}

/// Fault injection for the crash tests: when `CUTOVER_CRASH_AT` names this
/// point (`before:<stage>`: its start recorded, nothing done; `after:<stage>`:
/// its work done, not yet recorded), the process aborts on the spot, as a
/// crash would. Unset (always, outside tests), it does nothing.
pub fn crash_point(point: &str) {
    if std::env::var("CUTOVER_CRASH_AT").is_ok_and(|p| p == point) {
        std::process::abort();
    }
}

async fn run_stage(ctx: &RunContext, stage: &dyn crate::stage::Stage) -> Result<()> {
    let name = stage.name();
    let t0 = Instant::now();
    ctx.journal
        .record(ctx.run_id, &name, "started", None, None)
        .await?;
    ctx.emit(Event::StageStarted { stage: name.clone() });
    crash_point(&format!("before:{name}"));
    let outcome = stage.run(ctx).await;
    if outcome.is_ok() {
        crash_point(&format!("after:{name}"));
    }
    match outcome {
        Ok(artefacts) => {
            ctx.journal
                .record(ctx.run_id, &name, "done", None, Some(&artefacts))
                .await?;
            ctx.emit(Event::StageDone {
                stage: name,
                seconds: t0.elapsed().as_secs_f64(),
                summary: artefacts
                    .get("summary")
                    .and_then(|s| s.as_str())
                    .unwrap_or_default()
                    .to_string(),
            });
            Ok(())
        }
        Err(e) => {
            let status = if e.kind == ErrorKind::Interrupted {
                "interrupted"
            } else {
                "failed"
            };
            // Best effort: the failure itself is what the operator must see.
            let _ = ctx
                .journal
                .record(ctx.run_id, &name, "failed", Some(&e.to_string()), None)
                .await;
            let _ = ctx.journal.set_run_status(ctx.run_id, status).await;
            ctx.emit(Event::StageFailed {
                stage: name.clone(),
                error: e.to_string(),
            });
            let e = e.context(format!("stage {name} failed"));
            Err(if e.kind == ErrorKind::Failure {
                Error {
                    message: format!(
                        "{}. Once the cause is fixed, run the same command again: the run resumes at this stage \
                         (`cutover status` shows where it stands; `cutover rollback` undoes it)",
                        e.message
                    ),
                    ..e
                }
            } else {
                e
            })
        }
    }
}

/// Undoes every stage this run touched, in reverse order. Stops before an
/// irreversible stage unless `force`.
pub async fn rollback(plan: &Plan, ctx: &RunContext, force: bool) -> Result<()> {
    let states = ctx.journal.stage_states(ctx.run_id).await?;
    let touched = |name: &str| {
        states
            .get(name)
            .is_some_and(|s| !matches!(s.event.as_str(), "undone"))
    };
    for stage in plan.stages.iter().rev() {
        let name = stage.name();
        if !touched(&name) {
            continue;
        }
        ctx.cancel.check()?;
        match stage.undo_kind() {
            Undo::Irreversible(why) if !force => {
                return Err(Error::refused(format!(
                    "stage {name} cannot be undone ({why}); rollback stopped before it, with every later stage \
                     undone. Re-run with --force to go on past it and undo the stages before it"
                )));
            }
            Undo::Irreversible(why) => {
                ctx.emit(Event::Warning {
                    message: format!("{name} cannot be undone ({why}); leaving it as is"),
                });
                continue;
            }
            Undo::Nothing | Undo::Reversible(_) => {}
        }
        let t0 = Instant::now();
        ctx.journal
            .record(ctx.run_id, &name, "undo_started", None, None)
            .await?;
        ctx.emit(Event::UndoStarted { stage: name.clone() });
        match stage.undo(ctx).await {
            Ok(summary) => {
                ctx.journal
                    .record(ctx.run_id, &name, "undone", None, None)
                    .await?;
                ctx.emit(Event::StageUndone {
                    stage: name,
                    seconds: t0.elapsed().as_secs_f64(),
                    summary,
                });
            }
            Err(e) => {
                let _ = ctx
                    .journal
                    .record(ctx.run_id, &name, "undo_failed", Some(&e.message), None)
                    .await;
                ctx.emit(Event::StageFailed {
                    stage: name.clone(),
                    error: e.message.clone(),
                });
                return Err(e.context(format!("undoing stage {name} failed")));
            }
        }
    }
    ctx.journal.set_run_status(ctx.run_id, "rolled_back").await?;
    Ok(())
}
