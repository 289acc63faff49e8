//! copy: the source's schema and data into the target, under one exported
//! snapshot of the source. Its `run` is the list of steps, each in a file
//! named after what it does:
//!
//! 1. the source as it is now, against what the plan was given (`Pass::begin`)
//! 2. `schema`: one pg_dump archive, its pre-data restored
//! 3. `schema`: which indexes and keys are built during the data phase
//!    (`early`)
//! 4. `data`: tables and block ranges streamed by the `workers` (`relay`),
//!    largest first, the early builds and ANALYZE of large tables in between
//!    (`schedule`)
//!    then `extension_config`: the extensions' configuration rows that
//!    pg_dump dumps (before post-data: a foreign key may reference them)
//! 5. `post_data`: the rest of the indexes, constraints and triggers
//! 6. `analyze`: statistics of the large tables not analyzed yet
//! 7. `sequences`
//! 8. `large_objects`
//! 9. `database_settings`: the database's privileges and settings
//! 10. the summary
//!
//! Resumable: every item (pre-data, each table or range, each early build,
//! post-data, sequences, large objects) is journaled in the same transaction
//! as its effect where the effect is SQL; a table is emptied and loaded in
//! one transaction, so a resume recopies exactly the unfinished tables.

mod analyze;
mod data;
mod database_settings;
pub mod early;
mod extension_config;
mod large_objects;
mod post_data;
mod relay;
pub mod schedule;
mod schema;
mod sequences;
mod tables;
mod workers;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use cutover_core::artefacts::Artefacts;
use cutover_core::endpoint::Endpoint;
use cutover_core::event::Event;
use cutover_core::journal::{Item, ItemKey};
use cutover_core::stage::{Check, Description, RunContext, Stage, Undo};
use cutover_core::{Error, Result};
use serde::{Deserialize, Serialize};
use sha2::Digest;
use sqlx::Postgres;
use sqlx::pool::PoolConnection;

use crate::inventory::{Inventory, quote_literal};
use crate::security::RoleMap;
use crate::{target_objects, tools};
use analyze::gets_analyze;
use tables::{Split, ranges};

pub const STAGE: &str = cutover_core::stage::names::COPY;

/// Which server an error of the data stream came from.
pub(crate) fn on_source(e: sqlx::Error) -> Error {
    Error::from(e).context("reading from the source")
}

fn on_target(e: sqlx::Error) -> Error {
    Error::from(e).context("writing to the target")
}

/// What the copy takes from the plan, resolved when the plan is built.
#[derive(Debug, Clone)]
pub struct CopySettings {
    pub source: std::sync::Arc<Endpoint>,
    pub target: std::sync::Arc<Endpoint>,
    /// Tables copied at once (see [`default_jobs`]).
    pub jobs: usize,
    /// Large objects' transactions at once.
    pub large_object_jobs: usize,
    pub split_bytes: u64,
    pub analyze_bytes: u64,
    pub early_index_bytes: u64,
    pub build_memory_mb: u64,
    /// How long a stream may move no data before the table fails.
    pub stall: Duration,
    pub role_map: RoleMap,
}

impl CopySettings {
    pub fn new(
        options: &cutover_core::plan_file::Options,
        source: std::sync::Arc<Endpoint>,
        target: std::sync::Arc<Endpoint>,
        role_map: RoleMap,
    ) -> CopySettings {
        CopySettings {
            source,
            target,
            jobs: default_jobs(options.jobs),
            large_object_jobs: options.jobs.clamp(2, 8),
            split_bytes: options.split_bytes,
            analyze_bytes: options.analyze_bytes,
            early_index_bytes: options.early_index_bytes,
            build_memory_mb: options.build_memory_mb,
            stall: match options.stall_timeout {
                // Never, in practice (thirty years).
                0 => Duration::from_secs(30 * 365 * 86_400),
                n => Duration::from_secs(n),
            },
            role_map,
        }
    }
}

/// copy: what one pass moved, and where its time went.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct CopyResult {
    pub summary: String,
    pub tables_copied: usize,
    pub rows_copied: u64,
    pub sequences: usize,
    pub large_objects: usize,
    pub binary: bool,
    pub seconds: CopySeconds,
    pub tables_analyzed: usize,
    pub early_index_builds: usize,
    /// sha256 of the tables and columns the plan described, and of those the
    /// copy found (they differ when the source's schema changed in between).
    pub planned_fingerprint: String,
    pub copied_fingerprint: String,
    /// How the work found differed from the plan, one line per table.
    pub differs_from_plan: Vec<String>,
}

