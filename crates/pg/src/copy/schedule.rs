//! The copy's work queue: which table copy, early build ([`super::early`])
//! or `ANALYZE` a free worker takes next. A pure state machine: the workers
//! tell it what finished, it answers what may start.

use std::collections::{HashMap, HashSet, VecDeque};

use cutover_core::journal::ItemKey;

use super::early::EarlyEntry;

/// What a copy worker does next.
#[derive(Debug)]
pub enum Next<W> {
    Copy(W),
    Build(Box<EarlyEntry>),
    /// `ANALYZE` of a table whose data, indexes, keys and foreign keys are in.
    Analyze(Analysis),
    /// Nothing to start now; entries wait for work in flight.
    Wait,
    Finished,
}

/// An `ANALYZE` of one table during the copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Analysis {
    /// Its `table:` item.
    pub table: ItemKey,
    /// The table's qualified name.
    pub qualified: String,
    /// Its journal item: `analyze:<schema>.<table>`.
    pub item: ItemKey,
}

/// The copy's work queue: copies first (as given: largest first), then the
/// early entries whose tables are in, larger tables first, indexes and keys
/// before foreign keys. A foreign key waits for both tables and all their
/// indexes and keys, and never runs beside another foreign key on one of its
/// tables (two of them would lock the same tables in opposite orders).
/// An `ANALYZE` comes last for its table: after its copies, indexes, keys
/// and every foreign key on it (their locks conflict), filling the gaps at
/// the end of the copy; no foreign key starts on a table being analyzed.
#[derive(Debug)]
pub struct Schedule<W> {
    copies: VecDeque<(ItemKey, W)>,
    /// `table:` item → copies of it not finished.
    copies_left: HashMap<ItemKey, usize>,
    /// `table:` item → its index and key entries not built.
    keys_left: HashMap<ItemKey, usize>,
    waiting: Vec<EarlyEntry>,
    /// Tables of foreign keys being built.
    fk_busy: HashSet<ItemKey>,
    analyses: Vec<Analysis>,
    /// Tables being analyzed.
    analyzing: HashSet<ItemKey>,
    running: usize,
    aborted: bool,
}

impl<W> Schedule<W> {
    /// `copies`: (table item, work) in the order to run them; `entries`: the
    /// early entries not yet done (done ones are left out by the caller).
    pub fn new(copies: Vec<(ItemKey, W)>, entries: Vec<EarlyEntry>) -> Schedule<W> {
        Schedule::with_analyses(copies, entries, vec![])
    }

    /// As `new`, with `ANALYZE`s (in the order given: larger tables first).
    pub fn with_analyses(
        copies: Vec<(ItemKey, W)>,
        entries: Vec<EarlyEntry>,
        analyses: Vec<Analysis>,
    ) -> Schedule<W> {
        let mut copies_left: HashMap<ItemKey, usize> = HashMap::new();
        for (t, _) in &copies {
            *copies_left.entry(t.clone()).or_default() += 1;
        }
        let mut keys_left: HashMap<ItemKey, usize> = HashMap::new();
        for e in entries.iter().filter(|e| !e.foreign_key) {
            *keys_left.entry(e.tables[0].clone()).or_default() += 1;
        }
        let mut waiting = entries;
        waiting.sort_by_key(|e| (e.foreign_key, std::cmp::Reverse(e.weight)));
        Schedule {
            copies: copies.into(),
            copies_left,
            keys_left,
            waiting,
            fk_busy: HashSet::new(),
            analyses,
            analyzing: HashSet::new(),
            running: 0,
            aborted: false,
        }
    }

    fn ready(&self, e: &EarlyEntry) -> bool {
        let copied = |t: &ItemKey| self.copies_left.get(t).is_none_or(|n| *n == 0);
        let keyed = |t: &ItemKey| self.keys_left.get(t).is_none_or(|n| *n == 0);
        if !e.foreign_key {
            return copied(&e.tables[0]);
        }
        e.tables
            .iter()
            .all(|t| copied(t) && keyed(t) && !self.fk_busy.contains(t) && !self.analyzing.contains(t))
    }

    fn analysis_ready(&self, a: &Analysis) -> bool {
        let t = &a.table;
        self.copies_left.get(t).is_none_or(|n| *n == 0)
            && self.keys_left.get(t).is_none_or(|n| *n == 0)
            && !self.fk_busy.contains(t)
            && !self.waiting.iter().any(|e| e.tables.contains(t))
    }

