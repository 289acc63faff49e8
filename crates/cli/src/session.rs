//! Opening a run for `run` and `rollback`: build the plan, take the run lock
//! on the target, create or upgrade the journal, and find the run to resume,
//! refusing when the plan file or a database changed since it began.

use std::io::{BufRead, IsTerminal, Write};
use std::sync::Arc;

use cutover_core::event::{Event, EventSink};
use cutover_core::journal::{Journal, RunLock, RunStatus};
use cutover_core::loaded::LoadedPlan;
use cutover_core::stage::{CancelFlag, RunContext};
use cutover_core::{Error, ErrorKind, Result};

use crate::planner::{self, Planned};

pub struct Session {
    pub planned: Planned,
    pub ctx: RunContext,
    // Held for the whole command; dropping it releases the lock.
    _lock: RunLock,
}

pub enum Mode {
    /// `run`: resume the latest run or start one.
    Run { restart: bool },
    /// `rollback`: the latest run must exist.
    Rollback,
}

/// This plan's latest run, when it finished (every stage done): a finished
/// run stays finished, so `run` does nothing and `verify` explains that the
/// applications' writes since are expected. Read-only; None when the target
/// has no journal yet.
pub async fn finished_run(loaded: &LoadedPlan) -> Result<Option<cutover_core::journal::RunRecord>> {
    let opened = cutover_pg::connect::target_journal(loaded, loaded.session(), 1).await?;
    let run = match opened.journal {
        Some(journal) => journal
            .latest_run()
            .await?
            .filter(|r| r.status == RunStatus::Done),
        // Archived (`cutover archive-journal`): still finished.
        None => crate::journal_archive::read_archive(loaded)
            .map_err(|e| Error::failure(format!("{e:#}")))?
            .and_then(|a| a.runs.into_iter().next())
            .map(|r| r.run)
            .filter(|r| r.status == RunStatus::Done),
    };
    opened.pool.close().await;
    Ok(run)
}

pub async fn open(
    loaded: &LoadedPlan,
    switches: planner::Switches,
    mode: Mode,
    events: Arc<dyn EventSink>,
    cancel: CancelFlag,
) -> Result<Session> {
    // The lock comes first: a second run must not even inspect (inspection can
    // wait behind the first run's locks).
    let schema = &loaded.file.options.journal_schema;
    let target = loaded.target()?;
    cutover_pg::connect::probe(&target, loaded.file.options.connect_timeout).await?;
    let lock = RunLock::acquire(&target.connect_options()?, schema).await?;
    let planned = planner::build(loaded, switches).await?;
    let journal = Journal::ensure(&planned.dbs.target_pool, schema).await?;
    let mut latest = journal.latest_run().await?;
    // A run refused at discover changed nothing (discover only reads, its
    // rehearsal's scratch database is dropped): after the operator's fix,
    // which may be to the plan file, the run starts over instead of
    // refusing the changed plan.
    if let Some(run) = &latest
        && matches!(mode, Mode::Run { .. })
        && !run.status.is_closed()
        && refused_at_discover(&journal, run).await?
    {
        journal.set_run_status(run.id, RunStatus::Abandoned).await?;
        latest = None;
    }
    let (run_id, resumed) = match (mode, latest) {
        (Mode::Rollback, None) => {
            return Err(Error::bad_input(
                "there is no run of this plan in the target's journal: nothing to roll back",
            ));
        }
        (Mode::Rollback, Some(run)) => {
            refuse_drift(loaded, &planned, &run)?;
            (run.id, true)
        }
        (Mode::Run { restart }, Some(run))
            if !restart && !matches!(run.status, RunStatus::RolledBack | RunStatus::Abandoned) =>
        {
            refuse_drift(loaded, &planned, &run)?;
            // A resumed run's discover has passed: the rehearsal that names
            // them does not run again.
            if !planned.lacking_roles.is_empty() {
                return Err(planner::lacking_roles_refusal(&planned.lacking_roles));
            }
            (run.id, true)
        }
        (Mode::Run { .. }, previous) => {
            if let Some(run) = previous
                && !run.status.is_closed()
            {
                journal.set_run_status(run.id, RunStatus::Abandoned).await?;
            }
            let id = journal
                .create_run(
                    &loaded.path.display().to_string(),
                    &loaded.fingerprint,
                    &planned.dbs.source_identity,
                    &planned.dbs.target_identity,
                )
                .await?;
            (id, false)
        }
    };
    events.emit(Event::RunStarted {
        run_id: run_id.to_string(),
        resumed,
    });
    if loaded.file.options.mode == cutover_core::plan_file::Mode::Online {
        for problem in
            cutover_pg::online::subscription::health(&planned.dbs.source_pool, &planned.dbs.target_pool)
                .await?
        {
            events.emit(Event::Warning { message: problem });
        }
    }
    let ctx = RunContext {
        source: planned.dbs.source_pool.clone(),
        target: planned.dbs.target_pool.clone(),
        journal,
        run_id,
        run_dir: loaded.run_dir(),
        events,
        cancel,
    };
    Ok(Session {
        planned,
        ctx,
        _lock: lock,
    })
}