/// copy: seconds per phase.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct CopySeconds {
    pub schema: f64,
    pub data: f64,
    pub post_data: f64,
    pub early_index_builds: f64,
    pub analyze_during_data: f64,
    pub analyze: f64,
}

cutover_core::artefacts!(CopyResult);

pub struct Copy {
    pub description: Description,
    settings: CopySettings,
    /// Each table the plan was given, with its columns.
    planned: BTreeMap<String, String>,
}

/// Tables copied at once: the plan's `jobs`, else one per CPU (at least 2).
pub fn default_jobs(configured: usize) -> usize {
    if configured > 0 {
        return configured;
    }
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .max(2)
}

/// The work a copy does on an inventory: each table to copy, named, with
/// its columns and their types (rows change with every write and are left
/// out).
fn work_of(source: &Inventory) -> BTreeMap<String, String> {
    source
        .storage_tables()
        .map(|t| {
            let columns: Vec<String> = t.columns.iter().map(|(c, ty)| format!("{c} {ty}")).collect();
            (t.display(), columns.join(", "))
        })
        .collect()
}

/// sha256 of a work list, in hex.
fn fingerprint(work: &BTreeMap<String, String>) -> String {
    let mut h = sha2::Sha256::new();
    for (t, c) in work {
        h.update(format!("{t}({c})\n").as_bytes());
    }
    format!("{:x}", h.finalize())
}

/// The tables whose work differs between the plan and now, one line each.
fn differences(planned: &BTreeMap<String, String>, now: &BTreeMap<String, String>) -> Vec<String> {
    let mut out = vec![];
    for (t, c) in planned {
        match now.get(t) {
            None => out.push(format!("{t}: in the plan, no longer on the source")),
            Some(n) if n != c => out.push(format!("{t}: its columns changed ({c} -> {n})")),
            Some(_) => {}
        }
    }
    for t in now.keys().filter(|t| !planned.contains_key(*t)) {
        out.push(format!("{t}: on the source now, not in the plan"));
    }
    out
}

impl Copy {
    pub fn new(source: &Inventory, target: &Inventory, settings: CopySettings) -> Copy {
        let binary = source.identity.version_num / 10000 == target.identity.version_num / 10000;
        let mut warnings = vec![];
        if !binary {
            warnings.push(format!(
                "source is PostgreSQL {} and target {}: data moves in text format (slower than binary)",
                source.identity.version, target.identity.version
            ));
        }
        // Once: it sums every table (per table, 10,000 tables took a second).
        let split = Split::new(source, settings.split_bytes, settings.jobs);
        Copy {
            description: Description {
                summary: format!(
                    "copy the source's schema and data into the target: {} tables, {} rows, {}, {} sequences, \
                     {} large objects; {} tables at a time, {} format",
                    source.tables.len(),
                    source.rows_text(),
                    cutover_core::units::bytes(source.database_bytes),
                    source.sequences.len(),
                    source.large_objects,
                    settings.jobs,
                    if binary { "binary" } else { "text" }
                ),
                details: source
                    .storage_tables()
                    .map(|t| {
                        let n = ranges(t, split).len();
                        let split = if n > 1 {
                            format!(", in {n} block ranges")
                        } else {
                            String::new()
                        };
                        let about = if t.rows_estimated { "about " } else { "" };
                        let analyze = if gets_analyze(t, settings.analyze_bytes) {
                            ", then ANALYZE"
                        } else {
                            ""
                        };
                        let text = match &t.no_binary {
                            Some(ty) if binary => {
                                format!(", text format (type {ty} has no binary send/receive)")
                            }
                            _ => String::new(),
                        };
                        format!(
                            "{}: {about}{} rows, {}{split}{analyze}{text}",
                            t.display(),
                            t.rows,
                            cutover_core::units::bytes(t.bytes)
                        )
                    })
                    .collect(),
                warnings,
                destructive: true,
            },
            settings,
            planned: work_of(source),
        }
    }
}

/// One pass of the copy: what its steps share.
pub(crate) struct Pass<'a> {
    ctx: &'a RunContext,
    settings: &'a CopySettings,
    journal_schema: String,
    /// Items journaled before this pass began.
    done: BTreeSet<ItemKey>,
    /// The source as it is now.
    source: Inventory,
    binary: bool,
    pg_dump: tools::Tool,
    pg_restore: tools::Tool,
    target_major: u32,
    /// The run directory's `copy` folder.
    dir: PathBuf,
    /// The schema archive.
    archive: PathBuf,
    /// The exported snapshot every step reads the source under.
    snapshot: String,
}

