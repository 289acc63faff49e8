//! Sequences: every one set on the target to the source's position under
//! the copy's snapshot (their values are not in the schema dump's data).

use cutover_core::journal::{Item, ItemKey};
use cutover_core::{Error, Result};
use sqlx::Executor;

use super::{Pass, STAGE};
use crate::inventory::quote_literal;

/// STEP: sets every sequence; returns how many.
pub(super) async fn copy(pass: &Pass<'_>) -> Result<usize> {
    let ctx = pass.ctx;
    let sequences = &pass.source.sequences;
    let mut sql = String::new();
    for s in sequences {
        if let Some(v) = s.last_value {
            sql.push_str(&format!(
                "SELECT setval({}, {v}, {});\n",
                quote_literal(&s.qualified()),
                s.is_called
            ));
        }
    }
    if !sql.is_empty() {
        let mut conn = ctx.target.acquire().await?;
        conn.execute(sqlx::raw_sql(&sql))
            .await
            .map_err(|e| Error::failure(format!("setting sequences: {e}")))?;
    }
    let item = Item {
        rows: Some(sequences.len() as i64),
        ..Item::new(STAGE, &ItemKey::Sequences)
    };
    ctx.journal.item_done(ctx.run_id, &item).await?;
    Ok(sequences.len())
}