/// Whether a run's only journaled stage is discover, and it failed.
async fn refused_at_discover(journal: &Journal, run: &cutover_core::journal::RunRecord) -> Result<bool> {
    let states = journal.stage_states(run.id).await?;
    Ok(states.len() == 1
        && states
            .get(cutover_pg::discover::Discover::NAME)
            .is_some_and(|s| s.event == cutover_core::journal::StageEvent::Failed))
}

fn refuse_drift(
    loaded: &LoadedPlan,
    planned: &Planned,
    run: &cutover_core::journal::RunRecord,
) -> Result<()> {
    let mut changes = vec![];
    if run.plan_fingerprint != loaded.fingerprint {
        changes.push(format!(
            "the plan file changed (sha256 {}… when the run began, {}… now)",
            &run.plan_fingerprint[..12],
            &loaded.fingerprint[..12]
        ));
    }
    for d in run.source_identity.differences(&planned.dbs.source_identity) {
        changes.push(format!("the source changed: {d}"));
    }
    for d in run.target_identity.differences(&planned.dbs.target_identity) {
        changes.push(format!("the target changed: {d}"));
    }
    if changes.is_empty() {
        return Ok(());
    }
    Err(Error::refused(format!(
        "run {} began on {} by {}@{} and cannot be resumed: {}. Put things back as they were, or start over with \
         `cutover run --restart` (`cutover rollback` first if the earlier run changed anything)",
        run.id,
        run.started_at.format("%Y-%m-%d %H:%M UTC"),
        run.operator_user,
        run.operator_host,
        changes.join("; ")
    )))
}

/// Asks for the destructive stages' confirmation: `--yes`, or the target
/// database's name typed on a terminal. No terminal and no `--yes`: refused.
pub fn confirmer(yes: bool, target_db: String, what: &'static str) -> impl Fn(&[String]) -> Result<()> {
    move |stages: &[String]| {
        if yes {
            return Ok(());
        }
        if !std::io::stdin().is_terminal() {
            return Err(Error::new(
                ErrorKind::Refused,
                format!(
                    "{what} {} changes data and needs confirmation, but there is no terminal to ask on: \
                     pass --yes to confirm",
                    stages.join(", ")
                ),
            ));
        }
        eprint!(
            "{what} {} changes data. Type the target database's name ({target_db}) to go on: ",
            stages.join(", ")
        );
        let _ = std::io::stderr().flush();
        let mut answer = String::new();
        std::io::stdin().lock().read_line(&mut answer)?;
        if answer.trim() == target_db {
            Ok(())
        } else {
            Err(Error::refused(
                "confirmation did not match the target database's name; nothing was changed",
            ))
        }
    }
}

/// Installs the handler of Ctrl-C (SIGINT) and SIGTERM: the first stops at
/// the next safe point (inside a pause: the applications resumed first).
pub fn cancel_on_ctrl_c(cancel: &CancelFlag, events: Arc<dyn EventSink>) {
    let cancel = cancel.clone();
    tokio::spawn(async move {
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        let which = tokio::select! {
            r = tokio::signal::ctrl_c() => if r.is_ok() { "interrupted (Ctrl-C)" } else { return },
            _ = term => "terminated (SIGTERM)",
        };
        events.emit(Event::Warning {
            message: format!("{which}: stopping at the next safe point"),
        });
        cancel.cancel();
    });
}

impl Session {
    pub fn plan(&self) -> &cutover_core::stage::Plan {
        &self.planned.plan
    }
}
