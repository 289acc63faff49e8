//! PostgreSQL's own logical replication, as the online mode uses it: a
//! publication and a slot on the side that is written, a subscription on
//! the other, a sentinel row to know the stream has caught up, and the
//! fence that keeps the applications' roles from writing where they must
//! not. Nothing here is home-made replication: the server streams and
//! applies; cutover creates, watches and drops its objects.
//!
//! Names are fixed (one run at a time per target), so that every later run,
//! rollback or decommission finds what an earlier, killed one left:
//! `cutover_forward` (publication and slot on the source, subscription on
//! the target) and `cutover_reverse` (publication and slot on the target,
//! subscription on the source).

use std::process::Stdio;
use std::time::{Duration, Instant};

use cutover_core::endpoint::Endpoint;
use cutover_core::redact::redact_text;
use cutover_core::{Error, Result};
use sqlx::PgPool;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin};
use uuid::Uuid;

use crate::inventory::{quote_ident, quote_literal};

/// Source -> target: publication and slot on the source, subscription on the target.
pub const FORWARD: &str = "cutover_forward";
/// Target -> source, during the rollback window.
pub const REVERSE: &str = "cutover_reverse";
/// The sentinel table, in the journal's schema on both sides.
const SENTINEL: &str = "online_sentinel";

/// The tables a publication carries: every persistent table (partitioned
/// ones by their root) outside the system's and the journal's schemas,
/// quoted and qualified.
pub async fn published_tables(pool: &PgPool, journal_schema: &str) -> Result<Vec<String>> {
    Ok(sqlx::query_scalar(
        "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE c.relkind IN ('r', 'p') AND c.relpersistence = 'p' AND NOT c.relispartition \
           AND n.nspname NOT IN ('pg_catalog', 'information_schema', $1) AND n.nspname NOT LIKE 'pg\\_%' \
           AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = c.oid AND d.deptype = 'e') \
         ORDER BY 1",
    )
    .bind(journal_schema)
    .fetch_all(pool)
    .await?)
}

/// The sentinel table `<journal>.online_sentinel` (created where missing).
pub async fn sentinel_table(pool: &PgPool, journal_schema: &str) -> Result<String> {
    let schema = quote_ident(journal_schema);
    let table = format!("{schema}.{SENTINEL}");
    sqlx::raw_sql(&format!(
        "CREATE SCHEMA IF NOT EXISTS {schema}; \
         CREATE TABLE IF NOT EXISTS {table} (token uuid PRIMARY KEY, written_at timestamptz NOT NULL DEFAULT now())"
    ))
    .execute(pool)
    .await?;
    Ok(table)
}

/// Creates (or brings up to date) publication `name` on `pool`: the
/// application's tables and the sentinel table. Returns how many tables.
pub async fn publish(pool: &PgPool, name: &str, journal_schema: &str) -> Result<usize> {
    let mut tables = published_tables(pool, journal_schema).await?;
    tables.push(sentinel_table(pool, journal_schema).await?);
    let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1)")
        .bind(name)
        .fetch_one(pool)
        .await?;
    let sql = if exists {
        format!(
            "ALTER PUBLICATION {} SET TABLE {}",
            quote_ident(name),
            tables.join(", ")
        )
    } else {
        format!(
            "CREATE PUBLICATION {} FOR TABLE {}",
            quote_ident(name),
            tables.join(", ")
        )
    };
    sqlx::query(&sql).execute(pool).await.map_err(|e| {
        Error::from(e).context(format!("publishing the tables (publication {name})")).with_hint(
            "the user must own the tables (or be a superuser); tables without a key need one (see the plan)",
        )
    })?;
    Ok(tables.len())
}

/// Sets `REPLICA IDENTITY FULL` (`full`) or back to `DEFAULT` on the plan's
/// chosen keyless tables (`schema.table`) that exist on `pool`.
pub async fn identity_full(pool: &PgPool, tables: &[String], full: bool) -> Result<()> {
    for t in tables {
        let name: Option<String> = sqlx::query_scalar("SELECT to_regclass($1)::text")
            .bind(t)
            .fetch_one(pool)
            .await?;
        if let Some(name) = name {
            sqlx::query(&format!(
                "ALTER TABLE {name} REPLICA IDENTITY {}",
                if full { "FULL" } else { "DEFAULT" }
            ))
            .execute(pool)
            .await
            .map_err(|e| Error::from(e).context(format!("setting the replica identity of {t}")))?;
        }
    }
    Ok(())
}

