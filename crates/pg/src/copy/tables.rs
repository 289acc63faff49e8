//! The copy's units of work: a whole table, or a block range of a large one,
//! and what a resumed copy still has to do for each table.

use std::collections::BTreeSet;

use cutover_core::Result;
use cutover_core::journal::ItemKey;

use super::{Pass, STAGE};
use crate::inventory::{Inventory, TableInfo};

/// The journal item of a whole table.
pub(super) fn table_item(t: &TableInfo) -> ItemKey {
    ItemKey::table(&t.schema, &t.name)
}

/// A block range of a large table, copied on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Range {
    pub index: i64,
    pub count: i64,
    pub start: i64,
    /// None: to the end of the table.
    pub end: Option<i64>,
}

/// When a table is split: `split_bytes` (0 = never) and each worker's share
/// of the data (all tables' bytes / jobs).
#[derive(Debug, Clone, Copy)]
pub(super) struct Split {
    bytes: u64,
    share: u64,
}

impl Split {
    pub fn new(source: &Inventory, split_bytes: u64, jobs: usize) -> Split {
        let total: u64 = source.storage_tables().map(|t| t.bytes.max(0) as u64).sum();
        Split {
            bytes: split_bytes,
            share: total / jobs.max(1) as u64,
        }
    }
}

/// The block ranges of a table larger than `split_bytes` and than a
/// worker's share of the data (none: copy it whole). A smaller table does
/// not hold up the end of the copy, and only a table copied whole gets
/// `COPY … FREEZE` (ranges go into a table emptied in another
/// transaction): its pages are written once, where an unfrozen table's are
/// written again when the index builds set their hint bits (a 4.3 GB copy
/// took 28 s whole and 31–36 s with its largest table in two ranges).
pub(super) fn ranges(t: &TableInfo, split: Split) -> Vec<Range> {
    let split_bytes = split.bytes;
    if split_bytes == 0 || t.bytes as u64 <= split_bytes || (t.bytes as u64) <= split.share || t.pages < 2 {
        return vec![];
    }
    let count = (t.bytes as u64)
        .div_ceil(split_bytes)
        .min(t.pages as u64)
        .min(256) as i64;
    if count < 2 {
        return vec![];
    }
    let step = (t.pages + count - 1) / count;
    (0..count)
        .map(|i| Range {
            index: i,
            count,
            start: i * step,
            end: (i + 1 < count).then_some((i + 1) * step),
        })
        .collect()
}

pub(super) fn range_item(t: &TableInfo, r: &Range) -> ItemKey {
    ItemKey::Range {
        table: format!("{}.{}", t.schema, t.name),
        index: (r.index + 1) as u32,
        count: r.count as u32,
    }
}

/// One unit of copy work: a whole table, or one block range of it.
#[derive(Clone)]
pub(super) struct Work {
    pub table: TableInfo,
    pub range: Option<Range>,
}

impl Work {
    pub fn bytes(&self) -> i64 {
        self.range
            .map(|r| self.table.bytes / r.count)
            .unwrap_or(self.table.bytes)
    }
}

/// The copies a table still needs: the whole table, or the block ranges of a
/// large one not yet committed (none done: the table is emptied and its
/// range items cleared, as no row is kept).
pub(super) async fn table_work(
    pass: &Pass<'_>,
    t: &TableInfo,
    done: &BTreeSet<ItemKey>,
    split: Split,
) -> Result<Vec<Work>> {
    if done.contains(&table_item(t)) {
        return Ok(vec![]);
    }
    let rs = ranges(t, split);
    if rs.is_empty() {
        return Ok(vec![Work {
            table: t.clone(),
            range: None,
        }]);
    }
    let count = rs.len() as u32;
    let name = format!("{}.{}", t.schema, t.name);
    let done_ranges: Vec<u32> = done
        .iter()
        .filter_map(|i| match i {
            ItemKey::Range { table, count, .. } if *table == name => Some(*count),
            _ => None,
        })
        .collect();
    let range_work = |r: Range| Work {
        table: t.clone(),
        range: Some(r),
    };
    if done_ranges.is_empty() || done_ranges.iter().any(|n| *n != count) {
        // Start the table over: every committed range is journaled with its
        // rows, so none done means no row to keep.
        let ctx = pass.ctx;
        ctx.journal.remove_ranges(ctx.run_id, STAGE, &name).await?;
        sqlx::query(&format!("TRUNCATE ONLY {}", t.qualified()))
            .execute(&ctx.target)
            .await?;
        return Ok(rs.into_iter().map(range_work).collect());
    }
    Ok(rs
        .into_iter()
        .filter(|r| !done.contains(&range_item(t, r)))
        .map(range_work)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(bytes: i64) -> TableInfo {
        TableInfo {
            schema: "public".into(),
            name: "t".into(),
            kind: "r".into(),
            is_partition: false,
            rows: 0,
            bytes,
            columns: vec![],
            copy_columns: vec![],
            primary_key: vec![],
            pages: bytes / 8192,
            changes: 0,
            rows_estimated: false,
            no_binary: None,
        }
    }

    #[test]
    fn only_a_table_beyond_its_share_and_split_bytes_is_split() {
        const GB: i64 = 1 << 30;
        // 1.6 GB of 4.3 GB with two workers: the others keep the second busy.
        let split = Split {
            bytes: GB as u64,
            share: (43 * GB / 20) as u64,
        };
        assert!(ranges(&table(16 * GB / 10), split).is_empty());
        // 3.5 GB of 4.3 GB: it alone would outlast the rest, so in 4 ranges.
        let rs = ranges(&table(35 * GB / 10), split);
        assert_eq!(rs.len(), 4);
        assert_eq!((rs[0].start, rs[3].end), (0, None));
        assert!(ranges(&table(35 * GB / 10), Split { bytes: 0, share: 0 }).is_empty());
        // Journal items as the journal writes them.
        assert_eq!(range_item(&table(0), &rs[1]).to_string(), "table:public.t#2/4");
        assert_eq!(table_item(&table(0)).to_string(), "table:public.t");
    }
}
