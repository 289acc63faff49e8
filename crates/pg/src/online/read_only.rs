//! The read-only default for the roles the CONNECT fence ([`crate::fence`])
//! cannot keep off the source after an online switch: a database-level
//! `default_transaction_read_only = on`, marked `cutover.fenced` so that
//! only what cutover set is lifted.

use cutover_core::Result;
use sqlx::PgPool;

use crate::connect::current_database;
use crate::inventory::quote_ident;

/// The read-only default for `roles` in `pool`'s database (marked by
/// `cutover.fenced`, so that [`lift`] lifts only what this set): for
/// the roles [`crate::fence`] cannot keep off, the only line left. Best
/// effort: a role cutover's user may not alter (a superuser's, where it is
/// none; any without CREATEROLE) is left as it is, and returned. Never
/// cutover's own.
pub async fn impose(pool: &PgPool, roles: &[String]) -> Result<Vec<String>> {
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

/// Lifts [`impose`] for every role it made read-only in this database (the
/// CONNECT fence is [`crate::fence::lift`]'s, lifted first by the caller).
pub async fn lift(pool: &PgPool) -> Result<Vec<String>> {
    let roles = roles(pool).await?;
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

/// The roles [`impose`] made read-only in this database.
pub async fn roles(pool: &PgPool) -> Result<Vec<String>> {
    Ok(sqlx::query_scalar(
        "SELECT r.rolname::text FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase \
         JOIN pg_roles r ON r.oid = s.setrole \
         WHERE d.datname = current_database() AND 'cutover.fenced=on' = ANY (s.setconfig) \
         ORDER BY 1",
    )
    .fetch_all(pool)
    .await?)
}
