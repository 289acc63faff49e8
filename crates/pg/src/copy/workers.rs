//! The copy's workers: each takes the next unit from the scheduler (a
//! table or a block range to stream, an early index or key build, an
//! `ANALYZE`) until none is left, all under the copy's exported snapshot.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cutover_core::journal::Item;
use cutover_core::{Error, Result};
use sqlx::pool::PoolConnection;
use sqlx::{Executor, Postgres};

use super::analyze::analyze_one;
use super::early::{self, EarlyEntry};
use super::schedule::{Analysis, Next, Schedule};
use super::tables::{Work, table_item};
use super::{STAGE, on_source, on_target};
use crate::inventory::quote_literal;
use crate::tools;

/// Awaits a step of a copy worker, failing when it takes longer than the
/// worker's `stall` (a server that stopped answering without closing the
/// connection would otherwise be waited for for ever).
macro_rules! within {
    ($worker:expr, $side:expr, $fut:expr) => {
        tokio::time::timeout($worker.stall, $fut)
            .await
            .map_err(|_| $worker.stalled($side))?
    };
}
pub(super) use within;

/// Memory for one index build or foreign-key check: about 100 bytes a row
/// (a sort entry and its tuple) plus 64 MB, at most `cap_mb` (and at least 64 MB).
fn build_memory_mb(rows: i64, cap_mb: u64) -> u64 {
    let need = rows.max(0) as u64 * 100 / (1 << 20) + 64;
    need.min(cap_mb).max(64.min(cap_mb)).max(1)
}

/// What a copy worker owns: it runs as its own task.
#[derive(Clone)]
pub(super) struct Worker {
    pub source: sqlx::PgPool,
    pub target: sqlx::PgPool,
    pub journal: cutover_core::journal::Journal,
    pub run_id: uuid::Uuid,
    pub events: Arc<dyn cutover_core::event::EventSink>,
    pub cancel: cutover_core::stage::CancelFlag,
    pub schedule: Arc<Mutex<Schedule<Work>>>,
    pub snapshot: String,
    pub binary: bool,
    /// How long a stream may move no data before the table fails.
    pub stall: Duration,
    /// Upper bound of the memory of one early build (options.build_memory_mb).
    pub build_memory_mb: u64,
    /// Where early entries' statements come from: the schema archive.
    pub pg_restore: tools::Tool,
    pub target_major: u32,
    pub archive: std::path::PathBuf,
    pub dir: std::path::PathBuf,
    /// Time spent in early index builds, all workers together.
    pub index_seconds: Arc<Mutex<f64>>,
    /// Tables analyzed during the copy and the time it took, all workers together.
    pub analyzed: Arc<Mutex<(usize, f64)>>,
}

impl Worker {
    pub fn stalled(&self, side: &str) -> Error {
        Error::failure(format!(
            "{side} sent or took no data for {} s (options.stall_timeout): is it paused, overloaded, or the \
             network cut? Check it, then run again to resume",
            self.stall.as_secs()
        ))
    }

    /// Copies tables from the shared queue until it is empty; returns rows copied.
    pub async fn run(self) -> Result<u64> {
        let mut src = within!(self, "the source", self.source.acquire()).map_err(on_source)?;
        let mut tgt = within!(self, "the target", self.target.acquire()).map_err(on_target)?;
        within!(
            self,
            "the source",
            sqlx::query("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY").execute(&mut *src)
        )
        .map_err(on_source)?;
        within!(
            self,
            "the source",
            sqlx::query(&format!(
                "SET TRANSACTION SNAPSHOT {}",
                quote_literal(&self.snapshot)
            ))
            .execute(&mut *src)
        )
        .map_err(on_source)?;
        within!(
            self,
            "the target",
            sqlx::query("SET synchronous_commit = off").execute(&mut *tgt)
        )
        .map_err(on_target)?;
        // Triggers are created after the data (post-data), so none fires during
        // the load anyway; replica mode also keeps rules and replication
        // triggers quiet where the target user may set it.
        let replica = within!(
            self,
            "the target",
            sqlx::query("SET session_replication_role = replica").execute(&mut *tgt)
        );
        if replica.is_err() {
            tracing::debug!(
                "session_replication_role not permitted on the target; triggers come after the data"
            );
        }
        let mut rows = 0u64;
        loop {
            if self.cancel.is_cancelled() {
                break;
            }
            let next = self.schedule.lock().unwrap().take();
            match next {
                Next::Finished => break,
                // Entries wait for copies or keys another worker is on.
                Next::Wait => tokio::time::sleep(Duration::from_millis(20)).await,
                Next::Copy(work) => {
                    let table = &work.table;
                    let t0 = Instant::now();
                    match self.copy_table(&mut src, &mut tgt, table, work.range).await {
                        Ok(n) => {
                            rows += n;
                            tracing::debug!(
                                "{} copied in {:.1} s",
                                table.display(),
                                t0.elapsed().as_secs_f64()
                            );
                        }
                        Err(e) => {
                            self.schedule.lock().unwrap().abort();
                            src.close_on_drop();
                            tgt.close_on_drop();
                            return Err(e.context(format!("copying table {}", table.display())));
                        }
                    }
                    self.schedule.lock().unwrap().copied(&table_item(table));
                }
                Next::Build(entry) => {
                    if let Err(e) = self.build(&entry).await {
                        self.schedule.lock().unwrap().abort();
                        return Err(e.context(format!(
                            "building {} of {}.{} during the copy",
                            entry.name, entry.schema, entry.table
                        )));
                    }
                    self.schedule.lock().unwrap().built(&entry);
                }
                Next::Analyze(a) => {
                    if let Err(e) = self.analyze(&mut tgt, &a).await {
                        self.schedule.lock().unwrap().abort();
                        return Err(e.context(format!("analyzing {} during the copy", a.qualified)));
                    }
                    self.schedule.lock().unwrap().analyzed(&a);
                }
            }
        }
        within!(self, "the source", sqlx::query("COMMIT").execute(&mut *src)).map_err(on_source)?;
        // Only where it was set: a non-superuser may not even RESET it.
        if replica.is_ok() {
            within!(
                self,
                "the target",
                sqlx::query("RESET session_replication_role").execute(&mut *tgt)
            )
            .map_err(on_target)?;
        }
        Ok(rows)
    }

