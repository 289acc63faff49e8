//! The journal: the durable record of a run, in its own schema of the target
//! database. Runs, stage transitions (recorded before and after each effect),
//! per-item progress and artefacts. Also the run lock.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use sqlx::postgres::PgConnection;
use sqlx::{Connection, PgPool, Row};
use uuid::Uuid;

use crate::error::{Error, ErrorKind, Result};
use crate::identity::ServerIdentity;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations");

#[derive(Clone)]
pub struct Journal {
    pool: PgPool,
    schema: String,
}

/// A work item of a stage, as recorded in `item_progress`.
#[derive(Debug)]
pub struct Item<'a> {
    pub stage: &'a str,
    pub item: &'a ItemKey,
    pub rows: Option<i64>,
    pub bytes: Option<i64>,
    pub detail: Option<&'a serde_json::Value>,
}

impl<'a> Item<'a> {
    /// An item with nothing recorded beside it.
    pub fn new(stage: &'a str, item: &'a ItemKey) -> Item<'a> {
        Item {
            stage,
            item,
            rows: None,
            bytes: None,
            detail: None,
        }
    }
}

/// What happened to a stage: the `event` of a `stage_events` row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StageEvent {
    /// Recorded before the stage's first effect.
    Started,
    /// Recorded after its last effect, with its artefacts.
    Done,
    Failed,
    UndoStarted,
    Undone,
    UndoFailed,
}

/// Where a run stands: the `status` of a `runs` row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Running,
    /// Stopped after the stage `--until` or `--only` named: resumable.
    Paused,
    /// Every stage done.
    Done,
    Failed,
    Interrupted,
    RolledBack,
    /// Set aside by `cutover run --restart`.
    Abandoned,
}

/// Both enums are stored as their snake_case names (the migration's CHECK
/// constraints list the same words).
macro_rules! journal_words {
    ($ty:ident, $what:literal, $($variant:ident = $text:literal),+ $(,)?) => {
        impl $ty {
            pub const ALL: &'static [$ty] = &[$($ty::$variant),+];
            pub fn as_str(self) -> &'static str {
                match self {
                    $($ty::$variant => $text),+
                }
            }
        }
        impl std::str::FromStr for $ty {
            type Err = Error;
            fn from_str(s: &str) -> Result<$ty> {
                match s {
                    $($text => Ok($ty::$variant),)+
                    other => Err(Error::failure(format!(
                        concat!("the journal holds an unknown ", $what, " {:?}: it was written by a newer cutover"),
                        other
                    ))),
                }
            }
        }
        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.pad(self.as_str())
            }
        }
    };
}

journal_words!(
    StageEvent,
    "stage event",
    Started = "started",
    Done = "done",
    Failed = "failed",
    UndoStarted = "undo_started",
    Undone = "undone",
    UndoFailed = "undo_failed"
);
journal_words!(
    RunStatus,
    "run status",
    Running = "running",
    Paused = "paused",
    Done = "done",
    Failed = "failed",
    Interrupted = "interrupted",
    RolledBack = "rolled_back",
    Abandoned = "abandoned"
);

impl RunStatus {
    /// A run that is over: finished, rolled back or set aside. A new
    /// `cutover run` starts a new one rather than resuming it.
    pub fn is_closed(self) -> bool {
        matches!(
            self,
            RunStatus::Done | RunStatus::RolledBack | RunStatus::Abandoned
        )
    }
}

