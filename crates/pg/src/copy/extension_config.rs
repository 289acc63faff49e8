//! The extensions' configuration tables: `CREATE EXTENSION` (pre-data) makes
//! each extension's objects exactly as its script does, rows included; what
//! the source holds beyond them is the user's (PostGIS's `spatial_ref_sys`
//! with a custom SRID). pg_dump dumps those rows, filtered by the condition
//! the extension registered with `pg_extension_config_dump`, and the
//! positions of its configuration sequences; so does this step, after the
//! data and before post-data (a user's foreign key may reference a custom
//! row). All of it in one target transaction with its journal item: on the
//! target the filtered rows are replaced by the source's, so a re-run
//! converges.

use cutover_core::Result;
use cutover_core::journal::{Item, ItemKey};
use futures::StreamExt;

use super::{Pass, STAGE, on_source, on_target};
use crate::inventory::quote_literal;

/// One configuration table or sequence of an extension on the source.
#[derive(Debug, sqlx::FromRow)]
struct ConfigRelation {
    qualified: String,
    kind: String,
    /// The extension's filter (`WHERE NOT (srid BETWEEN …)`), or empty.
    condition: String,
    /// The columns pg_dump writes (not generated, not dropped), quoted.
    columns: Vec<String>,
}

/// STEP: carries the configuration rows and sequences; returns how many
/// rows it carried.
pub(super) async fn copy(pass: &Pass<'_>) -> Result<u64> {
    let ctx = pass.ctx;
    if pass.done.contains(&ItemKey::ExtensionConfig) {
        return Ok(0);
    }
    let mut src = ctx.source.acquire().await.map_err(on_source)?;
    sqlx::query("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .execute(&mut *src)
        .await
        .map_err(on_source)?;
    sqlx::query(&format!(
        "SET TRANSACTION SNAPSHOT {}",
        quote_literal(&pass.snapshot)
    ))
    .execute(&mut *src)
    .await
    .map_err(on_source)?;
    let relations: Vec<ConfigRelation> = sqlx::query_as(
        "SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname) AS qualified, c.relkind::text AS kind, \
                coalesce(x.cond, '') AS condition, \
                coalesce((SELECT array_agg(quote_ident(a.attname) ORDER BY a.attnum) FROM pg_attribute a \
                          WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped \
                            AND a.attgenerated = ''), '{}') AS columns \
         FROM pg_extension e CROSS JOIN LATERAL unnest(e.extconfig, e.extcondition) AS x(tbl, cond) \
         JOIN pg_class c ON c.oid = x.tbl JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE c.relkind IN ('r', 'p', 'S') ORDER BY 1",
    )
    .fetch_all(&mut *src)
    .await
    .map_err(on_source)?;
    let mut tx = ctx.target.begin().await.map_err(on_target)?;
    let mut rows = 0u64;
    for r in &relations {
        let carried = if r.kind == "S" {
            let (last, called): (i64, bool) =
                sqlx::query_as(&format!("SELECT last_value, is_called FROM {}", r.qualified))
                    .fetch_one(&mut *src)
                    .await
                    .map_err(on_source)?;
            sqlx::query("SELECT setval($1::regclass, $2, $3)")
                .bind(&r.qualified)
                .bind(last)
                .bind(called)
                .execute(&mut *tx)
                .await
                .map_err(on_target)
                .map(|_| 0)
        } else {
            carry_rows(&mut src, &mut tx, r).await
        };
        rows += carried.map_err(|e| {
            e.context(format!(
                "carrying extension configuration {} (pg_extension_config_dump)",
                r.qualified
            ))
        })?;
    }
    let item = Item {
        rows: Some(rows as i64),
        ..Item::new(STAGE, &ItemKey::ExtensionConfig)
    };
    ctx.journal.item_done_in(&mut tx, ctx.run_id, &item).await?;
    tx.commit().await.map_err(on_target)?;
    sqlx::query("COMMIT")
        .execute(&mut *src)
        .await
        .map_err(on_source)?;
    if !relations.is_empty() {
        tracing::info!(
            "extension configuration: {} table(s) and sequence(s), {rows} row(s) beyond the extensions' own",
            relations.len()
        );
    }
    Ok(rows)
}

/// Replaces the target's rows that the filter selects with the source's.
async fn carry_rows(
    src: &mut sqlx::PgConnection,
    tx: &mut sqlx::PgConnection,
    r: &ConfigRelation,
) -> Result<u64> {
    if r.columns.is_empty() {
        return Ok(0);
    }
    let columns = r.columns.join(", ");
    sqlx::query(&format!("DELETE FROM ONLY {} {}", r.qualified, r.condition))
        .execute(&mut *tx)
        .await
        .map_err(on_target)?;
    // Text format: an extension's types may differ in binary form between
    // the two servers' builds of it.
    let mut copy_in = tx
        .copy_in_raw(&format!("COPY {} ({columns}) FROM STDIN", r.qualified))
        .await
        .map_err(on_target)?;
    let mut stream = src
        .copy_out_raw(&format!(
            "COPY (SELECT {columns} FROM ONLY {} {}) TO STDOUT",
            r.qualified, r.condition
        ))
        .await
        .map_err(on_source)?;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(on_source)?;
        copy_in.send(&chunk[..]).await.map_err(on_target)?;
    }
    drop(stream);
    let n = copy_in.finish().await.map_err(on_target)?;
    Ok(n)
}