/// Tables that publication `name` should carry and does not: created on
/// `pool` after the publication (replication carries no DDL, so their rows
/// would never reach the other side).
pub async fn unpublished(pool: &PgPool, name: &str, journal_schema: &str) -> Result<Vec<String>> {
    let members: Vec<String> = sqlx::query_scalar(
        "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_publication_rel pr \
         JOIN pg_publication p ON p.oid = pr.prpubid JOIN pg_class c ON c.oid = pr.prrelid \
         JOIN pg_namespace n ON n.oid = c.relnamespace WHERE p.pubname = $1",
    )
    .bind(name)
    .fetch_all(pool)
    .await?;
    Ok(published_tables(pool, journal_schema)
        .await?
        .into_iter()
        .filter(|t| !members.contains(t))
        .collect())
}

/// Drops publication `name` where it exists.
pub async fn drop_publication(pool: &PgPool, name: &str) -> Result<()> {
    sqlx::query(&format!("DROP PUBLICATION IF EXISTS {}", quote_ident(name)))
        .execute(pool)
        .await?;
    Ok(())
}

/// Creates logical slot `name` (pgoutput) on `pool` where it is missing:
/// the stream starts now (no snapshot: both sides hold the same data).
pub async fn create_slot(pool: &PgPool, name: &str) -> Result<()> {
    sqlx::query(
        "SELECT pg_create_logical_replication_slot($1, 'pgoutput') \
         WHERE NOT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1)",
    )
    .bind(name)
    .execute(pool)
    .await
    .map_err(|e| Error::from(e).context(format!("creating replication slot {name}")))?;
    Ok(())
}

/// The server's WAL position now.
pub async fn wal_position(pool: &PgPool) -> Result<String> {
    Ok(sqlx::query_scalar("SELECT pg_current_wal_lsn()::text")
        .fetch_one(pool)
        .await?)
}

/// Drops publication `name` and the journal schema's sentinel table where
/// they exist. `drop_schema`: the schema was made for the sentinel only
/// (the source's), so it goes too when empty.
pub async fn unpublish(pool: &PgPool, name: &str, journal_schema: &str, drop_schema: bool) -> Result<()> {
    let schema = quote_ident(journal_schema);
    sqlx::raw_sql(&format!(
        "DROP PUBLICATION IF EXISTS {}; DROP TABLE IF EXISTS {schema}.{SENTINEL}",
        quote_ident(name)
    ))
    .execute(pool)
    .await?;
    if drop_schema {
        let empty: bool = sqlx::query_scalar(
            "SELECT NOT EXISTS (SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1) AND EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)",
        )
        .bind(journal_schema)
        .fetch_one(pool)
        .await?;
        if empty {
            sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema}"))
                .execute(pool)
                .await?;
        }
    }
    Ok(())
}

/// A slot created over a replication connection with its snapshot
/// exported: the snapshot stays importable while this connection (a psql
/// child waiting on its standard input) stays open and idle.
pub struct ExportedSlot {
    child: Child,
    stdin: Option<ChildStdin>,
    /// Where the slot's stream starts: every change after it is streamed,
    /// every change before it is in the snapshot.
    pub consistent_point: String,
    /// The snapshot's name, for `SET TRANSACTION SNAPSHOT`.
    pub snapshot: String,
}

/// How long creating the slot may wait for the transactions running on the
/// source to end.
const SLOT_TIMEOUT: Duration = Duration::from_secs(120);

