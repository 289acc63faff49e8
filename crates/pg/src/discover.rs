//! discover: inspect both databases, refuse the same database twice, and run
//! the direction check (the target must not look like the live database).

use cutover_core::endpoint::Endpoint;
use cutover_core::journal::ItemKey;

use crate::security::RoleMap;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use cutover_core::artefacts::Artefacts;
use cutover_core::stage::{Check, Description, RunContext, Stage, Undo};
use cutover_core::{Error, Result};
use serde::{Deserialize, Serialize};

use crate::inventory::{Comparison, Inventory, compare};

pub struct Discover {
    pub description: Description,
    allow_target_ahead: bool,
    settings: DiscoverSettings,
    /// The inspection the plan was built from, and when it was taken.
    planned: (Inventory, Inventory, Comparison, Instant),
}

/// discover: both databases as they were found, and how they compare.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct DiscoverResult {
    pub summary: String,
    /// The schema rehearsal's outcome.
    pub rehearsal: String,
    /// Whose inspection this is (the plan's or the stage's own).
    pub inspection: String,
    pub source: SideFacts,
    pub target: SideFacts,
    pub comparison: Comparison,
}

/// One database as discover found it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct SideFacts {
    pub tables: usize,
    pub rows: i64,
    pub place: String,
    /// (table, rows) of every table.
    pub table_rows: Vec<(String, i64)>,
    /// Tables whose rows are the statistics' estimate.
    pub rows_estimated: Vec<String>,
}

impl SideFacts {
    fn of(inv: &Inventory) -> SideFacts {
        SideFacts {
            tables: inv.tables.len(),
            rows: inv.total_rows(),
            place: inv.identity.place(),
            table_rows: inv.storage_tables().map(|t| (t.display(), t.rows)).collect(),
            rows_estimated: inv
                .storage_tables()
                .filter(|t| t.rows_estimated)
                .map(|t| t.display())
                .collect(),
        }
    }

    /// Rows of one table, if it was there.
    pub fn rows_of(&self, table: &str) -> Option<i64> {
        self.table_rows.iter().find(|(t, _)| t == table).map(|(_, n)| *n)
    }
}

cutover_core::artefacts!(DiscoverResult);

/// How old the plan's own inspection may be for discover to record it rather
/// than count every row again (the same invocation, no wait for a
/// confirmation in between). Counting a large database takes seconds.
const REUSE_WITHIN: Duration = Duration::from_secs(10);

/// What discover takes from the plan, resolved when the plan is built.
#[derive(Debug, Clone)]
pub struct DiscoverSettings {
    pub source: std::sync::Arc<Endpoint>,
    pub target: std::sync::Arc<Endpoint>,
    /// options.rehearse_schema
    pub rehearse_schema: bool,
    pub role_map: RoleMap,
    /// Roles the source's objects name that the target lacks and no stage
    /// creates: the rehearsal refuses them with every object that fails.
    pub lacking_roles: Vec<String>,
}

impl Discover {
    /// The stage's name in the journal.
    pub const NAME: &'static str = cutover_core::stage::names::DISCOVER;

    pub fn new(
        source: &Inventory,
        target: &Inventory,
        cmp: &Comparison,
        allow_target_ahead: bool,
        settings: DiscoverSettings,
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
            settings,
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

/// Restores the source's schema (pre-data and post-data, no rows; owners and
/// privileges as the copy restores them) into a scratch database on the
/// target server, before anything destructive: an object the target server
/// cannot recreate (a tablespace or an extension it lacks, a newer server's
/// syntax) is refused here, naming it, while the target is untouched.
/// Without CREATEDB it says so and leaves the check to the copy.
async fn rehearse(
    ctx: &RunContext,
    settings: &DiscoverSettings,
    source_version: i32,
    target_version: i32,
) -> Result<String> {
    if !settings.rehearse_schema {
        return Ok("not rehearsed (options.rehearse_schema = false)".into());
    }
    let done = ctx.journal.items_done(ctx.run_id, Discover::NAME).await?;
    if done.contains(&ItemKey::SchemaRehearsal) && settings.lacking_roles.is_empty() {
        return Ok(
            "the source's schema restored on the target server (an earlier attempt of this run)".into(),
        );
    }
    let scratch = format!("cutover_rehearsal_{}", &ctx.run_id.simple().to_string()[..12]);
    let dir = ctx.run_dir.join("rehearsal");
    let t0 = std::time::Instant::now();
    let rehearsed = crate::rehearsal::rehearse(
        &ctx.source,
        &ctx.target,
        &crate::rehearsal::RehearsalSettings {
            source: &settings.source,
            target: &settings.target,
            role_map: &settings.role_map,
            journal_schema: ctx.journal.schema(),
            versions: (source_version, target_version),
            lacking_roles: &settings.lacking_roles,
        },
        &crate::rehearsal::RehearsalPlace {
            scratch: &scratch,
            dir: &dir,
            record: &crate::rehearsal::record_path(&ctx.run_dir),
            sweep: true,
            by: Discover::NAME,
        },
    )
    .await?;
    ctx.emit(cutover_core::event::Event::Info {
        message: format!(
            "discover: the schema rehearsal took {:.2} s ({})",
            t0.elapsed().as_secs_f64(),
            if rehearsed.passed { "passed" } else { "not passed" }
        ),
    });
    // Journaled only when it passed (without CREATEDB it says why it did not).
    if rehearsed.passed {
        ctx.journal
            .item_done(
                ctx.run_id,
                &cutover_core::journal::Item::new(Discover::NAME, &ItemKey::SchemaRehearsal),
            )
            .await?;
    }
    Ok(rehearsed.said)
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
        Self::NAME.into()
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
        let rehearsal = rehearse(
            ctx,
            &self.settings,
            source.identity.version_num,
            target.identity.version_num,
        )
        .await?;
        let result = DiscoverResult {
            summary: format!(
                "source {} tables / {} rows, target {} tables / {} rows",
                source.tables.len(),
                source.rows_text(),
                target.tables.len(),
                target.rows_text()
            ),
            rehearsal,
            inspection: if fresh {
                "the plan's, taken moments before"
            } else {
                "taken by this stage"
            }
            .into(),
            source: SideFacts::of(&source),
            target: SideFacts::of(&target),
            comparison: cmp,
        };
        Ok(result.to_value())
    }
    async fn check(&self, _ctx: &RunContext) -> Result<Check> {
        Ok(Check::Holds)
    }
    async fn undo(&self, _ctx: &RunContext) -> Result<String> {
        Ok("nothing to undo".into())
    }
}