impl<'a> Pass<'a> {
    /// STEP 1: reads the source, the journal and the tools, and exports the
    /// snapshot (held by the returned connection until [`Pass::end`]).
    /// `external`: a snapshot exported elsewhere (the online mode's slot),
    /// imported instead of exporting one.
    async fn begin(
        ctx: &'a RunContext,
        settings: &'a CopySettings,
        external: Option<&str>,
    ) -> Result<(Pass<'a>, PoolConnection<Postgres>)> {
        let journal_schema = ctx.journal.schema().to_string();
        let done = ctx.journal.items_done(ctx.run_id, STAGE).await?;
        let source = Inventory::read(&ctx.source, &journal_schema, false).await?;
        let target_version: i32 = sqlx::query_scalar("SELECT current_setting('server_version_num')::int")
            .fetch_one(&ctx.target)
            .await?;
        let binary = source.identity.version_num / 10000 == target_version / 10000;
        let (pg_dump, pg_restore) = tools::for_copy(source.identity.version_num).await?;
        let dir = ctx.run_dir.join("copy");
        std::fs::create_dir_all(&dir)?;
        // One snapshot for the schema dump and every table.
        let mut conn = ctx.source.acquire().await.map_err(on_source)?;
        sqlx::query("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .execute(&mut *conn)
            .await
            .map_err(on_source)?;
        let snapshot: String = match external {
            Some(name) => {
                sqlx::query(&format!("SET TRANSACTION SNAPSHOT {}", quote_literal(name)))
                    .execute(&mut *conn)
                    .await
                    .map_err(on_source)?;
                name.to_string()
            }
            None => sqlx::query_scalar("SELECT pg_export_snapshot()")
                .fetch_one(&mut *conn)
                .await
                .map_err(on_source)?,
        };
        let pass = Pass {
            ctx,
            settings,
            journal_schema,
            done,
            source,
            binary,
            pg_dump,
            pg_restore,
            target_major: (target_version / 10000) as u32,
            archive: dir.join("schema.dump"),
            dir,
            snapshot,
        };
        Ok((pass, conn))
    }

    /// Journals an item whose effect is outside the target's transactions.
    async fn mark_done(&self, item: ItemKey) -> Result<()> {
        self.ctx
            .journal
            .item_done(self.ctx.run_id, &Item::new(STAGE, &item))
            .await
    }
}

#[async_trait]
impl Stage for Copy {
    fn name(&self) -> String {
        STAGE.into()
    }
    fn describe(&self) -> &Description {
        &self.description
    }
    fn undo_kind(&self) -> Undo {
        Undo::Reversible("drop everything the copy created on the target".into())
    }

    async fn run(&self, ctx: &RunContext) -> Result<serde_json::Value> {
        Ok(self.copy(ctx, None).await?.to_value())
    }

    async fn check(&self, ctx: &RunContext) -> Result<Check> {
        self.rows_match(ctx).await
    }

