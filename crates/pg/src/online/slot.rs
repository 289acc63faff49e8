//! The logical replication slot on the publishing side: created with the
//! snapshot the copy reads ([`ExportedSlot`]) or without one (the reverse
//! stream, which starts from data both sides hold), watched for lag, and
//! dropped with the session that streams from it.

use std::process::Stdio;
use std::time::{Duration, Instant};

use cutover_core::endpoint::Endpoint;
use cutover_core::redact::redact_text;
use cutover_core::{Error, Result};
use sqlx::PgPool;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin};

use crate::inventory::quote_ident;

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
