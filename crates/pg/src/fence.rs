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

use crate::connect::{current_database, writable};
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
                "no fence keeps these off the source for sure (name them in your checks): {}",
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
    // The database's owner (and its members) loses CONNECT too, but may
    // grant it back to itself from another database: named.
    let owners: Vec<String> = sqlx::query_scalar(
        "SELECT f FROM unnest($1::text[]) f, pg_database d \
         WHERE d.datname = current_database() AND pg_has_role(f, d.datdba, 'MEMBER') ORDER BY 1",
    )
    .bind(&reach.fenced)
    .fetch_all(pool)
    .await?;
    for role in owners {
        reach.unstoppable.push((
            role,
            "owns the database (or is a member of its owner): fenced, but it may GRANT CONNECT back to itself".into(),
        ));
    }
    Ok(reach)
}

/// Whether the fence is up on this connection's database: its table holds
/// the saved ACL (also for readers inside a transaction: the security
/// inventory).
pub async fn is_up_on(conn: &mut PgConnection, journal_schema: &str) -> Result<bool> {
    let t = table(journal_schema);
    let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .bind(&t)
        .fetch_one(&mut *conn)
        .await?;
    if !exists {
        return Ok(false);
    }
    let sql = format!("SELECT EXISTS (SELECT 1 FROM {t})");
    Ok(sqlx::query_scalar(&sql).fetch_one(&mut *conn).await?)
}

/// The SQL for the database's ACL as in effect before the fence (`d` is
/// its `pg_database` row): the saved one (`aclitem[]`, so renamed roles
/// stay themselves; NULL for the default) when `saved`, else the current.
pub fn acl_sql(journal_schema: &str, saved: bool) -> String {
    if saved {
        format!(
            "coalesce((SELECT acl FROM {} LIMIT 1), acldefault('d', d.datdba))",
            table(journal_schema)
        )
    } else {
        "coalesce(d.datacl, acldefault('d', d.datdba))".into()
    }
}

/// Whether the fence is up on `pool`'s database.
pub async fn is_up(pool: &PgPool, journal_schema: &str) -> Result<bool> {
    let (pool, schema) = (pool.clone(), journal_schema.to_string());
    tokio::spawn(async move {
        let mut conn = pool.acquire().await?;
        is_up_on(&mut conn, &schema).await
    })
    .await
    .map_err(|e| Error::failure(format!("reading the fence crashed: {e}")))?
}

/// One CONNECT entry: the grantee as SQL names it (`PUBLIC`, or the role
/// quoted) and whether it may grant it on.
type Entries = BTreeMap<i64, (String, bool)>;

/// The database's CONNECT entries by grantee (0: PUBLIC), from the ACL
/// `acl_sql` gives; entries of roles dropped since are left out.
async fn connect_entries(conn: &mut PgConnection, acl_sql: &str) -> Result<Entries> {
    let sql = format!(
        "SELECT x.grantee::int8, CASE WHEN x.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(r.rolname) END, \
                bool_or(x.is_grantable) \
         FROM pg_database d CROSS JOIN LATERAL aclexplode({acl_sql}) x LEFT JOIN pg_roles r ON r.oid = x.grantee \
         WHERE d.datname = current_database() AND x.privilege_type = 'CONNECT' \
           AND (x.grantee = 0 OR r.oid IS NOT NULL) GROUP BY 1, 2"
    );
    let rows: Vec<(i64, String, bool)> = sqlx::query_as(&sql).fetch_all(&mut *conn).await?;
    Ok(rows.into_iter().map(|(oid, name, g)| (oid, (name, g))).collect())
}

