//! The fence: once the source stops taking the applications' writes (the
//! offline freeze, the online switch), no role but cutover's own may write
//! there. One fence serves both modes:
//!
//! - **CONNECT taken away.** The database's CONNECT privilege is left only
//!   to cutover's user (and to the roles `options.fence` leaves out); PUBLIC
//!   and every fenced role lose it and their sessions are ended. A setting
//!   such as `default_transaction_read_only` is only a default a client can
//!   walk through (`BEGIN READ WRITE`); a role that may not connect cannot
//!   write at all, however it asks. The database's ACL as it was is saved
//!   first, in the database itself (table `fence` in the journal's schema,
//!   which the copy and verify leave out; a database setting would need a
//!   superuser from PostgreSQL 15 on), so that a kill at any point leaves a
//!   fence the next run can finish or lift, and `lift` puts every CONNECT
//!   entry back as it was.
//! - **Who no fence stops**: superusers, and roles that hold the privileges
//!   of a role that keeps CONNECT (cutover's own, by membership). The plan
//!   names them; the mode's read-only default is all that applies to them.
//!
//! What the fence proves: after raising it, every fenced role is checked to
//! have lost CONNECT (`has_database_privilege`); verify-sync then tries each
//! consumer's own login on the source and expects the server's refusal.
//! Before the source is retired, the tables' own write counters
//! (`n_tup_ins + n_tup_upd + n_tup_del`) are compared with those taken when
//! the fence went up ([`write_counts`], [`writes_since`]).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use cutover_core::plan_file::FenceScope;
use cutover_core::{Error, Result};
use sqlx::PgPool;
use sqlx::postgres::PgConnection;

use crate::inventory::quote_ident;

/// The table (in the journal's schema) that holds the ACL saved before the
/// fence went up: its text form, empty when it was the default.
pub const TABLE: &str = "fence";

fn table(journal_schema: &str) -> String {
    format!("{}.{TABLE}", quote_ident(journal_schema))
}

/// Who the fence keeps off, and who it cannot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reach {
    /// Login roles that lose CONNECT.
    pub fenced: Vec<String>,
    /// Login roles that keep it: cutover's user, and those `options.fence`
    /// leaves out.
    pub kept: Vec<String>,
    /// Roles no fence can keep off, each with why.
    pub unstoppable: Vec<(String, String)>,
}

