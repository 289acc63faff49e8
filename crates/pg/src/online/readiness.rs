//! Online readiness: what PostgreSQL's logical replication needs from both
//! servers before an online cutover can start (`mode = "online"`), read
//! without changing anything. Each problem is named with its fix.
//!
//! The planner refuses the online mode while any problem remains, listing
//! them all, so that an operator learns at once what to change first.

use cutover_core::Result;
use sqlx::PgPool;

/// One thing that stops an online cutover, and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub what: String,
    pub fix: String,
}

/// What replication would need and what it would not carry.
#[derive(Debug, Clone, Default)]
pub struct Readiness {
    pub problems: Vec<Problem>,
    /// What replication does not carry, which the switch would copy itself.
    pub notes: Vec<String>,
}

/// Transactions holding an xid longer than this delay creating a slot.
const OLD_TRANSACTION_SECS: i64 = 60;

/// Reads both servers' settings, roles and tables.
/// `identity_full`: keyless tables the plan publishes with `REPLICA
/// IDENTITY FULL` (`schema.table`); they are not a problem.
pub async fn check(
    source: &PgPool,
    target: &PgPool,
    journal_schema: &str,
    identity_full: &[String],
) -> Result<Readiness> {
    let mut r = Readiness::default();
    for (side, pool) in [("source", source), ("target", target)] {
        let wal_level: String = sqlx::query_scalar("SELECT current_setting('wal_level')")
            .fetch_one(pool)
            .await?;
        if wal_level != "logical" {
            r.problems.push(Problem {
                what: format!(
                    "the {side} has wal_level = {wal_level}{}",
                    if side == "target" {
                        " (the reverse stream, which keeps the source current for a rollback, starts there)"
                    } else {
                        ""
                    }
                ),
                fix: format!("ALTER SYSTEM SET wal_level = logical on the {side}, then restart it"),
            });
        }
        let (slots, used_slots, senders, used_senders): (i32, i64, i32, i64) = sqlx::query_as(
            "SELECT current_setting('max_replication_slots')::int, (SELECT count(*) FROM pg_replication_slots), \
                    current_setting('max_wal_senders')::int, (SELECT count(*) FROM pg_stat_replication)",
        )
        .fetch_one(pool)
        .await?;
        if i64::from(slots) <= used_slots {
            r.problems.push(Problem {
                what: format!("the {side} has no free replication slot ({used_slots} of {slots} in use)"),
                fix: format!("raise max_replication_slots on the {side} (restart), or drop an unused slot"),
            });
        }
        if i64::from(senders) <= used_senders {
            r.problems.push(Problem {
                what: format!("the {side} has no free WAL sender ({used_senders} of {senders} in use)"),
                fix: format!("raise max_wal_senders on the {side} (restart)"),
            });
        }
    }
    // The slot is created over a replication connection by the source's
    // user; on PostgreSQL 15 only a superuser may CREATE SUBSCRIPTION.
    let (s_super, s_repl): (bool, bool) =
        sqlx::query_as("SELECT rolsuper, rolreplication FROM pg_roles WHERE rolname = current_user")
            .fetch_one(source)
            .await?;
    if !s_super && !s_repl {
        r.problems.push(Problem {
            what: "the source user may not open a replication connection (neither REPLICATION nor superuser)"
                .into(),
            fix:
                "ALTER ROLE <source user> REPLICATION on the source (and a pg_hba.conf line for replication)"
                    .into(),
        });
    }
    // On PostgreSQL 15 only a superuser may CREATE SUBSCRIPTION: the
    // forward one is created on the target, the reverse one on the source.
    for (side, pool) in [("target", target), ("source", source)] {
        let (is_super, version): (bool, i32) = sqlx::query_as(
            "SELECT rolsuper, current_setting('server_version_num')::int FROM pg_roles WHERE rolname = current_user",
        )
        .fetch_one(pool)
        .await?;
        if !is_super && version < 160000 {
            r.problems.push(Problem {
                what: format!(
                    "the {side} user is not a superuser, and before PostgreSQL 16 only a superuser may CREATE \
                     SUBSCRIPTION (the {} stream's subscription is created on the {side})",
                    if side == "target" { "forward" } else { "reverse" }
                ),
                fix: format!(
                    "run the online cutover as a superuser of the {side} (16 and later: a member of \
                     pg_create_subscription)"
                ),
            });
        }
    }
    // A published table without a key makes the source refuse the
    // applications' UPDATE and DELETE on it.
    let keyless: Vec<String> = sqlx::query_scalar(
        "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE c.relkind IN ('r', 'p') AND c.relpersistence = 'p' AND NOT c.relispartition \
           AND n.nspname NOT IN ('pg_catalog', 'information_schema', $1) AND n.nspname NOT LIKE 'pg\\_%' \
           AND (c.relreplident = 'n' OR (c.relreplident = 'd' AND NOT EXISTS \
                (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary))) \
         ORDER BY 1",
    )
    .bind(journal_schema)
    .fetch_all(source)
    .await?;
    let (chosen, keyless): (Vec<String>, Vec<String>) = keyless
        .into_iter()
        .partition(|t| identity_full.iter().any(|c| same_table(c, t)));
    if !chosen.is_empty() {
        r.notes.push(format!(
            "published with REPLICA IDENTITY FULL (options.online.replica_identity_full; every UPDATE and DELETE \
             logs the whole row until the cutover ends): {}",
            chosen.join(", ")
        ));
    }
    if !keyless.is_empty() {
        r.problems.push(Problem {
            what: format!(
                "{} table(s) have neither a primary key nor a replica identity: once published, the source \
                 refuses UPDATE and DELETE on them: {}",
                keyless.len(),
                keyless.join(", ")
            ),
            fix: format!(
                "add a primary key, or ALTER TABLE … REPLICA IDENTITY USING INDEX <unique index>; or choose \
                 REPLICA IDENTITY FULL for them (every UPDATE and DELETE then logs the whole row): \
                 [options.online] replica_identity_full = [{}]",
                keyless
                    .iter()
                    .map(|t| format!("\"{}\"", t.replace('"', "")))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        });
    }
    let old: Vec<(i32, String, i64)> = sqlx::query_as(
        "SELECT pid, coalesce(nullif(application_name, ''), usename::text, 'a session'), \
                extract(epoch FROM clock_timestamp() - xact_start)::bigint \
         FROM pg_stat_activity WHERE backend_xid IS NOT NULL AND pid <> pg_backend_pid() \
           AND xact_start < clock_timestamp() - make_interval(secs => $1) ORDER BY xact_start",
    )
    .bind(OLD_TRANSACTION_SECS as f64)
    .fetch_all(source)
    .await?;
    if !old.is_empty() {
        r.problems.push(Problem {
            what: format!(
                "{} transaction(s) on the source have been open for over {OLD_TRANSACTION_SECS} s; creating the \
                 replication slot waits for them: {}",
                old.len(),
                old.iter()
                    .map(|(pid, who, secs)| format!("pid {pid} ({who}, {secs} s)"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            fix: "let them finish, or end them (pg_terminate_backend)".into(),
        });
    }
    // What the stream does not carry: copied at the switch instead.
    let (los, unlogged, matviews, sequences): (i64, Vec<String>, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM pg_largeobject_metadata), \
                coalesce((SELECT array_agg(format('%I.%I', n.nspname, c.relname) ORDER BY n.nspname, c.relname) FROM pg_class c \
                  JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind IN ('r', 'p') \
                  AND c.relpersistence = 'u' AND n.nspname <> $1), '{}'), \
                (SELECT count(*) FROM pg_matviews), \
                (SELECT count(*) FROM pg_sequences WHERE schemaname <> $1)",
    )
    .bind(journal_schema)
    .fetch_one(source)
    .await?;
    if los > 0 {
        r.problems.push(Problem {
            what: format!(
                "{los} large object(s): logical replication does not carry them, and this version's online mode \
                 does not copy them at the switch"
            ),
            fix: "use the offline mode (options.mode = \"offline\"), or move the large objects into bytea columns"
                .into(),
        });
    }
    if !unlogged.is_empty() {
        r.problems.push(Problem {
            what: format!(
                "unlogged table(s) {}: logical replication does not carry them, so their rows written after the \
                 copy would not reach the target",
                unlogged.join(", ")
            ),
            fix: "ALTER TABLE … SET LOGGED on the source, or use the offline mode".into(),
        });
    }
    if matviews > 0 {
        r.notes.push(format!(
            "{matviews} materialized view(s): their data is not replicated; refresh them on the target after the switch"
        ));
    }
    if sequences > 0 {
        r.notes.push(format!(
            "{sequences} sequence(s): not replicated; set from the source at the switch"
        ));
    }
    r.notes
        .push("DDL is not replicated: no schema change on the source between the copy and the switch".into());
    Ok(r)
}

impl Readiness {
    /// The findings as lines: each problem with its fix, then the notes.
    pub fn lines(&self) -> Vec<String> {
        self.problems
            .iter()
            .map(|p| format!("{}; fix: {}", p.what, p.fix))
            .chain(self.notes.iter().map(|n| format!("note: {n}")))
            .collect()
    }
}

/// `public.t` as the plan names it and `public.t` as format('%I.%I') gives it.
pub fn same_table(chosen: &str, qualified: &str) -> bool {
    let plain = |s: &str| s.replace('"', "");
    let c = plain(chosen);
    let q = plain(qualified);
    c == q || (!c.contains('.') && format!("public.{c}") == q)
}

#[cfg(test)]
mod tests {
    use super::same_table;

    #[test]
    fn a_chosen_table_matches_with_or_without_its_schema_and_quotes() {
        assert!(same_table("public.pgbench_history", "public.pgbench_history"));
        assert!(same_table("pgbench_history", "public.pgbench_history"));
        assert!(same_table("\"Audit\".\"Log\"", "\"Audit\".\"Log\""));
        assert!(!same_table("audit.log", "public.log"));
        assert!(!same_table("log", "audit.log"));
    }
}
