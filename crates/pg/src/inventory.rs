//! Inspecting a database (tables with row counts and sizes, sequences,
//! extensions, large objects) and comparing the source with the target,
//! including what clearing the target would destroy.

use std::collections::{BTreeMap, BTreeSet};

use cutover_core::Result;
use cutover_core::identity::ServerIdentity;
use serde::{Deserialize, Serialize};
use sqlx::{PgPool, Row};

/// Schemas never treated as application data.
pub const SYSTEM_SCHEMAS: &str = "'pg_catalog', 'information_schema'";

#[derive(Debug, Clone, Serialize)]
pub struct TableInfo {
    pub schema: String,
    pub name: String,
    /// `r` ordinary table (or leaf partition), `p` partitioned parent.
    pub kind: String,
    pub is_partition: bool,
    pub rows: i64,
    pub bytes: i64,
    /// (name, type) in column order, generated columns included.
    pub columns: Vec<(String, String)>,
    /// Columns that are not generated (what COPY moves).
    pub copy_columns: Vec<String>,
    /// Primary-key columns, if any.
    pub primary_key: Vec<String>,
    /// Pages on disk (`pg_class.relpages`, as of the last VACUUM/ANALYZE).
    pub pages: i64,
    /// Rows updated or deleted since the server's statistics were reset
    /// (`pg_stat_user_tables`): application activity, as bulk loads only insert.
    pub changes: i64,
    /// `rows` is the statistics' estimate, not a count (a large table that
    /// nothing compares with; see [`Inventory::read_estimating`]).
    pub rows_estimated: bool,
    /// The type of a copied column that has no binary send/receive (contrib's
    /// `isn` and `seg`, many user-defined types, arrays and domains of them):
    /// the table moves in COPY's text format.
    pub no_binary: Option<String>,
}

