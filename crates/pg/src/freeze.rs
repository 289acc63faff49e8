//! freeze-source: the source stops taking writes for the copy, for good:
//! the fence ([`crate::fence`]: CONNECT left only to cutover's user and the
//! roles `options.fence` leaves out, their sessions ended) and, for the
//! roles no fence stops, `default_transaction_read_only` on the database.
//! The tables' write counters are read once the fence stands: before the
//! source is retired, they prove nothing wrote there since. Undo lifts
//! both. With `freeze_source = false` the stage does nothing and the plan
//! warns that writes after the copy's snapshot are lost.

use async_trait::async_trait;
use cutover_core::artefacts::Artefacts;
use cutover_core::stage::{Check, Description, RunContext, Stage, Undo};
use cutover_core::{Error, Result};
use sqlx::PgPool;

use cutover_core::plan_file::FenceScope;

use crate::fence;
use crate::inventory::quote_ident;

/// freeze-source: what the freeze did.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct FreezeResult {
    pub summary: String,
    pub sessions_ended: usize,
    /// The roles that lost CONNECT.
    pub fenced: Vec<String>,
    /// The source tables' write counters once the fence stood.
    pub write_counts: std::collections::BTreeMap<String, i64>,
}

cutover_core::artefacts!(FreezeResult);

pub struct FreezeSource {
    pub description: Description,
    enabled: bool,
    database: String,
    scope: FenceScope,
    /// The roles the consumers log in as (for `fence = "consumers"`).
    consumers: Vec<String>,
    journal_schema: String,
}

/// What the freeze and the online switch need to raise the fence.
#[derive(Debug, Clone)]
pub struct FenceSettings {
    pub scope: FenceScope,
    pub consumers: Vec<String>,
    /// Who it reached when the plan was made (for the description).
    pub reach: fence::Reach,
    pub journal_schema: String,
}

/// Client sessions on the source other than cutover's own, whether cutover's
/// user may end each, and the role it belongs to. A user that is not a
/// superuser sees other roles' sessions with most columns hidden (backend
/// type and address NULL), so they count as client sessions here, and it may
/// end only sessions of roles whose privileges it has, or any with
/// `pg_signal_backend` (never a superuser's).
const SESSIONS_SQL: &str = "SELECT a.pid, coalesce(nullif(a.application_name, ''), '(no name)'), \
      coalesce(a.usename::text, '?'), host(a.client_addr), \
      me.rolsuper OR (NOT coalesce(r.rolsuper, false) AND (pg_has_role(me.oid, a.usesysid, 'USAGE') \
        OR pg_has_role(me.oid, 'pg_signal_backend', 'USAGE'))) \
    FROM pg_stat_activity a LEFT JOIN pg_roles r ON r.oid = a.usesysid \
    CROSS JOIN (SELECT oid, rolsuper FROM pg_roles WHERE rolname = current_user) me \
    WHERE a.datname = current_database() AND a.pid <> pg_backend_pid() AND a.usesysid IS NOT NULL \
      AND coalesce(a.backend_type, 'client backend') = 'client backend' \
      AND coalesce(a.application_name, '') NOT LIKE 'cutover %' ORDER BY a.pid";

/// One session on the source.
#[derive(Debug, Clone)]
pub struct Session {
    pub pid: i32,
    pub user: String,
    pub endable: bool,
    text: String,
}

pub async fn sessions(pool: &PgPool) -> Result<Vec<Session>> {
    let rows: Vec<(i32, String, String, Option<String>, bool)> =
        sqlx::query_as(SESSIONS_SQL).fetch_all(pool).await?;
    Ok(rows
        .into_iter()
        .map(|(pid, app, user, addr, endable)| Session {
            text: format!(
                "pid {pid}: {app}, user {user}, from {}",
                addr.unwrap_or_else(|| "a local socket, or an address hidden from this user".into())
            ),
            pid,
            user,
            endable,
        })
        .collect())
}

/// Sessions on the source other than cutover's own.
pub async fn other_sessions(pool: &PgPool) -> Result<Vec<String>> {
    Ok(sessions(pool).await?.into_iter().map(|s| s.text).collect())
}

/// The refusal when some sessions cannot be ended by cutover's user: names
/// them and the GRANT that lets it (None when all can be).
pub fn unendable(sessions: &[Session], operator: &str) -> Option<Error> {
    let stuck: Vec<&Session> = sessions.iter().filter(|s| !s.endable).collect();
    if stuck.is_empty() {
        return None;
    }
    let mut roles: Vec<&str> = stuck.iter().map(|s| s.user.as_str()).collect();
    roles.sort();
    roles.dedup();
    Some(
        Error::failure(format!(
            "the source user {operator} may not end {} session(s) of the source ({}): freezing would leave them \
             writing; nothing was changed",
            stuck.len(),
            stuck.iter().map(|s| s.text.as_str()).collect::<Vec<_>>().join("; ")
        ))
        .with_hint(format!(
            "GRANT pg_signal_backend TO {operator} (or GRANT {} TO {operator}), or stop those applications \
             yourself (a superuser's sessions only a superuser may end), or set options.freeze_source = false",
            roles.join(", ")
        )),
    )
}

