//! discover: inspect both databases, refuse the same database twice, and run
//! the direction check (the target must not look like the live database).

use std::time::{Duration, Instant};

use async_trait::async_trait;
use cutover_core::stage::{Check, Description, RunContext, Stage, Undo};
use cutover_core::{Error, Result};
use serde_json::json;

use crate::inventory::{Comparison, Inventory, compare};

pub struct Discover {
    pub description: Description,
    allow_target_ahead: bool,
    /// The inspection the plan was built from, and when it was taken.
    planned: (Inventory, Inventory, Comparison, Instant),
}

/// How old the plan's own inspection may be for discover to record it rather
/// than count every row again (the same invocation, no wait for a
/// confirmation in between). Counting a large database takes seconds.
const REUSE_WITHIN: Duration = Duration::from_secs(10);

impl Discover {
    pub fn new(
        source: &Inventory,
        target: &Inventory,
        cmp: &Comparison,
        allow_target_ahead: bool,
    ) -> Discover {
        let mut details = vec![summary("source", source), summary("target", target)];
        if !cmp.only_source.is_empty() {
            details.push(format!("only on the source: {}", cmp.only_source.join(", ")));
        }
        if !cmp.only_target.is_empty() {
            details.push(format!("only on the target: {}", cmp.only_target.join(", ")));
        }
        let mut warnings = vec![];
        if !cmp.target_ahead.is_empty() {
            warnings.push(format!(
                "the target looks like the live database: {}{}",
                cmp.target_ahead.join("; "),
                if allow_target_ahead {
                    " (allowed by allow_ahead / --allow-target-ahead)"
                } else {
                    ""
                }
            ));
        }
        Discover {
            description: Description {
                summary: "inspect both databases, check they are different servers and that the source is the live one"
                    .into(),
                details,
                warnings,
                destructive: false,
            },
            allow_target_ahead,
            planned: (source.clone(), target.clone(), cmp.clone(), Instant::now()),
        }
    }
}

fn summary(label: &str, inv: &Inventory) -> String {
    format!(
        "{label}: {} tables, {} rows, {} sequences, {} large objects (database {}, PostgreSQL {})",
        inv.tables.len(),
        inv.rows_text(),
        inv.sequences.len(),
        inv.large_objects,
        inv.identity.database,
        inv.identity.version
    )
}

/// The refusal when the target looks ahead of the source.
pub fn target_ahead_error(reasons: &[String]) -> Error {
    Error::refused(format!(
        "the target looks like the live database, not the source: {}. Clearing it would lose that data. Check that \
         [source] and [target] are not swapped; if the target's extra data really is stale, run again with \
         --allow-target-ahead (or set allow_ahead = true under [target])",
        reasons.join("; ")
    ))
}

#[async_trait]
impl Stage for Discover {
    fn name(&self) -> String {
        "discover".into()
    }
    fn describe(&self) -> &Description {
        &self.description
    }
    fn undo_kind(&self) -> Undo {
        Undo::Nothing
    }
    async fn run(&self, ctx: &RunContext) -> Result<serde_json::Value> {
        let (s, t, c, at) = &self.planned;
        let (source, target, cmp, fresh) = match at.elapsed() < REUSE_WITHIN {
            true => (s.clone(), t.clone(), c.clone(), true),
            false => {
                let schema = ctx.journal.schema();
                let (source, target) = tokio::try_join!(
                    Inventory::read(&ctx.source, schema, true),
                    Inventory::read(&ctx.target, schema, true)
                )?;
                let cmp = compare(&source, &target, &ctx.source, &ctx.target).await?;
                (source, target, cmp, false)
            }
        };
        if !cmp.target_ahead.is_empty() && !self.allow_target_ahead {
            return Err(target_ahead_error(&cmp.target_ahead));
        }
        Ok(json!({
            "summary": format!("source {} tables / {} rows, target {} tables / {} rows",
                source.tables.len(), source.rows_text(), target.tables.len(), target.rows_text()),
            "inspection": if fresh { "the plan's, taken moments before" } else { "taken by this stage" },
            "source": { "tables": source.tables.len(), "rows": source.total_rows(),
                        "place": source.identity.place(),
                        "table_rows": source.storage_tables().map(|t| (t.display(), t.rows)).collect::<Vec<_>>(),
                        "rows_estimated": source.storage_tables().filter(|t| t.rows_estimated).map(|t| t.display()).collect::<Vec<_>>() },
            "target": { "tables": target.tables.len(), "rows": target.total_rows(),
                        "place": target.identity.place(),
                        "table_rows": target.storage_tables().map(|t| (t.display(), t.rows)).collect::<Vec<_>>() },
            "comparison": cmp,
        }))
    }
    async fn check(&self, _ctx: &RunContext) -> Result<Check> {
        Ok(Check::Holds)
    }
    async fn undo(&self, _ctx: &RunContext) -> Result<String> {
        Ok("nothing to undo".into())
    }
}