impl TableInfo {
    /// `"schema"."name"`, ready for SQL.
    pub fn qualified(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.name))
    }
    /// `schema.name` for people (public tables without the schema).
    pub fn display(&self) -> String {
        if self.schema == "public" {
            self.name.clone()
        } else {
            format!("{}.{}", self.schema, self.name)
        }
    }
    /// Holds rows itself (not a partitioned parent).
    pub fn has_storage(&self) -> bool {
        self.kind == "r"
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct SequenceInfo {
    pub schema: String,
    pub name: String,
    pub last_value: Option<i64>,
    pub is_called: bool,
}

impl SequenceInfo {
    pub fn qualified(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.name))
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Inventory {
    pub identity: ServerIdentity,
    pub database_bytes: i64,
    /// Application schemas (not system, not the journal).
    pub schemas: Vec<String>,
    pub tables: Vec<TableInfo>,
    pub sequences: Vec<SequenceInfo>,
    pub extensions: Vec<(String, String)>,
    pub large_objects: i64,
    /// Whether row counts are exact (`count(*)`) or the planner's estimates.
    pub exact_counts: bool,
}

pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

pub fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

impl Inventory {
    /// An inventory of nothing (a source that cannot be inspected any more).
    pub fn empty(identity: ServerIdentity) -> Inventory {
        Inventory {
            identity,
            database_bytes: 0,
            schemas: vec![],
            tables: vec![],
            sequences: vec![],
            extensions: vec![],
            large_objects: 0,
            exact_counts: true,
        }
    }

    /// Reads everything cutover needs to know about one database. Read-only.
    /// `exact`: rows counted (else the statistics' estimates).
    pub async fn read(pool: &PgPool, journal_schema: &str, exact: bool) -> Result<Inventory> {
        let counting = if exact { Counting::All } else { Counting::None };
        Inventory::read_with(pool, journal_schema, counting).await
    }

    /// Like [`Inventory::read`], with rows counted except in large analyzed
    /// tables (at least [`ESTIMATE_PAGES`] pages), whose statistics' estimate
    /// stands, flagged: counting a large database takes as long as reading
    /// it. [`Inventory::count_exactly`] counts some of them later.
    pub async fn read_estimating(pool: &PgPool, journal_schema: &str) -> Result<Inventory> {
        Inventory::read_with(pool, journal_schema, Counting::SmallOnly).await
    }

    /// Counts the rows of the tables `which` selects among those whose
    /// count is an estimate.
    pub async fn count_exactly(&mut self, pool: &PgPool, which: impl Fn(&TableInfo) -> bool) -> Result<()> {
        let wanted: Vec<usize> = (0..self.tables.len())
            .filter(|&i| self.tables[i].rows_estimated && which(&self.tables[i]))
            .collect();
        count_rows(pool, &mut self.tables, &wanted).await?;
        for i in wanted {
            self.tables[i].rows_estimated = false;
        }
        self.exact_counts = !self.tables.iter().any(|t| t.rows_estimated);
        Ok(())
    }

    /// A row total for people: "about N" when some tables are estimates.
    pub fn rows_text(&self) -> String {
        if self.tables.iter().any(|t| t.rows_estimated) {
            format!("about {}", self.total_rows())
        } else {
            self.total_rows().to_string()
        }
    }

    async fn read_with(pool: &PgPool, journal_schema: &str, counting: Counting) -> Result<Inventory> {
        let identity = ServerIdentity::of(pool).await?;
        let excluded = format!("{SYSTEM_SCHEMAS}, {}", quote_literal(journal_schema));
        let schemas: Vec<String> = sqlx::query_scalar(&format!(
            "SELECT nspname::text FROM pg_namespace n WHERE nspname NOT IN ({excluded}) \
             AND nspname NOT LIKE 'pg\\_%' \
             AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_namespace'::regclass \
                             AND d.objid = n.oid AND d.deptype = 'e') ORDER BY 1"
        ))
        .fetch_all(pool)
        .await?;
        // Types rendered with search_path = pg_catalog: every type outside
        // pg_catalog schema-qualified, whatever the session's or database's
        // search_path (an enum of schema "abc" is "abc.mood" on both sides).
        let mut tx = pool.begin().await?;
        sqlx::query("SET LOCAL search_path = pg_catalog")
            .execute(&mut *tx)
            .await?;
        // Types without binary I/O, and the arrays, domains, composite
        // types and ranges built on them, first and on their own (the same
        // set as a subquery of the table query made it take a second).
        let no_binary: Vec<sqlx::postgres::types::Oid> = sqlx::query_scalar(
            "WITH RECURSIVE no_binary(oid) AS ( \
                 SELECT oid FROM pg_type WHERE typtype IN ('b', 'c', 'd', 'e', 'r', 'm') \
                   AND (typsend = 0 OR typreceive = 0) \
               UNION \
                 SELECT t.oid FROM no_binary b CROSS JOIN LATERAL ( \
                     SELECT p.oid FROM pg_type p WHERE p.typelem = b.oid AND p.typlen = -1 \
                     UNION ALL SELECT p.oid FROM pg_type p WHERE p.typbasetype = b.oid \
                     UNION ALL SELECT c.reltype FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid \
                                WHERE c.relkind = 'c' AND a.attnum > 0 AND a.atttypid = b.oid \
                     UNION ALL SELECT r.rngtypid FROM pg_range r WHERE r.rngsubtype = b.oid) t) \
             SELECT oid FROM no_binary",
        )
        .fetch_all(&mut *tx)
        .await?;
        let rows = sqlx::query(&format!(
            "SELECT n.nspname::text, c.relname::text, c.relkind::text, c.relispartition, \
                    greatest(c.reltuples, 0)::bigint, pg_total_relation_size(c.oid), \
                    coalesce((SELECT array_agg(a.attname::text ORDER BY a.attnum) FROM pg_attribute a \
                              WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped), '{{}}'), \
                    coalesce((SELECT array_agg(format_type(a.atttypid, a.atttypmod) ORDER BY a.attnum) FROM pg_attribute a \
                              WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped), '{{}}'), \
                    coalesce((SELECT array_agg(a.attname::text ORDER BY a.attnum) FROM pg_attribute a \
                              WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''), '{{}}'), \
                    coalesce((SELECT array_agg(a.attname::text ORDER BY k.ord) FROM pg_constraint con \
                              CROSS JOIN LATERAL unnest(con.conkey) WITH ORDINALITY AS k(attnum, ord) \
                              JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum \
                              WHERE con.conrelid = c.oid AND con.contype = 'p'), '{{}}'), \
                    coalesce((SELECT s.n_tup_upd + s.n_tup_del FROM pg_stat_user_tables s WHERE s.relid = c.oid), 0), \
                    greatest(c.relpages::bigint, pg_relation_size(c.oid) / current_setting('block_size')::bigint), \
                    c.reltuples >= 0, \
                    (SELECT format_type(a.atttypid, a.atttypmod) FROM pg_attribute a \
                     WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = '' \
                       AND a.atttypid = ANY ($1) ORDER BY a.attnum LIMIT 1) \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ({excluded}) AND n.nspname NOT LIKE 'pg\\_%' \
               AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass \
                               AND d.objid = c.oid AND d.deptype = 'e') \
             ORDER BY 1, 2"
        ))
        .bind(&no_binary)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        let mut tables: Vec<TableInfo> = rows
            .into_iter()
            .map(|r| {
                let names: Vec<String> = r.get(6);
                let types: Vec<String> = r.get(7);
                TableInfo {
                    schema: r.get(0),
                    name: r.get(1),
                    kind: r.get(2),
                    is_partition: r.get(3),
                    rows: r.get(4),
                    bytes: r.get(5),
                    columns: names.into_iter().zip(types).collect(),
                    copy_columns: r.get(8),
                    primary_key: r.get(9),
                    changes: r.get(10),
                    pages: r.get(11),
                    rows_estimated: match counting {
                        Counting::All => false,
                        Counting::None => true,
                        Counting::SmallOnly => r.get::<bool, _>(12) && r.get::<i64, _>(11) >= ESTIMATE_PAGES,
                    },
                    no_binary: r.get(13),
                }
            })
            .collect();
        // In byte order of (schema, name): `table` finds a table by binary
        // search (a linear search per table made comparing 10,000 tables
        // take seconds). The query's order is already that (catalog names
        // sort under "C", whatever the database's collation); this keeps it
        // so if the query changes.
        tables.sort_by(|a, b| (&a.schema, &a.name).cmp(&(&b.schema, &b.name)));
        let to_count: Vec<usize> = (0..tables.len())
            .filter(|&i| tables[i].has_storage() && !tables[i].rows_estimated && counting != Counting::None)
            .collect();
        count_rows(pool, &mut tables, &to_count).await?;
        let exact = !tables.iter().any(|t| t.has_storage() && t.rows_estimated);
        let seq_rows = sqlx::query(&format!(
            "SELECT schemaname::text, sequencename::text FROM pg_sequences \
             WHERE schemaname NOT IN ({excluded}) ORDER BY 1, 2"
        ))
        .fetch_all(pool)
        .await?;
        let mut sequences = vec![];
        for r in seq_rows {
            let (schema, name): (String, String) = (r.get(0), r.get(1));
            let q = format!("{}.{}", quote_ident(&schema), quote_ident(&name));
            let (last_value, is_called): (i64, bool) =
                sqlx::query_as(&format!("SELECT last_value, is_called FROM {q}"))
                    .fetch_one(pool)
                    .await?;
            sequences.push(SequenceInfo {
                schema,
                name,
                last_value: Some(last_value),
                is_called,
            });
        }
        let extensions: Vec<(String, String)> = sqlx::query_as(
            "SELECT extname::text, extversion FROM pg_extension WHERE extname <> 'plpgsql' ORDER BY 1",
        )
        .fetch_all(pool)
        .await?;
        let large_objects: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_largeobject_metadata")
            .fetch_one(pool)
            .await?;
        let database_bytes: i64 = sqlx::query_scalar("SELECT pg_database_size(current_database())")
            .fetch_one(pool)
            .await?;
        Ok(Inventory {
            identity,
            database_bytes,
            schemas,
            tables,
            sequences,
            extensions,
            large_objects,
            exact_counts: exact,
        })
    }

    /// The table `schema.name` (the list is in byte order of schema and name).
    pub fn table(&self, schema: &str, name: &str) -> Option<&TableInfo> {
        self.tables
            .binary_search_by(|t| (t.schema.as_str(), t.name.as_str()).cmp(&(schema, name)))
            .ok()
            .map(|i| &self.tables[i])
    }

    /// Tables that hold rows (leaf partitions and plain tables).
    pub fn storage_tables(&self) -> impl Iterator<Item = &TableInfo> {
        self.tables.iter().filter(|t| t.has_storage())
    }

    pub fn total_rows(&self) -> i64 {
        self.storage_tables().map(|t| t.rows).sum()
    }
}

/// How [`Inventory::read_with`] finds row counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Counting {
    All,
    None,
    SmallOnly,
}

