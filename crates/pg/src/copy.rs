//! copy: schema pre-data with pg_dump/pg_restore, data by streaming
//! `COPY … TO STDOUT` on the source into `COPY … FROM STDIN` on the target
//! (binary between equal major versions) with several tables in flight under
//! one exported snapshot, then post-data (indexes, constraints, triggers,
//! materialized view data), sequences and large objects.
//!
//! Resumable: every item (pre-data, each table, post-data, sequences, large
//! objects) is marked done in the journal in the same transaction as its
//! effect where the effect is SQL; a table is truncated and reloaded in one
//! transaction, so a resume recopies exactly the unfinished tables.

use std::collections::{BTreeSet, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use cutover_core::endpoint::{Endpoint, Role};
use cutover_core::event::Event;
use cutover_core::journal::{Item, Journal};
use cutover_core::stage::{Check, Description, RunContext, Stage, Undo};
use cutover_core::{Error, Result};
use futures::{StreamExt, TryStreamExt};
use serde_json::json;
use sqlx::pool::PoolConnection;
use sqlx::{Acquire, Executor, PgConnection, Postgres};

use crate::clear::drop_application_objects;
use crate::early_indexes::{self, Analysis, EarlyEntry, Next, Schedule};
use crate::inventory::{Inventory, TableInfo, quote_ident, quote_literal};
use crate::security::Security;
use crate::tools;

pub const STAGE: &str = "copy";

/// Awaits a step of a copy worker, failing when it takes longer than the
/// worker's `stall` (a server that stopped answering without closing the
/// connection would otherwise be waited for for ever).
macro_rules! within {
    ($worker:expr, $side:expr, $fut:expr) => {
        tokio::time::timeout($worker.stall, $fut)
            .await
            .map_err(|_| $worker.stalled($side))?
    };
}

/// Which server an error of the data stream came from.
pub(crate) fn on_source(e: sqlx::Error) -> Error {
    Error::failure(format!("reading from the source: {e}"))
}

fn on_target(e: sqlx::Error) -> Error {
    Error::failure(format!("writing to the target: {e}"))
}

/// Bytes gathered before they are sent to the target in one message.
const COPY_BUFFER: usize = 1 << 20;

/// Tables at least this large on the source (`pg_total_relation_size`) are
/// truncated and loaded with `COPY … FREEZE`; smaller ones are emptied with
/// `DELETE` and loaded without FREEZE (see `copy_table`).
const FREEZE_MIN_BYTES: u64 = 1 << 20;

pub struct Copy {
    pub description: Description,
    jobs: usize,
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

impl Copy {
    pub fn new(
        source: &Inventory,
        target: &Inventory,
        jobs: usize,
        split_bytes: u64,
        analyze_bytes: u64,
    ) -> Copy {
        let binary = source.identity.version_num / 10000 == target.identity.version_num / 10000;
        let mut warnings = vec![];
        if !binary {
            warnings.push(format!(
                "source is PostgreSQL {} and target {}: data moves in text format (slower than binary)",
                source.identity.version, target.identity.version
            ));
        }
        // Once: it sums every table (per table, 10,000 tables took a second).
        let split = Split::new(source, split_bytes, jobs);
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
                    jobs,
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
                        let analyze = if gets_analyze(t, analyze_bytes) {
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
            jobs,
        }
    }
}

pub(crate) fn endpoints(ctx: &RunContext) -> Result<(Endpoint, Endpoint)> {
    Ok((
        Endpoint::resolve(Role::Source, &ctx.plan.file.source)?,
        Endpoint::resolve(Role::Target, &ctx.plan.file.target)?,
    ))
}

async fn mark_done(ctx: &RunContext, item: &str) -> Result<()> {
    ctx.journal
        .item_done(
            ctx.run_id,
            &Item {
                stage: STAGE,
                item,
                ..Default::default()
            },
        )
        .await
}

/// Whether the copy runs `ANALYZE` on this table (`options.analyze_bytes`).
fn gets_analyze(t: &TableInfo, analyze_bytes: u64) -> bool {
    analyze_bytes > 0 && t.bytes.max(0) as u64 >= analyze_bytes
}

/// The journal item of a table's `ANALYZE` in the copy.
fn analyze_item(t: &TableInfo) -> String {
    format!("analyze:{}.{}", t.schema, t.name)
}

/// `ANALYZE` of one table in one target transaction with its journal item
/// (a rerun skips what is journaled; ANALYZE itself is harmless to repeat).
/// Not under the stall deadline: like an index build, it moves no rows.
async fn analyze_one(
    conn: &mut PgConnection,
    journal: &Journal,
    run_id: uuid::Uuid,
    qualified: &str,
    item: &str,
) -> Result<()> {
    let mut tx = conn.begin().await.map_err(on_target)?;
    sqlx::query(&format!("ANALYZE {qualified}"))
        .execute(&mut *tx)
        .await
        .map_err(on_target)?;
    let done = Item {
        stage: STAGE,
        item,
        ..Default::default()
    };
    journal.item_done_in(&mut tx, run_id, &done).await?;
    tx.commit().await.map_err(on_target)
}

/// `ANALYZE` of each table, `jobs` at a time. Returns how many.
async fn analyze_tables(ctx: &RunContext, tables: Vec<TableInfo>, jobs: usize) -> Result<usize> {
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
        .buffer_unordered(jobs.max(1))
        .try_collect::<Vec<()>>()
        .await?;
    Ok(n)
}

pub fn table_item(t: &TableInfo) -> String {
    format!("table:{}.{}", t.schema, t.name)
}

/// A block range of a large table, copied on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Range {
    index: i64,
    count: i64,
    start: i64,
    /// None: to the end of the table.
    end: Option<i64>,
}

/// When a table is split: `split_bytes` (0 = never) and each worker's share
/// of the data (all tables' bytes / jobs).
#[derive(Debug, Clone, Copy)]
struct Split {
    bytes: u64,
    share: u64,
}

impl Split {
    fn new(source: &Inventory, split_bytes: u64, jobs: usize) -> Split {
        let total: u64 = source.storage_tables().map(|t| t.bytes.max(0) as u64).sum();
        Split {
            bytes: split_bytes,
            share: total / jobs.max(1) as u64,
        }
    }
}

/// The block ranges of a table larger than `split_bytes` and than a
/// worker's share of the data (none: copy it whole). A smaller table does
/// not hold up the end of the copy, and only a table copied whole gets
/// `COPY … FREEZE` (ranges go into a table emptied in another
/// transaction): its pages are written once, where an unfrozen table's are
/// written again when the index builds set their hint bits (a 4.3 GB copy
/// took 28 s whole and 31–36 s with its largest table in two ranges).
fn ranges(t: &TableInfo, split: Split) -> Vec<Range> {
    let split_bytes = split.bytes;
    if split_bytes == 0 || t.bytes as u64 <= split_bytes || (t.bytes as u64) <= split.share || t.pages < 2 {
        return vec![];
    }
    let count = (t.bytes as u64)
        .div_ceil(split_bytes)
        .min(t.pages as u64)
        .min(256) as i64;
    if count < 2 {
        return vec![];
    }
    let step = (t.pages + count - 1) / count;
    (0..count)
        .map(|i| Range {
            index: i,
            count,
            start: i * step,
            end: (i + 1 < count).then_some((i + 1) * step),
        })
        .collect()
}

fn range_item(t: &TableInfo, r: &Range) -> String {
    format!("{}#{}/{}", table_item(t), r.index + 1, r.count)
}

/// One unit of copy work: a whole table, or one block range of it.
#[derive(Clone)]
struct Work {
    table: TableInfo,
    range: Option<Range>,
}

impl Work {
    fn bytes(&self) -> i64 {
        self.range
            .map(|r| self.table.bytes / r.count)
            .unwrap_or(self.table.bytes)
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
        let started = Instant::now();
        let journal_schema = ctx.journal.schema().to_string();
        let (source_ep, target_ep) = endpoints(ctx)?;
        let done = ctx.journal.items_done(ctx.run_id, STAGE).await?;
        let source = Inventory::read(&ctx.source, &journal_schema, false).await?;
        let target_version: i32 = sqlx::query_scalar("SELECT current_setting('server_version_num')::int")
            .fetch_one(&ctx.target)
            .await?;
        let binary = source.identity.version_num / 10000 == target_version / 10000;
        let (pg_dump, pg_restore) = tools::for_copy(source.identity.version_num).await?;
        let target_major = (target_version / 10000) as u32;
        let dir = ctx.run_dir.join("copy");
        std::fs::create_dir_all(&dir)?;

        // One snapshot for the schema dump and every table.
        let mut snapshot_conn = ctx.source.acquire().await.map_err(on_source)?;
        sqlx::query("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .execute(&mut *snapshot_conn)
            .await
            .map_err(on_source)?;
        let snapshot: String = sqlx::query_scalar("SELECT pg_export_snapshot()")
            .fetch_one(&mut *snapshot_conn)
            .await
            .map_err(on_source)?;

        // One schema dump (custom format) under the copy's snapshot; its
        // pre-data and post-data sections are restored from the same archive.
        let schema_dump = dir.join("schema.dump");
        let (pre, post) = (schema_dump.clone(), schema_dump.clone());
        if !done.contains("post-data") || !done.contains("pre-data") {
            let mut cmd = tools::command(&pg_dump, &source_ep);
            // Both schema sections (the post-data one holds the materialized
            // views' data); the table data moves by COPY.
            // With owners and privileges (GRANTs, column and default
            // privileges): the applications' roles keep what they could do.
            cmd.args(["--format=custom", "--section=pre-data", "--section=post-data"])
                .arg(format!("--snapshot={snapshot}"))
                .arg(format!("--exclude-schema={}", quote_ident(&journal_schema)))
                .arg(format!("--file={}", schema_dump.display()));
            tools::run(cmd, "pg_dump of the source's schema").await?;
        }
        if !done.contains("pre-data") {
            // Whatever an interrupted pre-data restore left goes first. Not
            // one transaction: thousands of tables would need more locks than
            // a server grants by default.
            drop_application_objects(&ctx.target, &journal_schema).await?;
            let args = [
                "--section=pre-data".to_string(),
                "--exit-on-error".into(),
                pre.display().to_string(),
            ];
            // Each statement commits on its own; none of them waits for its
            // WAL flush (thousands of tables meant thousands of flushes).
            // The journal's "pre-data" item commits afterwards, later in the
            // WAL: after a crash it survives only if all of them did, and
            // without it the pre-data is dropped and restored again.
            tools::restore(
                &pg_restore,
                &target_ep,
                target_major,
                &args,
                &[("PGOPTIONS", "-c synchronous_commit=off")],
                &role_map(ctx),
                "pg_restore --section=pre-data into the target",
            )
            .await?;
            mark_done(ctx, "pre-data").await?;
        }
        ctx.cancel.check()?;

        // Large tables get their indexes and keys built as soon as their data
        // is in (while others still copy); the SQL is the archive's own.
        let mut list_text = String::new();
        let mut early: Vec<EarlyEntry> = vec![];
        if !done.contains("post-data") {
            let mut cmd = tools::offline(&pg_restore);
            cmd.arg("--list").arg(&schema_dump);
            list_text = tools::run(cmd, "pg_restore --list of the schema archive").await?;
            let entries = early_indexes::parse_list(&list_text);
            early = early_indexes::plan(
                &ctx.source,
                &source,
                &entries,
                ctx.plan.file.options.early_index_bytes,
            )
            .await?;
        }
        let data_started = Instant::now();
        let schema_seconds = data_started.duration_since(started).as_secs_f64();

        // Data: largest first, `jobs` at a time; tables larger than
        // split_bytes as block ranges, each its own journal item.
        let split = Split::new(&source, ctx.plan.file.options.split_bytes, self.jobs);
        let mut work: Vec<Work> = vec![];
        for t in source.storage_tables() {
            work.extend(table_work(ctx, t, &done, split).await?);
        }
        work.sort_by_key(|w| std::cmp::Reverse(w.bytes()));
        let copies = work.len();
        let total_tables = work
            .iter()
            .filter(|w| w.range.is_none_or(|r| r.index == 0))
            .count();
        ctx.emit(Event::CopyStarted {
            items: copies as u64,
            estimated_bytes: work
                .iter()
                .map(|w| w.table.pages.max(0) as u64 * 8192 / w.range.map(|r| r.count as u64).unwrap_or(1))
                .sum(),
        });
        let to_build: Vec<EarlyEntry> = early
            .iter()
            .filter(|e| !done.contains(&e.item))
            .cloned()
            .collect();
        // Large tables whose indexes and keys are all built during the copy
        // are analyzed there too, in the gaps at its end; the others after
        // the final restore.
        let analyze_bytes = ctx.plan.file.options.analyze_bytes;
        let mut analyses: Vec<(i64, Analysis)> = source
            .storage_tables()
            .filter(|t| gets_analyze(t, analyze_bytes) && !done.contains(&analyze_item(t)))
            .filter(|t| {
                let item = table_item(t);
                early.iter().any(|e| !e.foreign_key && e.tables[0] == item)
            })
            .map(|t| {
                (
                    t.bytes,
                    Analysis {
                        table: table_item(t),
                        qualified: t.qualified(),
                        item: analyze_item(t),
                    },
                )
            })
            .collect();
        analyses.sort_by_key(|(bytes, _)| std::cmp::Reverse(*bytes));
        let total_work = work.len() + to_build.len() + analyses.len();
        let schedule = Schedule::with_analyses(
            work.into_iter().map(|w| (table_item(&w.table), w)).collect(),
            to_build,
            analyses.into_iter().map(|(_, a)| a).collect(),
        );
        let workers = self.jobs.min(total_work).max(1);
        let shared = Worker {
            source: ctx.source.clone(),
            target: ctx.target.clone(),
            journal: ctx.journal.clone(),
            run_id: ctx.run_id,
            events: ctx.events.clone(),
            cancel: ctx.cancel.clone(),
            schedule: Arc::new(Mutex::new(schedule)),
            snapshot: snapshot.clone(),
            binary,
            stall: match ctx.plan.file.options.stall_timeout {
                // Never, in practice (thirty years).
                0 => Duration::from_secs(30 * 365 * 86_400),
                n => Duration::from_secs(n),
            },
            build_memory_mb: ctx.plan.file.options.build_memory_mb,
            pg_restore: pg_restore.clone(),
            target_major,
            archive: schema_dump.clone(),
            dir: dir.clone(),
            index_seconds: Arc::new(Mutex::new(0.0)),
            analyzed: Arc::new(Mutex::new((0, 0.0))),
        };
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..workers {
            tasks.spawn(shared.clone().run());
        }
        let mut rows_copied = 0u64;
        let mut first_error = None;
        loop {
            // After a failure the others finish what they are on (a copy or
            // an index build, each in its own transaction) for at most the
            // stall timeout; then they are dropped, which rolls it back.
            let joined = if first_error.is_some() {
                match tokio::time::timeout(shared.stall, tasks.join_next()).await {
                    Ok(j) => j,
                    Err(_) => {
                        tasks.abort_all();
                        break;
                    }
                }
            } else {
                tasks.join_next().await
            };
            let Some(joined) = joined else { break };
            match joined {
                Ok(Ok(n)) => rows_copied += n,
                Ok(Err(e)) => {
                    // Nothing more starts.
                    shared.schedule.lock().unwrap().abort();
                    first_error.get_or_insert(e);
                }
                Err(e) => {
                    shared.schedule.lock().unwrap().abort();
                    first_error.get_or_insert(Error::failure(format!("a copy worker crashed: {e}")));
                }
            }
        }
        if let Some(e) = first_error {
            return Err(e);
        }
        ctx.cancel.check()?;
        let post_started = Instant::now();
        let data_seconds = post_started.duration_since(data_started).as_secs_f64();

        let left_over = shared.schedule.lock().unwrap().left_over();
        if !done.contains("post-data") {
            // Only a final restore that an earlier attempt started may have
            // finished unrecorded: early builds alone can make the counts
            // match while comments or materialized views' data are missing.
            let finished_unrecorded =
                done.contains("post-data-started") && post_data_present(ctx, &journal_schema).await?;
            if !finished_unrecorded {
                mark_done(ctx, "post-data-started").await?;
                // The rest of post-data in parallel (pg_restore --jobs orders
                // it by dependency), without what was built during the copy.
                // Not one transaction: what an interrupted attempt left is
                // dropped first (an early entry exists if and only if it is
                // journaled).
                let now_done = ctx.journal.items_done(ctx.run_id, STAGE).await?;
                let built: Vec<&EarlyEntry> = early.iter().filter(|e| now_done.contains(&e.item)).collect();
                let keep: Vec<(String, String, String)> = built
                    .iter()
                    .map(|e| (e.schema.clone(), e.table.clone(), e.name.clone()))
                    .collect();
                crate::clear::drop_post_data(&ctx.target, &journal_schema, &keep).await?;
                let skip: HashSet<String> = built
                    .iter()
                    .flat_map(|e| std::iter::once(&e.toc).chain(&e.dependents))
                    .map(|t| t.line.clone())
                    .collect();
                let list_file = dir.join("post-data.list");
                early_indexes::write_private(&list_file, &early_indexes::remaining_list(&list_text, &skip))?;
                let args = [
                    "--section=post-data".to_string(),
                    "--exit-on-error".into(),
                    format!("--jobs={}", self.jobs.max(1)),
                    format!("--use-list={}", list_file.display()),
                    post.display().to_string(),
                ];
                // Index builds sort in memory rather than in temporary files
                // (for these sessions only), and skip waiting for WAL flushes.
                tools::restore(
                    &pg_restore,
                    &target_ep,
                    target_major,
                    &args,
                    &[(
                        "PGOPTIONS",
                        "-c maintenance_work_mem=256MB -c synchronous_commit=off -c max_parallel_maintenance_workers=0",
                    )],
                    &role_map(ctx),
                    "pg_restore --section=post-data into the target",
                )
                .await?;
            }
            mark_done(ctx, "post-data").await?;
        }
        let post_seconds = post_started.elapsed().as_secs_f64();
        // Planner statistics for the large tables, with every index in place
        // (expression indexes have statistics of their own).
        let analyze_started = Instant::now();
        let analyzed_now = ctx.journal.items_done(ctx.run_id, STAGE).await?;
        let mut to_analyze: Vec<TableInfo> = source
            .storage_tables()
            .filter(|t| gets_analyze(t, analyze_bytes) && !analyzed_now.contains(&analyze_item(t)))
            .cloned()
            .collect();
        to_analyze.sort_by_key(|t| std::cmp::Reverse(t.bytes));
        let analyzed = analyze_tables(ctx, to_analyze, self.jobs).await?;
        let analyze_seconds = analyze_started.elapsed().as_secs_f64();
        let sequences = copy_sequences(ctx, &source).await?;
        let large_objects = copy_large_objects(ctx).await?;
        if !ctx
            .journal
            .items_done(ctx.run_id, STAGE)
            .await?
            .contains("database-settings")
        {
            carry_database_settings(ctx, &target_ep.dbname, &dir).await?;
            mark_done(ctx, "database-settings").await?;
        }
        sqlx::query("COMMIT")
            .execute(&mut *snapshot_conn)
            .await
            .map_err(on_source)?;
        let index_seconds = *shared.index_seconds.lock().unwrap();
        let (analyzed_early, analyze_early_seconds) = *shared.analyzed.lock().unwrap();
        let early_built = early.len() - left_over;
        ctx.emit(Event::Info {
            message: format!(
                "copy: schema dumps and pre-data {schema_seconds:.1} s, data {data_seconds:.1} s (with {early_built} \
                 index and key builds of large tables, {index_seconds:.1} s of them, and {analyzed_early} ANALYZE, \
                 {analyze_early_seconds:.1} s), rest of post-data (indexes, constraints, triggers) {post_seconds:.1} s, \
                 ANALYZE of {analyzed} more large tables {analyze_seconds:.1} s"
            ),
        });
        Ok(json!({
            "summary": format!("{total_tables} tables ({rows_copied} rows) copied in this pass, {sequences} sequences set, \
                                {large_objects} large objects, in {:.1} s", started.elapsed().as_secs_f64()),
            "tables_copied": total_tables, "rows_copied": rows_copied, "sequences": sequences,
            "large_objects": large_objects, "binary": binary,
            "seconds": { "schema": schema_seconds, "data": data_seconds, "post_data": post_seconds,
                         "early_index_builds": index_seconds, "analyze_during_data": analyze_early_seconds,
                         "analyze": analyze_seconds },
            "tables_analyzed": analyzed_early + analyzed,
            "early_index_builds": early_built,
        }))
    }

    async fn check(&self, ctx: &RunContext) -> Result<Check> {
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

    async fn undo(&self, ctx: &RunContext) -> Result<String> {
        drop_application_objects(&ctx.target, ctx.journal.schema()).await?;
        let (_, target_ep) = endpoints(ctx)?;
        let restored = restore_database_settings(ctx, &target_ep.dbname, &ctx.run_dir.join("copy")).await?;
        ctx.journal.clear_items(ctx.run_id, STAGE).await?;
        Ok(if restored {
            "dropped what the copy created on the target; the target database's own privileges and settings are back"
                .into()
        } else {
            "dropped what the copy created on the target".into()
        })
    }
}

/// The plan's `[roles] map`.
pub fn role_map(ctx: &RunContext) -> crate::security::RoleMap {
    crate::security::RoleMap(ctx.plan.file.roles.map.clone())
}

/// The file holding the target database's privileges and settings from
/// before the copy changed them (for undo).
fn previous_settings_file(dir: &std::path::Path) -> std::path::PathBuf {
    dir.join("target-database-settings.json")
}

/// Gives the target database the source's database-level privileges and
/// settings (`GRANT CONNECT`, `ALTER DATABASE … SET search_path`, per-role
/// settings), which pg_dump leaves out without `--create`; the target's own
/// are saved first for undo.
async fn carry_database_settings(ctx: &RunContext, target_db: &str, dir: &std::path::Path) -> Result<()> {
    let journal_schema = ctx.journal.schema();
    let map = role_map(ctx);
    let source = Security::read(&ctx.source, journal_schema)
        .await
        .map_err(|e| e.context("reading the source database's privileges and settings"))?
        .mapped(&map);
    let target = Security::read(&ctx.target, journal_schema).await?;
    let file = previous_settings_file(dir);
    if !file.exists() {
        let saved = json!({ "acl": target.database_acl, "settings": target.database_settings,
                            "role_settings": target.role_settings });
        early_indexes::write_private(&file, &saved.to_string())?;
    }
    let public = crate::security::public_schema_statements(&ctx.source, &ctx.target, &map).await?;
    for sql in source
        .database_statements(target_db, &target)
        .into_iter()
        .chain(public)
    {
        sqlx::query(&sql).execute(&ctx.target).await.map_err(|e| {
            Error::from(e).context(format!("carrying the source's database settings ({sql})"))
        })?;
    }
    Ok(())
}

/// Puts back the target database's own privileges and settings, as saved by
/// [`carry_database_settings`]; false when there was nothing saved.
async fn restore_database_settings(ctx: &RunContext, target_db: &str, dir: &std::path::Path) -> Result<bool> {
    let file = previous_settings_file(dir);
    let Ok(text) = std::fs::read_to_string(&file) else {
        return Ok(false);
    };
    let saved: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| Error::failure(format!("{} is damaged ({e})", file.display())))?;
    let previous = Security {
        database_acl: serde_json::from_value(saved["acl"].clone()).unwrap_or_default(),
        database_settings: serde_json::from_value(saved["settings"].clone()).unwrap_or_default(),
        role_settings: serde_json::from_value(saved["role_settings"].clone()).unwrap_or_default(),
        ..Default::default()
    };
    let now = Security::read(&ctx.target, ctx.journal.schema()).await?;
    for sql in previous.database_statements(target_db, &now) {
        sqlx::query(&sql).execute(&ctx.target).await?;
    }
    let _ = std::fs::remove_file(&file);
    Ok(true)
}

/// The copies a table still needs: the whole table, or the block ranges of a
/// large one not yet committed (none done: the table is emptied and its
/// range items cleared, as no row is kept).
async fn table_work(
    ctx: &RunContext,
    t: &TableInfo,
    done: &BTreeSet<String>,
    split: Split,
) -> Result<Vec<Work>> {
    if done.contains(&table_item(t)) {
        return Ok(vec![]);
    }
    let rs = ranges(t, split);
    if rs.is_empty() {
        return Ok(vec![Work {
            table: t.clone(),
            range: None,
        }]);
    }
    let prefix = format!("{}#", table_item(t));
    let suffix = format!("/{}", rs.len());
    let done_ranges: Vec<&String> = done.iter().filter(|i| i.starts_with(&prefix)).collect();
    let range_work = |r: Range| Work {
        table: t.clone(),
        range: Some(r),
    };
    if done_ranges.is_empty() || done_ranges.iter().any(|i| !i.ends_with(&suffix)) {
        // Start the table over: every committed range is journaled with its
        // rows, so none done means no row to keep.
        sqlx::query(&format!(
            "DELETE FROM {} WHERE run_id = $1 AND stage = $2 AND left(item, length($3)) = $3",
            ctx.journal.table("item_progress")
        ))
        .bind(ctx.run_id)
        .bind(STAGE)
        .bind(&prefix)
        .execute(ctx.journal.pool())
        .await?;
        sqlx::query(&format!("TRUNCATE ONLY {}", t.qualified()))
            .execute(&ctx.target)
            .await?;
        return Ok(rs.into_iter().map(range_work).collect());
    }
    Ok(rs
        .into_iter()
        .filter(|r| !done.contains(&range_item(t, r)))
        .map(range_work)
        .collect())
}

/// Memory for one index build or foreign-key check: about 100 bytes a row
/// (a sort entry and its tuple) plus 64 MB, at most `cap_mb` (and at least 64 MB).
fn build_memory_mb(rows: i64, cap_mb: u64) -> u64 {
    let need = rows.max(0) as u64 * 100 / (1 << 20) + 64;
    need.min(cap_mb).max(64.min(cap_mb)).max(1)
}

/// What a copy worker owns: it runs as its own task.
#[derive(Clone)]
struct Worker {
    source: sqlx::PgPool,
    target: sqlx::PgPool,
    journal: cutover_core::journal::Journal,
    run_id: uuid::Uuid,
    events: Arc<dyn cutover_core::event::EventSink>,
    cancel: cutover_core::stage::CancelFlag,
    schedule: Arc<Mutex<Schedule<Work>>>,
    snapshot: String,
    binary: bool,
    /// How long a stream may move no data before the table fails.
    stall: Duration,
    /// Upper bound of the memory of one early build (options.build_memory_mb).
    build_memory_mb: u64,
    /// Where early entries' statements come from: the schema archive.
    pg_restore: tools::Tool,
    target_major: u32,
    archive: std::path::PathBuf,
    dir: std::path::PathBuf,
    /// Time spent in early index builds, all workers together.
    index_seconds: Arc<Mutex<f64>>,
    /// Tables analyzed during the copy and the time it took, all workers together.
    analyzed: Arc<Mutex<(usize, f64)>>,
}

impl Worker {
    fn stalled(&self, side: &str) -> Error {
        Error::failure(format!(
            "{side} sent or took no data for {} s (options.stall_timeout): is it paused, overloaded, or the \
             network cut? Check it, then run again to resume",
            self.stall.as_secs()
        ))
    }

    /// Copies tables from the shared queue until it is empty; returns rows copied.
    async fn run(self) -> Result<u64> {
        let mut src = within!(self, "the source", self.source.acquire()).map_err(on_source)?;
        let mut tgt = within!(self, "the target", self.target.acquire()).map_err(on_target)?;
        within!(
            self,
            "the source",
            sqlx::query("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY").execute(&mut *src)
        )
        .map_err(on_source)?;
        within!(
            self,
            "the source",
            sqlx::query(&format!(
                "SET TRANSACTION SNAPSHOT {}",
                quote_literal(&self.snapshot)
            ))
            .execute(&mut *src)
        )
        .map_err(on_source)?;
        within!(
            self,
            "the target",
            sqlx::query("SET synchronous_commit = off").execute(&mut *tgt)
        )
        .map_err(on_target)?;
        // Triggers are created after the data (post-data), so none fires during
        // the load anyway; replica mode also keeps rules and replication
        // triggers quiet where the target user may set it.
        let replica = within!(
            self,
            "the target",
            sqlx::query("SET session_replication_role = replica").execute(&mut *tgt)
        );
        if replica.is_err() {
            tracing::debug!(
                "session_replication_role not permitted on the target; triggers come after the data"
            );
        }
        let mut rows = 0u64;
        loop {
            if self.cancel.is_cancelled() {
                break;
            }
            let next = self.schedule.lock().unwrap().take();
            match next {
                Next::Finished => break,
                // Entries wait for copies or keys another worker is on.
                Next::Wait => tokio::time::sleep(Duration::from_millis(20)).await,
                Next::Copy(work) => {
                    let table = &work.table;
                    let t0 = Instant::now();
                    match self.copy_table(&mut src, &mut tgt, table, work.range).await {
                        Ok(n) => {
                            rows += n;
                            tracing::debug!(
                                "{} copied in {:.1} s",
                                table.display(),
                                t0.elapsed().as_secs_f64()
                            );
                        }
                        Err(e) => {
                            self.schedule.lock().unwrap().abort();
                            src.close_on_drop();
                            tgt.close_on_drop();
                            return Err(e.context(format!("copying table {}", table.display())));
                        }
                    }
                    self.schedule.lock().unwrap().copied(&table_item(table));
                }
                Next::Build(entry) => {
                    if let Err(e) = self.build(&entry).await {
                        self.schedule.lock().unwrap().abort();
                        return Err(e.context(format!(
                            "building {} of {}.{} during the copy",
                            entry.name, entry.schema, entry.table
                        )));
                    }
                    self.schedule.lock().unwrap().built(&entry);
                }
                Next::Analyze(a) => {
                    if let Err(e) = self.analyze(&mut tgt, &a).await {
                        self.schedule.lock().unwrap().abort();
                        return Err(e.context(format!("analyzing {} during the copy", a.qualified)));
                    }
                    self.schedule.lock().unwrap().analyzed(&a);
                }
            }
        }
        within!(self, "the source", sqlx::query("COMMIT").execute(&mut *src)).map_err(on_source)?;
        // Only where it was set: a non-superuser may not even RESET it.
        if replica.is_ok() {
            within!(
                self,
                "the target",
                sqlx::query("RESET session_replication_role").execute(&mut *tgt)
            )
            .map_err(on_target)?;
        }
        Ok(rows)
    }

    /// `ANALYZE` of one table in one transaction with its journal item.
    async fn analyze(&self, tgt: &mut PoolConnection<Postgres>, a: &Analysis) -> Result<()> {
        let t0 = Instant::now();
        analyze_one(tgt, &self.journal, self.run_id, &a.qualified, &a.item).await?;
        {
            let mut analyzed = self.analyzed.lock().unwrap();
            analyzed.0 += 1;
            analyzed.1 += t0.elapsed().as_secs_f64();
        }
        tracing::debug!(
            "{} analyzed during the copy in {:.1} s",
            a.qualified,
            t0.elapsed().as_secs_f64()
        );
        Ok(())
    }

    /// Builds one early entry (its statement from the schema archive) and
    /// journals it in one transaction, on a connection of its own (the
    /// archive's script changes session settings such as search_path): after
    /// a crash the entry exists on the target if and only if it is journaled.
    async fn build(&self, entry: &EarlyEntry) -> Result<()> {
        use sqlx::{ConnectOptions, Connection};
        let t0 = Instant::now();
        tracing::debug!("building {} of {}.{}", entry.name, entry.schema, entry.table);
        let list_file = self
            .dir
            .join(format!("early-{}-{}.list", entry.toc.catalog, entry.toc.oid));
        let sql = early_indexes::script(
            &self.pg_restore,
            self.target_major,
            &self.archive,
            &list_file,
            entry,
        )
        .await?;
        let mut conn =
            within!(self, "the target", self.target.connect_options().connect()).map_err(on_target)?;
        let result = async {
            let mut tx = Connection::begin(&mut conn).await.map_err(on_target)?;
            // For this transaction only: sorts (and a foreign key's check)
            // in memory sized to the table rather than in temporary files;
            // no parallel workers, as the copy's own workers already use the
            // machine (parallel builds made the copy 8 % slower at 1 GB on 2
            // cores); no wait for the WAL flush at commit.
            let memory_mb = build_memory_mb(entry.rows, self.build_memory_mb);
            let settings = format!(
                "SET LOCAL maintenance_work_mem = '{memory_mb}MB'; SET LOCAL work_mem = '{memory_mb}MB'; \
                 SET LOCAL max_parallel_maintenance_workers = 0; SET LOCAL max_parallel_workers_per_gather = 0"
            );
            (&mut *tx).execute(sqlx::raw_sql(&settings)).await.map_err(on_target)?;
            sqlx::query("SET LOCAL synchronous_commit = off")
                .execute(&mut *tx)
                .await
                .map_err(on_target)?;
            (&mut *tx).execute(sqlx::raw_sql(&sql)).await.map_err(on_target)?;
            let done = Item {
                stage: STAGE,
                item: &entry.item,
                ..Default::default()
            };
            self.journal.item_done_in(&mut tx, self.run_id, &done).await?;
            tx.commit().await.map_err(on_target)
        }
        .await;
        let _ = conn.close().await;
        result?;
        let seconds = t0.elapsed().as_secs_f64();
        *self.index_seconds.lock().unwrap() += seconds;
        tracing::debug!(
            "{} of {}.{} built during the copy in {seconds:.1} s",
            entry.name,
            entry.schema,
            entry.table
        );
        Ok(())
    }

    /// One table: truncate and load in one target transaction that also
    /// marks the table done in the journal. One range of a table: load its
    /// rows (the table was emptied before its first range) in one target
    /// transaction that marks the range done.
    async fn copy_table(
        &self,
        src: &mut PoolConnection<Postgres>,
        tgt: &mut PoolConnection<Postgres>,
        table: &TableInfo,
        range: Option<Range>,
    ) -> Result<u64> {
        let columns = if table.copy_columns.is_empty() {
            String::new()
        } else {
            format!(
                " ({})",
                table
                    .copy_columns
                    .iter()
                    .map(|c| quote_ident(c))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        // Binary only where every copied column's type has binary I/O.
        let format = if self.binary && table.no_binary.is_none() {
            "binary"
        } else {
            "text"
        };
        let (name, item) = match &range {
            None => (table.display(), table_item(table)),
            Some(r) => (
                format!("{} [{}/{}]", table.display(), r.index + 1, r.count),
                range_item(table, r),
            ),
        };
        let mut tx = within!(self, "the target", tgt.begin()).map_err(on_target)?;
        let (copy_in_sql, copy_out_sql) = match &range {
            None => {
                // Whatever is in the table goes in this transaction, so the
                // copy can be run again. A large table is truncated, which
                // lets COPY freeze its rows as it writes them; a small one is
                // emptied with DELETE, because TRUNCATE gives a table new
                // files (1.7 ms each time here, against 0.2 ms for the whole
                // copy of a 10-row table) and freezing is worth little there.
                let freeze = table.bytes.max(0) as u64 >= FREEZE_MIN_BYTES;
                let empty = if freeze {
                    "TRUNCATE ONLY"
                } else {
                    "DELETE FROM ONLY"
                };
                within!(
                    self,
                    "the target",
                    sqlx::query(&format!("{empty} {}", table.qualified())).execute(&mut *tx)
                )
                .map_err(on_target)?;
                let freeze = if freeze { ", FREEZE" } else { "" };
                (
                    format!(
                        "COPY {}{columns} FROM STDIN (FORMAT {format}{freeze})",
                        table.qualified()
                    ),
                    format!("COPY {}{columns} TO STDOUT (FORMAT {format})", table.qualified()),
                )
            }
            Some(r) => {
                let select: Vec<String> = table.copy_columns.iter().map(|c| quote_ident(c)).collect();
                let mut filter = format!("ctid >= '({},0)'::tid", r.start);
                if let Some(end) = r.end {
                    filter.push_str(&format!(" AND ctid < '({end},0)'::tid"));
                }
                (
                    format!("COPY {}{columns} FROM STDIN (FORMAT {format})", table.qualified()),
                    format!(
                        "COPY (SELECT {} FROM ONLY {} WHERE {filter}) TO STDOUT (FORMAT {format})",
                        select.join(", "),
                        table.qualified()
                    ),
                )
            }
        };
        let estimated_bytes = (table.pages.max(0) as u64 * 8192) / range.map(|r| r.count as u64).unwrap_or(1);
        let mut copy_in = within!(self, "the target", tx.copy_in_raw(&copy_in_sql)).map_err(on_target)?;
        let mut stream = within!(self, "the source", src.copy_out_raw(&copy_out_sql)).map_err(on_source)?;
        let mut bytes = 0u64;
        let mut last_report = Instant::now();
        // The server sends one CopyData message per row; forwarding each as
        // its own message costs a write per row. Rows are gathered into
        // large buffers (memory stays bounded by COPY_BUFFER).
        let mut buffer: Vec<u8> = Vec::with_capacity(COPY_BUFFER);
        // One stall deadline for the stream, pushed back every few thousand
        // rows or buffer: reading the clock and arming a timer for every row
        // cost a seventh of this process's time.
        let stall = tokio::time::sleep(self.stall);
        tokio::pin!(stall);
        let mut rows_since_check = 0u32;
        loop {
            let next = tokio::select! {
                biased;
                next = stream.next() => next,
                _ = &mut stall => return Err(self.stalled("the source")),
            };
            let Some(chunk) = next else { break };
            let chunk = chunk.map_err(on_source)?;
            bytes += chunk.len() as u64;
            buffer.extend_from_slice(&chunk);
            rows_since_check += 1;
            let full = buffer.len() >= COPY_BUFFER;
            if full {
                // The same buffer again: a fresh megabyte each time cost page
                // faults and zeroing (2 % of the machine's time in a profile).
                within!(self, "the target", copy_in.send(&buffer[..])).map_err(on_target)?;
                buffer.clear();
            }
            if full || rows_since_check >= 4096 {
                rows_since_check = 0;
                let now = Instant::now();
                stall.as_mut().reset(tokio::time::Instant::from(now) + self.stall);
                if now.duration_since(last_report) > Duration::from_millis(500) {
                    last_report = now;
                    self.events.emit(Event::TableProgress {
                        table: name.clone(),
                        rows: 0,
                        bytes,
                        estimated_bytes,
                        done: false,
                    });
                }
            }
        }
        drop(stream);
        if !buffer.is_empty() {
            within!(self, "the target", copy_in.send(&buffer[..])).map_err(on_target)?;
        }
        let rows = within!(self, "the target", copy_in.finish()).map_err(on_target)?;
        let done = Item {
            stage: STAGE,
            item: &item,
            rows: Some(rows as i64),
            bytes: Some(bytes as i64),
            detail: None,
        };
        within!(
            self,
            "the target",
            self.journal.item_done_in(&mut tx, self.run_id, &done)
        )
        .map_err(|e| e.context("writing to the target"))?;
        within!(self, "the target", tx.commit()).map_err(on_target)?;
        self.events.emit(Event::TableProgress {
            table: name,
            rows,
            bytes,
            estimated_bytes,
            done: true,
        });
        Ok(rows)
    }
}

/// Whether the target already has every index, constraint and trigger of the
/// source (a final post-data restore that finished before its journal entry;
/// asked only when one was started).
async fn post_data_present(ctx: &RunContext, journal_schema: &str) -> Result<bool> {
    let sql = "SELECT (SELECT count(*) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid \
                 JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', $1) \
                 AND n.nspname NOT LIKE 'pg\\_%') \
             + (SELECT count(*) FROM pg_constraint k JOIN pg_namespace n ON n.oid = k.connamespace \
                 WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', $1) AND n.nspname NOT LIKE 'pg\\_%') \
             + (SELECT count(*) FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE NOT t.tgisinternal AND n.nspname NOT IN ('pg_catalog', 'information_schema', $1) AND n.nspname NOT LIKE 'pg\\_%')";
    let s: i64 = sqlx::query_scalar(sql)
        .bind(journal_schema)
        .fetch_one(&ctx.source)
        .await
        .map_err(on_source)?;
    let t: i64 = sqlx::query_scalar(sql)
        .bind(journal_schema)
        .fetch_one(&ctx.target)
        .await
        .map_err(on_target)?;
    // Pre-data alone brings NOT NULL-free tables without any of these; the
    // source having none means there is nothing to restore.
    Ok(s > 0 && s == t)
}

/// Sets every sequence on the target to the source's position.
async fn copy_sequences(ctx: &RunContext, source: &Inventory) -> Result<usize> {
    let mut sql = String::new();
    for s in &source.sequences {
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
        stage: STAGE,
        item: "sequences",
        rows: Some(source.sequences.len() as i64),
        ..Default::default()
    };
    ctx.journal.item_done(ctx.run_id, &item).await?;
    Ok(source.sequences.len())
}

/// Copies large objects one by one (each in its own transaction with its
/// journal entry); pre-data created them empty.
/// Large objects are read and written in slices of this many bytes: memory
/// stays flat however large one is (`lo_get` of a whole object is limited to
/// 1 GB and holds it all).
const LO_CHUNK: i64 = 1 << 20;
/// Objects up to one slice share a transaction, up to this many bytes or
/// [`LO_BATCH_COUNT`] objects (100,000 small ones were 100,000 transactions).
const LO_BATCH_BYTES: i64 = 8 << 20;
const LO_BATCH_COUNT: usize = 1000;

/// One large object of the source: its oid, size, owner and ACL grants.
#[derive(Debug, Clone)]
struct LargeObject {
    oid: u32,
    size: i64,
    owner: String,
    grants: Vec<(String, String)>,
}

/// What one transaction on the target copies: a batch of small objects, or
/// one large object slice by slice.
enum LoWork {
    Batch(Vec<LargeObject>),
    Big(LargeObject),
}

impl LoWork {
    fn item(&self) -> String {
        match self {
            LoWork::Batch(b) => format!("large-objects:{}-{}", b[0].oid, b[b.len() - 1].oid),
            LoWork::Big(o) => format!("large-object:{}", o.oid),
        }
    }
}

async fn copy_large_objects(ctx: &RunContext) -> Result<usize> {
    let rows: Vec<(sqlx::postgres::types::Oid, i64, String, Vec<String>)> = sqlx::query_as(
        "SELECT m.oid, lo_lseek64(lo_open(m.oid, x'40000'::int), 0, 2), pg_get_userbyid(m.lomowner)::text, \
                coalesce((SELECT array_agg(coalesce(r.rolname::text, 'PUBLIC') || '=' || x.privilege_type || \
                                 CASE WHEN x.is_grantable THEN '*' ELSE '' END) \
                          FROM aclexplode(m.lomacl) x LEFT JOIN pg_roles r ON r.oid = x.grantee \
                          WHERE x.grantee <> m.lomowner), '{}') \
         FROM pg_largeobject_metadata m ORDER BY m.oid",
    )
    .fetch_all(&ctx.source)
    .await
    .map_err(on_source)?;
    let objects: Vec<LargeObject> = rows
        .into_iter()
        .map(|(oid, size, owner, grants)| LargeObject {
            oid: oid.0,
            size,
            owner,
            grants: grants
                .iter()
                .filter_map(|g| g.split_once('=').map(|(a, b)| (a.to_string(), b.to_string())))
                .collect(),
        })
        .collect();
    let count = objects.len();
    let mut work = vec![];
    let mut batch: Vec<LargeObject> = vec![];
    let mut batch_bytes = 0;
    for o in objects {
        if o.size > LO_CHUNK {
            work.push(LoWork::Big(o));
            continue;
        }
        if !batch.is_empty() && (batch_bytes + o.size > LO_BATCH_BYTES || batch.len() >= LO_BATCH_COUNT) {
            work.push(LoWork::Batch(std::mem::take(&mut batch)));
            batch_bytes = 0;
        }
        batch_bytes += o.size;
        batch.push(o);
    }
    if !batch.is_empty() {
        work.push(LoWork::Batch(batch));
    }
    let done = ctx.journal.items_done(ctx.run_id, STAGE).await?;
    let me: String = sqlx::query_scalar("SELECT current_user::text")
        .fetch_one(&ctx.target)
        .await?;
    let map = role_map(ctx);
    let jobs = ctx.plan.file.options.jobs.clamp(2, 8);
    use futures::StreamExt;
    let mut results = futures::stream::iter(work.into_iter().filter(|w| !done.contains(&w.item())))
        .map(|w| copy_lo_work(ctx, w, &me, &map))
        .buffer_unordered(jobs);
    while let Some(r) = results.next().await {
        r?;
    }
    Ok(count)
}

/// Copies one unit of large objects in one target transaction with its
/// journal item: after a crash they exist on the target if and only if the
/// item is there (what an earlier attempt left is unlinked first).
async fn copy_lo_work(
    ctx: &RunContext,
    work: LoWork,
    me: &str,
    map: &crate::security::RoleMap,
) -> Result<()> {
    let item = work.item();
    let objects: Vec<&LargeObject> = match &work {
        LoWork::Batch(b) => b.iter().collect(),
        LoWork::Big(o) => vec![o],
    };
    let oids: Vec<sqlx::postgres::types::Oid> = objects
        .iter()
        .map(|o| sqlx::postgres::types::Oid(o.oid))
        .collect();
    let mut tx = ctx.target.begin().await?;
    sqlx::query("SELECT lo_unlink(oid) FROM pg_largeobject_metadata WHERE oid = ANY($1)")
        .bind(&oids)
        .execute(&mut *tx)
        .await?;
    let bytes = match &work {
        LoWork::Batch(_) => {
            let (got, data): (Vec<sqlx::postgres::types::Oid>, Vec<Vec<u8>>) = sqlx::query_as(
                "SELECT array_agg(o ORDER BY o), array_agg(lo_get(o) ORDER BY o) FROM unnest($1::oid[]) o",
            )
            .bind(&oids)
            .fetch_one(&ctx.source)
            .await
            .map_err(on_source)?;
            sqlx::query("SELECT lo_from_bytea(o, d) FROM unnest($1::oid[], $2::bytea[]) AS t(o, d)")
                .bind(&got)
                .bind(&data)
                .execute(&mut *tx)
                .await?;
            data.iter().map(|d| d.len() as i64).sum()
        }
        LoWork::Big(o) => {
            sqlx::query("SELECT lo_create($1)")
                .bind(sqlx::postgres::types::Oid(o.oid))
                .execute(&mut *tx)
                .await?;
            let mut offset = 0i64;
            while offset < o.size {
                let slice: Vec<u8> = sqlx::query_scalar("SELECT lo_get($1, $2, $3)")
                    .bind(sqlx::postgres::types::Oid(o.oid))
                    .bind(offset)
                    .bind(LO_CHUNK as i32)
                    .fetch_one(&ctx.source)
                    .await
                    .map_err(on_source)?;
                if slice.is_empty() {
                    break;
                }
                sqlx::query("SELECT lo_put($1, $2, $3)")
                    .bind(sqlx::postgres::types::Oid(o.oid))
                    .bind(offset)
                    .bind(&slice)
                    .execute(&mut *tx)
                    .await?;
                offset += slice.len() as i64;
                ctx.cancel.check()?;
            }
            offset
        }
    };
    // Owners and grants as on the source.
    for o in &objects {
        let owner = map.target(&o.owner);
        if owner != me {
            sqlx::query(&format!(
                "ALTER LARGE OBJECT {} OWNER TO {}",
                o.oid,
                quote_ident(owner)
            ))
            .execute(&mut *tx)
            .await?;
        }
        for (who, privilege) in &o.grants {
            let who = if who == "PUBLIC" {
                "PUBLIC".to_string()
            } else {
                quote_ident(map.target(who))
            };
            let (privilege, with) = match privilege.strip_suffix('*') {
                Some(p) => (p, " WITH GRANT OPTION"),
                None => (privilege.as_str(), ""),
            };
            sqlx::query(&format!(
                "GRANT {privilege} ON LARGE OBJECT {} TO {who}{with}",
                o.oid
            ))
            .execute(&mut *tx)
            .await?;
        }
    }
    ctx.journal
        .item_done_in(
            &mut tx,
            ctx.run_id,
            &Item {
                stage: STAGE,
                item: &item,
                bytes: Some(bytes),
                rows: Some(objects.len() as i64),
                ..Default::default()
            },
        )
        .await?;
    tx.commit().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(bytes: i64) -> TableInfo {
        TableInfo {
            schema: "public".into(),
            name: "t".into(),
            kind: "r".into(),
            is_partition: false,
            rows: 0,
            bytes,
            columns: vec![],
            copy_columns: vec![],
            primary_key: vec![],
            pages: bytes / 8192,
            changes: 0,
            rows_estimated: false,
            no_binary: None,
        }
    }

    #[test]
    fn only_a_table_beyond_its_share_and_split_bytes_is_split() {
        const GB: i64 = 1 << 30;
        // 1.6 GB of 4.3 GB with two workers: the others keep the second busy.
        let split = Split {
            bytes: GB as u64,
            share: (43 * GB / 20) as u64,
        };
        assert!(ranges(&table(16 * GB / 10), split).is_empty());
        // 3.5 GB of 4.3 GB: it alone would outlast the rest, so in 4 ranges.
        let rs = ranges(&table(35 * GB / 10), split);
        assert_eq!(rs.len(), 4);
        assert_eq!((rs[0].start, rs[3].end), (0, None));
        assert!(ranges(&table(35 * GB / 10), Split { bytes: 0, share: 0 }).is_empty());
    }

    #[test]
    fn build_memory_follows_the_table_within_its_bounds() {
        assert_eq!(build_memory_mb(0, 1024), 64);
        assert_eq!(build_memory_mb(3_200_000, 1024), 369);
        assert_eq!(build_memory_mb(100_000_000, 1024), 1024);
        assert_eq!(build_memory_mb(100_000_000, 16), 16);
    }
}