/// A work item inside a stage: the `item` of an `item_progress` row. Its text
/// form (`table:public.orders`, `table:public.orders#2/8`,
/// `early:public.orders.orders_pkey`, ...) is what the journal stores; the
/// migration's CHECK constraint admits exactly these forms.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ItemKey {
    /// discover: the schema rehearsal in a scratch database passed.
    SchemaRehearsal,
    /// backup-target: the proven backup (detail: path and checksum).
    Backup,
    /// create-roles: one role created (its name).
    Role(String),
    /// copy: the schema's pre-data section restored.
    PreData,
    /// copy: a whole table loaded (`schema.name`).
    Table(String),
    /// copy: one block range of a large table (1-based index of count).
    Range { table: String, index: u32, count: u32 },
    /// copy: an index or key built during the data phase
    /// (`schema.table.name`).
    Early(String),
    /// copy: ANALYZE of a table (`schema.name`).
    Analyze(String),
    /// copy: the final post-data restore began.
    PostDataStarted,
    /// copy: the final post-data restore finished.
    PostData,
    /// copy: every sequence set.
    Sequences,
    /// copy: the rows of the extensions' configuration tables that pg_dump
    /// dumps (`pg_extension_config_dump`), and their sequences' positions.
    ExtensionConfig,
    /// copy: small large objects, a batch from one oid to another.
    LargeObjects { first: u32, last: u32 },
    /// copy: one large object moved in slices.
    LargeObject(u32),
    /// copy: the source's database-level privileges and settings carried.
    DatabaseSettings,
    /// repoint: the consumer's file or setting written.
    Written,
    /// verify-sync: the sentinel's grants to the consumers' roles (detail:
    /// the roles, to take them back).
    SentinelGrants,
    /// decommission-source: the source retired (detail: how).
    Retire,
    /// switch (online mode): the applications paused (detail: since when).
    Paused,
}

impl ItemKey {
    /// The item of a whole table.
    pub fn table(schema: &str, name: &str) -> ItemKey {
        ItemKey::Table(format!("{schema}.{name}"))
    }
    pub fn analyze(schema: &str, name: &str) -> ItemKey {
        ItemKey::Analyze(format!("{schema}.{name}"))
    }
    pub fn early(schema: &str, table: &str, name: &str) -> ItemKey {
        ItemKey::Early(format!("{schema}.{table}.{name}"))
    }
    /// The table a `Table` or `Range` item is about.
    pub fn table_name(&self) -> Option<&str> {
        match self {
            ItemKey::Table(t) | ItemKey::Range { table: t, .. } => Some(t),
            _ => None,
        }
    }
}

impl std::fmt::Display for ItemKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ItemKey::SchemaRehearsal => f.write_str("schema-rehearsal"),
            ItemKey::Backup => f.write_str("backup"),
            ItemKey::Role(r) => write!(f, "role:{r}"),
            ItemKey::PreData => f.write_str("pre-data"),
            ItemKey::Table(t) => write!(f, "table:{t}"),
            ItemKey::Range { table, index, count } => write!(f, "table:{table}#{index}/{count}"),
            ItemKey::Early(e) => write!(f, "early:{e}"),
            ItemKey::Analyze(t) => write!(f, "analyze:{t}"),
            ItemKey::PostDataStarted => f.write_str("post-data-started"),
            ItemKey::PostData => f.write_str("post-data"),
            ItemKey::Sequences => f.write_str("sequences"),
            ItemKey::ExtensionConfig => f.write_str("extension-config"),
            ItemKey::LargeObjects { first, last } => write!(f, "large-objects:{first}-{last}"),
            ItemKey::LargeObject(oid) => write!(f, "large-object:{oid}"),
            ItemKey::DatabaseSettings => f.write_str("database-settings"),
            ItemKey::Written => f.write_str("written"),
            ItemKey::SentinelGrants => f.write_str("sentinel-grants"),
            ItemKey::Retire => f.write_str("retire"),
            ItemKey::Paused => f.write_str("paused"),
        }
    }
}

impl std::str::FromStr for ItemKey {
    type Err = Error;
    fn from_str(s: &str) -> Result<ItemKey> {
        let unknown = || {
            Error::failure(format!(
                "the journal holds an unknown item {s:?}: it was written by a newer cutover"
            ))
        };
        let fixed = match s {
            "schema-rehearsal" => Some(ItemKey::SchemaRehearsal),
            "backup" => Some(ItemKey::Backup),
            "pre-data" => Some(ItemKey::PreData),
            "post-data-started" => Some(ItemKey::PostDataStarted),
            "post-data" => Some(ItemKey::PostData),
            "sequences" => Some(ItemKey::Sequences),
            "extension-config" => Some(ItemKey::ExtensionConfig),
            "database-settings" => Some(ItemKey::DatabaseSettings),
            "written" => Some(ItemKey::Written),
            "sentinel-grants" => Some(ItemKey::SentinelGrants),
            "retire" => Some(ItemKey::Retire),
            "paused" => Some(ItemKey::Paused),
            _ => None,
        };
        if let Some(k) = fixed {
            return Ok(k);
        }
        let (kind, rest) = s.split_once(':').ok_or_else(unknown)?;
        Ok(match kind {
            "role" => ItemKey::Role(rest.into()),
            "early" => ItemKey::Early(rest.into()),
            "analyze" => ItemKey::Analyze(rest.into()),
            "large-object" => ItemKey::LargeObject(rest.parse().map_err(|_| unknown())?),
            "large-objects" => {
                let (a, b) = rest.split_once('-').ok_or_else(unknown)?;
                ItemKey::LargeObjects {
                    first: a.parse().map_err(|_| unknown())?,
                    last: b.parse().map_err(|_| unknown())?,
                }
            }
            "table" => {
                let range = rest.rsplit_once('#').and_then(|(table, r)| {
                    let (i, n) = r.split_once('/')?;
                    Some(ItemKey::Range {
                        table: table.into(),
                        index: i.parse().ok()?,
                        count: n.parse().ok()?,
                    })
                });
                range.unwrap_or_else(|| ItemKey::Table(rest.into()))
            }
            _ => return Err(unknown()),
        })
    }
}

