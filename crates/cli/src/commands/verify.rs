//! `cutover verify`: compares source and target table by table (exact row
//! counts and content hashes), plus schema objects, sequences and large
//! objects. Exit code 3 when anything differs.

use clap::Args;
use cutover_core::loaded::LoadedPlan;
use cutover_pg::copy::default_jobs;

use crate::args::{GlobalArgs, Output};
use crate::exit::Code;

#[derive(Debug, Args)]
pub struct VerifyArgs {}

pub(crate) fn run(global: &GlobalArgs, _args: VerifyArgs) -> anyhow::Result<Code> {
    let loaded = LoadedPlan::load(&global.plan)?;
    super::runtime()?.block_on(async {
        let jobs = default_jobs(loaded.file.options.jobs);
        let (dbs, source) = cutover_pg::Databases::connect_or_retired(&loaded, jobs as u32 * 2 + 2).await?;
        if source != cutover_pg::connect::SourceState::Live {
            return Err(crate::exit::coded(
                cutover_core::ErrorKind::BadInput,
                "the source was retired by this plan's run (decommission-source), after verify-data proved the \
                 copy: that proof is in `cutover status` and `cutover report`. `cutover rollback` brings the source \
                 back",
            ));
        }
        let finished = crate::session::finished_run(&loaded).await?;
        let report = cutover_pg::verify::verify(
            &dbs.source_pool,
            &dbs.target_pool,
            &loaded.file.options.journal_schema,
            jobs,
            loaded.file.options.split_bytes,
            loaded.file.options.row_hash,
            &cutover_pg::security::RoleMap(loaded.file.roles.map.clone()),
        )
        .await?;
        let mut report = report;
        // The online mode's rollback window: the reverse stream carries the
        // applications' rows back to the source, not their sequences (a
        // rollback sets those back): sequences ahead on the target are expected.
        let mut reverse_note = None;
        if cutover_pg::online::subscription::subscription(&dbs.source_pool, cutover_pg::online::REVERSE)
            .await?
            .is_some()
            && !report.sequences.is_empty()
        {
            reverse_note = Some(format!(
                "note: {} sequence(s) differ while the reverse stream (target -> source) runs: it carries rows, not \
                 sequences; a rollback sets them back on the source ({})",
                report.sequences.len(),
                report.sequences.iter().map(|s| s.0.as_str()).collect::<Vec<_>>().join(", ")
            ));
            report.leave_out_sequences();
        }
        if loaded.file.options.mode == cutover_core::plan_file::Mode::Online {
            for problem in cutover_pg::online::subscription::health(&dbs.source_pool, &dbs.target_pool).await? {
                eprintln!("warning: {problem}");
            }
        }
        let schema = &loaded.file.options.journal_schema;
        if cutover_pg::fence::is_up(&dbs.source_pool, schema).await? {
            eprintln!(
                "fence: up on the source; the login roles that may still connect there: {}",
                cutover_pg::fence::may_connect(&dbs.source_pool).await?.join(", ")
            );
        }
        if global.output == Output::Json {
            println!("{}", serde_json::to_string(&report)?);
        } else {
            println!(
                "{:<40} {:>10} {:>10} {:>22}  result",
                "table", "source", "target", "hash (source)"
            );
            for t in &report.tables {
                println!(
                    "{:<40} {:>10} {:>10} {:>22}  {}",
                    t.table,
                    t.source_rows,
                    t.target_rows
                        .map(|n| n.to_string())
                        .unwrap_or_else(|| "missing".into()),
                    t.source_hash,
                    if t.matches {
                        "ok".to_string()
                    } else {
                        format!("DIFFERS {}", t.differing_ranges.join(", "))
                    }
                );
            }
            println!(
                "{} sequences compared, {} large objects on the source",
                report.sequences_compared, report.large_objects.0
            );
            println!("content hash: {}", report.row_hash.describe());
            if let Some(note) = &reverse_note {
                println!("{note}");
            }
            let problems = report.problems();
            if problems.is_empty() {
                println!("verify: the target holds exactly the source's data.");
            } else {
                println!("verify: {} differences:", problems.len());
                for p in &problems {
                    println!("  - {p}");
                }
                if let Some(run) = &finished {
                    println!(
                        "note: run {} finished on {}; since then the applications write to the target (the source \
                         stays frozen), so rows, sequences and objects they changed are expected differences",
                        run.id,
                        run.finished_at.unwrap_or(run.started_at).format("%Y-%m-%d %H:%M UTC")
                    );
                }
            }
        }
        Ok(if report.ok {
            Code::Success
        } else {
            Code::Differences
        })
    })
}
