//! The publication on the side that is written: the application's tables
//! and the sentinel table, and the replica identity of the keyless tables
//! the plan chose.

use cutover_core::{Error, Result};
use sqlx::PgPool;

use super::sentinel::{SENTINEL, sentinel_table};
use crate::inventory::quote_ident;

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