    /// `ANALYZE` of one table in one transaction with its journal item.
    async fn analyze(&self, tgt: &mut PoolConnection<Postgres>, a: &Analysis) -> Result<()> {
        let t0 = Instant::now();
        analyze_one(tgt, &self.journal, self.run_id, &a.qualified, &a.item).await?;
        {
            let mut analyzed = self.analyzed.lock().unwrap();
            analyzed.0 += 1;
            analyzed.1 += t0.elapsed().as_secs_f64();
        }
        tracing::debug!(
            "{} analyzed during the copy in {:.1} s",
            a.qualified,
            t0.elapsed().as_secs_f64()
        );
        Ok(())
    }

    /// Builds one early entry (its statement from the schema archive) and
    /// journals it in one transaction, on a connection of its own (the
    /// archive's script changes session settings such as search_path): after
    /// a crash the entry exists on the target if and only if it is journaled.
    async fn build(&self, entry: &EarlyEntry) -> Result<()> {
        use sqlx::{ConnectOptions, Connection};
        let t0 = Instant::now();
        tracing::debug!("building {} of {}.{}", entry.name, entry.schema, entry.table);
        let list_file = self
            .dir
            .join(format!("early-{}-{}.list", entry.toc.catalog, entry.toc.oid));
        let sql = early::script(
            &self.pg_restore,
            self.target_major,
            &self.archive,
            &list_file,
            entry,
        )
        .await?;
        let mut conn =
            within!(self, "the target", self.target.connect_options().connect()).map_err(on_target)?;
        let result = async {
            let mut tx = Connection::begin(&mut conn).await.map_err(on_target)?;
            // For this transaction only: sorts (and a foreign key's check)
            // in memory sized to the table rather than in temporary files;
            // no parallel workers, as the copy's own workers already use the
            // machine (parallel builds made the copy 8 % slower at 1 GB on 2
            // cores); no wait for the WAL flush at commit.
            let memory_mb = build_memory_mb(entry.rows, self.build_memory_mb);
            let settings = format!(
                "SET LOCAL maintenance_work_mem = '{memory_mb}MB'; SET LOCAL work_mem = '{memory_mb}MB'; \
                 SET LOCAL max_parallel_maintenance_workers = 0; SET LOCAL max_parallel_workers_per_gather = 0"
            );
            (&mut *tx).execute(sqlx::raw_sql(&settings)).await.map_err(on_target)?;
            sqlx::query("SET LOCAL synchronous_commit = off")
                .execute(&mut *tx)
                .await
                .map_err(on_target)?;
            (&mut *tx).execute(sqlx::raw_sql(&sql)).await.map_err(on_target)?;
            self.journal
                .item_done_in(&mut tx, self.run_id, &Item::new(STAGE, &entry.item))
                .await?;
            tx.commit().await.map_err(on_target)
        }
        .await;
        let _ = conn.close().await;
        result?;
        let seconds = t0.elapsed().as_secs_f64();
        *self.index_seconds.lock().unwrap() += seconds;
        tracing::debug!(
            "{} of {}.{} built during the copy in {seconds:.1} s",
            entry.name,
            entry.schema,
            entry.table
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_memory_follows_the_table_within_its_bounds() {
        assert_eq!(build_memory_mb(0, 1024), 64);
        assert_eq!(build_memory_mb(3_200_000, 1024), 369);
        assert_eq!(build_memory_mb(100_000_000, 1024), 1024);
        assert_eq!(build_memory_mb(100_000_000, 16), 16);
    }
}