    pub fn take(&mut self) -> Next<W> {
        if self.aborted {
            return Next::Finished;
        }
        if let Some((_, w)) = self.copies.pop_front() {
            self.running += 1;
            return Next::Copy(w);
        }
        if let Some(i) = self.waiting.iter().position(|e| self.ready(e)) {
            let e = self.waiting.remove(i);
            if e.foreign_key {
                self.fk_busy.extend(e.tables.iter().cloned());
            }
            self.running += 1;
            return Next::Build(Box::new(e));
        }
        if let Some(i) = self.analyses.iter().position(|a| self.analysis_ready(a)) {
            let a = self.analyses.remove(i);
            self.analyzing.insert(a.table.clone());
            self.running += 1;
            return Next::Analyze(a);
        }
        if self.running > 0 {
            Next::Wait
        } else {
            Next::Finished
        }
    }

    pub fn copied(&mut self, table_item: &ItemKey) {
        if let Some(n) = self.copies_left.get_mut(table_item) {
            *n = n.saturating_sub(1);
        }
        self.running = self.running.saturating_sub(1);
    }

    pub fn built(&mut self, e: &EarlyEntry) {
        if e.foreign_key {
            for t in &e.tables {
                self.fk_busy.remove(t);
            }
        } else if let Some(n) = self.keys_left.get_mut(&e.tables[0]) {
            *n = n.saturating_sub(1);
        }
        self.running = self.running.saturating_sub(1);
    }

    pub fn analyzed(&mut self, a: &Analysis) {
        self.analyzing.remove(&a.table);
        self.running = self.running.saturating_sub(1);
    }

    /// A worker failed: nothing more starts, and no worker waits for work
    /// in flight any more.
    pub fn abort(&mut self) {
        self.aborted = true;
        self.copies.clear();
        self.waiting.clear();
        self.analyses.clear();
    }

