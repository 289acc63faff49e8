//! Index builds that overlap the copy: which archive entries can be built
//! early. The indexes and primary-key, unique and exclusion constraints of a
//! large table are built as soon as its data is in, and a large table's
//! foreign key to a plain table as soon as both tables and their keys are,
//! each by whichever copy worker is free, while other tables still copy
//! (the order is [`super::schedule`]'s). The rest of post-data (triggers,
//! rules, the indexes of small tables, partitions, comments, other foreign
//! keys…) is restored afterwards from the same archive with these entries
//! left out ([`remaining_list`]).
//!
//! The statements come from the copy's own schema archive (`pg_restore
//! --use-list … --file=-`, one entry at a time), so they are exactly what the
//! post-data restore would have run. Each runs in one transaction with its
//! journal item: after a crash an entry exists on the target if and only if
//! the journal says it is done.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use cutover_core::{Error, Result};
use sqlx::PgPool;

use cutover_core::journal::ItemKey;

use crate::inventory::Inventory;
use crate::tools;

/// A line of `pg_restore --list`: its archive entry and what it creates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TocEntry {
    pub line: String,
    /// The system catalog the object lives in (`pg_class`: 1259,
    /// `pg_constraint`: 2606) and its OID on the source.
    pub catalog: u32,
    pub oid: u32,
    /// "INDEX", "CONSTRAINT", "FK CONSTRAINT", "TABLE DATA", …
    pub kind: String,
}

/// Parses `pg_restore --list` output (comment lines skipped). The format is
/// `<dump id>; <catalog oid> <object oid> <kind> <schema> <tag> <owner>`;
/// only the numbers and the kind are read (names may contain spaces).
pub fn parse_list(text: &str) -> Vec<TocEntry> {
    const KINDS: [&str; 4] = ["INDEX ATTACH", "FK CONSTRAINT", "INDEX", "CONSTRAINT"];
    text.lines()
        .filter(|l| !l.trim_start().starts_with(';') && !l.trim().is_empty())
        .filter_map(|l| {
            let (_, rest) = l.split_once("; ")?;
            let mut parts = rest.splitn(3, ' ');
            let catalog = parts.next()?.parse().ok()?;
            let oid = parts.next()?.parse().ok()?;
            let tail = parts.next()?;
            let kind = KINDS
                .iter()
                .find(|k| tail.starts_with(&format!("{k} ")))
                .map(|k| k.to_string())
                .unwrap_or_else(|| tail.split(' ').next().unwrap_or_default().to_string());
            Some(TocEntry {
                line: l.to_string(),
                catalog,
                oid,
                kind,
            })
        })
        .collect()
}

/// An archive entry built during the copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EarlyEntry {
    pub toc: TocEntry,
    /// Its journal item: `early:<schema>.<table>.<name>`.
    pub item: ItemKey,
    pub schema: String,
    /// The table it belongs to (a foreign key: the referencing table).
    pub table: String,
    pub name: String,
    /// The `table:` items it waits for: its table, and for a foreign key
    /// also the referenced table.
    pub tables: Vec<ItemKey>,
    pub foreign_key: bool,
    /// Bytes of its table on the source: larger tables' entries go first.
    pub weight: i64,
    /// Rows of its table (the source's estimate or count): sizes its memory.
    pub rows: i64,
    /// Its comments and security labels: pg_dump writes them right after
    /// their object. They are created with it (the final restore, which
    /// does not select the object, would skip them).
    pub dependents: Vec<TocEntry>,
}