impl FreezeSource {
    pub fn new(enabled: bool, database: &str, sessions: Vec<String>, fence: FenceSettings) -> FreezeSource {
        let description = if enabled {
            Description {
                summary: format!(
                    "fence the source database {database}: only cutover's user may connect (the others' sessions \
                     ended, {} now), read-only for any session left, so no write is lost during the copy or after it",
                    sessions.len()
                ),
                details: fence
                    .reach
                    .lines()
                    .into_iter()
                    .chain(sessions.into_iter().map(|s| format!("ends session {s}")))
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
            scope: fence.scope,
            consumers: fence.consumers,
            journal_schema: fence.journal_schema,
        }
    }
}

/// `ALTER DATABASE … {clause}` on a session that is itself writable: once the
/// source is frozen (a resume, an undo), new sessions start read-only.
async fn set_read_only(pool: &PgPool, db: &str, clause: &str) -> Result<()> {
    let mut conn = crate::connect::writable(pool).await?;
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
        cutover_core::stage::names::FREEZE_SOURCE.into()
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
            return Ok(FreezeResult {
                summary: "not frozen (freeze_source = false)".into(),
                ..Default::default()
            }
            .to_value());
        }
        let operator: String = sqlx::query_scalar("SELECT current_user::text")
            .fetch_one(&ctx.source)
            .await?;
        if !is_frozen(&ctx.source).await?
            && let Some(e) = unendable(&sessions(&ctx.source).await?, &operator)
        {
            return Err(e);
        }
        // The fence first: what it refuses (a grant option handed on, a
        // session it may not end) leaves the source as it was.
        let reach = fence::reach(&ctx.source, &self.scope, &self.consumers).await?;
        let raised = fence::raise(&ctx.source, &reach, &self.journal_schema).await?;
        let db = quote_ident(&self.database);
        set_read_only(&ctx.source, &db, "SET default_transaction_read_only = on")
            .await
            .map_err(|e| {
                Error::failure(format!(
                    "cannot make the source read-only ({e}): the source user must own the database or be a \
                     superuser; or set options.freeze_source = false and stop the writers yourself"
                ))
            })?;
        // The rest this user may end (all, once the check above passed; a
        // superuser's session that appeared since is left to the check below).
        let pids: Vec<i32> = sessions(&ctx.source)
            .await?
            .into_iter()
            .filter(|s| s.endable)
            .map(|s| s.pid)
            .collect();
        let ended: Vec<(i32, bool)> = sqlx::query_as(
            "SELECT pid, pg_terminate_backend(pid) FROM unnest($1::int[]) pid",
        )
        .bind(&pids)
        .fetch_all(&ctx.source)
        .await
        .map_err(|e| {
            Error::failure(format!(
                "the source is read-only for new sessions, but ending existing sessions failed ({e}): grant \
                 pg_signal_backend to the source user, or stop those applications yourself and run again"
            ))
        })?;
        fence::wait_gone(&ctx.source, &pids).await?;
        let write_counts = fence::write_counts(&ctx.source, &self.journal_schema).await?;
        let sessions_ended = ended.len() + raised.sessions_ended;
        Ok(FreezeResult {
            summary: format!(
                "source fenced ({} role(s) may not connect) and read-only, {sessions_ended} sessions ended",
                raised.fenced.len()
            ),
            sessions_ended,
            fenced: raised.fenced,
            write_counts,
        }
        .to_value())
    }
    async fn check(&self, ctx: &RunContext) -> Result<Check> {
        if !self.enabled {
            Ok(Check::Holds)
        } else if !is_frozen(&ctx.source).await? {
            Ok(Check::Fails("the source database is writable".into()))
        } else if !fence::is_up(&ctx.source, &self.journal_schema).await? {
            Ok(Check::Fails(
                "the source's fence is down (its roles may connect)".into(),
            ))
        } else {
            Ok(Check::Holds)
        }
    }
    async fn undo(&self, ctx: &RunContext) -> Result<String> {
        if !self.enabled {
            return Ok("nothing to undo".into());
        }
        let db = quote_ident(&self.database);
        fence::lift(&ctx.source, &self.journal_schema).await?;
        set_read_only(&ctx.source, &db, "RESET default_transaction_read_only").await?;
        Ok("source writable again (new sessions), its roles' CONNECT as before".into())
    }
}