/// Tables of at least this many pages (64 MB of 8 kB pages) keep the
/// statistics' estimate in [`Inventory::read_estimating`].
pub const ESTIMATE_PAGES: i64 = 8192;

/// Exact counts of the tables at `which` (indexes into `tables`), 200 per
/// round trip, two round trips at a time (the first count of each table
/// opens it, which is most of the work for small tables: 10,000 of them
/// took 4 s on one connection).
async fn count_rows(pool: &PgPool, tables: &mut [TableInfo], which: &[usize]) -> Result<()> {
    use futures::{StreamExt, TryStreamExt};
    let storage: Vec<usize> = which
        .iter()
        .copied()
        .filter(|&i| tables[i].has_storage())
        .collect();
    let queries: Vec<String> = storage
        .chunks(200)
        .map(|chunk| {
            chunk
                .iter()
                .map(|&i| format!("SELECT {i}::int, count(*) FROM ONLY {}", tables[i].qualified()))
                .collect::<Vec<_>>()
                .join(" UNION ALL ")
        })
        .collect();
    let counted: Vec<Vec<(i32, i64)>> = futures::stream::iter(queries)
        .map(|sql| async move { sqlx::query_as::<_, (i32, i64)>(&sql).fetch_all(pool).await })
        .buffer_unordered(2)
        .try_collect()
        .await?;
    for (i, n) in counted.into_iter().flatten() {
        tables[i as usize].rows = n;
    }
    Ok(())
}

