//! The subscription on the receiving side: how it reaches the publishing
//! server, created without copying (the data is there already), enabled
//! again after an apply error, dropped; its state, and what is wrong with
//! cutover's streams now.

use cutover_core::endpoint::Endpoint;
use cutover_core::{Error, Result};
use sqlx::PgPool;

use super::{FORWARD, REVERSE};
use crate::connect::server_version;
use crate::inventory::{quote_ident, quote_literal};

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
