//! What of cutover's replication exists on either server: for status, for
//! the checks, and for the promise that nothing is left behind.

use cutover_core::Result;
use sqlx::PgPool;

use super::publication::unpublish;
use super::slot::drop_slot;
use super::subscription::{subscription, unsubscribe};
use super::{FORWARD, REVERSE};

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
