//! Planner statistics for the large tables the copy loaded: `ANALYZE`, each
//! in one target transaction with its journal item (a rerun skips what is
//! journaled; ANALYZE itself is harmless to repeat). Large tables whose keys
//! were all built during the data phase are analyzed there (the scheduler);
//! the others here, once every index is in place (expression indexes have
//! statistics of their own).

use cutover_core::Result;
use cutover_core::journal::{Item, ItemKey, Journal};
use futures::{StreamExt, TryStreamExt};
use sqlx::{Acquire, PgConnection};

use super::{Pass, STAGE, on_target};
use crate::inventory::TableInfo;

/// Whether the copy runs `ANALYZE` on this table (`options.analyze_bytes`).
pub(super) fn gets_analyze(t: &TableInfo, analyze_bytes: u64) -> bool {
    analyze_bytes > 0 && t.bytes.max(0) as u64 >= analyze_bytes
}

/// The journal item of a table's `ANALYZE` in the copy.
pub(super) fn analyze_item(t: &TableInfo) -> ItemKey {
    ItemKey::analyze(&t.schema, &t.name)
}

/// `ANALYZE` of one table with its journal item, in one transaction. Not
/// under the stall deadline: like an index build, it moves no rows.
pub(super) async fn analyze_one(
    conn: &mut PgConnection,
    journal: &Journal,
    run_id: uuid::Uuid,
    qualified: &str,
    item: &ItemKey,
) -> Result<()> {
    let mut tx = conn.begin().await.map_err(on_target)?;
    sqlx::query(&format!("ANALYZE {qualified}"))
        .execute(&mut *tx)
        .await
        .map_err(on_target)?;
    journal
        .item_done_in(&mut tx, run_id, &Item::new(STAGE, item))
        .await?;
    tx.commit().await.map_err(on_target)
}

/// STEP: `ANALYZE` of the large tables not analyzed during the data phase,
/// `jobs` at a time, largest first. Returns how many.
pub(super) async fn remaining(pass: &Pass<'_>) -> Result<usize> {
    let ctx = pass.ctx;
    let done = ctx.journal.items_done(ctx.run_id, STAGE).await?;
    let mut tables: Vec<TableInfo> = pass
        .source
        .storage_tables()
        .filter(|t| gets_analyze(t, pass.settings.analyze_bytes) && !done.contains(&analyze_item(t)))
        .cloned()
        .collect();
    tables.sort_by_key(|t| std::cmp::Reverse(t.bytes));
    let n = tables.len();
    futures::stream::iter(tables)
        .map(|t| async move {
            let mut conn = ctx.target.acquire().await.map_err(on_target)?;
            analyze_one(
                &mut conn,
                &ctx.journal,
                ctx.run_id,
                &t.qualified(),
                &analyze_item(&t),
            )
            .await
        })
        .buffer_unordered(pass.settings.jobs.max(1))
        .try_collect::<Vec<()>>()
        .await?;
    Ok(n)
}
