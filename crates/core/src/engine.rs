//! The engine: runs a plan's stages in order, skips what the journal says is
//! done (and still holds), records every transition before and after it
//! happens, and rolls completed stages back in reverse order.

use std::time::Instant;

use crate::error::{Error, ErrorKind, Result};
use crate::event::Event;
use crate::journal::{RunStatus, StageEvent, StageState};
use crate::stage::{Check, Plan, RunContext, Undo};

/// Which part of the plan to run.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// Stop after this stage.
    pub until: Option<String>,
    /// Run only this stage.
    pub only: Option<String>,
}

/// What `run` decides for one stage from the journal, before starting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Never started, interrupted, failed or undone: run it.
    Run,
    /// Done, and a later stage has started on its result (the copy fills
    /// what clear emptied): its own check no longer applies, and redoing it
    /// would destroy later work. Skipped.
    Built,
    /// Done, nothing after it started: skipped if its check holds, else run
    /// again.
    Check,
}

/// The decision for each stage of `names[first..=last]`, from the latest
/// state of every stage in the journal (`names` is the whole plan, in order).
pub fn decide(
    names: &[String],
    first: usize,
    last: usize,
    states: &std::collections::BTreeMap<String, StageState>,
) -> Vec<Decision> {
    (first..=last)
        .map(|i| match states.get(&names[i]) {
            Some(st) if st.is_done() => {
                let later_started = names[i + 1..]
                    .iter()
                    .any(|n| states.get(n).is_some_and(|st| st.event != StageEvent::Undone));
                if later_started {
                    Decision::Built
                } else {
                    Decision::Check
                }
            }
            _ => Decision::Run,
        })
        .collect()
}

/// The stages `rollback` undoes: every one this run touched and did not
/// undo yet, last first.
pub fn to_undo(names: &[String], states: &std::collections::BTreeMap<String, StageState>) -> Vec<usize> {
    (0..names.len())
        .rev()
        .filter(|&i| {
            states
                .get(&names[i])
                .is_some_and(|s| s.event != StageEvent::Undone)
        })
        .collect()
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
    let names: Vec<String> = plan.stages.iter().map(|s| s.name()).collect();
    let decisions = decide(&names, first, last, &states);
    let destructive: Vec<String> = plan.stages[first..=last]
        .iter()
        .zip(&decisions)
        .filter(|(s, d)| **d == Decision::Run && s.describe().destructive)
        .map(|(s, _)| s.name())
        .collect();
    if !destructive.is_empty() {
        confirm(&destructive)?;
    }
    ctx.journal.set_run_status(ctx.run_id, RunStatus::Running).await?;

    for (offset, stage) in plan.stages[first..=last].iter().enumerate() {
        let name = stage.name();
        if let Err(e) = ctx.cancel.check()
            && !stage.inside_pause()
        {
            ctx.journal
                .set_run_status(ctx.run_id, RunStatus::Interrupted)
                .await?;
            return Err(e);
        }
        match decisions[offset] {
            Decision::Run => {}
            Decision::Built => {
                ctx.emit(Event::StageSkipped {
                    stage: name,
                    reason: "done; later stages build on it".into(),
                });
                continue;
            }
            Decision::Check => match stage.check(ctx).await {
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
            },
        }
        if let Err(e) = run_stage(ctx, stage.as_ref()).await {
            if stage.inside_pause() {
                return Err(back_out_of_pause(plan, ctx, first + offset, e).await);
            }
            return Err(e);
        }
    }

    let states = ctx.journal.stage_states(ctx.run_id).await?;
    let all_done = plan
        .stages
        .iter()
        .all(|s| states.get(&s.name()).is_some_and(|st| st.is_done()));
    let status = if all_done {
        RunStatus::Done
    } else {
        RunStatus::Paused
    };
    ctx.journal.set_run_status(ctx.run_id, status).await?;
    ctx.emit(Event::RunFinished {
        run_id: ctx.run_id.to_string(),
        status: status.to_string(),
        seconds: started.elapsed().as_secs_f64(),
    });
    Ok(())
}

