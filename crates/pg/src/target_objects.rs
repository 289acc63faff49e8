//! The application's objects on the target (everything outside the
//! journal's schema and the system's): dropped by clear, by the copy before
//! a pre-data restore and by its undo, checked by backup.

use cutover_core::{Error, Result};
use sqlx::{Executor, PgPool};

use crate::inventory::{Inventory, quote_ident};

/// Tables dropped per transaction: one transaction for thousands of tables
/// would need more locks than a server grants by default
/// (`max_locks_per_transaction` × `max_connections`).
const DROP_BATCH: usize = 500;

/// Drops every application schema, extension and large object on `pool`,
/// except the journal schema; recreates an empty `public`. Tables go first in
/// batches (each its own transaction: a re-run drops what is left), then the
/// schemas and the rest in one transaction.
pub async fn drop_application_objects(pool: &PgPool, journal_schema: &str) -> Result<()> {
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition \
           AND n.nspname NOT IN ('pg_catalog', 'information_schema', $1) AND n.nspname NOT LIKE 'pg\\_%' \
           AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass \
                           AND d.objid = c.oid AND d.deptype = 'e')",
    )
    .bind(journal_schema)
    .fetch_all(pool)
    .await?;
    if tables.len() > DROP_BATCH {
        for batch in tables.chunks(DROP_BATCH) {
            sqlx::query(&format!("DROP TABLE IF EXISTS {} CASCADE", batch.join(", ")))
                .execute(pool)
                .await
                .map_err(|e| {
                    Error::failure(format!(
                        "cannot drop the application tables on the target ({e}): the target user must own them (or \
                         be a superuser)"
                    ))
                })?;
        }
    }
    let mut tx = pool.begin().await?;
    let schemas: Vec<String> = sqlx::query_scalar(
        "SELECT nspname::text FROM pg_namespace n WHERE nspname NOT IN ('pg_catalog', 'information_schema', $1) \
         AND nspname NOT LIKE 'pg\\_%' \
         AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_namespace'::regclass \
                         AND d.objid = n.oid AND d.deptype = 'e')",
    )
    .bind(journal_schema)
    .fetch_all(&mut *tx)
    .await?;
    let extensions: Vec<String> =
        sqlx::query_scalar("SELECT extname::text FROM pg_extension WHERE extname <> 'plpgsql'")
            .fetch_all(&mut *tx)
            .await?;
    let mut sql = String::new();
    for e in &extensions {
        sql.push_str(&format!("DROP EXTENSION IF EXISTS {} CASCADE;\n", quote_ident(e)));
    }
    for s in &schemas {
        sql.push_str(&format!("DROP SCHEMA IF EXISTS {} CASCADE;\n", quote_ident(s)));
    }
    sql.push_str(
        "CREATE SCHEMA IF NOT EXISTS public AUTHORIZATION pg_database_owner;\n\
         GRANT USAGE ON SCHEMA public TO PUBLIC;\n\
         COMMENT ON SCHEMA public IS 'standard public schema';\n\
         SELECT lo_unlink(oid) FROM pg_largeobject_metadata;\n",
    );
    tx.execute(sqlx::raw_sql(&sql)).await.map_err(|e| {
        Error::failure(format!(
            "cannot drop the application objects on the target ({e}): the target user must own them (or be a superuser)"
        ))
    })?;
    tx.commit().await?;
    Ok(())
}

/// Whether the target holds no application objects.
pub async fn is_empty(pool: &PgPool, journal_schema: &str) -> Result<bool> {
    let inv = Inventory::read(pool, journal_schema, false).await?;
    Ok(inv.tables.is_empty() && inv.sequences.is_empty() && inv.large_objects == 0)
}

