//! Index builds that overlap the copy: a large table's indexes and its
//! primary-key, unique and exclusion constraints are built as soon as its
//! data is in, while the other tables are still copying, instead of all of
//! them after the last row.
//!
//! The statements come from the copy's own schema archive (`pg_restore
//! --use-list … --file=-`, one list per table), so they are exactly what the
//! post-data restore would have run. The rest of post-data (foreign keys,
//! triggers, rules, the indexes of small tables, partitions, comments…) is
//! restored afterwards from the same archive with these entries left out.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use cutover_core::{Error, Result};
use sqlx::PgPool;

use crate::inventory::{Inventory, TableInfo};
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

/// The entries of each large plain table (`table:schema.name` item → lines)
/// that can be built as soon as its data is in: its own indexes and its
/// primary-key, unique and exclusion constraints. Only tables of at least
/// `min_bytes` (heap, indexes and TOAST on the source; 0 = none): smaller
/// ones wait for the final parallel restore, as one restore per small table
/// would cost more than it overlaps (a database may have thousands).
/// Partitions and partitioned tables are left to the final restore (their
/// indexes attach to each other).
pub async fn plan(
    source: &PgPool,
    inventory: &Inventory,
    entries: &[TocEntry],
    min_bytes: u64,
) -> Result<HashMap<String, Vec<TocEntry>>> {
    if min_bytes == 0 {
        return Ok(HashMap::new());
    }
    let large: HashSet<(String, String)> = inventory
        .storage_tables()
        .filter(|t| t.kind == "r" && !t.is_partition && t.bytes.max(0) as u64 >= min_bytes)
        .map(|t| (t.schema.clone(), t.name.clone()))
        .collect();
    if large.is_empty() {
        return Ok(HashMap::new());
    }
    // Which table each index and key constraint belongs to, by OID.
    let owners: Vec<(i64, i64, String, String)> = sqlx::query_as(
        "SELECT 'pg_class'::regclass::oid::bigint, i.indexrelid::bigint, n.nspname::text, c.relname::text \
           FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid JOIN pg_namespace n ON n.oid = c.relnamespace \
          WHERE c.relkind = 'r' AND NOT c.relispartition \
         UNION ALL \
         SELECT 'pg_constraint'::regclass::oid::bigint, k.oid::bigint, n.nspname::text, c.relname::text \
           FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid JOIN pg_namespace n ON n.oid = c.relnamespace \
          WHERE k.contype IN ('p', 'u', 'x') AND c.relkind = 'r' AND NOT c.relispartition",
    )
    .fetch_all(source)
    .await?;
    let owner: HashMap<(u32, u32), (String, String)> = owners
        .into_iter()
        .map(|(cat, oid, s, t)| ((cat as u32, oid as u32), (s, t)))
        .collect();
    let mut by_table: HashMap<String, Vec<TocEntry>> = HashMap::new();
    for e in entries {
        if e.kind != "INDEX" && e.kind != "CONSTRAINT" {
            continue;
        }
        if let Some((schema, name)) = owner.get(&(e.catalog, e.oid))
            && large.contains(&(schema.clone(), name.clone()))
        {
            by_table
                .entry(table_item(schema, name))
                .or_default()
                .push(e.clone());
        }
    }
    Ok(by_table)
}

fn table_item(schema: &str, name: &str) -> String {
    format!("table:{schema}.{name}")
}

/// The journal item that records a table's early index builds.
pub fn index_item(t: &TableInfo) -> String {
    format!("indexes:{}.{}", t.schema, t.name)
}

/// The SQL of `entries`, as `pg_restore` writes it from the archive.
pub async fn script(pg_restore: &Path, archive: &Path, list_file: &Path, entries: &[TocEntry]) -> Result<String> {
    let list: String = entries.iter().map(|e| format!("{}\n", e.line)).collect();
    write_private(list_file, &list)?;
    let mut cmd = tokio::process::Command::new(pg_restore);
    cmd.args(["--no-owner", "--no-privileges", "--file=-"])
        .arg(format!("--use-list={}", list_file.display()))
        .arg(archive)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let script = tools::run(cmd, "pg_restore --file=- of a table's indexes").await?;
    // Recent pg_restore releases wrap scripts in psql's \restrict and
    // \unrestrict meta-commands (they guard psql, not SQL): left out. Any
    // other meta-command would mean a script this code does not understand.
    let mut sql = String::with_capacity(script.len());
    for line in script.lines() {
        if line.starts_with("\\restrict ") || line.starts_with("\\unrestrict ") {
            continue;
        }
        if line.starts_with('\\') {
            return Err(Error::failure(format!(
                "pg_restore wrote a psql meta-command into the index script of {} ({line}); set \
                 options.early_index_bytes = 0 to build indexes after the copy",
                archive.display()
            )));
        }
        sql.push_str(line);
        sql.push('\n');
    }
    if sql.trim().is_empty() {
        return Err(Error::failure(format!(
            "pg_restore wrote no SQL for {} archive entries of {}",
            entries.len(),
            archive.display()
        )));
    }
    Ok(sql)
}

/// Writes a file only its owner may read (lists name the schema's objects).
pub fn write_private(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| Error::failure(format!("cannot write {}: {e}", path.display())))?;
    f.write_all(text.as_bytes())
        .map_err(|e| Error::failure(format!("cannot write {}: {e}", path.display())))
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
