//! `cutover archive-journal`: once no rollback is needed, the journal (every
//! run's record, stage events, items) moves from the target database into
//! the run directory, and its schema is dropped from the production
//! database; `status` and `report` then read the archive.

use clap::Args;
use cutover_core::journal::StageState;
use cutover_core::loaded::LoadedPlan;

use crate::args::GlobalArgs;
use crate::exit::{Code, coded};
use crate::journal_archive::{Archive, ArchivedRun, archive_path};

#[derive(Debug, Args)]
pub struct ArchiveArgs {
    /// Confirm: after this, `cutover rollback` can no longer undo the run.
    #[arg(long)]
    pub yes: bool,
}

pub(crate) fn run(global: &GlobalArgs, args: ArchiveArgs) -> anyhow::Result<Code> {
    let loaded = LoadedPlan::load(&global.plan)?;
    super::runtime()?.block_on(async {
        let opts = &loaded.file.options;
        let opened =
            cutover_pg::connect::target_journal(&loaded, loaded.session().without_statement_timeout(), 2).await?;
        let target = &opened.target;
        let Some(journal) = opened.journal else {
            return Err(coded(
                cutover_core::ErrorKind::BadInput,
                format!("the target {target} has no journal (schema {}): nothing to archive", opts.journal_schema),
            ));
        };
        let runs = journal.all_runs().await?;
        if let Some(latest) = runs.first()
            && !latest.status.is_closed()
        {
            return Err(coded(
                cutover_core::ErrorKind::Refused,
                format!(
                    "run {} is {}: archiving its journal would lose its resume and rollback; finish it (`cutover \
                     run`) or roll it back first",
                    latest.id, latest.status
                ),
            ));
        }
        if !args.yes {
            return Err(coded(
                cutover_core::ErrorKind::Refused,
                "archiving the journal removes what `cutover rollback` reads: pass --yes once no rollback is needed",
            ));
        }
        let mut archived = vec![];
        for run in runs {
            let mut stages: Vec<StageState> = journal.stage_states(run.id).await?.into_values().collect();
            stages.sort_by_key(|s| s.first_started_at.unwrap_or(s.at));
            let items = journal.items(run.id).await?;
            archived.push(ArchivedRun { run, stages, items });
        }
        let archive = Archive {
            schema: opts.journal_schema.clone(),
            archived_at: chrono::Utc::now(),
            runs: archived,
        };
        let path = archive_path(&loaded);
        // Written (0600, fsync, rename) before anything is dropped.
        cutover_ops::files::write_private(&path, serde_json::to_string_pretty(&archive)?.as_bytes())?;
        journal.drop_schema().await?;
        println!(
            "archived {} run(s) into {} and dropped schema {} from the target {target}; `cutover status` and \
             `cutover report` read the archive from now on",
            archive.runs.len(),
            path.display(),
            opts.journal_schema
        );
        Ok(Code::Success)
    })
}
