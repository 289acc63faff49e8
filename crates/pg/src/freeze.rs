//! freeze-source: the source stops taking writes for the copy
//! (`default_transaction_read_only` on its database, other sessions
//! terminated). Undo lifts it. With `freeze_source = false` the stage does
//! nothing and the plan warns that writes after the copy's snapshot are lost.

use async_trait::async_trait;
use cutover_core::stage::{Check, Description, RunContext, Stage, Undo};
use cutover_core::{Error, Result};
use serde_json::json;
use sqlx::PgPool;

use crate::inventory::quote_ident;

pub struct FreezeSource {
    pub description: Description,
    enabled: bool,
    database: String,
}

/// Sessions on the source other than cutover's own.
pub async fn other_sessions(pool: &PgPool) -> Result<Vec<String>> {
    let rows: Vec<(i32, String, String, Option<String>)> = sqlx::query_as(
        "SELECT pid, coalesce(nullif(application_name, ''), '(no name)'), usename::text, host(client_addr) \
         FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid() \
           AND backend_type = 'client backend' AND application_name NOT LIKE 'cutover %' ORDER BY pid",
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(pid, app, user, addr)| {
            format!(
                "pid {pid}: {app}, user {user}, from {}",
                addr.unwrap_or_else(|| "a local socket".into())
            )
        })
        .collect())
}

impl FreezeSource {
    pub fn new(enabled: bool, database: &str, sessions: Vec<String>) -> FreezeSource {
        let description = if enabled {
            Description {
                summary: format!(
                    "make the source database {database} read-only and end its {} other sessions, so no write is lost \
                     during the copy",
                    sessions.len()
                ),
                details: sessions
                    .into_iter()
                    .map(|s| format!("ends session {s}"))
                    .collect(),
                warnings: vec![],
                destructive: true,
            }
        } else {
            Description {
                summary:
                    "freezing is off (options.freeze_source = false): the copy reads a consistent snapshot"
                        .into(),
                details: vec![],
                warnings: vec![
                    "the source keeps taking writes: anything written after the copy's snapshot is LOST"
                        .into(),
                ],
                destructive: false,
            }
        };
        FreezeSource {
            description,
            enabled,
            database: database.to_string(),
        }
    }
}

/// `ALTER DATABASE … {clause}` on a session that is itself writable: once the
/// source is frozen (a resume, an undo), new sessions start read-only.
async fn set_read_only(pool: &PgPool, db: &str, clause: &str) -> std::result::Result<(), sqlx::Error> {
    let mut conn = pool.acquire().await?;
    sqlx::query("SET default_transaction_read_only = off")
        .execute(&mut *conn)
        .await?;
    sqlx::query(&format!("ALTER DATABASE {db} {clause}"))
        .execute(&mut *conn)
        .await?;
    Ok(())
}

async fn is_frozen(pool: &PgPool) -> Result<bool> {
    let frozen: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase \
         WHERE d.datname = current_database() AND s.setrole = 0 \
           AND 'default_transaction_read_only=on' = ANY (s.setconfig))",
    )
    .fetch_one(pool)
    .await?;
    Ok(frozen)
}

#[async_trait]
impl Stage for FreezeSource {
    fn name(&self) -> String {
        "freeze-source".into()
    }
    fn describe(&self) -> &Description {
        &self.description
    }
    fn undo_kind(&self) -> Undo {
        if self.enabled {
            Undo::Reversible("make the source writable again".into())
        } else {
            Undo::Nothing
        }
    }
    async fn run(&self, ctx: &RunContext) -> Result<serde_json::Value> {
        if !self.enabled {
            return Ok(json!({ "summary": "not frozen (freeze_source = false)" }));
        }
        let db = quote_ident(&self.database);
        set_read_only(&ctx.source, &db, "SET default_transaction_read_only = on")
            .await
            .map_err(|e| {
                Error::failure(format!(
                    "cannot make the source read-only ({e}): the source user must own the database or be a \
                     superuser; or set options.freeze_source = false and stop the writers yourself"
                ))
            })?;
        let ended: Vec<(i32, bool)> = sqlx::query_as(
            "SELECT pid, pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() \
             AND pid <> pg_backend_pid() AND backend_type = 'client backend' AND application_name NOT LIKE 'cutover %'",
        )
        .fetch_all(&ctx.source)
        .await
        .map_err(|e| {
            Error::failure(format!(
                "the source is read-only for new sessions, but ending existing sessions failed ({e}): grant \
                 pg_signal_backend to the source user, or stop those applications yourself and run again"
            ))
        })?;
        Ok(
            json!({ "summary": format!("source read-only, {} sessions ended", ended.len()), "sessions_ended": ended.len() }),
        )
    }
    async fn check(&self, ctx: &RunContext) -> Result<Check> {
        if !self.enabled || is_frozen(&ctx.source).await? {
            Ok(Check::Holds)
        } else {
            Ok(Check::Fails("the source database is writable".into()))
        }
    }
    async fn undo(&self, ctx: &RunContext) -> Result<String> {
        if !self.enabled {
            return Ok("nothing to undo".into());
        }
        let db = quote_ident(&self.database);
        set_read_only(&ctx.source, &db, "RESET default_transaction_read_only").await?;
        Ok("source writable again (new sessions)".into())
    }
}
