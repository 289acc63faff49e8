//! `cutover status`: the latest run's stage table from the journal.

use clap::Args;
use cutover_core::loaded::LoadedPlan;
use cutover_core::plan_file::Mode;

use crate::args::{GlobalArgs, Output};
use crate::exit::Code;

#[derive(Debug, Args)]
pub struct StatusArgs {}

pub(crate) fn run(global: &GlobalArgs, _args: StatusArgs) -> anyhow::Result<Code> {
    let loaded = LoadedPlan::load(&global.plan)?;
    super::runtime()?.block_on(async {
        let opts = &loaded.file.options;
        let opened =
            cutover_pg::connect::target_journal(&loaded, loaded.session().without_statement_timeout(), 2).await?;
        let (target, pool) = (opened.target, opened.pool);
        let Some(journal) = opened.journal else {
            if let Some(archive) = crate::journal_archive::read_archive(&loaded)?
                && let Some(latest) = archive.runs.into_iter().next()
            {
                let mut states = latest.stages;
                states.sort_by_key(|s| s.first_started_at.unwrap_or(s.at));
                if global.output == Output::Json {
                    println!("{}", serde_json::json!({ "run": latest.run, "stages": states, "archived_at": archive.archived_at }));
                } else {
                    println!(
                        "(from the archive {}: the journal schema was dropped from the target on {})",
                        crate::journal_archive::archive_path(&loaded).display(),
                        archive.archived_at.format("%Y-%m-%d %H:%M UTC")
                    );
                    print_states(&latest.run, &states);
                }
                return Ok(Code::Success);
            }
            if global.output == Output::Json {
                println!("{}", serde_json::json!({ "run": null, "stages": [] }));
            } else {
                println!(
                    "No run yet: the target {target} has no journal (schema {}).",
                    opts.journal_schema
                );
            }
            return Ok(Code::Success);
        };
        let Some(run) = journal.latest_run().await? else {
            println!("No run yet in the journal of {target}.");
            return Ok(Code::Success);
        };
        let mut states: Vec<_> = journal.stage_states(run.id).await?.into_values().collect();
        states.sort_by_key(|s| s.first_started_at.unwrap_or(s.at));
        let replication = if opts.mode == Mode::Online {
            Some(replication(&loaded, &pool).await)
        } else {
            None
        };
        if global.output == Output::Json {
            let mut v = serde_json::json!({ "run": run, "stages": states });
            if let Some(r) = &replication {
                v["replication"] = serde_json::json!(r);
            }
            println!("{v}");
            return Ok(Code::Success);
        }
        print_states(&run, &states);
        if let Some(lines) = replication {
            if lines.is_empty() {
                println!("replication: none of cutover's slots, publications or subscriptions exists");
            }
            for l in lines {
                println!("replication: {l}");
            }
        }
        Ok(Code::Success)
    })
}

fn print_states(run: &cutover_core::journal::RunRecord, states: &[cutover_core::journal::StageState]) {
    println!(
        "Run {} ({}), began {} by {}@{}; plan {}",
        run.id,
        run.status,
        run.started_at.format("%Y-%m-%d %H:%M:%S UTC"),
        run.operator_user,
        run.operator_host,
        run.plan_path
    );
    let width = states.iter().map(|s| s.stage.len()).max().unwrap_or(0).max(16);
    println!(
        "{:<width$} {:<12} {:<20} {:>9}  detail",
        "stage", "state", "started", "seconds"
    );
    for s in states {
        let detail = s.detail();
        println!(
            "{:<width$} {:<12} {:<20} {:>9}  {detail}",
            s.stage,
            s.event,
            s.last_started_at
                .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
                .unwrap_or_default(),
            s.seconds().map(|x| format!("{x:.1}")).unwrap_or_default(),
        );
    }
}

/// The online mode's replication objects on both servers, read now (a
/// source that does not answer is said so).
async fn replication(loaded: &LoadedPlan, target: &sqlx::PgPool) -> Vec<String> {
    let opts = &loaded.file.options;
    let mut lines = match cutover_pg::online::leftovers::describe(target, "target").await {
        Ok(l) => l,
        Err(e) => vec![format!("the target's could not be read: {}", e.message)],
    };
    let source = async {
        let endpoint = loaded.source()?;
        let pool = cutover_pg::connect::pool(&endpoint, loaded.session().glance(), 1).await?;
        let mut lines = cutover_pg::online::leftovers::describe(&pool, "source").await?;
        let problems = cutover_pg::online::subscription::health(&pool, target).await?;
        if cutover_pg::online::subscription::subscription(&pool, cutover_pg::online::REVERSE)
            .await?
            .is_some()
        {
            let behind =
                cutover_pg::online::sentinel::sequences_behind(&pool, target, &opts.journal_schema).await?;
            lines.push(if behind.is_empty() {
                "sequences: the source's are level with the target's".to_string()
            } else {
                format!(
                    "sequences: {} on the source trail the target's (the reverse stream carries rows, not \
                     sequences; a rollback sets them back): {}",
                    behind.len(),
                    behind.join(", ")
                )
            });
        }
        Ok::<_, cutover_core::Error>((lines, problems))
    };
    match source.await {
        Ok((l, problems)) => {
            lines.extend(l);
            lines.extend(problems.into_iter().map(|p| format!("WARNING: {p}")));
        }
        Err(e) => lines.push(format!("the source's could not be read: {}", e.message)),
    }
    lines
}
