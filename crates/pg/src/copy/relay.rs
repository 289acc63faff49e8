//! The streaming relay: `COPY … TO STDOUT` on the source into `COPY … FROM
//! STDIN` on the target, rows gathered into 1 MiB messages, binary between
//! equal major versions (text where a column type lacks binary I/O), one
//! target transaction per table or range with its journal item.

use std::time::{Duration, Instant};

use cutover_core::Result;
use cutover_core::event::Event;
use cutover_core::journal::Item;
use futures::StreamExt;
use sqlx::pool::PoolConnection;
use sqlx::{Acquire, Postgres};

use super::tables::{Range, range_item, table_item};
use super::workers::{Worker, within};
use super::{on_source, on_target};
use crate::inventory::{TableInfo, quote_ident};

/// Bytes gathered before they are sent to the target in one message.
const COPY_BUFFER: usize = 1 << 20;

/// Tables at least this large on the source (`pg_total_relation_size`) are
/// truncated and loaded with `COPY … FREEZE`; smaller ones are emptied with
/// `DELETE` and loaded without FREEZE (see `copy_table`).
const FREEZE_MIN_BYTES: u64 = 1 << 20;

impl Worker {
    /// One table: truncate and load in one target transaction that also
    /// marks the table done in the journal. One range of a table: load its
    /// rows (the table was emptied before its first range) in one target
    /// transaction that marks the range done.
    pub(super) async fn copy_table(
        &self,
        src: &mut PoolConnection<Postgres>,
        tgt: &mut PoolConnection<Postgres>,
        table: &TableInfo,
        range: Option<Range>,
    ) -> Result<u64> {
        let columns = if table.copy_columns.is_empty() {
            String::new()
        } else {
            format!(
                " ({})",
                table
                    .copy_columns
                    .iter()
                    .map(|c| quote_ident(c))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        // Binary only where every copied column's type has binary I/O.
        let format = if self.binary && table.no_binary.is_none() {
            "binary"
        } else {
            "text"
        };
        let (name, item) = match &range {
            None => (table.display(), table_item(table)),
            Some(r) => (
                format!("{} [{}/{}]", table.display(), r.index + 1, r.count),
                range_item(table, r),
            ),
        };
        let mut tx = within!(self, "the target", tgt.begin()).map_err(on_target)?;
        let (copy_in_sql, copy_out_sql) = match &range {
            None => {
                // Whatever is in the table goes in this transaction, so the
                // copy can be run again. A large table is truncated, which
                // lets COPY freeze its rows as it writes them; a small one is
                // emptied with DELETE, because TRUNCATE gives a table new
                // files (1.7 ms each time here, against 0.2 ms for the whole
                // copy of a 10-row table) and freezing is worth little there.
                let freeze = table.bytes.max(0) as u64 >= FREEZE_MIN_BYTES;
                let empty = if freeze {
                    "TRUNCATE ONLY"
                } else {
                    "DELETE FROM ONLY"
                };
                within!(
                    self,
                    "the target",
                    sqlx::query(&format!("{empty} {}", table.qualified())).execute(&mut *tx)
                )
                .map_err(on_target)?;
                let freeze = if freeze { ", FREEZE" } else { "" };
                (
                    format!(
                        "COPY {}{columns} FROM STDIN (FORMAT {format}{freeze})",
                        table.qualified()
                    ),
                    format!("COPY {}{columns} TO STDOUT (FORMAT {format})", table.qualified()),
                )
            }
            Some(r) => {
                let select: Vec<String> = table.copy_columns.iter().map(|c| quote_ident(c)).collect();
                let mut filter = format!("ctid >= '({},0)'::tid", r.start);
                if let Some(end) = r.end {
                    filter.push_str(&format!(" AND ctid < '({end},0)'::tid"));
                }
                (
                    format!("COPY {}{columns} FROM STDIN (FORMAT {format})", table.qualified()),
                    format!(
                        "COPY (SELECT {} FROM ONLY {} WHERE {filter}) TO STDOUT (FORMAT {format})",
                        select.join(", "),
                        table.qualified()
                    ),
                )
            }
        };
        let estimated_bytes = (table.pages.max(0) as u64 * 8192) / range.map(|r| r.count as u64).unwrap_or(1);
        let mut copy_in = within!(self, "the target", tx.copy_in_raw(&copy_in_sql)).map_err(on_target)?;
        let mut stream = within!(self, "the source", src.copy_out_raw(&copy_out_sql)).map_err(on_source)?;
        let mut bytes = 0u64;
        let mut last_report = Instant::now();
        // The server sends one CopyData message per row; forwarding each as
        // its own message costs a write per row. Rows are gathered into
        // large buffers (memory stays bounded by COPY_BUFFER).
        let mut buffer: Vec<u8> = Vec::with_capacity(COPY_BUFFER);
        // One stall deadline for the stream, pushed back every few thousand
        // rows or buffer: reading the clock and arming a timer for every row
        // cost a seventh of this process's time.
        let stall = tokio::time::sleep(self.stall);
        tokio::pin!(stall);
        let mut rows_since_check = 0u32;
        loop {
            let next = tokio::select! {
                biased;
                next = stream.next() => next,
                _ = &mut stall => return Err(self.stalled("the source")),
            };
            let Some(chunk) = next else { break };
            let chunk = chunk.map_err(on_source)?;
            bytes += chunk.len() as u64;
            buffer.extend_from_slice(&chunk);
            rows_since_check += 1;
            let full = buffer.len() >= COPY_BUFFER;
            if full {
                // The same buffer again: a fresh megabyte each time cost page
                // faults and zeroing (2 % of the machine's time in a profile).
                within!(self, "the target", copy_in.send(&buffer[..])).map_err(on_target)?;
                buffer.clear();
            }
            if full || rows_since_check >= 4096 {
                rows_since_check = 0;
                let now = Instant::now();
                stall.as_mut().reset(tokio::time::Instant::from(now) + self.stall);
                if now.duration_since(last_report) > Duration::from_millis(500) {
                    last_report = now;
                    self.events.emit(Event::TableProgress {
                        table: name.clone(),
                        rows: 0,
                        bytes,
                        estimated_bytes,
                        done: false,
                    });
                }
            }
        }
        drop(stream);
        if !buffer.is_empty() {
            within!(self, "the target", copy_in.send(&buffer[..])).map_err(on_target)?;
        }
        let rows = within!(self, "the target", copy_in.finish()).map_err(on_target)?;
        let done = Item {
            rows: Some(rows as i64),
            bytes: Some(bytes as i64),
            ..Item::new(super::STAGE, &item)
        };
        within!(
            self,
            "the target",
            self.journal.item_done_in(&mut tx, self.run_id, &done)
        )
        .map_err(|e| e.context("writing to the target"))?;
        within!(self, "the target", tx.commit()).map_err(on_target)?;
        self.events.emit(Event::TableProgress {
            table: name,
            rows,
            bytes,
            estimated_bytes,
            done: true,
        });
        Ok(rows)
    }
}
