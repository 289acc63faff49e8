//! The proofs that a stream caught up, and what it does not carry: a
//! sentinel row written on the publishing side and awaited on the other,
//! and the sequences, set from one side to the other (logical replication
//! carries rows, not sequence values).

use std::time::{Duration, Instant};

use cutover_core::{Error, Result};
use sqlx::PgPool;
use uuid::Uuid;

use crate::inventory::quote_ident;

/// The sentinel table, in the journal's schema on both sides.
pub(super) const SENTINEL: &str = "online_sentinel";

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