impl Reach {
    /// For the plan: who is fenced, who is not and why.
    pub fn lines(&self) -> Vec<String> {
        let mut lines = vec![format!(
            "fenced (CONNECT taken away, sessions ended): {}",
            if self.fenced.is_empty() {
                "no role".to_string()
            } else {
                self.fenced.join(", ")
            }
        )];
        if !self.unstoppable.is_empty() {
            lines.push(format!(
                "no fence keeps these off the source (name them in your checks): {}",
                self.unstoppable
                    .iter()
                    .map(|(r, why)| format!("{r} ({why})"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        lines
    }
}

/// The login roles of `pool`'s server the fence reaches for `scope`.
/// `consumers`: the roles the consumers log in as (for `"consumers"`).
pub async fn reach(pool: &PgPool, scope: &FenceScope, consumers: &[String]) -> Result<Reach> {
    let rows: Vec<(String, bool, bool)> = sqlx::query_as(
        "SELECT r.rolname::text, r.rolsuper, r.rolname = current_user FROM pg_roles r \
         WHERE r.rolcanlogin AND r.rolname !~ '^pg_' ORDER BY 1",
    )
    .fetch_all(pool)
    .await?;
    let wanted = |name: &str| match scope {
        FenceScope::All => true,
        FenceScope::Consumers => consumers.iter().any(|c| c == name),
        FenceScope::Roles(list) => list.iter().any(|c| c == name),
    };
    if let FenceScope::Roles(list) = scope {
        let missing: Vec<&String> = list
            .iter()
            .filter(|n| !rows.iter().any(|(r, _, _)| r == *n))
            .collect();
        if !missing.is_empty() {
            return Err(Error::bad_input(format!(
                "options.fence names {} that the server has no login role for; nothing was changed",
                missing.iter().map(|m| m.as_str()).collect::<Vec<_>>().join(", ")
            ))
            .with_hint("name login roles that exist there, or write fence = \"all\""));
        }
    }
    let mut reach = Reach::default();
    for (name, superuser, me) in &rows {
        if *me {
            reach.kept.push(name.clone());
        } else if *superuser {
            if wanted(name) {
                reach.unstoppable.push((
                    name.clone(),
                    "a superuser: connects whatever the privileges".into(),
                ));
            }
        } else if wanted(name) {
            reach.fenced.push(name.clone());
        } else {
            reach.kept.push(name.clone());
        }
    }
    // A fenced role that holds the privileges of one that keeps CONNECT
    // keeps it too.
    let inherits: Vec<(String, String)> = sqlx::query_as(
        "SELECT f.f, min(k.k) FROM unnest($1::text[]) f(f) CROSS JOIN unnest($2::text[]) k(k) \
         WHERE pg_has_role(f.f, k.k, 'USAGE') GROUP BY 1 ORDER BY 1",
    )
    .bind(&reach.fenced)
    .bind(&reach.kept)
    .fetch_all(pool)
    .await?;
    for (role, via) in inherits {
        reach.fenced.retain(|f| *f != role);
        reach.unstoppable.push((
            role,
            format!("holds the privileges of {via}, which keeps CONNECT (grant it its own role)"),
        ));
    }
    Ok(reach)
}

/// A session on which cutover may change the database's settings even when
/// the freeze made new sessions read-only.
async fn writable(pool: &PgPool) -> Result<sqlx::pool::PoolConnection<sqlx::Postgres>> {
    let mut conn = pool.acquire().await?;
    sqlx::query("SET default_transaction_read_only = off")
        .execute(&mut *conn)
        .await?;
    Ok(conn)
}

async fn database(conn: &mut PgConnection) -> Result<String> {
    Ok(sqlx::query_scalar("SELECT current_database()::text")
        .fetch_one(&mut *conn)
        .await?)
}

/// The ACL saved by [`raise`], when the fence is up: `Some("")` when the
/// database had the default ACL.
pub async fn saved_acl(conn: &mut PgConnection, journal_schema: &str) -> Result<Option<String>> {
    let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .bind(table(journal_schema))
        .fetch_one(&mut *conn)
        .await?;
    if !exists {
        return Ok(None);
    }
    Ok(
        sqlx::query_scalar(&format!("SELECT acl FROM {} LIMIT 1", table(journal_schema)))
            .fetch_optional(&mut *conn)
            .await?,
    )
}

/// Whether the fence is up on `pool`'s database.
pub async fn is_up(pool: &PgPool, journal_schema: &str) -> Result<bool> {
    let (pool, schema) = (pool.clone(), journal_schema.to_string());
    tokio::spawn(async move {
        let mut conn = pool.acquire().await?;
        Ok(saved_acl(&mut conn, &schema).await?.is_some())
    })
    .await
    .map_err(|e| Error::failure(format!("reading the fence crashed: {e}")))?
}

/// The database's CONNECT entries: grantee (`PUBLIC` for everyone) and
/// whether it may grant it, from `acl` (its text form; empty: the default)
/// or, when None, from the database's ACL now.
async fn connect_entries(conn: &mut PgConnection, acl: Option<&str>) -> Result<BTreeMap<String, bool>> {
    let rows: Vec<(String, bool)> = sqlx::query_as(
        "SELECT coalesce(r.rolname::text, 'PUBLIC'), bool_or(x.is_grantable) FROM pg_database d \
         CROSS JOIN LATERAL aclexplode(CASE WHEN $1::text IS NULL THEN coalesce(d.datacl, acldefault('d', d.datdba)) \
                                            WHEN $1 = '' THEN acldefault('d', d.datdba) ELSE $1::aclitem[] END) x \
         LEFT JOIN pg_roles r ON r.oid = x.grantee \
         WHERE d.datname = current_database() AND x.privilege_type = 'CONNECT' GROUP BY 1",
    )
    .bind(acl)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows.into_iter().collect())
}

fn grantee(name: &str) -> String {
    if name == "PUBLIC" {
        "PUBLIC".into()
    } else {
        quote_ident(name)
    }
}

/// Makes the database's CONNECT entries exactly `want` (REVOKE what is not
/// there, GRANT what is missing, grant options included).
async fn set_connect(conn: &mut PgConnection, db: &str, want: &BTreeMap<String, bool>) -> Result<()> {
    let have = connect_entries(conn, None).await?;
    let db = quote_ident(db);
    let mut sql = vec![];
    for (who, grantable) in &have {
        match want.get(who) {
            None => sql.push(format!("REVOKE CONNECT ON DATABASE {db} FROM {}", grantee(who))),
            Some(false) if *grantable => sql.push(format!(
                "REVOKE GRANT OPTION FOR CONNECT ON DATABASE {db} FROM {}",
                grantee(who)
            )),
            _ => {}
        }
    }
    for (who, grantable) in want {
        let missing = match have.get(who) {
            None => true,
            Some(had) => *grantable && !had,
        };
        if missing {
            sql.push(format!(
                "GRANT CONNECT ON DATABASE {db} TO {}{}",
                grantee(who),
                if *grantable { " WITH GRANT OPTION" } else { "" }
            ));
        }
    }
    for s in sql {
        sqlx::query(&s).execute(&mut *conn).await.map_err(|e| {
            Error::from(e)
                .context(format!("changing who may connect to the database ({s})"))
                .with_hint("cutover's user must own the database or be a superuser")
        })?;
    }
    Ok(())
}

/// What [`raise`] did.
#[derive(Debug, Clone, Default)]
pub struct Raised {
    pub fenced: Vec<String>,
    pub sessions_ended: usize,
}

/// Raises the fence on `pool`'s database for `reach.fenced` (idempotent:
/// an earlier attempt's saved ACL is kept). Ends the fenced roles' sessions
/// and waits until they are gone; then proves that none of them may connect.
pub async fn raise(pool: &PgPool, reach: &Reach, journal_schema: &str) -> Result<Raised> {
    // Spawned: sqlx's executor lifetimes defeat the Send inference of the
    // stages' async-trait futures otherwise.
    let (pool, reach, schema) = (pool.clone(), reach.clone(), journal_schema.to_string());
    tokio::spawn(async move { raise_on(&pool, &reach, &schema).await })
        .await
        .map_err(|e| Error::failure(format!("raising the fence crashed: {e}")))?
}

async fn raise_on(pool: &PgPool, reach: &Reach, journal_schema: &str) -> Result<Raised> {
    let mut conn = writable(pool).await?;
    let db = database(&mut conn).await?;
    if saved_acl(&mut conn, journal_schema).await?.is_none() {
        // Table first, row last: a kill in between leaves an empty table,
        // which reads as no fence, and the next attempt fills it.
        let t = table(journal_schema);
        for sql in [
            format!("CREATE SCHEMA IF NOT EXISTS {}", quote_ident(journal_schema)),
            format!("CREATE TABLE IF NOT EXISTS {t} (acl text NOT NULL)"),
            format!(
                "INSERT INTO {t} SELECT coalesce(datacl::text, '') FROM pg_database WHERE datname = current_database()"
            ),
        ] {
            if let Err(e) = sqlx::query(&sql).execute(&mut *conn).await {
                return Err(Error::from(e)
                    .context("saving the database's privileges before the fence")
                    .with_hint("cutover's user must own the database or be a superuser"));
            }
        }
    }
    // CONNECT stays with the roles the fence leaves out that had it (now
    // each by name: PUBLIC's entry goes), and with cutover's user.
    // Read from the saved ACL: a resumed attempt finds PUBLIC's entry gone.
    let saved = saved_acl(&mut conn, journal_schema).await?;
    let before = connect_entries(&mut conn, saved.as_deref()).await?;
    let grantees: Vec<&String> = before.keys().filter(|g| *g != "PUBLIC").collect();
    let kept_with_connect: Vec<String> = sqlx::query_scalar(
        "SELECT r FROM unnest($1::text[]) r WHERE r = current_user OR $2 \
            OR EXISTS (SELECT 1 FROM unnest($3::text[]) g WHERE pg_has_role(r, g, 'USAGE'))",
    )
    .bind(&reach.kept)
    .bind(before.contains_key("PUBLIC"))
    .bind(&grantees)
    .fetch_all(&mut *conn)
    .await?;
    let mut want: BTreeMap<String, bool> = BTreeMap::new();
    for r in &kept_with_connect {
        want.insert(r.clone(), before.get(r).copied().unwrap_or(false));
    }
    set_connect(&mut conn, &db, &want).await?;
    // Every session of a fenced role ends; a superuser's too where cutover
    // may end it (its role keeps only the mode's read-only default).
    let unstoppable: Vec<&String> = reach.unstoppable.iter().map(|(r, _)| r).collect();
    // Whether cutover's user may end each (a superuser, a member of the
    // session's role, or of pg_signal_backend; never a superuser's unless
    // it is one).
    let sessions: Vec<(i32, String, bool)> = sqlx::query_as(
        "SELECT a.pid, a.usename::text, me.rolsuper OR (NOT r.rolsuper AND (pg_has_role(me.oid, a.usesysid, 'USAGE') \
                OR pg_has_role(me.oid, 'pg_signal_backend', 'USAGE'))) \
         FROM pg_stat_activity a JOIN pg_roles r ON r.oid = a.usesysid \
         CROSS JOIN (SELECT oid, rolsuper FROM pg_roles WHERE rolname = current_user) me \
         WHERE a.datname = current_database() AND a.pid <> pg_backend_pid() \
           AND (a.usename = ANY($1) OR (a.usename = ANY($2) AND me.rolsuper))",
    )
    .bind(&reach.fenced)
    .bind(&unstoppable)
    .fetch_all(&mut *conn)
    .await?;
    let stuck: Vec<String> = sessions
        .iter()
        .filter(|(_, _, endable)| !endable)
        .map(|(pid, user, _)| format!("pid {pid} of {user}"))
        .collect();
    if !stuck.is_empty() {
        return Err(Error::failure(format!(
            "the fence cannot end {} session(s) on the source ({}): they could go on writing",
            stuck.len(),
            stuck.join(", ")
        ))
        .with_hint(
            "GRANT pg_signal_backend TO cutover's user on the source, or stop those applications yourself",
        ));
    }
    let pids: Vec<i32> = sessions.iter().map(|(pid, _, _)| *pid).collect();
    sqlx::query("SELECT pg_terminate_backend(pid) FROM unnest($1::int[]) pid")
        .bind(&pids)
        .execute(&mut *conn)
        .await?;
    wait_gone(pool, &pids).await?;
    let still: Vec<String> = sqlx::query_scalar(
        "SELECT r FROM unnest($1::text[]) r WHERE has_database_privilege(r, current_database(), 'CONNECT') ORDER BY 1",
    )
    .bind(&reach.fenced)
    .fetch_all(&mut *conn)
    .await?;
    if !still.is_empty() {
        return Err(Error::failure(format!(
            "the fence did not hold: role(s) {} may still connect to database {db} (a CONNECT grant made by \
             another grantor, or membership in a role that keeps it)",
            still.join(", ")
        ))
        .with_hint(format!(
            "REVOKE CONNECT ON DATABASE {} FROM those roles' grantors' grants (or their group roles), or leave \
             them out with options.fence; then run again",
            quote_ident(&db)
        )));
    }
    Ok(Raised {
        fenced: reach.fenced.clone(),
        sessions_ended: pids.len(),
    })
}

/// Waits (at most 10 s) until the sessions `pids` have exited: a backend's
/// statistics reach the views as it exits, so its writes are counted only
/// then.
pub async fn wait_gone(pool: &PgPool, pids: &[i32]) -> Result<()> {
    let t0 = Instant::now();
    while !pids.is_empty() && t0.elapsed() < Duration::from_secs(10) {
        let left: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1)")
            .bind(pids)
            .fetch_one(pool)
            .await?;
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Lifts the fence: the database's CONNECT entries exactly as saved, the
/// saved copy removed. Nothing to do when the fence is not up.
pub async fn lift(pool: &PgPool, journal_schema: &str) -> Result<bool> {
    let (pool, schema) = (pool.clone(), journal_schema.to_string());
    tokio::spawn(async move { lift_on(&pool, &schema).await })
        .await
        .map_err(|e| Error::failure(format!("lifting the fence crashed: {e}")))?
}

async fn lift_on(pool: &PgPool, journal_schema: &str) -> Result<bool> {
    let mut conn = writable(pool).await?;
    let Some(saved) = saved_acl(&mut conn, journal_schema).await? else {
        return Ok(false);
    };
    let db = database(&mut conn).await?;
    let want = connect_entries(&mut conn, Some(&saved)).await?;
    set_connect(&mut conn, &db, &want).await?;
    sqlx::query(&format!("DROP TABLE {}", table(journal_schema)))
        .execute(&mut *conn)
        .await?;
    // The schema goes with it when nothing else of cutover's is left there.
    let empty: bool = sqlx::query_scalar(
        "SELECT NOT EXISTS (SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1)",
    )
    .bind(journal_schema)
    .fetch_one(&mut *conn)
    .await?;
    if empty {
        sqlx::query(&format!("DROP SCHEMA IF EXISTS {}", quote_ident(journal_schema)))
            .execute(&mut *conn)
            .await?;
    }
    Ok(true)
}

/// The login roles that may connect to `pool`'s database now (superusers
/// always may), for `verify`'s word on the fence.
pub async fn may_connect(pool: &PgPool) -> Result<Vec<String>> {
    Ok(sqlx::query_scalar(
        "SELECT rolname::text || CASE WHEN rolsuper THEN ' (superuser)' WHEN rolname = current_user \
                THEN ' (cutover''s user)' ELSE '' END FROM pg_roles \
         WHERE rolcanlogin AND rolname !~ '^pg_' AND (rolsuper OR has_database_privilege(oid, current_database(), 'CONNECT')) \
         ORDER BY 1",
    )
    .fetch_all(pool)
    .await?)
}

/// The source tables' write counters (inserted + updated + deleted rows),
/// outside the journal's schema.
pub async fn write_counts(pool: &PgPool, journal_schema: &str) -> Result<BTreeMap<String, i64>> {
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT format('%I.%I', schemaname, relname), (n_tup_ins + n_tup_upd + n_tup_del)::bigint \
         FROM pg_stat_user_tables WHERE schemaname <> $1 ORDER BY 1",
    )
    .bind(journal_schema)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().collect())
}

/// [`write_counts`] once two readings a moment apart agree (a backend that
/// just ended, or a subscription just dropped, reports its last writes as
/// it exits).
pub async fn settled_write_counts(pool: &PgPool, journal_schema: &str) -> Result<BTreeMap<String, i64>> {
    let mut last = write_counts(pool, journal_schema).await?;
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = write_counts(pool, journal_schema).await?;
        if now == last {
            break;
        }
        last = now;
    }
    Ok(last)
}

/// The tables written since `baseline` was read ("schema.table: N rows
/// written"), and those whose counters went back (statistics reset: their
/// writes cannot be told).
pub fn writes_since(
    baseline: &BTreeMap<String, i64>,
    now: &BTreeMap<String, i64>,
) -> (Vec<String>, Vec<String>) {
    let mut written = vec![];
    let mut unknown = vec![];
    for (table, n) in now {
        match baseline.get(table) {
            Some(b) if n > b => written.push(format!("{table}: {} row(s) written", n - b)),
            Some(b) if n < b => unknown.push(table.clone()),
            None if *n > 0 => written.push(format!("{table}: created since, {n} row(s) written")),
            _ => {}
        }
    }
    (written, unknown)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_since_names_each_table_written_and_those_it_cannot_tell() {
        let base: BTreeMap<String, i64> = [("public.a", 5), ("public.b", 3), ("public.c", 9)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        let mut now = base.clone();
        assert_eq!(writes_since(&base, &now), (vec![], vec![]));
        now.insert("public.a".into(), 6);
        now.insert("public.c".into(), 0);
        now.insert("public.d".into(), 2);
        let (written, unknown) = writes_since(&base, &now);
        assert_eq!(
            written,
            [
                "public.a: 1 row(s) written",
                "public.d: created since, 2 row(s) written"
            ]
        );
        assert_eq!(unknown, ["public.c"]);
    }
}