/// Runs `f`, turning a panic inside it into an error (a bug, reported as
/// one): the caller's clean-up (a pause's resume, a fence lifted) then runs
/// as for any other failure.
pub async fn catch_panic<T>(f: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    use futures::FutureExt;
    match std::panic::AssertUnwindSafe(f).catch_unwind().await {
        Ok(r) => r,
        Err(panic) => {
            let what = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "no message".into());
            Err(Error::failure(format!(
                "internal error (a bug in cutover; please report it): {what}"
            )))
        }
    }
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
        .record(ctx.run_id, &name, StageEvent::Started, None, None)
        .await?;
    ctx.emit(Event::StageStarted { stage: name.clone() });
    crash_point(&format!("before:{name}"));
    let outcome = catch_panic(stage.run(ctx)).await;
    if outcome.is_ok() {
        crash_point(&format!("after:{name}"));
    }
    match outcome {
        Ok(artefacts) => {
            ctx.journal
                .record(ctx.run_id, &name, StageEvent::Done, None, Some(&artefacts))
                .await?;
            ctx.emit(Event::StageDone {
                stage: name,
                seconds: t0.elapsed().as_secs_f64(),
                summary: crate::journal::summary_of(&artefacts),
            });
            Ok(())
        }
        Err(e) => {
            let status = if e.kind == ErrorKind::Interrupted {
                RunStatus::Interrupted
            } else {
                RunStatus::Failed
            };
            // Best effort: the failure itself is what the operator must see.
            let _ = ctx
                .journal
                .record(ctx.run_id, &name, StageEvent::Failed, Some(&e.to_string()), None)
                .await;
            let _ = ctx.journal.set_run_status(ctx.run_id, status).await;
            ctx.emit(Event::StageFailed {
                stage: name.clone(),
                error: e.message.clone(),
                sqlstate: e.sqlstate.clone(),
                hint: e.hint.clone(),
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

/// The stages a failure inside the pause undoes: from the one that opened
/// it (the last stage before `failed` not inside the pause) to `failed`,
/// those touched and not undone, last first.
pub fn pause_to_undo(
    names: &[String],
    inside: &[bool],
    failed: usize,
    states: &std::collections::BTreeMap<String, StageState>,
) -> Vec<usize> {
    let opened = (0..=failed).rev().find(|&i| !inside[i]).unwrap_or(0);
    to_undo(&names[..=failed], states)
        .into_iter()
        .filter(|&i| i >= opened)
        .collect()
}

/// A stage inside the pause failed with `err`: every stage since the pause
/// opened is undone, so the applications run on the source again (never
/// paused, never on both sides). Returns `err`, saying what became of them.
async fn back_out_of_pause(plan: &Plan, ctx: &RunContext, failed: usize, err: Error) -> Error {
    let back = async {
        let states = ctx.journal.stage_states(ctx.run_id).await?;
        let names: Vec<String> = plan.stages.iter().map(|s| s.name()).collect();
        let inside: Vec<bool> = plan.stages.iter().map(|s| s.inside_pause()).collect();
        let undo = pause_to_undo(&names, &inside, failed, &states);
        ctx.emit(Event::Warning {
            message: format!(
                "stage {} failed while the applications were paused: undoing {} to bring them back to the source",
                names[failed],
                undo.iter().map(|&i| names[i].as_str()).collect::<Vec<_>>().join(", ")
            ),
        });
        undo_stages(plan, ctx, &undo, true, false).await
    }
    .await;
    match back {
        Ok(()) => {
            let _ = ctx.journal.set_run_status(ctx.run_id, RunStatus::Failed).await;
            err.context(
                "the applications are back on the source (every stage since the switch undone; `cutover run` \
                 starts the switch again once the cause is fixed)",
            )
        }
        Err(b) => err.context(format!(
            "bringing the applications back to the source failed too ({b}); run `cutover rollback`"
        )),
    }
}

/// Undoes every stage this run touched, in reverse order. Stops before an
/// irreversible stage unless `force`.
pub async fn rollback(plan: &Plan, ctx: &RunContext, force: bool) -> Result<()> {
    let states = ctx.journal.stage_states(ctx.run_id).await?;
    let names: Vec<String> = plan.stages.iter().map(|s| s.name()).collect();
    undo_stages(plan, ctx, &to_undo(&names, &states), force, true).await?;
    ctx.journal
        .set_run_status(ctx.run_id, RunStatus::RolledBack)
        .await?;
    Ok(())
}

/// Undoes `indices` in that order (a rollback's, or a pause's way back).
/// `interruptible`: Ctrl-C stops it at a stage boundary, but never while
/// the way back is inside a pause (after an inside-pause stage was undone,
/// until the stage that opened the pause is); a pause's back-out is not.
async fn undo_stages(
    plan: &Plan,
    ctx: &RunContext,
    indices: &[usize],
    force: bool,
    interruptible: bool,
) -> Result<()> {
    let mut pausing = false;
    for &i in indices {
        let stage = &plan.stages[i];
        let name = stage.name();
        if interruptible && !pausing {
            ctx.cancel.check()?;
        }
        pausing = stage.inside_pause();
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
            .record(ctx.run_id, &name, StageEvent::UndoStarted, None, None)
            .await?;
        ctx.emit(Event::UndoStarted { stage: name.clone() });
        match catch_panic(stage.undo(ctx)).await {
            Ok(summary) => {
                ctx.journal
                    .record(ctx.run_id, &name, StageEvent::Undone, None, None)
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
                    .record(ctx.run_id, &name, StageEvent::UndoFailed, Some(&e.message), None)
                    .await;
                ctx.emit(Event::StageFailed {
                    stage: name.clone(),
                    error: e.message.clone(),
                    sqlstate: e.sqlstate.clone(),
                    hint: e.hint.clone(),
                });
                return Err(e.context(format!("undoing stage {name} failed")));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn states(list: &[(&str, StageEvent)]) -> BTreeMap<String, StageState> {
        list.iter()
            .map(|(stage, event)| {
                (
                    stage.to_string(),
                    StageState {
                        stage: stage.to_string(),
                        event: *event,
                        first_started_at: None,
                        last_started_at: None,
                        at: chrono::Utc::now(),
                        error: None,
                        artefacts: None,
                    },
                )
            })
            .collect()
    }

    const PLAN: &[&str] = &["discover", "backup-target", "clear-target", "copy", "verify-data"];

    #[test]
    fn a_new_run_runs_every_stage() {
        let d = decide(&names(PLAN), 0, 4, &BTreeMap::new());
        assert_eq!(d, vec![Decision::Run; 5]);
    }

    #[test]
    fn a_resume_skips_what_later_stages_built_on_and_checks_the_last_done() {
        use StageEvent::*;
        // Killed during the copy: clear must not run again (the copy fills
        // what it emptied), the copy resumes.
        let s = states(&[
            ("discover", Done),
            ("backup-target", Done),
            ("clear-target", Done),
            ("copy", Started),
        ]);
        assert_eq!(
            decide(&names(PLAN), 0, 4, &s),
            vec![
                Decision::Built,
                Decision::Built,
                Decision::Built,
                Decision::Run,
                Decision::Run
            ]
        );
        // Stopped after the copy (--until copy): the copy's check decides.
        let s = states(&[
            ("discover", Done),
            ("backup-target", Done),
            ("clear-target", Done),
            ("copy", Done),
        ]);
        let d = decide(&names(PLAN), 0, 4, &s);
        assert_eq!(d[3], Decision::Check);
        assert_eq!(d[2], Decision::Built);
    }

    #[test]
    fn failed_and_undone_stages_run_again_and_an_undone_later_stage_does_not_protect() {
        use StageEvent::*;
        let s = states(&[
            ("discover", Done),
            ("backup-target", Failed),
            ("clear-target", Undone),
            ("copy", Undone),
        ]);
        // discover: backup-target started (and failed) after it: built on.
        assert_eq!(
            decide(&names(PLAN), 0, 3, &s),
            vec![Decision::Built, Decision::Run, Decision::Run, Decision::Run]
        );
        // Only clear and copy undone after them: discover alone is checked.
        let s = states(&[("discover", Done), ("clear-target", Undone), ("copy", Undone)]);
        assert_eq!(decide(&names(PLAN), 0, 0, &s), vec![Decision::Check]);
    }

    #[test]
    fn rollback_undoes_touched_stages_last_first_and_skips_undone_ones() {
        use StageEvent::*;
        let s = states(&[
            ("discover", Done),
            ("backup-target", Done),
            ("clear-target", Undone),
            ("copy", Failed),
        ]);
        assert_eq!(to_undo(&names(PLAN), &s), vec![3, 1, 0]);
        assert!(to_undo(&names(PLAN), &BTreeMap::new()).is_empty());
    }

    #[test]
    fn a_failure_inside_the_pause_undoes_back_to_the_stage_that_opened_it() {
        use StageEvent::*;
        let plan = names(&[
            "replicate",
            "switch",
            "repoint:a",
            "repoint:b",
            "resume",
            "verify-sync",
        ]);
        let inside = [false, false, true, true, true, false];
        // repoint:b failed after repoint:a: both repoints and the switch
        // are undone, last first; replicate is not.
        let s = states(&[
            ("replicate", Done),
            ("switch", Done),
            ("repoint:a", Done),
            ("repoint:b", Failed),
        ]);
        assert_eq!(pause_to_undo(&plan, &inside, 3, &s), vec![3, 2, 1]);
        // resume failed: everything from the switch on.
        let s = states(&[
            ("replicate", Done),
            ("switch", Done),
            ("repoint:a", Done),
            ("repoint:b", Done),
            ("resume", Failed),
        ]);
        assert_eq!(pause_to_undo(&plan, &inside, 4, &s), vec![4, 3, 2, 1]);
    }
}