/// One row of `runs`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunRecord {
    pub id: Uuid,
    pub plan_path: String,
    pub plan_fingerprint: String,
    pub source_identity: ServerIdentity,
    pub target_identity: ServerIdentity,
    pub started_at: chrono::DateTime<chrono::Utc>,
    pub finished_at: Option<chrono::DateTime<chrono::Utc>>,
    pub status: RunStatus,
    pub operator_user: String,
    pub operator_host: String,
}

/// The latest state of one stage in a run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StageState {
    pub stage: String,
    /// The last event.
    pub event: StageEvent,
    pub first_started_at: Option<chrono::DateTime<chrono::Utc>>,
    pub last_started_at: Option<chrono::DateTime<chrono::Utc>>,
    pub at: chrono::DateTime<chrono::Utc>,
    pub error: Option<String>,
    pub artefacts: Option<serde_json::Value>,
}

impl StageState {
    pub fn is_done(&self) -> bool {
        self.event == StageEvent::Done
    }
    /// One line for tables: the error, else the artefacts' summary.
    pub fn detail(&self) -> String {
        self.error
            .clone()
            .or_else(|| self.artefacts.as_ref().map(summary_of))
            .unwrap_or_default()
    }

    /// Seconds between the last start and the last event.
    pub fn seconds(&self) -> Option<f64> {
        self.last_started_at
            .map(|s| (self.at - s).num_milliseconds() as f64 / 1000.0)
    }
}

/// The summary every stage's artefacts carry.
pub fn summary_of(artefacts: &serde_json::Value) -> String {
    use crate::artefacts::{Artefacts, Summary};
    Summary::from_value(artefacts)
        .map(|s| s.summary)
        .unwrap_or_default()
}

pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