/// Makes the database's CONNECT entries exactly `want` (REVOKE what is not
/// there, GRANT what is missing, grant options included).
async fn set_connect(conn: &mut PgConnection, db: &str, want: &Entries) -> Result<()> {
    let have = connect_entries(conn, &acl_sql("", false)).await?;
    let db = quote_ident(db);
    let mut sql = vec![];
    for (oid, (who, grantable)) in &have {
        match want.get(oid) {
            None => sql.push(format!("REVOKE CONNECT ON DATABASE {db} FROM {who}")),
            Some((_, false)) if *grantable => sql.push(format!(
                "REVOKE GRANT OPTION FOR CONNECT ON DATABASE {db} FROM {who}"
            )),
            _ => {}
        }
    }
    for (oid, (who, grantable)) in want {
        let missing = match have.get(oid) {
            None => true,
            Some((_, had)) => *grantable && !had,
        };
        if missing {
            sql.push(format!(
                "GRANT CONNECT ON DATABASE {db} TO {who}{}",
                if *grantable { " WITH GRANT OPTION" } else { "" }
            ));
        }
    }
    for s in sql {
        if let Err(e) = sqlx::query(&s).execute(&mut *conn).await {
            return Err(Error::from(e)
                .context(format!("changing who may connect to the database ({s})"))
                .with_hint("cutover's user must own the database or be a superuser"));
        }
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
    let db = current_database(&mut *conn).await?;
    let up = is_up_on(&mut conn, journal_schema).await?;
    // CONNECT as it was (the saved ACL once the fence is up: a resumed
    // attempt finds PUBLIC's entry gone).
    let before = connect_entries(&mut conn, &acl_sql(journal_schema, up)).await?;
    // It stays with the roles the fence leaves out that had it (now each
    // by name), and with cutover's user.
    let grantees: Vec<i64> = before.keys().copied().filter(|g| *g != 0).collect();
    let kept: Vec<(i64, String)> = sqlx::query_as(
        "SELECT r.oid::int8, quote_ident(r.rolname) FROM pg_roles r WHERE r.rolname = ANY($1) \
           AND (r.rolname = current_user OR $2 \
                OR EXISTS (SELECT 1 FROM unnest($3::int8[]) g WHERE pg_has_role(r.oid, g::oid, 'USAGE')))",
    )
    .bind(&reach.kept)
    .bind(before.contains_key(&0))
    .bind(&grantees)
    .fetch_all(&mut *conn)
    .await?;
    let want: Entries = kept
        .into_iter()
        .map(|(oid, name)| {
            let grantable = before.get(&oid).is_some_and(|(_, g)| *g);
            (oid, (name, grantable))
        })
        .collect();
    if !up {
        // A grant option handed on cannot be taken back without taking the
        // grants made with it: refused before anything changes.
        let handed: Vec<&String> = before
            .iter()
            .filter(|(oid, (_, g))| *g && !want.contains_key(oid))
            .map(|(_, (name, _))| name)
            .collect();
        if !handed.is_empty() {
            return Err(Error::refused(format!(
                "the fence would take CONNECT from {}, which may grant it on (WITH GRANT OPTION); nothing was changed",
                handed.iter().map(|h| h.as_str()).collect::<Vec<_>>().join(", ")
            ))
            .with_hint(format!(
                "REVOKE GRANT OPTION FOR CONNECT ON DATABASE {} FROM those roles CASCADE (and grant CONNECT again to \
                 the roles they had granted it to), or leave them out with options.fence",
                quote_ident(&db)
            )));
        }
        // Table first, row last: a kill in between leaves an empty table,
        // which reads as no fence, and the next attempt fills it.
        let t = table(journal_schema);
        for sql in [
            format!("CREATE SCHEMA IF NOT EXISTS {}", quote_ident(journal_schema)),
            format!("CREATE TABLE IF NOT EXISTS {t} (acl aclitem[])"),
            format!("INSERT INTO {t} SELECT datacl FROM pg_database WHERE datname = current_database()"),
        ] {
            if let Err(e) = sqlx::query(&sql).execute(&mut *conn).await {
                return Err(Error::from(e)
                    .context("saving the database's privileges before the fence")
                    .with_hint("cutover's user must own the database or be a superuser"));
            }
        }
    }
    set_connect(&mut conn, &db, &want).await?;
    // Every session of a role the fence reaches ends: a fenced role's, and
    // one no fence stops (its read-only default holds only for new
    // sessions). A session cutover's user may not end (another role's
    // without pg_signal_backend) is refused, naming it; a superuser's,
    // where cutover's user is none, is left (the plan named the role).
    let unstoppable: Vec<&String> = reach.unstoppable.iter().map(|(r, _)| r).collect();
    let sessions: Vec<(i32, String, bool, bool)> = sqlx::query_as(
        "SELECT a.pid, a.usename::text, r.rolsuper, me.rolsuper OR (NOT r.rolsuper AND (pg_has_role(me.oid, a.usesysid, 'USAGE') \
                OR pg_has_role(me.oid, 'pg_signal_backend', 'USAGE'))) \
         FROM pg_stat_activity a JOIN pg_roles r ON r.oid = a.usesysid \
         CROSS JOIN (SELECT oid, rolsuper FROM pg_roles WHERE rolname = current_user) me \
         WHERE a.datname = current_database() AND a.pid <> pg_backend_pid() \
           AND (a.usename = ANY($1) OR a.usename = ANY($2))",
    )
    .bind(&reach.fenced)
    .bind(&unstoppable)
    .fetch_all(&mut *conn)
    .await?;
    let stuck: Vec<String> = sessions
        .iter()
        .filter(|(_, _, superuser, endable)| !endable && !superuser)
        .map(|(pid, user, _, _)| format!("pid {pid} of {user}"))
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
    let pids: Vec<i32> = sessions
        .iter()
        .filter(|(_, _, _, endable)| *endable)
        .map(|(pid, _, _, _)| *pid)
        .collect();
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

/// Lifts the fence: the database's CONNECT entries as saved (those of
/// roles dropped since left out), the saved copy removed. Nothing to do
/// when the fence is not up.
pub async fn lift(pool: &PgPool, journal_schema: &str) -> Result<bool> {
    let (pool, schema) = (pool.clone(), journal_schema.to_string());
    tokio::spawn(async move { lift_on(&pool, &schema).await })
        .await
        .map_err(|e| Error::failure(format!("lifting the fence crashed: {e}")))?
}

async fn lift_on(pool: &PgPool, journal_schema: &str) -> Result<bool> {
    let mut conn = writable(pool).await?;
    let t = table(journal_schema);
    if !is_up_on(&mut conn, journal_schema).await? {
        // An empty table a killed attempt left: nothing was changed yet.
        let drop = format!("DROP TABLE IF EXISTS {t}");
        let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
            .bind(&t)
            .fetch_one(&mut *conn)
            .await?;
        if exists {
            sqlx::query(&drop).execute(&mut *conn).await?;
        }
        return Ok(false);
    }
    let db = current_database(&mut *conn).await?;
    let want = connect_entries(&mut conn, &acl_sql(journal_schema, true)).await?;
    set_connect(&mut conn, &db, &want).await?;
    sqlx::query(&format!("DROP TABLE {t}"))
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
