//! The data phase: every table (or block range) not yet journaled, largest
//! first, `jobs` at a time, with the early index and key builds and the
//! `ANALYZE` of large tables scheduled in between (see `schedule`).

use std::sync::{Arc, Mutex};

use cutover_core::event::Event;
use cutover_core::{Error, Result};

use super::Pass;
use super::analyze::{analyze_item, gets_analyze};
use super::early::EarlyEntry;
use super::schedule::{Analysis, Schedule};
use super::tables::{Split, Work, table_item, table_work};
use super::workers::Worker;

/// What the data phase did in this pass.
#[derive(Debug, Default)]
pub(super) struct Data {
    pub tables_copied: usize,
    pub rows_copied: u64,
    /// Early entries built in this pass.
    pub early_built: usize,
    /// Worker time spent in them.
    pub index_seconds: f64,
    /// Tables analyzed during the data phase, and the worker time it took.
    pub analyzed: usize,
    pub analyze_seconds: f64,
}

/// STEP: copies what is left of the data, building early entries beside it.
pub(super) async fn copy(pass: &Pass<'_>, early: &[EarlyEntry]) -> Result<Data> {
    let ctx = pass.ctx;
    let settings = pass.settings;
    let done = &pass.done;
    let split = Split::new(&pass.source, settings.split_bytes, settings.jobs);
    let mut work: Vec<Work> = vec![];
    for t in pass.source.storage_tables() {
        work.extend(table_work(pass, t, done, split).await?);
    }
    work.sort_by_key(|w| std::cmp::Reverse(w.bytes()));
    let tables_copied = work
        .iter()
        .filter(|w| w.range.is_none_or(|r| r.index == 0))
        .count();
    ctx.emit(Event::CopyStarted {
        items: work.len() as u64,
        estimated_bytes: work
            .iter()
            .map(|w| w.table.pages.max(0) as u64 * 8192 / w.range.map(|r| r.count as u64).unwrap_or(1))
            .sum(),
    });
    let to_build: Vec<EarlyEntry> = early
        .iter()
        .filter(|e| !done.contains(&e.item))
        .cloned()
        .collect();
    // Large tables whose indexes and keys are all built during the copy are
    // analyzed there too, in the gaps at its end; the others after the final
    // restore.
    let mut analyses: Vec<(i64, Analysis)> = pass
        .source
        .storage_tables()
        .filter(|t| gets_analyze(t, settings.analyze_bytes) && !done.contains(&analyze_item(t)))
        .filter(|t| {
            let item = table_item(t);
            early.iter().any(|e| !e.foreign_key && e.tables[0] == item)
        })
        .map(|t| {
            (
                t.bytes,
                Analysis {
                    table: table_item(t),
                    qualified: t.qualified(),
                    item: analyze_item(t),
                },
            )
        })
        .collect();
    analyses.sort_by_key(|(bytes, _)| std::cmp::Reverse(*bytes));
    let total_work = work.len() + to_build.len() + analyses.len();
    let schedule = Schedule::with_analyses(
        work.into_iter().map(|w| (table_item(&w.table), w)).collect(),
        to_build,
        analyses.into_iter().map(|(_, a)| a).collect(),
    );
    let workers = settings.jobs.min(total_work).max(1);
    let shared = Worker {
        source: ctx.source.clone(),
        target: ctx.target.clone(),
        journal: ctx.journal.clone(),
        run_id: ctx.run_id,
        events: ctx.events.clone(),
        cancel: ctx.cancel.clone(),
        schedule: Arc::new(Mutex::new(schedule)),
        snapshot: pass.snapshot.clone(),
        binary: pass.binary,
        stall: settings.stall,
        build_memory_mb: settings.build_memory_mb,
        pg_restore: pass.pg_restore.clone(),
        target_major: pass.target_major,
        archive: pass.archive.clone(),
        dir: pass.dir.clone(),
        index_seconds: Arc::new(Mutex::new(0.0)),
        analyzed: Arc::new(Mutex::new((0, 0.0))),
    };
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..workers {
        tasks.spawn(shared.clone().run());
    }
    let mut rows_copied = 0u64;
    let mut first_error = None;
    loop {
        // After a failure the others finish what they are on (a copy or an
        // index build, each in its own transaction) for at most the stall
        // timeout; then they are dropped, which rolls it back.
        let joined = if first_error.is_some() {
            match tokio::time::timeout(shared.stall, tasks.join_next()).await {
                Ok(j) => j,
                Err(_) => {
                    tasks.abort_all();
                    break;
                }
            }
        } else {
            tasks.join_next().await
        };
        let Some(joined) = joined else { break };
        match joined {
            Ok(Ok(n)) => rows_copied += n,
            Ok(Err(e)) => {
                // Nothing more starts.
                shared.schedule.lock().unwrap().abort();
                first_error.get_or_insert(e);
            }
            Err(e) => {
                shared.schedule.lock().unwrap().abort();
                first_error.get_or_insert(Error::failure(format!("a copy worker crashed: {e}")));
            }
        }
    }
    if let Some(e) = first_error {
        return Err(e);
    }
    let left_over = shared.schedule.lock().unwrap().left_over();
    let (analyzed, analyze_seconds) = *shared.analyzed.lock().unwrap();
    Ok(Data {
        tables_copied,
        rows_copied,
        early_built: early.len() - left_over,
        index_seconds: *shared.index_seconds.lock().unwrap(),
        analyzed,
        analyze_seconds,
    })
}