impl Journal {
    /// A handle on an existing journal, or `None` when the schema does not
    /// exist yet. Writes nothing.
    pub async fn open_existing(pool: &PgPool, schema: &str) -> Result<Option<Journal>> {
        let exists: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relname = 'runs')",
        )
        .bind(schema)
        .fetch_one(pool)
        .await?;
        Ok(exists.then(|| Journal {
            pool: pool.clone(),
            schema: schema.to_string(),
        }))
    }

    /// Creates or upgrades the journal schema with the embedded migrations.
    pub async fn ensure(pool: &PgPool, schema: &str) -> Result<Journal> {
        let mut conn = pool.acquire().await?;
        sqlx::query(&format!("CREATE SCHEMA IF NOT EXISTS {}", quote_ident(schema)))
            .execute(&mut *conn)
            .await
            .map_err(|e| {
                Error::failure(format!(
                    "cannot create the journal schema {schema:?} in the target database ({e}): \
                     grant CREATE on the database to the target user, or create the schema for it"
                ))
            })?;
        sqlx::query(&format!("SET search_path TO {}", quote_ident(schema)))
            .execute(&mut *conn)
            .await?;
        let result = MIGRATOR.run(&mut *conn).await;
        sqlx::query("RESET search_path").execute(&mut *conn).await?;
        result?;
        Ok(Journal {
            pool: pool.clone(),
            schema: schema.to_string(),
        })
    }

    pub fn schema(&self) -> &str {
        &self.schema
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// A journal table, schema-qualified.
    fn table(&self, name: &str) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(name))
    }

    /// The most recent run, whatever its status.
    pub async fn latest_run(&self) -> Result<Option<RunRecord>> {
        Ok(self.run_records("LIMIT 1").await?.into_iter().next())
    }

    /// Every run, newest first (for the archive).
    pub async fn all_runs(&self) -> Result<Vec<RunRecord>> {
        self.run_records("").await
    }

    async fn run_records(&self, limit: &str) -> Result<Vec<RunRecord>> {
        let rows = sqlx::query(&format!(
            "SELECT id, plan_path, plan_fingerprint, source_identity, target_identity, started_at, finished_at, \
             status, operator_user, operator_host FROM {} ORDER BY started_at DESC {limit}",
            self.table("runs")
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|r| -> Result<RunRecord> {
                Ok(RunRecord {
                    id: r.get(0),
                    plan_path: r.get(1),
                    plan_fingerprint: r.get(2),
                    source_identity: serde_json::from_value(r.get(3))
                        .map_err(|e| Error::failure(format!("journal: bad source identity: {e}")))?,
                    target_identity: serde_json::from_value(r.get(4))
                        .map_err(|e| Error::failure(format!("journal: bad target identity: {e}")))?,
                    started_at: r.get(5),
                    finished_at: r.get(6),
                    status: r.get::<String, _>(7).parse()?,
                    operator_user: r.get(8),
                    operator_host: r.get(9),
                })
            })
            .collect()
    }

    pub async fn create_run(
        &self,
        plan_path: &str,
        fingerprint: &str,
        source: &ServerIdentity,
        target: &ServerIdentity,
    ) -> Result<Uuid> {
        let id = Uuid::new_v4();
        let (user, host) = operator();
        sqlx::query(&format!(
            "INSERT INTO {} (id, plan_path, plan_fingerprint, source_identity, target_identity, status, \
             operator_user, operator_host, operator_pid) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            self.table("runs")
        ))
        .bind(id)
        .bind(plan_path)
        .bind(fingerprint)
        .bind(serde_json::to_value(source).unwrap())
        .bind(serde_json::to_value(target).unwrap())
        .bind(RunStatus::Running.as_str())
        .bind(user)
        .bind(host)
        .bind(std::process::id() as i32)
        .execute(&self.pool)
        .await?;
        Ok(id)
    }

    pub async fn set_run_status(&self, run_id: Uuid, status: RunStatus) -> Result<()> {
        let (user, host) = operator();
        sqlx::query(&format!(
            "UPDATE {} SET status = $2, operator_user = $3, operator_host = $4, operator_pid = $5, \
             finished_at = CASE WHEN $2 = 'running' THEN NULL ELSE clock_timestamp() END WHERE id = $1",
            self.table("runs")
        ))
        .bind(run_id)
        .bind(status.as_str())
        .bind(user)
        .bind(host)
        .bind(std::process::id() as i32)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Records a stage transition.
    pub async fn record(
        &self,
        run_id: Uuid,
        stage: &str,
        event: StageEvent,
        error: Option<&str>,
        artefacts: Option<&serde_json::Value>,
    ) -> Result<()> {
        let mut conn = self.pool.acquire().await?;
        self.record_in(&mut conn, run_id, stage, event, error, artefacts)
            .await
    }

    /// Records a stage transition on a given connection, so a stage can put it
    /// in the same transaction as its effect.
    pub async fn record_in(
        &self,
        conn: &mut PgConnection,
        run_id: Uuid,
        stage: &str,
        event: StageEvent,
        error: Option<&str>,
        artefacts: Option<&serde_json::Value>,
    ) -> Result<()> {
        sqlx::query(&format!(
            "INSERT INTO {} (run_id, stage, event, error, artefacts) VALUES ($1, $2, $3, $4, $5)",
            self.table("stage_events")
        ))
        .bind(run_id)
        .bind(stage)
        .bind(event.as_str())
        .bind(error.map(crate::redact::redact_text))
        .bind(artefacts)
        .execute(conn)
        .await?;
        Ok(())
    }

    /// The latest state of every stage of a run.
    pub async fn stage_states(&self, run_id: Uuid) -> Result<BTreeMap<String, StageState>> {
        let rows = sqlx::query(&format!(
            "SELECT DISTINCT ON (stage) stage, event, at, error, \
               (SELECT artefacts FROM {t} d WHERE d.run_id = e.run_id AND d.stage = e.stage AND d.event = 'done' \
                  ORDER BY id DESC LIMIT 1), \
               (SELECT min(at) FROM {t} s WHERE s.run_id = e.run_id AND s.stage = e.stage AND s.event = 'started'), \
               (SELECT max(at) FROM {t} s WHERE s.run_id = e.run_id AND s.stage = e.stage \
                  AND s.event IN ('started', 'undo_started')) \
             FROM {t} e WHERE run_id = $1 ORDER BY stage, id DESC",
            t = self.table("stage_events")
        ))
        .bind(run_id)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|r| {
                let s = StageState {
                    stage: r.get(0),
                    event: r.get::<String, _>(1).parse()?,
                    at: r.get(2),
                    error: r.get(3),
                    artefacts: r.get(4),
                    first_started_at: r.get(5),
                    last_started_at: r.get(6),
                };
                Ok((s.stage.clone(), s))
            })
            .collect()
    }

    /// Items of a stage already done in this run.
    pub async fn items_done(&self, run_id: Uuid, stage: &str) -> Result<BTreeSet<ItemKey>> {
        let rows: Vec<String> = sqlx::query_scalar(&format!(
            "SELECT item FROM {} WHERE run_id = $1 AND stage = $2 AND state = 'done'",
            self.table("item_progress")
        ))
        .bind(run_id)
        .bind(stage)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|r| r.parse()).collect()
    }

    /// Marks an item done on its own connection (for effects outside the target's transactions).
    pub async fn item_done(&self, run_id: Uuid, item: &Item<'_>) -> Result<()> {
        let mut conn = self.pool.acquire().await?;
        self.item_done_in(&mut conn, run_id, item).await
    }

    /// Marks an item done on the given connection: call it inside the
    /// transaction that performs the item's effect.
    pub async fn item_done_in(&self, conn: &mut PgConnection, run_id: Uuid, item: &Item<'_>) -> Result<()> {
        sqlx::query(&format!(
            "INSERT INTO {} (run_id, stage, item, state, rows, bytes, detail) VALUES ($1, $2, $3, 'done', $4, $5, $6) \
             ON CONFLICT (run_id, stage, item) DO UPDATE SET state = 'done', rows = $4, bytes = $5, detail = $6, \
             finished_at = clock_timestamp()",
            self.table("item_progress")
        ))
        .bind(run_id)
        .bind(item.stage)
        .bind(item.item.to_string())
        .bind(item.rows)
        .bind(item.bytes)
        .bind(item.detail)
        .execute(conn)
        .await?;
        Ok(())
    }

    /// The detail recorded with one item, if the item is there.
    pub async fn item_detail(
        &self,
        run_id: Uuid,
        stage: &str,
        item: &ItemKey,
    ) -> Result<Option<serde_json::Value>> {
        let row: Option<Option<serde_json::Value>> = sqlx::query_scalar(&format!(
            "SELECT detail FROM {} WHERE run_id = $1 AND stage = $2 AND item = $3",
            self.table("item_progress")
        ))
        .bind(run_id)
        .bind(stage)
        .bind(item.to_string())
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|d| d.unwrap_or(serde_json::Value::Null)))
    }

    /// The rows recorded with one item, if the item is there with rows.
    pub async fn item_rows(&self, run_id: Uuid, stage: &str, item: &ItemKey) -> Result<Option<i64>> {
        let row: Option<Option<i64>> = sqlx::query_scalar(&format!(
            "SELECT rows FROM {} WHERE run_id = $1 AND stage = $2 AND item = $3",
            self.table("item_progress")
        ))
        .bind(run_id)
        .bind(stage)
        .bind(item.to_string())
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.flatten())
    }

    /// Removes one item (its effect was taken back).
    pub async fn remove_item(&self, run_id: Uuid, stage: &str, item: &ItemKey) -> Result<()> {
        sqlx::query(&format!(
            "DELETE FROM {} WHERE run_id = $1 AND stage = $2 AND item = $3",
            self.table("item_progress")
        ))
        .bind(run_id)
        .bind(stage)
        .bind(item.to_string())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Forgets a stage's items (its undo made them void).
    pub async fn clear_items(&self, run_id: Uuid, stage: &str) -> Result<()> {
        sqlx::query(&format!(
            "DELETE FROM {} WHERE run_id = $1 AND stage = $2",
            self.table("item_progress")
        ))
        .bind(run_id)
        .bind(stage)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Forgets the block ranges of one table recorded as done (the table is
    /// started over, so none of its rows is kept).
    pub async fn remove_ranges(&self, run_id: Uuid, stage: &str, table: &str) -> Result<()> {
        let prefix = format!("{}#", ItemKey::Table(table.into()));
        sqlx::query(&format!(
            "DELETE FROM {} WHERE run_id = $1 AND stage = $2 AND left(item, length($3)) = $3",
            self.table("item_progress")
        ))
        .bind(run_id)
        .bind(stage)
        .bind(&prefix)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The sentinel table, schema-qualified (verify-sync grants the
    /// consumers' roles SELECT on it and reads it through them).
    pub fn sentinel_table(&self) -> String {
        self.table("sentinels")
    }

    /// Writes this run's sentinel token, replacing one an interrupted
    /// attempt left.
    pub async fn put_sentinel(&self, run_id: Uuid, token: &str) -> Result<()> {
        self.delete_sentinels(run_id).await?;
        sqlx::query(&format!(
            "INSERT INTO {} (token, run_id) VALUES ($1, $2)",
            self.table("sentinels")
        ))
        .bind(token)
        .bind(run_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Deletes one sentinel (the proof read it).
    pub async fn delete_sentinel(&self, token: &str) -> Result<()> {
        sqlx::query(&format!(
            "DELETE FROM {} WHERE token = $1",
            self.table("sentinels")
        ))
        .bind(token)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Deletes this run's sentinels.
    pub async fn delete_sentinels(&self, run_id: Uuid) -> Result<()> {
        sqlx::query(&format!(
            "DELETE FROM {} WHERE run_id = $1",
            self.table("sentinels")
        ))
        .bind(run_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Drops the journal's schema (its runs, stage events, items and
    /// sentinels) from the target database, after `cutover archive-journal`
    /// wrote it to the run directory.
    pub async fn drop_schema(self) -> Result<()> {
        sqlx::query(&format!("DROP SCHEMA {} CASCADE", quote_ident(&self.schema)))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// All items of a run (for status and the report).
    pub async fn items(&self, run_id: Uuid) -> Result<Vec<(String, String, String, Option<i64>)>> {
        // Kept as text: the archive writes the journal as it is.
        let rows = sqlx::query(&format!(
            "SELECT stage, item, state, rows FROM {} WHERE run_id = $1 ORDER BY stage, item",
            self.table("item_progress")
        ))
        .bind(run_id)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
            .collect())
    }
}

fn operator() -> (String, String) {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".into());
    let host = hostname::get()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "unknown".into());
    (user, host)
}

/// The run lock: a session-level advisory lock on the target, held by a
/// dedicated connection for as long as the run lasts. It is released when
/// that connection ends, also when the holder is killed.
pub struct RunLock {
    _conn: PgConnection,
}

/// The advisory-lock key for a journal schema.
fn lock_key(schema: &str) -> i64 {
    let digest = <sha2::Sha256 as sha2::Digest>::digest(format!("cutover:{schema}").as_bytes());
    i64::from_be_bytes(digest[..8].try_into().unwrap()) & i64::MAX
}

impl RunLock {
    /// Takes the lock or fails at once with a message naming the holder.
    pub async fn acquire(options: &sqlx::postgres::PgConnectOptions, schema: &str) -> Result<RunLock> {
        let (user, host) = operator();
        let app = format!(
            "cutover run lock (pid {} on {host}, user {user})",
            std::process::id()
        );
        let mut conn = PgConnection::connect_with(&options.clone().application_name(&app)).await?;
        let key = lock_key(schema);
        let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(key)
            .fetch_one(&mut conn)
            .await?;
        if got {
            return Ok(RunLock { _conn: conn });
        }
        let holder: Option<(String, Option<String>, Option<chrono::DateTime<chrono::Utc>>)> = sqlx::query_as(
            "SELECT a.application_name, host(a.client_addr), a.backend_start FROM pg_locks l \
             JOIN pg_stat_activity a ON a.pid = l.pid \
             WHERE l.locktype = 'advisory' AND l.granted \
               AND ((l.classid::bigint << 32) | l.objid::bigint) = $1 LIMIT 1",
        )
        .bind(key)
        .fetch_optional(&mut conn)
        .await?;
        let who = match holder {
            Some((app, addr, since)) => format!(
                "held by \"{app}\" connected from {} since {}",
                addr.unwrap_or_else(|| "a local socket".into()),
                since.map(|s| s.to_rfc3339()).unwrap_or_default()
            ),
            None => "held by another session".into(),
        };
        Err(Error::new(
            ErrorKind::Locked,
            format!(
                "another cutover run is working on this target ({who}); wait for it to finish, or stop that \
                 process (the lock is freed when it exits)"
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_item_key_reads_back_as_written() {
        let keys = [
            ItemKey::SchemaRehearsal,
            ItemKey::Backup,
            ItemKey::Role("app_rw".into()),
            ItemKey::PreData,
            ItemKey::table("public", "orders"),
            ItemKey::Range {
                table: "sales.order#lines".into(),
                index: 2,
                count: 8,
            },
            ItemKey::early("public", "orders", "orders_pkey"),
            ItemKey::analyze("public", "orders"),
            ItemKey::PostDataStarted,
            ItemKey::PostData,
            ItemKey::Sequences,
            ItemKey::ExtensionConfig,
            ItemKey::LargeObjects {
                first: 16390,
                last: 17389,
            },
            ItemKey::LargeObject(16389),
            ItemKey::DatabaseSettings,
            ItemKey::Written,
            ItemKey::SentinelGrants,
            ItemKey::Retire,
            ItemKey::Paused,
        ];
        for k in keys {
            let text = k.to_string();
            assert_eq!(text.parse::<ItemKey>().unwrap(), k, "{text}");
        }
        // The forms earlier versions wrote.
        assert_eq!(ItemKey::table("public", "t").to_string(), "table:public.t");
        assert_eq!(
            "table:public.t#2/8".parse::<ItemKey>().unwrap(),
            ItemKey::Range {
                table: "public.t".into(),
                index: 2,
                count: 8
            }
        );
        // A table whose name has a '#' that is not a range.
        assert_eq!(
            "table:public.a#b".parse::<ItemKey>().unwrap(),
            ItemKey::Table("public.a#b".into())
        );
        let err = "copied:x".parse::<ItemKey>().unwrap_err();
        assert!(
            err.message.contains("unknown item \"copied:x\""),
            "{}",
            err.message
        );
    }

    #[test]
    fn stage_events_and_run_statuses_are_their_snake_case_names() {
        for e in StageEvent::ALL {
            assert_eq!(e.as_str().parse::<StageEvent>().unwrap(), *e);
            assert_eq!(serde_json::to_value(e).unwrap(), e.as_str());
        }
        for s in RunStatus::ALL {
            assert_eq!(s.as_str().parse::<RunStatus>().unwrap(), *s);
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
        assert_eq!(RunStatus::RolledBack.as_str(), "rolled_back");
        assert!("finished".parse::<RunStatus>().is_err());
    }

    /// The migration's CHECK constraints list the same words as the enums.
    #[test]
    fn the_migration_admits_exactly_the_enums_words() {
        let sql = include_str!("../../../migrations/20261203000001_journal_words.sql");
        // The item constraint as the latest migration redefines it.
        let items = include_str!("../../../migrations/20261204000002_extension_config_word.sql");
        for s in RunStatus::ALL {
            assert!(sql.contains(&format!("'{}'", s.as_str())), "{s}");
        }
        for e in StageEvent::ALL {
            assert!(sql.contains(&format!("'{}'", e.as_str())), "{e}");
        }
        for fixed in [
            ItemKey::SchemaRehearsal,
            ItemKey::Backup,
            ItemKey::PreData,
            ItemKey::PostDataStarted,
            ItemKey::PostData,
            ItemKey::Sequences,
            ItemKey::ExtensionConfig,
            ItemKey::DatabaseSettings,
            ItemKey::Written,
            ItemKey::SentinelGrants,
            ItemKey::Retire,
            ItemKey::Paused,
        ] {
            assert!(items.contains(&format!("'{fixed}'")), "{fixed}");
        }
    }
}
