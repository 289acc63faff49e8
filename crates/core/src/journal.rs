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
#[derive(Debug, Default)]
pub struct Item<'a> {
    pub stage: &'a str,
    pub item: &'a str,
    pub rows: Option<i64>,
    pub bytes: Option<i64>,
    pub detail: Option<&'a serde_json::Value>,
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
    pub status: String,
    pub operator_user: String,
    pub operator_host: String,
}

/// The latest state of one stage in a run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StageState {
    pub stage: String,
    /// The last event: started, done, failed, undo_started, undone, undo_failed.
    pub event: String,
    pub first_started_at: Option<chrono::DateTime<chrono::Utc>>,
    pub last_started_at: Option<chrono::DateTime<chrono::Utc>>,
    pub at: chrono::DateTime<chrono::Utc>,
    pub error: Option<String>,
    pub artefacts: Option<serde_json::Value>,
}

impl StageState {
    pub fn is_done(&self) -> bool {
        self.event == "done"
    }
    /// One line for tables: the error, else the artefacts' summary.
    pub fn detail(&self) -> String {
        self.error
            .clone()
            .or_else(|| {
                self.artefacts
                    .as_ref()
                    .and_then(|a| a.get("summary"))
                    .and_then(|v| v.as_str())
                    .map(str::to_string)
            })
            .unwrap_or_default()
    }

    /// Seconds between the last start and the last event.
    pub fn seconds(&self) -> Option<f64> {
        self.last_started_at
            .map(|s| (self.at - s).num_milliseconds() as f64 / 1000.0)
    }
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
    pub fn table(&self, name: &str) -> String {
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
                    status: r.get(7),
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
             operator_user, operator_host, operator_pid) VALUES ($1, $2, $3, $4, $5, 'running', $6, $7, $8)",
            self.table("runs")
        ))
        .bind(id)
        .bind(plan_path)
        .bind(fingerprint)
        .bind(serde_json::to_value(source).unwrap())
        .bind(serde_json::to_value(target).unwrap())
        .bind(user)
        .bind(host)
        .bind(std::process::id() as i32)
        .execute(&self.pool)
        .await?;
        Ok(id)
    }

    pub async fn set_run_status(&self, run_id: Uuid, status: &str) -> Result<()> {
        let (user, host) = operator();
        sqlx::query(&format!(
            "UPDATE {} SET status = $2, operator_user = $3, operator_host = $4, operator_pid = $5, \
             finished_at = CASE WHEN $2 = 'running' THEN NULL ELSE clock_timestamp() END WHERE id = $1",
            self.table("runs")
        ))
        .bind(run_id)
        .bind(status)
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
        event: &str,
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
        event: &str,
        error: Option<&str>,
        artefacts: Option<&serde_json::Value>,
    ) -> Result<()> {
        sqlx::query(&format!(
            "INSERT INTO {} (run_id, stage, event, error, artefacts) VALUES ($1, $2, $3, $4, $5)",
            self.table("stage_events")
        ))
        .bind(run_id)
        .bind(stage)
        .bind(event)
        .bind(error.map(crate::endpoint::redact_text))
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
        Ok(rows
            .into_iter()
            .map(|r| {
                let s = StageState {
                    stage: r.get(0),
                    event: r.get(1),
                    at: r.get(2),
                    error: r.get(3),
                    artefacts: r.get(4),
                    first_started_at: r.get(5),
                    last_started_at: r.get(6),
                };
                (s.stage.clone(), s)
            })
            .collect())
    }

    /// Items of a stage already done in this run.
    pub async fn items_done(&self, run_id: Uuid, stage: &str) -> Result<BTreeSet<String>> {
        let rows: Vec<String> = sqlx::query_scalar(&format!(
            "SELECT item FROM {} WHERE run_id = $1 AND stage = $2 AND state = 'done'",
            self.table("item_progress")
        ))
        .bind(run_id)
        .bind(stage)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().collect())
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
        .bind(item.item)
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
        item: &str,
    ) -> Result<Option<serde_json::Value>> {
        let row: Option<Option<serde_json::Value>> = sqlx::query_scalar(&format!(
            "SELECT detail FROM {} WHERE run_id = $1 AND stage = $2 AND item = $3",
            self.table("item_progress")
        ))
        .bind(run_id)
        .bind(stage)
        .bind(item)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|d| d.unwrap_or(serde_json::Value::Null)))
    }

    /// Removes one item (its effect was taken back).
    pub async fn remove_item(&self, run_id: Uuid, stage: &str, item: &str) -> Result<()> {
        sqlx::query(&format!(
            "DELETE FROM {} WHERE run_id = $1 AND stage = $2 AND item = $3",
            self.table("item_progress")
        ))
        .bind(run_id)
        .bind(stage)
        .bind(item)
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