/// Drops the post-data objects (triggers, foreign keys, primary-key, unique
/// and exclusion constraints, indexes, policies, rules) of the application
/// schemas on the target: what an interrupted parallel post-data restore may
/// have left, so that the restore can run again from the start. Tables and
/// their rows stay.
pub async fn drop_post_data(
    pool: &PgPool,
    journal_schema: &str,
    keep: &[(String, String, String)],
) -> Result<()> {
    // Indexes and constraints in `keep` (schema, table, name) stay: they were
    // built, and journaled, during the copy.
    const KEPT_CONSTRAINT: &str =
        "(n.nspname, c.relname, k.conname) IN (SELECT * FROM unnest($2::text[], $3::text[], $4::text[]))";
    const KEPT_INDEX: &str =
        "(n.nspname, c.relname, x.relname) IN (SELECT * FROM unnest($2::text[], $3::text[], $4::text[]))";
    // Not in an extension's schema, nor on an extension's own table
    // (PostGIS's spatial_ref_sys and its key come from CREATE EXTENSION and
    // stay as it makes them).
    const APP: &str = "n.nspname NOT IN ('pg_catalog', 'information_schema', $1) AND n.nspname NOT LIKE 'pg\\_%' \
        AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_namespace'::regclass \
                        AND d.objid = n.oid AND d.deptype = 'e') \
        AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass \
                        AND d.objid = c.oid AND d.deptype = 'e')";
    let statements = [
        format!(
            "SELECT format('DROP TRIGGER IF EXISTS %I ON %I.%I', t.tgname, n.nspname, c.relname) FROM pg_trigger t \
             JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE NOT t.tgisinternal AND t.tgparentid = 0 AND {APP}"
        ),
        format!(
            "SELECT format('DROP POLICY IF EXISTS %I ON %I.%I', p.polname, n.nspname, c.relname) FROM pg_policy p \
             JOIN pg_class c ON c.oid = p.polrelid JOIN pg_namespace n ON n.oid = c.relnamespace WHERE {APP}"
        ),
        format!(
            "SELECT format('DROP RULE IF EXISTS %I ON %I.%I', r.rulename, n.nspname, c.relname) FROM pg_rewrite r \
             JOIN pg_class c ON c.oid = r.ev_class JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE r.rulename <> '_RETURN' AND {APP}"
        ),
        // Foreign keys first: they depend on the keys they reference.
        format!(
            "SELECT format('ALTER TABLE %I.%I DROP CONSTRAINT IF EXISTS %I', n.nspname, c.relname, k.conname) \
             FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE k.contype = 'f' AND k.conparentid = 0 AND {APP} AND NOT {KEPT_CONSTRAINT}"
        ),
        format!(
            "SELECT format('ALTER TABLE %I.%I DROP CONSTRAINT IF EXISTS %I', n.nspname, c.relname, k.conname) \
             FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE k.contype IN ('p', 'u', 'x') AND k.conparentid = 0 AND {APP} AND NOT {KEPT_CONSTRAINT}"
        ),
        // Indexes of partitions attached to a parent's index go with it.
        format!(
            "SELECT format('DROP INDEX IF EXISTS %I.%I', n.nspname, x.relname) FROM pg_index i \
             JOIN pg_class x ON x.oid = i.indexrelid JOIN pg_namespace n ON n.oid = x.relnamespace \
             JOIN pg_class c ON c.oid = i.indrelid \
             WHERE NOT EXISTS (SELECT 1 FROM pg_inherits h WHERE h.inhrelid = i.indexrelid) \
               AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid) AND {APP} AND NOT {KEPT_INDEX}"
        ),
    ];
    // Committed in batches: thousands of drops in one transaction would need
    // more locks than a server grants by default. A re-run drops what is left.
    for list in statements {
        let mut query = sqlx::query_scalar(&list).bind(journal_schema);
        if list.contains("$2") {
            query = query
                .bind(keep.iter().map(|k| k.0.as_str()).collect::<Vec<_>>())
                .bind(keep.iter().map(|k| k.1.as_str()).collect::<Vec<_>>())
                .bind(keep.iter().map(|k| k.2.as_str()).collect::<Vec<_>>());
        }
        let drops: Vec<String> = query.fetch_all(pool).await?;
        for batch in drops.chunks(DROP_BATCH) {
            let mut tx = pool.begin().await?;
            for d in batch {
                sqlx::query(d).execute(&mut *tx).await?;
            }
            tx.commit().await?;
        }
    }
    Ok(())
}
