//! The rest of post-data: indexes, constraints, triggers, rules, comments
//! and materialized views' data, restored in parallel (`pg_restore --jobs`
//! orders it by dependency) from the copy's schema archive, without what
//! was built during the data phase.

use std::collections::HashSet;

use cutover_core::Result;
use cutover_core::journal::ItemKey;

use super::schema::Early;
use super::{Pass, on_source, on_target};
use crate::{target_objects, tools};

/// STEP: the final post-data restore, unless the journal has it.
pub(super) async fn restore(pass: &Pass<'_>, early: &Early) -> Result<()> {
    let ctx = pass.ctx;
    if pass.done.contains(&ItemKey::PostData) {
        return Ok(());
    }
    // Only a final restore that an earlier attempt started may have
    // finished unrecorded: early builds alone can make the counts match
    // while comments or materialized views' data are missing.
    let finished_unrecorded = pass.done.contains(&ItemKey::PostDataStarted) && present(pass).await?;
    if !finished_unrecorded {
        pass.mark_done(ItemKey::PostDataStarted).await?;
        // Not one transaction: what an interrupted attempt left is dropped
        // first (an early entry exists if and only if it is journaled).
        let now_done = ctx.journal.items_done(ctx.run_id, super::STAGE).await?;
        let built: Vec<_> = early
            .entries
            .iter()
            .filter(|e| now_done.contains(&e.item))
            .collect();
        let keep: Vec<(String, String, String)> = built
            .iter()
            .map(|e| (e.schema.clone(), e.table.clone(), e.name.clone()))
            .collect();
        target_objects::drop_post_data(&ctx.target, &pass.journal_schema, &keep).await?;
        let skip: HashSet<String> = built
            .iter()
            .flat_map(|e| std::iter::once(&e.toc).chain(&e.dependents))
            .map(|t| t.line.clone())
            // The online mode's own publication (pg_dump keeps it): never
            // recreated on the target.
            .chain(
                early
                    .list
                    .lines()
                    .filter(|l| cutover_publication(l))
                    .map(str::to_string),
            )
            .collect();
        let list_file = pass.dir.join("post-data.list");
        tools::write_private(&list_file, &super::early::remaining_list(&early.list, &skip))?;
        let args = [
            "--section=post-data".to_string(),
            "--exit-on-error".into(),
            format!("--jobs={}", pass.settings.jobs.max(1)),
            format!("--use-list={}", list_file.display()),
            pass.archive.display().to_string(),
        ];
        // Index builds sort in memory rather than in temporary files (for
        // these sessions only), and skip waiting for WAL flushes.
        tools::restore(
            &pass.pg_restore,
            &pass.settings.target,
            pass.target_major,
            &args,
            &[(
                "PGOPTIONS",
                "-c maintenance_work_mem=256MB -c synchronous_commit=off -c max_parallel_maintenance_workers=0",
            )],
            &pass.settings.role_map,
            "pg_restore --section=post-data into the target",
        )
        .await?;
    }
    pass.mark_done(ItemKey::PostData).await
}

/// Whether the target already has every index, constraint and trigger of the
/// source (a final post-data restore that finished before its journal entry;
/// asked only when one was started).
async fn present(pass: &Pass<'_>) -> Result<bool> {
    let sql = "SELECT (SELECT count(*) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid \
                 JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', $1) \
                 AND n.nspname NOT LIKE 'pg\\_%') \
             + (SELECT count(*) FROM pg_constraint k JOIN pg_namespace n ON n.oid = k.connamespace \
                 WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', $1) AND n.nspname NOT LIKE 'pg\\_%') \
             + (SELECT count(*) FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE NOT t.tgisinternal AND n.nspname NOT IN ('pg_catalog', 'information_schema', $1) AND n.nspname NOT LIKE 'pg\\_%')";
    let s: i64 = sqlx::query_scalar(sql)
        .bind(&pass.journal_schema)
        .fetch_one(&pass.ctx.source)
        .await
        .map_err(on_source)?;
    let t: i64 = sqlx::query_scalar(sql)
        .bind(&pass.journal_schema)
        .fetch_one(&pass.ctx.target)
        .await
        .map_err(on_target)?;
    // Pre-data alone brings NOT NULL-free tables without any of these; the
    // source having none means there is nothing to restore.
    Ok(s > 0 && s == t)
}

/// A `pg_restore --list` line of the online mode's publications.
fn cutover_publication(line: &str) -> bool {
    line.contains(" PUBLICATION ")
        && [cutover_core::objects::FORWARD, cutover_core::objects::REVERSE]
            .iter()
            .any(|name| line.split_whitespace().any(|w| w == *name))
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_cutovers_own_publications_are_left_out_of_the_restore() {
        assert!(super::cutover_publication(
            "4012; 6104 16500 PUBLICATION - cutover_forward kit_admin"
        ));
        assert!(super::cutover_publication(
            "4013; 6106 16501 PUBLICATION TABLE public cutover_forward users kit_admin"
        ));
        // The application's own publication is kept, and so is a table named like ours.
        assert!(!super::cutover_publication(
            "4014; 6104 16502 PUBLICATION - app_changes kit_admin"
        ));
        assert!(!super::cutover_publication(
            "4015; 1259 16503 TABLE public cutover_forward kit_admin"
        ));
    }
}