    /// Entries that never became ready (left to the final restore).
    pub fn left_over(&self) -> usize {
        self.waiting.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::copy::early::TocEntry;

    fn entry(name: &str, tables: &[&str], foreign_key: bool, weight: i64) -> EarlyEntry {
        EarlyEntry {
            toc: TocEntry {
                line: name.into(),
                catalog: 0,
                oid: 0,
                kind: if foreign_key { "FK CONSTRAINT" } else { "INDEX" }.into(),
            },
            item: ItemKey::Early(name.to_string()),
            schema: "public".into(),
            table: tables[0].into(),
            name: name.into(),
            tables: tables.iter().map(|t| ItemKey::table("public", t)).collect(),
            foreign_key,
            weight,
            rows: 0,
            dependents: vec![],
        }
    }

    fn name<W>(n: &Next<W>) -> String {
        match n {
            Next::Build(e) => e.name.clone(),
            Next::Analyze(a) => format!("analyze {}", a.table),
            Next::Copy(_) => "copy".into(),
            Next::Wait => "wait".into(),
            Next::Finished => "finished".into(),
        }
    }

    #[test]
    fn entries_wait_for_their_tables_and_foreign_keys_for_both_keys() {
        let t = |n: &str| ItemKey::table("public", n);
        // big is copied as two ranges; small once.
        let copies = vec![(t("big"), 1), (t("big"), 2), (t("small"), 3)];
        let entries = vec![
            entry("small_fk_big", &["small", "big"], true, 10),
            entry("big_pkey", &["big"], false, 100),
            entry("small_pkey", &["small"], false, 10),
        ];
        let mut s = Schedule::new(copies, entries);
        assert!(matches!(s.take(), Next::Copy(1)));
        assert!(matches!(s.take(), Next::Copy(2)));
        assert!(matches!(s.take(), Next::Copy(3)));
        // Nothing copied yet: everything waits.
        assert_eq!(name(&s.take()), "wait");
        s.copied(&t("small"));
        assert_eq!(name(&s.take()), "small_pkey");
        s.copied(&t("big")); // one range of two
        assert_eq!(name(&s.take()), "wait");
        s.copied(&t("big"));
        let big = s.take();
        assert_eq!(name(&big), "big_pkey");
        // The foreign key waits for both tables' keys.
        assert_eq!(name(&s.take()), "wait");
        let Next::Build(b) = big else { unreachable!() };
        s.built(&b);
        assert_eq!(name(&s.take()), "wait", "small_pkey still running");
        s.built(&entry("small_pkey", &["small"], false, 10));
        let fk = s.take();
        assert_eq!(name(&fk), "small_fk_big");
        assert_eq!(name(&s.take()), "wait");
        let Next::Build(fk) = fk else { unreachable!() };
        s.built(&fk);
        assert_eq!(name(&s.take()), "finished");
        assert_eq!(s.left_over(), 0);
    }

    #[test]
    fn foreign_keys_on_a_shared_table_run_one_at_a_time() {
        let entries = vec![
            entry("a_fk_b", &["a", "b"], true, 10),
            entry("b_fk_a", &["b", "a"], true, 10),
            entry("c_fk_d", &["c", "d"], true, 10),
        ];
        let mut s: Schedule<()> = Schedule::new(vec![], entries);
        let first = s.take();
        assert_eq!(name(&first), "a_fk_b");
        assert_eq!(name(&s.take()), "c_fk_d", "b_fk_a must wait for a_fk_b");
        assert_eq!(name(&s.take()), "wait");
        let Next::Build(first) = first else { unreachable!() };
        s.built(&first);
        assert_eq!(name(&s.take()), "b_fk_a");
    }

    #[test]
    fn an_abort_starts_nothing_more_and_nobody_waits() {
        let t = |n: &str| ItemKey::table("public", n);
        let mut s = Schedule::new(
            vec![(t("a"), 1), (t("b"), 2)],
            vec![entry("a_pkey", &["a"], false, 1)],
        );
        assert!(matches!(s.take(), Next::Copy(1)));
        // Copy 1 is still in flight: the others stop at once all the same.
        s.abort();
        assert_eq!(name(&s.take()), "finished");
    }

    #[test]
    fn an_analyze_comes_after_its_tables_keys_and_foreign_keys() {
        let t = |n: &str| ItemKey::table("public", n);
        let analysis = |n: &str| Analysis {
            table: t(n),
            qualified: format!("public.{n}"),
            item: ItemKey::analyze("public", n),
        };
        let mut s = Schedule::with_analyses(
            vec![(t("big"), 1), (t("ref"), 2)],
            vec![
                entry("big_pkey", &["big"], false, 100),
                entry("big_fk_ref", &["big", "ref"], true, 100),
                entry("ref_pkey", &["ref"], false, 10),
            ],
            vec![analysis("big"), analysis("ref"), analysis("lone")],
        );
        assert!(matches!(s.take(), Next::Copy(1)));
        assert!(matches!(s.take(), Next::Copy(2)));
        // lone has no copy or entry in this pass: analyzed at once.
        assert_eq!(name(&s.take()), "analyze table:public.lone");
        s.analyzed(&analysis("lone"));
        s.copied(&t("big"));
        let big = s.take();
        assert_eq!(name(&big), "big_pkey");
        // big's foreign key (to ref, not copied yet) keeps big's ANALYZE waiting.
        assert_eq!(name(&s.take()), "wait");
        let Next::Build(big) = big else { unreachable!() };
        s.built(&big);
        assert_eq!(name(&s.take()), "wait");
        s.copied(&t("ref"));
        let ref_pkey = s.take();
        assert_eq!(name(&ref_pkey), "ref_pkey");
        let Next::Build(ref_pkey) = ref_pkey else {
            unreachable!()
        };
        s.built(&ref_pkey);
        let fk = s.take();
        assert_eq!(name(&fk), "big_fk_ref");
        assert_eq!(name(&s.take()), "wait", "both tables wait for the foreign key");
        let Next::Build(fk) = fk else { unreachable!() };
        s.built(&fk);
        assert_eq!(name(&s.take()), "analyze table:public.big");
        assert_eq!(name(&s.take()), "analyze table:public.ref");
        assert_eq!(name(&s.take()), "wait");
        s.analyzed(&analysis("big"));
        s.analyzed(&analysis("ref"));
        assert_eq!(name(&s.take()), "finished");
    }

    #[test]
    fn no_foreign_key_starts_on_a_table_being_analyzed() {
        let t = |n: &str| ItemKey::table("public", n);
        let a = Analysis {
            table: t("a"),
            qualified: "public.a".into(),
            item: ItemKey::analyze("public", "a"),
        };
        let mut s: Schedule<()> = Schedule::with_analyses(vec![], vec![], vec![a.clone()]);
        assert_eq!(name(&s.take()), "analyze table:public.a");
        // A foreign key entry arriving later is not possible (entries are
        // fixed at the start), but readiness must still respect the lock.
        s.waiting.push(entry("b_fk_a", &["b", "a"], true, 1));
        assert_eq!(name(&s.take()), "wait");
        s.analyzed(&a);
        assert_eq!(name(&s.take()), "b_fk_a");
    }
}