/// The entries that can be built during the copy: the indexes and primary
/// key, unique and exclusion constraints of each plain table of at least
/// `min_bytes` (heap, indexes and TOAST on the source; 0 = none), the
/// foreign keys of those tables to plain tables, and the indexes and keys of
/// the tables these reference. Other tables wait for the final parallel
/// restore, as building their entries one by one would cost more than it
/// overlaps (a database may have thousands). Partitions and partitioned
/// tables are left to the final restore (their indexes attach to each other).
pub async fn plan(
    source: &PgPool,
    inventory: &Inventory,
    entries: &[TocEntry],
    min_bytes: u64,
) -> Result<Vec<EarlyEntry>> {
    if min_bytes == 0 {
        return Ok(vec![]);
    }
    // Plain tables (bytes on the source), and the large ones among them.
    let plain: HashMap<(String, String), i64> = inventory
        .storage_tables()
        .filter(|t| t.kind == "r" && !t.is_partition)
        .map(|t| ((t.schema.clone(), t.name.clone()), t.bytes))
        .collect();
    let rows: HashMap<(String, String), i64> = inventory
        .storage_tables()
        .map(|t| ((t.schema.clone(), t.name.clone()), t.rows))
        .collect();
    let is_large = |k: &(String, String)| plain.get(k).is_some_and(|b| b.max(&0) >= &(min_bytes as i64));
    if !plain.keys().any(is_large) {
        return Ok(vec![]);
    }
    // What each index and constraint is, and on which tables, by OID.
    type Owner = (i64, i64, String, String, String, Option<String>, Option<String>);
    let owners: Vec<Owner> = sqlx::query_as(
        "SELECT 'pg_class'::regclass::oid::bigint, i.indexrelid::bigint, n.nspname::text, c.relname::text, \
                x.relname::text, NULL::text, NULL::text \
           FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid JOIN pg_class x ON x.oid = i.indexrelid \
           JOIN pg_namespace n ON n.oid = c.relnamespace \
          WHERE c.relkind = 'r' AND NOT c.relispartition \
         UNION ALL \
         SELECT 'pg_constraint'::regclass::oid::bigint, k.oid::bigint, n.nspname::text, c.relname::text, \
                k.conname::text, rn.nspname::text, r.relname::text \
           FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid JOIN pg_namespace n ON n.oid = c.relnamespace \
           LEFT JOIN pg_class r ON r.oid = k.confrelid LEFT JOIN pg_namespace rn ON rn.oid = r.relnamespace \
          WHERE k.contype IN ('p', 'u', 'x', 'f') AND c.relkind = 'r' AND NOT c.relispartition",
    )
    .fetch_all(source)
    .await
    .map_err(super::on_source)?;
    let owner: HashMap<(u32, u32), Owner> = owners
        .into_iter()
        .map(|o| ((o.0 as u32, o.1 as u32), o))
        .collect();
    let owned = |e: &TocEntry| {
        let kind_ok = matches!(e.kind.as_str(), "INDEX" | "CONSTRAINT" | "FK CONSTRAINT");
        kind_ok.then(|| owner.get(&(e.catalog, e.oid))).flatten()
    };
    // A large table's foreign keys are validated during the copy (checking
    // every row is what costs); the plain tables they reference get their
    // keys built early too, whatever their size, so that the keys exist.
    let mut keyed: HashSet<(String, String)> = plain.keys().filter(|k| is_large(k)).cloned().collect();
    let mut early_fks = vec![];
    for e in entries.iter().filter(|e| e.kind == "FK CONSTRAINT") {
        let Some((_, _, schema, table, _, Some(rs), Some(rt))) = owned(e) else {
            continue;
        };
        let (from, to) = ((schema.clone(), table.clone()), (rs.clone(), rt.clone()));
        if is_large(&from) && plain.contains_key(&to) {
            keyed.insert(to);
            early_fks.push(e.oid);
        }
    }
    let mut early = vec![];
    for (i, e) in entries.iter().enumerate() {
        let Some((_, _, schema, table, name, ref_schema, ref_table)) = owned(e) else {
            continue;
        };
        let key = (schema.clone(), table.clone());
        let foreign_key = e.kind == "FK CONSTRAINT";
        let mut tables = vec![ItemKey::table(schema, table)];
        if foreign_key {
            let (Some(rs), Some(rt)) = (ref_schema, ref_table) else {
                continue;
            };
            if !early_fks.contains(&e.oid) {
                continue;
            }
            if (rs, rt) != (schema, table) {
                tables.push(ItemKey::table(rs, rt));
            }
        } else if ref_table.is_some() || !keyed.contains(&key) {
            // Not a key of an early table (or a foreign key's OID under a
            // plain CONSTRAINT entry).
            continue;
        }
        early.push(EarlyEntry {
            toc: e.clone(),
            item: ItemKey::early(schema, table, name),
            schema: schema.clone(),
            table: table.clone(),
            name: name.clone(),
            tables,
            foreign_key,
            weight: plain.get(&key).copied().unwrap_or(0),
            rows: rows.get(&key).copied().unwrap_or(0),
            dependents: entries[i + 1..]
                .iter()
                .take_while(|d| d.kind == "COMMENT" || d.kind == "SECURITY")
                .cloned()
                .collect(),
        });
    }
    Ok(early)
}