    async fn undo(&self, ctx: &RunContext) -> Result<String> {
        self.drop_copied(ctx).await
    }
}

impl Copy {
    /// The copy's steps, under its own exported snapshot or under
    /// `snapshot` (exported by a replication slot's creation).
    pub async fn copy(&self, ctx: &RunContext, snapshot: Option<&str>) -> Result<CopyResult> {
        let started = Instant::now();
        // 1. The source now, under one snapshot; compared with the plan.
        let (pass, mut snapshot) = Pass::begin(ctx, &self.settings, snapshot).await?;
        let now = work_of(&pass.source);
        let differs_from_plan = differences(&self.planned, &now);
        if !differs_from_plan.is_empty() {
            ctx.emit(Event::Warning {
                message: format!(
                    "the source's tables changed since the plan was built; the copy takes them as they are now: {}",
                    differs_from_plan.join("; ")
                ),
            });
        }
        // 2. Schema: one archive, its pre-data restored.
        schema::dump(&pass).await?;
        schema::restore_pre_data(&pass).await?;
        ctx.cancel.check()?;
        // 3. What is built during the data phase.
        let early = schema::early_entries(&pass).await?;
        let data_started = Instant::now();
        // 4. Data, with early builds and ANALYZE beside it.
        let data = data::copy(&pass, &early.entries).await?;
        ctx.cancel.check()?;
        extension_config::copy(&pass).await?;
        let post_started = Instant::now();
        // 5. The rest of post-data.
        post_data::restore(&pass, &early).await?;
        let analyze_started = Instant::now();
        // 6. ANALYZE of the large tables not analyzed yet.
        let analyzed = analyze::remaining(&pass).await?;
        let analyze_seconds = analyze_started.elapsed().as_secs_f64();
        // 7. Sequences.
        let sequences = sequences::copy(&pass).await?;
        // 8. Large objects.
        let large_objects = large_objects::copy(&pass).await?;
        // 9. The database's privileges and settings.
        database_settings::step(&pass).await?;
        sqlx::query("COMMIT")
            .execute(&mut *snapshot)
            .await
            .map_err(on_source)?;
        // 10. The summary.
        let seconds = CopySeconds {
            schema: data_started.duration_since(started).as_secs_f64(),
            data: post_started.duration_since(data_started).as_secs_f64(),
            post_data: analyze_started.duration_since(post_started).as_secs_f64(),
            early_index_builds: data.index_seconds,
            analyze_during_data: data.analyze_seconds,
            analyze: analyze_seconds,
        };
        ctx.emit(Event::Info {
            message: format!(
                "copy: schema dumps and pre-data {:.1} s, data {:.1} s (with {} index and key builds of large \
                 tables, {:.1} s of them, and {} ANALYZE, {:.1} s), rest of post-data (indexes, constraints, \
                 triggers) {:.1} s, ANALYZE of {analyzed} more large tables {:.1} s",
                seconds.schema,
                seconds.data,
                data.early_built,
                seconds.early_index_builds,
                data.analyzed,
                seconds.analyze_during_data,
                seconds.post_data,
                seconds.analyze
            ),
        });
        let result = CopyResult {
            summary: format!(
                "{} tables ({} rows) copied in this pass, {sequences} sequences set, {large_objects} large objects, \
                 in {:.1} s",
                data.tables_copied,
                data.rows_copied,
                started.elapsed().as_secs_f64()
            ),
            tables_copied: data.tables_copied,
            rows_copied: data.rows_copied,
            sequences,
            large_objects,
            binary: pass.binary,
            seconds,
            tables_analyzed: data.analyzed + analyzed,
            early_index_builds: data.early_built,
            planned_fingerprint: fingerprint(&self.planned),
            copied_fingerprint: fingerprint(&now),
            differs_from_plan,
        };
        Ok(result)
    }

    /// Every table of the source is on the target with as many rows.
    pub async fn rows_match(&self, ctx: &RunContext) -> Result<Check> {
        let schema = ctx.journal.schema();
        let (source, target) = tokio::try_join!(
            Inventory::read(&ctx.source, schema, true),
            Inventory::read(&ctx.target, schema, true)
        )?;
        for t in source.storage_tables() {
            match target.table(&t.schema, &t.name) {
                None => {
                    return Ok(Check::Fails(format!(
                        "table {} is missing on the target",
                        t.display()
                    )));
                }
                Some(tt) if tt.rows != t.rows => {
                    return Ok(Check::Fails(format!(
                        "{}: {} rows on the source, {} on the target",
                        t.display(),
                        t.rows,
                        tt.rows
                    )));
                }
                Some(_) => {}
            }
        }
        Ok(Check::Holds)
    }

    /// Drops what the copy created on the target and forgets its items.
    pub async fn drop_copied(&self, ctx: &RunContext) -> Result<String> {
        target_objects::drop_application_objects(&ctx.target, ctx.journal.schema()).await?;
        let restored =
            database_settings::restore(ctx, &self.settings.target.dbname, &ctx.run_dir.join("copy")).await?;
        ctx.journal.clear_items(ctx.run_id, STAGE).await?;
        Ok(if restored {
            "dropped what the copy created on the target; the target database's own privileges and settings are back"
                .into()
        } else {
            "dropped what the copy created on the target".into()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_work_found_is_compared_with_the_plan_table_by_table() {
        let plan: BTreeMap<String, String> = [
            ("orders".to_string(), "id integer, total numeric".to_string()),
            ("gone".to_string(), "id integer".to_string()),
        ]
        .into();
        let now: BTreeMap<String, String> = [
            (
                "orders".to_string(),
                "id integer, total numeric, note text".to_string(),
            ),
            ("added".to_string(), "id integer".to_string()),
        ]
        .into();
        assert_eq!(
            differences(&plan, &now),
            vec![
                "gone: in the plan, no longer on the source",
                "orders: its columns changed (id integer, total numeric -> id integer, total numeric, note text)",
                "added: on the source now, not in the plan",
            ]
        );
        assert!(differences(&plan, &plan).is_empty());
        assert_eq!(fingerprint(&plan), fingerprint(&plan.clone()));
        assert_ne!(fingerprint(&plan), fingerprint(&now));
    }
}
