//! The schema: one `pg_dump` archive (custom format, pre-data and post-data
//! sections) under the copy's snapshot, with owners and privileges; its
//! pre-data restored before the data, its list read to choose what is built
//! during the data phase.

use cutover_core::Result;
use cutover_core::journal::ItemKey;

use super::Pass;
use super::early::{self, EarlyEntry};
use crate::inventory::quote_ident;
use crate::{target_objects, tools};

/// STEP: the schema dump, unless both its sections are restored already.
pub(super) async fn dump(pass: &Pass<'_>) -> Result<()> {
    if pass.done.contains(&ItemKey::PostData) && pass.done.contains(&ItemKey::PreData) {
        return Ok(());
    }
    let mut cmd = tools::command(&pass.pg_dump, &pass.settings.source);
    // Both schema sections (the post-data one holds the materialized views'
    // data); the table data moves by COPY. With owners and privileges
    // (GRANTs, column and default privileges): the applications' roles keep
    // what they could do.
    cmd.args(["--format=custom", "--section=pre-data", "--section=post-data"])
        .arg(format!("--snapshot={}", pass.snapshot))
        .arg(format!("--exclude-schema={}", quote_ident(&pass.journal_schema)))
        .arg(format!("--file={}", pass.archive.display()));
    tools::run(cmd, "pg_dump of the source's schema").await?;
    Ok(())
}

/// STEP: the pre-data section (schemas, types, tables, functions...),
/// unless the journal has it.
pub(super) async fn restore_pre_data(pass: &Pass<'_>) -> Result<()> {
    if pass.done.contains(&ItemKey::PreData) {
        return Ok(());
    }
    // Whatever an interrupted pre-data restore left goes first. Not one
    // transaction: thousands of tables would need more locks than a server
    // grants by default.
    target_objects::drop_application_objects(&pass.ctx.target, &pass.journal_schema).await?;
    let args = [
        "--section=pre-data".to_string(),
        "--exit-on-error".into(),
        pass.archive.display().to_string(),
    ];
    // Each statement commits on its own; none of them waits for its WAL
    // flush (thousands of tables meant thousands of flushes). The journal's
    // "pre-data" item commits afterwards, later in the WAL: after a crash it
    // survives only if all of them did, and without it the pre-data is
    // dropped and restored again.
    tools::restore(
        &pass.pg_restore,
        &pass.settings.target,
        pass.target_major,
        &args,
        &[("PGOPTIONS", "-c synchronous_commit=off")],
        &pass.settings.role_map,
        "pg_restore --section=pre-data into the target",
    )
    .await?;
    pass.mark_done(ItemKey::PreData).await
}

/// The archive's list and the entries built during the data phase.
#[derive(Default)]
pub(super) struct Early {
    /// `pg_restore --list` of the archive (empty once post-data is done).
    pub list: String,
    pub entries: Vec<EarlyEntry>,
}

/// STEP: which indexes and keys of large tables are built as soon as their
/// data is in (while others still copy); their SQL is the archive's own.
pub(super) async fn early_entries(pass: &Pass<'_>) -> Result<Early> {
    if pass.done.contains(&ItemKey::PostData) {
        return Ok(Early::default());
    }
    let mut cmd = tools::offline(&pass.pg_restore);
    cmd.arg("--list").arg(&pass.archive);
    let list = tools::run(cmd, "pg_restore --list of the schema archive").await?;
    let entries = early::parse_list(&list);
    let entries = early::plan(
        &pass.ctx.source,
        &pass.source,
        &entries,
        pass.settings.early_index_bytes,
    )
    .await?;
    Ok(Early { list, entries })
}