/// How the source and the target differ, and what clearing the target destroys.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Comparison {
    pub only_source: Vec<String>,
    pub only_target: Vec<String>,
    /// (table, source rows, target rows) where they differ.
    pub row_differences: Vec<(String, i64, i64)>,
    pub column_differences: Vec<String>,
    /// "clearing the target destroys: …" lines.
    pub destroyed: Vec<String>,
    /// Why the target looks like the live database (empty = it does not).
    pub target_ahead: Vec<String>,
}

/// Largest table compared row by row when listing what clearing destroys.
const ROW_COMPARE_LIMIT: i64 = 50_000;

pub async fn compare(
    source: &Inventory,
    target: &Inventory,
    source_pool: &PgPool,
    target_pool: &PgPool,
) -> Result<Comparison> {
    let key = |t: &TableInfo| (t.schema.clone(), t.name.clone());
    let src: BTreeMap<_, _> = source.tables.iter().map(|t| (key(t), t)).collect();
    let tgt: BTreeMap<_, _> = target.tables.iter().map(|t| (key(t), t)).collect();
    let mut c = Comparison {
        only_source: src
            .iter()
            .filter(|(k, _)| !tgt.contains_key(*k))
            .map(|(_, t)| t.display())
            .collect(),
        only_target: tgt
            .iter()
            .filter(|(k, _)| !src.contains_key(*k))
            .map(|(_, t)| t.display())
            .collect(),
        row_differences: vec![],
        column_differences: vec![],
        destroyed: vec![],
        target_ahead: vec![],
    };
    // More recent activity on the target, by the statistics: updates and
    // deletes in the tables both have (a copy or a restore only inserts).
    let (mut src_changes, mut tgt_changes) = (0, 0);
    for (k, t) in &tgt {
        if let Some(s) = src.get(k) {
            src_changes += s.changes;
            tgt_changes += t.changes;
        }
    }
    if tgt_changes > src_changes {
        c.target_ahead.push(format!(
            "the target's statistics count {tgt_changes} rows updated or deleted in the tables both have, the \
             source's {src_changes}: the target looks like the database applications write to"
        ));
    }
    for (k, t) in &tgt {
        let Some(s) = src.get(k) else {
            if t.has_storage() {
                c.destroyed.push(format!(
                    "table {} ({} rows) that the source does not have",
                    t.display(),
                    t.rows
                ));
                if t.rows > 0 {
                    c.target_ahead.push(format!(
                        "table {} holds {} rows and does not exist on the source",
                        t.display(),
                        t.rows
                    ));
                }
            }
            continue;
        };
        if s.columns != t.columns {
            let sc: BTreeSet<_> = s.columns.iter().collect();
            let tc: BTreeSet<_> = t.columns.iter().collect();
            let fmt = |v: Vec<&&(String, String)>| {
                v.iter()
                    .map(|(n, ty)| format!("{n} {ty}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            c.column_differences.push(format!(
                "{}: source only [{}], target only [{}]",
                t.display(),
                fmt(sc.difference(&tc).collect()),
                fmt(tc.difference(&sc).collect())
            ));
        }
        if !t.has_storage() {
            continue;
        }
        if s.rows != t.rows {
            c.row_differences.push((t.display(), s.rows, t.rows));
        }
        if t.rows > s.rows {
            c.target_ahead.push(format!(
                "{} has {} rows on the target but {} on the source",
                t.display(),
                t.rows,
                s.rows
            ));
        }
        if t.rows == 0 {
            continue;
        }
        if t.rows > ROW_COMPARE_LIMIT || s.rows > ROW_COMPARE_LIMIT {
            c.destroyed.push(format!(
                "{}: {} rows, not compared row by row (large table)",
                t.display(),
                t.rows
            ));
            continue;
        }
        let lacking = rows_source_lacks(s, t, source_pool, target_pool).await?;
        if !lacking.0.is_empty() || lacking.1 > 0 {
            let n = lacking.1;
            let examples = if lacking.0.is_empty() {
                String::new()
            } else {
                format!(" ({})", lacking.0.join("; "))
            };
            c.destroyed.push(format!(
                "{n} row{} of {} that the source lacks{examples}",
                if n == 1 { "" } else { "s" },
                t.display()
            ));
        }
    }
    Ok(c)
}

/// Rows of the target table whose exact content the source does not hold:
/// up to three examples (primary key and a glimpse) and the count.
async fn rows_source_lacks(
    s: &TableInfo,
    t: &TableInfo,
    source_pool: &PgPool,
    target_pool: &PgPool,
) -> Result<(Vec<String>, i64)> {
    let common: Vec<&String> = t
        .copy_columns
        .iter()
        .filter(|c| s.copy_columns.contains(c))
        .collect();
    if common.is_empty() {
        return Ok((vec![], t.rows));
    }
    let row_expr = format!(
        "ROW({})::text",
        common
            .iter()
            .map(|c| quote_ident(c))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let source_hashes: BTreeSet<String> =
        sqlx::query_scalar(&format!("SELECT md5({row_expr}) FROM ONLY {}", s.qualified()))
            .fetch_all(source_pool)
            .await?
            .into_iter()
            .collect();
    let label = if t.primary_key.is_empty() {
        format!("left({row_expr}, 60)")
    } else {
        t.primary_key
            .iter()
            .map(|k| format!("{} || '=' || {}::text", quote_literal(k), quote_ident(k)))
            .collect::<Vec<_>>()
            .join(" || ', ' || ")
    };
    let glimpse = t
        .copy_columns
        .iter()
        .filter(|c| !t.primary_key.contains(c))
        .find(|c| {
            t.columns
                .iter()
                .any(|(n, ty)| n == *c && (ty == "text" || ty.starts_with("character") || ty == "citext"))
        })
        .map(|c| format!("coalesce(left({}::text, 40), 'NULL')", quote_ident(c)))
        .unwrap_or_else(|| "''".into());
    let rows: Vec<(String, String, String)> = sqlx::query_as(&format!(
        "SELECT md5({row_expr}), {label}, {glimpse} FROM ONLY {} t",
        t.qualified()
    ))
    .fetch_all(target_pool)
    .await?;
    let lacking: Vec<_> = rows
        .into_iter()
        .filter(|(h, _, _)| !source_hashes.contains(h))
        .collect();
    let examples = lacking
        .iter()
        .take(3)
        .map(|(_, k, g)| {
            if g.is_empty() {
                k.clone()
            } else {
                format!("{k}, {g}")
            }
        })
        .collect();
    Ok((examples, lacking.len() as i64))
}