/// The SQL of one entry and its comments and security labels, as
/// `pg_restore` writes it from the archive.
pub async fn script(
    pg_restore: &tools::Tool,
    target_major: u32,
    archive: &Path,
    list_file: &Path,
    entry: &EarlyEntry,
) -> Result<String> {
    let mut list = format!("{}\n", entry.toc.line);
    for d in &entry.dependents {
        list.push_str(&d.line);
        list.push('\n');
    }
    tools::write_private(list_file, &list)?;
    let mut cmd = tools::offline(pg_restore);
    cmd.args(["--no-owner", "--no-privileges", "--file=-"])
        .arg(format!("--use-list={}", list_file.display()))
        .arg(archive);
    let script = tools::run(cmd, "pg_restore --file=- of an index").await?;
    // Recent pg_restore releases wrap scripts in psql's \restrict and
    // \unrestrict meta-commands (they guard psql, not SQL): left out. Any
    // other meta-command would mean a script this code does not understand.
    let mut sql = String::with_capacity(script.len());
    for line in script.lines() {
        if line.starts_with("\\restrict ") || line.starts_with("\\unrestrict ") {
            continue;
        }
        // A pg_restore 17+ sets a timeout an older target does not know.
        if line == tools::TRANSACTION_TIMEOUT_LINE && tools::needs_filter(pg_restore, target_major) {
            continue;
        }
        if line.starts_with('\\') {
            return Err(Error::failure(format!(
                "pg_restore wrote a psql meta-command into the script of `{}` ({line}); set \
                 options.early_index_bytes = 0 to build indexes after the copy",
                entry.toc.line
            )));
        }
        sql.push_str(line);
        sql.push('\n');
    }
    if !sql
        .lines()
        .any(|l| !l.trim().is_empty() && !l.starts_with("--") && !l.starts_with("SET "))
    {
        return Err(Error::failure(format!(
            "pg_restore wrote no statement for `{}` of {}",
            entry.toc.line,
            archive.display()
        )));
    }
    Ok(sql)
}

/// The archive list without `skip`'s entries (what the final restore runs).
pub fn remaining_list(list: &str, skip: &HashSet<String>) -> String {
    list.lines()
        .filter(|l| !skip.contains(*l))
        .map(|l| format!("{l}\n"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIST: &str = ";\n; Archive created at 2026-11-26 02:00:00 UTC\n;\n\
        215; 1259 16386 TABLE public pgbench_accounts postgres\n\
        3362; 2606 16433 CONSTRAINT public pgbench_accounts pgbench_accounts_pkey postgres\n\
        3365; 1259 16440 INDEX public docs_created postgres\n\
        3366; 1259 16441 INDEX ATTACH public p1_idx postgres\n\
        3370; 2606 16450 FK CONSTRAINT public events events_doc_id_fkey postgres\n\
        3371; 0 0 COMMENT - EXTENSION plpgsql \n";

    #[test]
    fn parses_the_archive_list() {
        let e = parse_list(LIST);
        let kinds: Vec<(&str, u32, u32)> = e.iter().map(|e| (e.kind.as_str(), e.catalog, e.oid)).collect();
        assert_eq!(
            kinds,
            vec![
                ("TABLE", 1259, 16386),
                ("CONSTRAINT", 2606, 16433),
                ("INDEX", 1259, 16440),
                ("INDEX ATTACH", 1259, 16441),
                ("FK CONSTRAINT", 2606, 16450),
                ("COMMENT", 0, 0),
            ]
        );
        let skip: HashSet<String> = [e[1].line.clone(), e[2].line.clone()].into();
        let rest = remaining_list(LIST, &skip);
        assert!(!rest.contains("pgbench_accounts_pkey") && !rest.contains("docs_created"));
        assert!(rest.contains("events_doc_id_fkey") && rest.contains("p1_idx"));
    }
}