impl ExportedSlot {
    /// `CREATE_REPLICATION_SLOT name LOGICAL pgoutput (SNAPSHOT 'export')`
    /// on a `replication=database` connection to `endpoint` (a server
    /// before 15, `server_version_num`, takes the older `EXPORT_SNAPSHOT`).
    pub async fn create(endpoint: &Endpoint, name: &str, server_version_num: i32) -> Result<ExportedSlot> {
        let psql = crate::tools::candidates("psql")
            .await
            .into_iter()
            .next()
            .ok_or_else(|| {
                Error::failure("no psql found: the replication slot is created with psql; install it")
            })?;
        let mut cmd = crate::tools::command(&psql.path, endpoint);
        let url = endpoint.child_url();
        let sep = if url.contains('?') { '&' } else { '?' };
        cmd.arg(format!(
            "--dbname={url}{sep}replication=database&application_name=cutover%20slot"
        ))
        .args(["-X", "-q", "-A", "-t", "-F", "|", "-v", "ON_ERROR_STOP=1"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .map_err(|e| Error::failure(format!("cannot start {}: {e}", psql.path.display())))?;
        let mut stdin = child.stdin.take().expect("piped");
        let export = if server_version_num >= 150000 {
            "(SNAPSHOT 'export')"
        } else {
            "EXPORT_SNAPSHOT"
        };
        stdin
            .write_all(
                format!(
                    "CREATE_REPLICATION_SLOT {} LOGICAL pgoutput {export};\n",
                    quote_ident(name)
                )
                .as_bytes(),
            )
            .await?;
        stdin.flush().await?;
        let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
        let line = tokio::time::timeout(SLOT_TIMEOUT, lines.next_line()).await;
        let failed = |why: String| {
            Error::failure(format!(
                "creating replication slot {name} on the source {endpoint} failed: {}",
                redact_text(&why)
            ))
        };
        let line = match line {
            Err(_) => {
                let _ = child.kill().await;
                return Err(failed(format!(
                    "no answer within {} s: it waits for every transaction running on the source to end",
                    SLOT_TIMEOUT.as_secs()
                ))
                .with_hint("end the long transactions on the source (pg_stat_activity), then run again"));
            }
            Ok(line) => line?,
        };
        let Some(line) = line else {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = e.read_to_string(&mut err).await;
            }
            let _ = child.wait().await;
            return Err(failed(err.trim().to_string()).with_hint(
                "the source user needs REPLICATION (or superuser), pg_hba.conf a `replication` line for it \
                 (a `host … all` line does not serve replication=database only if it names the database), \
                 and a free slot and WAL sender",
            ));
        };
        let fields: Vec<&str> = line.split('|').collect();
        if fields.len() < 3 {
            let _ = child.kill().await;
            return Err(failed(format!("unexpected answer {line:?}")));
        }
        Ok(ExportedSlot {
            consistent_point: fields[1].to_string(),
            snapshot: fields[2].to_string(),
            child,
            stdin: Some(stdin),
        })
    }

    /// Ends the replication connection (the snapshot goes; the slot stays).
    pub async fn release(mut self) {
        drop(self.stdin.take());
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

/// Drops slot `name` on `pool` where it exists, ending the session that
/// streams from it first.
pub async fn drop_slot(pool: &PgPool, name: &str) -> Result<bool> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let slot: Option<Option<i32>> =
            sqlx::query_scalar("SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1")
                .bind(name)
                .fetch_optional(pool)
                .await?;
        match slot {
            None => return Ok(false),
            Some(Some(pid)) => {
                sqlx::query("SELECT pg_terminate_backend($1)")
                    .bind(pid)
                    .execute(pool)
                    .await?;
            }
            Some(None) => match sqlx::query("SELECT pg_drop_replication_slot($1)")
                .bind(name)
                .execute(pool)
                .await
            {
                Ok(_) => return Ok(true),
                // Became active again, or dropped meanwhile: look again.
                Err(e) if Instant::now() < deadline => {
                    tracing::debug!("dropping slot {name}: {e}");
                }
                Err(e) => {
                    return Err(Error::from(e).context(format!("dropping replication slot {name}")));
                }
            },
        }
        if Instant::now() >= deadline {
            return Err(Error::failure(format!(
                "replication slot {name} is still in use after 15 s; it keeps WAL on its server: drop it with \
                 SELECT pg_drop_replication_slot('{name}')"
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// How the subscribing server reaches the publishing one: a libpq
/// connection string with the password (it is stored in the subscription's
/// catalog, which only superusers read; never printed).
pub fn conninfo(endpoint: &Endpoint, address: Option<&str>) -> String {
    let (host, port) = match address.and_then(|a| a.rsplit_once(':')) {
        Some((h, p)) => (h.to_string(), p.to_string()),
        None => (
            address.unwrap_or(&endpoint.host).to_string(),
            endpoint.port.to_string(),
        ),
    };
    let q = |v: &str| format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"));
    let mut s = format!(
        "host={} port={} dbname={} user={}",
        q(&host),
        q(&port),
        q(&endpoint.dbname),
        q(&endpoint.user)
    );
    if let Some(pw) = endpoint.password() {
        s.push_str(&format!(" password={}", q(pw)));
    }
    for (k, v) in endpoint.tls.libpq_env() {
        let key = match k {
            "PGSSLMODE" => "sslmode",
            "PGSSLROOTCERT" => "sslrootcert",
            "PGSSLCERT" => "sslcert",
            "PGSSLKEY" => "sslkey",
            _ => continue,
        };
        s.push_str(&format!(" {key}={}", q(&v)));
    }
    s.push_str(" application_name='cutover subscription'");
    s
}

/// Subscription `name` on `pool`, streaming publication `name` through the
/// existing slot `name` of the server `conninfo` reaches, from the slot's
/// position (nothing copied: the data is there already).
pub async fn subscribe(pool: &PgPool, name: &str, conninfo: &str) -> Result<()> {
    if subscription(pool, name).await?.is_some() {
        return enable(pool, name).await;
    }
    let version = server_version(pool).await?;
    // 15 and later: an apply error disables the subscription (reported,
    // and ENABLEd again by the next run) rather than retrying forever.
    let on_error = if version >= 150000 {
        ", disable_on_error = true"
    } else {
        ""
    };
    let sql = format!(
        "CREATE SUBSCRIPTION {sub} CONNECTION {conn} PUBLICATION {sub} \
         WITH (create_slot = false, slot_name = {slot}, copy_data = false, enabled = true{on_error})",
        sub = quote_ident(name),
        conn = quote_literal(conninfo),
        slot = quote_literal(name),
    );
    // The statement holds the password: keep it out of the server's log
    // (a failing statement is logged by default; log_statement may log all).
    let mut conn = pool.acquire().await?;
    for set in [
        "SET log_statement = 'none'",
        "SET log_min_error_statement = 'panic'",
    ] {
        sqlx::query(set).execute(&mut *conn).await?;
    }
    let created = sqlx::query(&sql).execute(&mut *conn).await;
    for reset in ["RESET log_statement", "RESET log_min_error_statement"] {
        let _ = sqlx::query(reset).execute(&mut *conn).await;
    }
    created.map_err(|e| {
        // The server's message, never the statement (it holds the password).
        Error::from(e)
            .context(format!("creating subscription {name}"))
            .with_hint(
                "the subscribing server must reach the other one as the plan's user, with the same \
                 password (options.online.source_address / target_address: the host:port as that server \
                 sees it); on PostgreSQL 15 its user must be a superuser",
            )
    })?;
    Ok(())
}

/// Enables subscription `name` (disabled by an apply error): it goes on
/// where it stopped.
pub async fn enable(pool: &PgPool, name: &str) -> Result<()> {
    sqlx::query(&format!("ALTER SUBSCRIPTION {} ENABLE", quote_ident(name)))
        .execute(pool)
        .await?;
    Ok(())
}

/// Drops subscription `name` on `pool` where it exists, leaving its slot
/// on the other server (dropped with [`drop_slot`] there).
pub async fn unsubscribe(pool: &PgPool, name: &str) -> Result<bool> {
    if subscription(pool, name).await?.is_none() {
        return Ok(false);
    }
    let sub = quote_ident(name);
    for sql in [
        format!("ALTER SUBSCRIPTION {sub} DISABLE"),
        format!("ALTER SUBSCRIPTION {sub} SET (slot_name = NONE)"),
        format!("DROP SUBSCRIPTION {sub}"),
    ] {
        sqlx::query(&sql).execute(pool).await?;
    }
    Ok(true)
}

/// A subscription's state on the subscribing server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    pub enabled: bool,
    /// Apply errors counted since the subscription was created.
    pub apply_errors: i64,
    /// An apply worker is running.
    pub streaming: bool,
}

pub async fn subscription(pool: &PgPool, name: &str) -> Result<Option<Subscription>> {
    let errors = if server_version(pool).await? >= 150000 {
        "(SELECT coalesce(max(st.apply_error_count), 0) FROM pg_stat_subscription_stats st WHERE st.subid = s.oid)"
    } else {
        "0::bigint"
    };
    let row: Option<(bool, i64, bool)> = sqlx::query_as(&format!(
        "SELECT s.subenabled, {errors}, \
                EXISTS (SELECT 1 FROM pg_stat_subscription w WHERE w.subid = s.oid AND w.pid IS NOT NULL) \
         FROM pg_subscription s JOIN pg_database d ON d.oid = s.subdbid \
         WHERE d.datname = current_database() AND s.subname = $1"
    ))
    .bind(name)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|(enabled, apply_errors, streaming)| Subscription {
        enabled,
        apply_errors,
        streaming,
    }))
}

/// Bytes of WAL the publishing server wrote that the subscriber has not
/// confirmed (None: no such slot).
pub async fn lag(pool: &PgPool, slot: &str) -> Result<Option<i64>> {
    Ok(sqlx::query_scalar(
        "SELECT coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn), 0)::bigint \
         FROM pg_replication_slots WHERE slot_name = $1",
    )
    .bind(slot)
    .fetch_optional(pool)
    .await?)
}

/// Writes a sentinel row on the publishing side (after its writers are
/// paused); once the subscriber shows it, everything before it is applied.
pub async fn write_sentinel(pool: &PgPool, journal_schema: &str) -> Result<Uuid> {
    let token = Uuid::new_v4();
    let table = format!("{}.{SENTINEL}", quote_ident(journal_schema));
    let mut conn = crate::connect::writable(pool).await?;
    sqlx::query(&format!("INSERT INTO {table} (token) VALUES ($1)"))
        .bind(token)
        .execute(&mut *conn)
        .await?;
    Ok(token)
}

/// Waits until `pool` shows sentinel `token`; false when `deadline` came first.
pub async fn wait_for_sentinel(
    pool: &PgPool,
    journal_schema: &str,
    token: Uuid,
    deadline: Instant,
    cancel: Option<&cutover_core::stage::CancelFlag>,
) -> Result<bool> {
    let table = format!("{}.{SENTINEL}", quote_ident(journal_schema));
    let sql = format!("SELECT EXISTS (SELECT 1 FROM {table} WHERE token = $1)");
    loop {
        if let Some(c) = cancel {
            c.check()?;
        }
        let seen: bool = sqlx::query_scalar(&sql).bind(token).fetch_one(pool).await?;
        if seen {
            return Ok(true);
        }
        if Instant::now() >= deadline {
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Sets every sequence on `to` from `from` (not replicated). Returns how many.
pub async fn copy_sequences(from: &PgPool, to: &PgPool, journal_schema: &str) -> Result<usize> {
    let seqs: Vec<(String, Option<i64>, i64)> = sqlx::query_as(
        "SELECT format('%I.%I', schemaname, sequencename), last_value, start_value FROM pg_sequences \
         WHERE schemaname <> $1 ORDER BY 1",
    )
    .bind(journal_schema)
    .fetch_all(from)
    .await?;
    let mut conn = crate::connect::writable(to).await?;
    for (name, last, start) in &seqs {
        let (value, called) = match last {
            Some(v) => (*v, true),
            None => (*start, false),
        };
        sqlx::query("SELECT setval($1::regclass, $2, $3)")
            .bind(name)
            .bind(value)
            .bind(called)
            .execute(&mut *conn)
            .await
            .map_err(|e| Error::from(e).context(format!("setting sequence {name}")))?;
    }
    Ok(seqs.len())
}

/// The read-only default for `roles` in `pool`'s database (marked by
/// `cutover.fenced`, so that [`unfence`] lifts only what this set): for
/// the roles [`crate::fence`] cannot keep off, the only line left. Best
/// effort: a role cutover's user may not alter (a superuser's, where it is
/// none; any without CREATEROLE) is left as it is, and returned. Never
/// cutover's own.
pub async fn fence(pool: &PgPool, roles: &[String]) -> Result<Vec<String>> {
    if roles.is_empty() {
        return Ok(vec![]);
    }
    let db = quote_ident(&current_database(pool).await?);
    let already: Vec<String> = sqlx::query_scalar(
        "SELECT r.rolname::text FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase \
         JOIN pg_roles r ON r.oid = s.setrole WHERE d.datname = current_database() \
           AND 'default_transaction_read_only=on' = ANY (s.setconfig) AND NOT 'cutover.fenced=on' = ANY (s.setconfig)",
    )
    .fetch_all(pool)
    .await?;
    let me: String = sqlx::query_scalar("SELECT current_user::text")
        .fetch_one(pool)
        .await?;
    let mut left = vec![];
    for role in roles.iter().filter(|r| !already.contains(r) && **r != me) {
        let r = quote_ident(role);
        let set = sqlx::raw_sql(&format!(
            "ALTER ROLE {r} IN DATABASE {db} SET cutover.fenced = on; \
             ALTER ROLE {r} IN DATABASE {db} SET default_transaction_read_only = on"
        ))
        .execute(pool)
        .await;
        if set.is_err() {
            left.push(role.clone());
        }
    }
    Ok(left)
}

/// Lifts [`fence`] for every role it fenced in this database, and the
/// CONNECT fence ([`crate::fence::lift`]).
pub async fn unfence(pool: &PgPool, journal_schema: &str) -> Result<Vec<String>> {
    crate::fence::lift(pool, journal_schema).await?;
    let roles = fenced(pool).await?;
    let db = quote_ident(&current_database(pool).await?);
    for role in &roles {
        let r = quote_ident(role);
        sqlx::raw_sql(&format!(
            "ALTER ROLE {r} IN DATABASE {db} RESET default_transaction_read_only; \
             ALTER ROLE {r} IN DATABASE {db} RESET cutover.fenced"
        ))
        .execute(pool)
        .await?;
    }
    Ok(roles)
}

/// The roles [`fence`] made read-only in this database.
pub async fn fenced(pool: &PgPool) -> Result<Vec<String>> {
    Ok(sqlx::query_scalar(
        "SELECT r.rolname::text FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase \
         JOIN pg_roles r ON r.oid = s.setrole \
         WHERE d.datname = current_database() AND 'cutover.fenced=on' = ANY (s.setconfig) \
         ORDER BY 1",
    )
    .fetch_all(pool)
    .await?)
}

/// `server_version_num` of `pool`'s server.
pub async fn server_version(pool: &PgPool) -> Result<i32> {
    Ok(
        sqlx::query_scalar("SELECT current_setting('server_version_num')::int")
            .fetch_one(pool)
            .await?,
    )
}

async fn current_database(pool: &PgPool) -> Result<String> {
    Ok(sqlx::query_scalar("SELECT current_database()::text")
        .fetch_one(pool)
        .await?)
}

/// What of cutover's replication exists now, for status, checks and the
/// promise that nothing is left behind.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Leftovers {
    pub slots: Vec<String>,
    pub publications: Vec<String>,
    pub subscriptions: Vec<String>,
}

impl Leftovers {
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty() && self.publications.is_empty() && self.subscriptions.is_empty()
    }
}

/// cutover's slots, publications and subscriptions on both servers.
pub async fn leftovers(source: &PgPool, target: &PgPool) -> Result<Leftovers> {
    let mut l = Leftovers::default();
    for (side, pool) in [("source", source), ("target", target)] {
        let names = [FORWARD, REVERSE];
        let slots: Vec<String> =
            sqlx::query_scalar("SELECT slot_name::text FROM pg_replication_slots WHERE slot_name = ANY($1)")
                .bind(names)
                .fetch_all(pool)
                .await?;
        let pubs: Vec<String> =
            sqlx::query_scalar("SELECT pubname::text FROM pg_publication WHERE pubname = ANY($1)")
                .bind(names)
                .fetch_all(pool)
                .await?;
        let subs: Vec<String> = sqlx::query_scalar(
            "SELECT s.subname::text FROM pg_subscription s JOIN pg_database d ON d.oid = s.subdbid \
             WHERE d.datname = current_database() AND s.subname = ANY($1)",
        )
        .bind(names)
        .fetch_all(pool)
        .await?;
        l.slots
            .extend(slots.into_iter().map(|n| format!("slot {n} on the {side}")));
        l.publications
            .extend(pubs.into_iter().map(|n| format!("publication {n} on the {side}")));
        l.subscriptions.extend(
            subs.into_iter()
                .map(|n| format!("subscription {n} on the {side}")),
        );
    }
    Ok(l)
}

/// One line per replication object of cutover's on `pool` (the `side`):
/// slots with the WAL they keep, publications, subscriptions and whether
/// they stream. For `status`: a forgotten slot fills the disk.
pub async fn describe(pool: &PgPool, side: &str) -> Result<Vec<String>> {
    let names = [FORWARD, REVERSE];
    let mut lines = vec![];
    let slots: Vec<(String, i64, bool)> = sqlx::query_as(
        "SELECT slot_name::text, coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn), 0)::bigint, active \
         FROM pg_replication_slots WHERE slot_name = ANY($1) ORDER BY 1",
    )
    .bind(names)
    .fetch_all(pool)
    .await?;
    for (name, kept, active) in slots {
        lines.push(format!(
            "slot {name} on the {side}: keeps {} of WAL, {}",
            cutover_core::units::bytes(kept),
            if active { "streaming" } else { "not streaming" }
        ));
    }
    let pubs: Vec<String> =
        sqlx::query_scalar("SELECT pubname::text FROM pg_publication WHERE pubname = ANY($1)")
            .bind(names)
            .fetch_all(pool)
            .await?;
    lines.extend(pubs.into_iter().map(|p| format!("publication {p} on the {side}")));
    for name in names {
        if let Some(sub) = subscription(pool, name).await? {
            lines.push(format!(
                "subscription {name} on the {side}: {}{}",
                if !sub.enabled {
                    "disabled"
                } else if sub.streaming {
                    "streaming"
                } else {
                    "enabled, not streaming"
                },
                if sub.apply_errors > 0 {
                    format!(", {} apply error(s)", sub.apply_errors)
                } else {
                    String::new()
                }
            ));
        }
    }
    Ok(lines)
}

/// The sequences whose value on `behind` trails `ahead`'s ("schema.seq:
/// 41 < 57"): during the rollback window the reverse stream carries rows,
/// not sequences, so the source's trail the target's until a rollback sets
/// them back.
pub async fn sequences_behind(behind: &PgPool, ahead: &PgPool, journal_schema: &str) -> Result<Vec<String>> {
    const SQL: &str = "SELECT format('%I.%I', schemaname, sequencename), coalesce(last_value, 0) FROM pg_sequences \
                       WHERE schemaname <> $1";
    let read = |pool| async move {
        let rows: Vec<(String, i64)> = sqlx::query_as(SQL).bind(journal_schema).fetch_all(pool).await?;
        Ok::<_, Error>(rows.into_iter().collect::<std::collections::BTreeMap<_, _>>())
    };
    let (b, a) = (read(behind).await?, read(ahead).await?);
    Ok(a.iter()
        .filter_map(|(name, v)| match b.get(name) {
            Some(w) if w < v => Some(format!("{name}: {w} < {v}")),
            _ => None,
        })
        .collect())
}

/// What is wrong with cutover's streams now, loudly: a subscription
/// disabled by an apply error (`disable_on_error`) or failing to apply
/// carries nothing, and a rollback or switch would wait for it in vain.
/// Each line says what to do.
pub async fn health(source: &PgPool, target: &PgPool) -> Result<Vec<String>> {
    let mut problems = vec![];
    for (pool, side, name, direction, other) in [
        (target, "target", FORWARD, "source -> target", "run"),
        (source, "source", REVERSE, "target -> source", "rollback"),
    ] {
        let Some(sub) = subscription(pool, name).await? else {
            continue;
        };
        let state = if !sub.enabled {
            format!("is DISABLED after {} apply error(s)", sub.apply_errors)
        } else if !sub.streaming && sub.apply_errors > 0 {
            format!("is failing to apply ({} apply error(s))", sub.apply_errors)
        } else {
            continue;
        };
        problems.push(format!(
            "the {direction} stream (subscription {name} on the {side}) {state}: the writes made since are not \
             carried. The {side}'s server log names the row it could not apply (a duplicate key: a row written on \
             the {side} directly); fix or delete that row there, then `cutover {other}` enables the stream again \
             and waits for it before pausing anything"
        ));
    }
    Ok(problems)
}

/// Removes every replication object of cutover's on both servers (and the
/// source's sentinel schema): subscriptions first, then slots, then
/// publications. The source's fence is lifted by the caller.
pub async fn remove_all(source: &PgPool, target: &PgPool, journal_schema: &str) -> Result<()> {
    unsubscribe(target, FORWARD).await?;
    unsubscribe(source, REVERSE).await?;
    drop_slot(source, FORWARD).await?;
    drop_slot(target, REVERSE).await?;
    unpublish(source, FORWARD, journal_schema, true).await?;
    unpublish(target, REVERSE, journal_schema, false).await?;
    Ok(())
}
