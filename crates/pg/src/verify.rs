//! verify-data / `cutover verify`: per table, the exact row count and an
//! order-independent content hash (the sum of a 64-bit hash of each row, see
//! [`RowHash`]) computed on both servers with identical session settings; a
//! mismatching table narrowed down to the differing key ranges; schema
//! objects, sequences and large objects compared.

use std::collections::BTreeSet;

use async_trait::async_trait;
use cutover_core::plan_file::RowHashChoice;
use cutover_core::stage::{Check, Description, RunContext, Stage, Undo};
use cutover_core::{Error, ErrorKind, Result};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;

use crate::inventory::{Inventory, TableInfo, quote_ident};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TableVerdict {
    pub table: String,
    pub source_rows: i64,
    pub target_rows: Option<i64>,
    pub source_hash: String,
    pub target_hash: Option<String>,
    pub matches: bool,
    /// Key ranges whose rows differ (tables with a single integer primary key).
    pub differing_ranges: Vec<String>,
    pub note: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VerifyReport {
    /// How every row was hashed (the same on both servers).
    pub row_hash: RowHash,
    pub tables: Vec<TableVerdict>,
    /// Sequences whose position differs: (name, source, target).
    pub sequences: Vec<(String, String, String)>,
    pub sequences_compared: usize,
    /// Schema objects the source has and the target lacks.
    pub missing_objects: Vec<String>,
    pub large_objects: (i64, i64),
    pub large_objects_match: bool,
    /// Owners, privileges, policies and database settings that differ.
    pub security: Vec<String>,
    pub ok: bool,
}

impl VerifyReport {
    /// Forgets the sequences' differences (they move outside any snapshot
    /// and outside replication) and decides again.
    pub fn leave_out_sequences(&mut self) {
        self.sequences.clear();
        self.ok = self.tables.iter().all(|t| t.matches)
            && self.missing_objects.is_empty()
            && self.large_objects_match
            && self.security.is_empty();
    }

    pub fn problems(&self) -> Vec<String> {
        let mut p: Vec<String> = self
            .tables
            .iter()
            .filter(|t| !t.matches)
            .map(|t| {
                let mut s = format!(
                    "{}: {} rows on the source, {} on the target",
                    t.table,
                    t.source_rows,
                    t.target_rows
                        .map(|n| n.to_string())
                        .unwrap_or_else(|| "missing".into())
                );
                if t.target_rows == Some(t.source_rows) {
                    s.push_str(", contents differ");
                }
                if !t.differing_ranges.is_empty() {
                    s.push_str(&format!(" (in {})", t.differing_ranges.join(", ")));
                }
                if let Some(n) = &t.note {
                    s.push_str(&format!(" ({n})"));
                }
                s
            })
            .collect();
        p.extend(
            self.sequences
                .iter()
                .map(|(n, s, t)| format!("sequence {n}: {s} on the source, {t} on the target")),
        );
        p.extend(
            self.missing_objects
                .iter()
                .map(|o| format!("{o} is missing on the target")),
        );
        p.extend(self.security.iter().cloned());
        if !self.large_objects_match {
            p.push(format!(
                "large objects differ ({} on the source, {} on the target)",
                self.large_objects.0, self.large_objects.1
            ));
        }
        p
    }
}

/// How every row is hashed. Both servers always use the same method.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RowHash {
    /// `hash_record_extended` over each value's own hash function where that
    /// hash is exact (equal hash input if and only if equal text form: integers,
    /// booleans, dates and timestamps, uuid, bytea, text under the "C"
    /// collation), the text form of every other value; each row's 64-bit hash
    /// mixed again (`hashint8extended(h, h >> 32)`) so that the sum is not
    /// linear in the columns. Both servers PostgreSQL 14 or later.
    Native,
    /// `hashtextextended(ROW(…)::text, 0)`: any version.
    Text,
}

impl RowHash {
    /// `Native` when the plan allows it and both servers have
    /// `hash_record_extended` (14 or later).
    pub async fn for_servers(choice: RowHashChoice, source: &PgPool, target: &PgPool) -> Result<RowHash> {
        if choice == RowHashChoice::Text {
            return Ok(RowHash::Text);
        }
        use crate::connect::server_version;
        let (s, t) = tokio::try_join!(server_version(source), server_version(target))?;
        Ok(if s.min(t) >= 140_000 {
            RowHash::Native
        } else {
            RowHash::Text
        })
    }

    /// How the report describes it.
    pub fn describe(self) -> &'static str {
        match self {
            RowHash::Native => {
                "the sum over rows of a 64-bit hash of each row's values (integers, booleans, dates, \
                 timestamps, uuid, bytea and text by their exact hash, every other type by its text form)"
            }
            RowHash::Text => "the sum over rows of `hashtextextended(ROW(…)::text, 0)`",
        }
    }
}

/// How one column enters a `RowHash::Native` row hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ColumnHash {
    /// The type's own extended hash: it hashes exactly what its text form
    /// shows. `collate`: a string, hashed under "C" (bytewise; a
    /// nondeterministic collation would hash 'A' and 'a' alike).
    Own { collate: bool },
    /// Cast to text (an I/O cast: the output function) and hashed as text,
    /// because the type's own hash is coarser than its text (a numeric's
    /// scale, a float's sign of zero, an interval's '1 day' against '24 hours',
    /// a jsonb number's trailing zeros).
    AsText,
    /// Any other type (arrays, enums whose hash is their OID, domains,
    /// composites, ranges, network types…): its text form as part of one
    /// `ROW(…)::text` of all such columns, as `RowHash::Text` does.
    InRecord,
}

/// The treatment of a column by its `format_type` spelling.
fn column_hash(ty: &str) -> ColumnHash {
    let time = ty.starts_with("timestamp") && ty.ends_with(" with time zone")
        || ty.starts_with("time") && ty.ends_with(" without time zone");
    let own = time
        || matches!(
            ty,
            "smallint" | "integer" | "bigint" | "oid" | "boolean" | "date" | "uuid" | "bytea"
        );
    let string = ty == "text"
        || ty == "character varying"
        || ty.starts_with("character varying(")
        || ty.starts_with("character(");
    if own || string {
        ColumnHash::Own { collate: string }
    } else if matches!(ty, "jsonb" | "json" | "real" | "double precision" | "numeric")
        || ty.starts_with("numeric(")
        || ty.starts_with("interval")
    {
        ColumnHash::AsText
    } else {
        ColumnHash::InRecord
    }
}

/// The elements of a `RowHash::Native` row record, in column order, the
/// columns hashed by text form last as one element.
fn native_elements(t: &TableInfo) -> Vec<String> {
    let mut elements = vec![];
    let mut in_record = vec![];
    for (name, ty) in &t.columns {
        let col = format!("t.{}", quote_ident(name));
        match column_hash(ty) {
            ColumnHash::Own { collate: false } => elements.push(col),
            ColumnHash::Own { collate: true } => elements.push(format!("{col} COLLATE \"C\"")),
            ColumnHash::AsText => elements.push(format!("({col})::text COLLATE \"C\"")),
            ColumnHash::InRecord => in_record.push(col),
        }
    }
    if !in_record.is_empty() {
        elements.push(format!("ROW({})::text COLLATE \"C\"", in_record.join(", ")));
    }
    elements
}

/// The count and hash sum query for the rows of `t` that `filter` keeps.
fn hash_sql(t: &TableInfo, method: RowHash, filter: &str) -> String {
    let elements = match method {
        RowHash::Native => native_elements(t),
        RowHash::Text => vec![],
    };
    if !elements.is_empty() {
        // OFFSET 0 keeps the subquery from being flattened, which would
        // compute `h` twice.
        return format!(
            "SELECT count(*), coalesce(sum(hashint8extended(h, h >> 32)), 0)::text \
             FROM (SELECT hash_record_extended(ROW({}), 0) AS h FROM ONLY {} t {filter} OFFSET 0) s",
            elements.join(", "),
            t.qualified()
        );
    }
    format!(
        "SELECT count(*), coalesce(sum(hashtextextended(ROW({})::text, 0)), 0)::text FROM ONLY {} t {filter}",
        t.columns
            .iter()
            .map(|(c, _)| format!("t.{}", quote_ident(c)))
            .collect::<Vec<_>>()
            .join(", "),
        t.qualified()
    )
}

async fn table_hash(pool: &PgPool, t: &TableInfo, method: RowHash, filter: &str) -> Result<(i64, String)> {
    Ok(sqlx::query_as(&hash_sql(t, method, filter))
        .fetch_one(pool)
        .await?)
}

/// The single integer primary-key column of a table, if it has one.
fn integer_key(t: &TableInfo) -> Option<&str> {
    let [pk] = t.primary_key.as_slice() else {
        return None;
    };
    t.columns
        .iter()
        .any(|(n, ty)| n == pk && matches!(ty.as_str(), "smallint" | "integer" | "bigint"))
        .then_some(pk.as_str())
}

/// Key-range filters covering every key for a table larger than
/// `split_bytes` with an integer key (hashed in parallel and summed: the sum
/// of row hashes is additive); one empty filter otherwise.
async fn key_ranges(source: &PgPool, t: &TableInfo, split_bytes: u64) -> Result<Vec<String>> {
    let whole = vec![String::new()];
    let Some(pk) = integer_key(t) else {
        return Ok(whole);
    };
    if split_bytes == 0 || t.bytes as u64 <= split_bytes {
        return Ok(whole);
    }
    let col = format!("t.{}", quote_ident(pk));
    let (lo, hi): (Option<i64>, Option<i64>) = sqlx::query_as(&format!(
        "SELECT min({col})::bigint, max({col})::bigint FROM ONLY {} t",
        t.qualified()
    ))
    .fetch_one(source)
    .await?;
    let (Some(lo), Some(hi)) = (lo, hi) else {
        return Ok(whole);
    };
    let n = (t.bytes as u64).div_ceil(split_bytes).clamp(2, 64) as i128;
    let step = ((hi as i128 - lo as i128) / n + 1).max(1);
    let cuts: Vec<i64> = (1..n)
        .map(|i| (lo as i128 + i * step).min(i64::MAX as i128) as i64)
        .collect();
    let mut filters = vec![];
    for (i, cut) in cuts.iter().enumerate() {
        filters.push(match i {
            0 => format!("WHERE {col} < {cut}"),
            _ => format!("WHERE {col} >= {} AND {col} < {cut}", cuts[i - 1]),
        });
    }
    filters.push(format!("WHERE {col} >= {}", cuts.last().copied().unwrap_or(lo)));
    Ok(filters)
}

/// Count and hash sum of a table, its key ranges hashed concurrently.
async fn split_hash(
    pool: &PgPool,
    t: &TableInfo,
    method: RowHash,
    filters: &[String],
) -> Result<(i64, String)> {
    if let [only] = filters {
        return table_hash(pool, t, method, only).await;
    }
    // Two ranges at a time per server: `jobs` tables are in flight, and the
    // pools hold about two connections per job (a query waiting for a
    // connection longer than connect_timeout would fail).
    // Owned inputs: the stream lives in a spawned task.
    let parts: Vec<(i64, String)> = futures::stream::iter(filters.to_vec())
        .map(|f| {
            let (pool, t) = (pool.clone(), t.clone());
            async move { table_hash(&pool, &t, method, &f).await }
        })
        .buffer_unordered(2)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_>>()?;
    let mut count = 0i64;
    let mut sum = 0i128;
    for (n, h) in parts {
        count += n;
        sum += h
            .parse::<i128>()
            .map_err(|e| Error::failure(format!("unexpected hash sum {h:?}: {e}")))?;
    }
    Ok((count, sum.to_string()))
}

/// Compares the source and the target. `jobs` tables are hashed at once;
/// tables larger than `split_bytes` with an integer key in key ranges.
/// Each extension configuration table's rows that its filter lets pg_dump
/// dump (`pg_extension_config_dump`): count and a hash of their text.
async fn config_rows(pool: &PgPool) -> Result<std::collections::BTreeMap<String, (i64, String)>> {
    let tables: Vec<(String, String)> = sqlx::query_as(
        "SELECT x.tbl::regclass::text, coalesce(x.cond, '') FROM pg_extension e \
         CROSS JOIN LATERAL unnest(e.extconfig, e.extcondition) AS x(tbl, cond) \
         JOIN pg_class c ON c.oid = x.tbl WHERE c.relkind IN ('r', 'p')",
    )
    .fetch_all(pool)
    .await?;
    let mut out = std::collections::BTreeMap::new();
    for (table, cond) in tables {
        let sql = format!(
            "SELECT count(*), coalesce(sum(hashtextextended(t::text, 0)), 0)::text FROM {table} t {cond}"
        );
        let row: (i64, String) = sqlx::query_as(&sql).fetch_one(pool).await?;
        out.insert(table, row);
    }
    Ok(out)
}

pub async fn verify(
    source_pool: &PgPool,
    target_pool: &PgPool,
    journal_schema: &str,
    jobs: usize,
    split_bytes: u64,
    row_hash: RowHashChoice,
    map: &crate::security::RoleMap,
) -> Result<VerifyReport> {
    let (source, target, method) = tokio::try_join!(
        Inventory::read(source_pool, journal_schema, false),
        Inventory::read(target_pool, journal_schema, false),
        RowHash::for_servers(row_hash, source_pool, target_pool)
    )?;
    // Largest first, `jobs` at a time, each slot taking the next table as
    // soon as it is free (in order, a finished table would hold its slot
    // until every table before it finished); reported in inventory order.
    let mut tables: Vec<(usize, TableInfo)> = source.storage_tables().cloned().enumerate().collect();
    tables.sort_by_key(|(_, t)| std::cmp::Reverse(t.bytes));
    let handles: Vec<_> = tables
        .into_iter()
        .map(|(i, t)| {
            let tt = target.table(&t.schema, &t.name).cloned();
            let (s, d) = (source_pool.clone(), target_pool.clone());
            async move {
                (
                    i,
                    verify_table(&s, &d, &t, tt.as_ref(), method, split_bytes).await,
                )
            }
        })
        .collect();
    let mut verdicts = vec![];
    let mut stream =
        futures::stream::iter(handles.into_iter().map(tokio::spawn)).buffer_unordered(jobs.max(1));
    while let Some(v) = stream.next().await {
        let (i, verdict) = v.map_err(|e| Error::failure(format!("a verify task crashed: {e}")))?;
        verdicts.push((i, verdict?));
    }
    verdicts.sort_by_key(|(i, _)| *i);
    let tables: Vec<TableVerdict> = verdicts.into_iter().map(|(_, v)| v).collect();

    let mut sequences = vec![];
    for s in &source.sequences {
        let t = target
            .sequences
            .iter()
            .find(|x| x.schema == s.schema && x.name == s.name);
        let sv = sequence_position(s.last_value, s.is_called);
        match t {
            None => sequences.push((s.qualified(), sv, "missing".into())),
            Some(t) if t.last_value != s.last_value || t.is_called != s.is_called => {
                sequences.push((s.qualified(), sv, sequence_position(t.last_value, t.is_called)))
            }
            Some(_) => {}
        }
    }
    let (src_objects, tgt_objects) = tokio::try_join!(
        schema_objects(source_pool, journal_schema),
        schema_objects(target_pool, journal_schema)
    )?;
    let mut missing_objects: Vec<String> = src_objects.difference(&tgt_objects).cloned().collect();
    // The rows of extensions' configuration tables that pg_dump carries
    // (PostGIS's spatial_ref_sys beyond its own), carried by the copy's
    // extension_config step.
    let (cfg_s, cfg_t) = tokio::try_join!(config_rows(source_pool), config_rows(target_pool))?;
    for (table, rows) in &cfg_s {
        let on_target = cfg_t.get(table);
        if on_target != Some(rows) {
            missing_objects.push(format!(
                "the rows of extension configuration table {table} that pg_dump dumps ({} row(s) on the source, {} \
                 on the target, or different rows)",
                rows.0,
                on_target.map_or(0, |r| r.0)
            ));
        }
    }
    // Each object hashed slice by slice (1 MiB), so none is read whole.
    let lo_sql = "SELECT count(*), coalesce(sum(hashtextextended(m.oid::text || ':' || ( \
                      SELECT coalesce(string_agg(md5(lo_get(m.oid, off, 1048576)), '' ORDER BY off), '') \
                      FROM generate_series(0::bigint, lo_lseek64(lo_open(m.oid, x'40000'::int), 0, 2) - 1, 1048576) off), 0)), 0)::text \
                  FROM pg_largeobject_metadata m";
    let (lo_s, lo_t): ((i64, String), (i64, String)) = tokio::try_join!(
        async { Ok::<_, Error>(sqlx::query_as(lo_sql).fetch_one(source_pool).await?) },
        async { Ok::<_, Error>(sqlx::query_as(lo_sql).fetch_one(target_pool).await?) }
    )?;
    let large_objects_match = lo_s == lo_t;
    let (sec_s, mut sec_t) = tokio::try_join!(
        crate::security::Security::read(source_pool, journal_schema),
        crate::security::Security::read(target_pool, journal_schema)
    )?;
    let version = crate::connect::server_version;
    if version(source_pool).await? < 170000 && version(target_pool).await? >= 170000 {
        sec_t.without_maintain();
    }
    let security = sec_s.mapped(map).differences(&sec_t, 50);
    let ok = tables.iter().all(|t| t.matches)
        && sequences.is_empty()
        && missing_objects.is_empty()
        && large_objects_match
        && security.is_empty();
    Ok(VerifyReport {
        row_hash: method,
        tables,
        sequences_compared: source.sequences.len(),
        sequences,
        missing_objects,
        large_objects: (lo_s.0, lo_t.0),
        large_objects_match,
        security,
        ok,
    })
}

async fn verify_table(
    source: &PgPool,
    target: &PgPool,
    t: &TableInfo,
    tt: Option<&TableInfo>,
    method: RowHash,
    split_bytes: u64,
) -> Result<TableVerdict> {
    let mut v = TableVerdict {
        table: t.display(),
        source_rows: 0,
        target_rows: None,
        source_hash: String::new(),
        target_hash: None,
        matches: false,
        differing_ranges: vec![],
        note: None,
    };
    let Some(tt) = tt else {
        let (n, h) = table_hash(source, t, method, "").await?;
        (v.source_rows, v.source_hash) = (n, h);
        v.note = Some("table missing on the target".into());
        return Ok(v);
    };
    if tt.columns != t.columns {
        let (n, h) = table_hash(source, t, method, "").await?;
        (v.source_rows, v.source_hash) = (n, h);
        v.target_rows = Some(tt.rows);
        v.note = Some("columns differ".into());
        return Ok(v);
    }
    let filters = key_ranges(source, t, split_bytes).await?;
    let ((sn, sh), (tn, th)) = tokio::try_join!(
        split_hash(source, t, method, &filters),
        split_hash(target, t, method, &filters)
    )?;
    v.matches = sn == tn && sh == th;
    (v.source_rows, v.source_hash, v.target_rows, v.target_hash) = (sn, sh, Some(tn), Some(th));
    if !v.matches {
        v.differing_ranges = narrow(source, target, t, method).await?;
    }
    Ok(v)
}

/// For a table with a single integer primary key: the key ranges whose rows
/// differ, found by hashing 16 buckets and splitting differing ones again.
async fn narrow(source: &PgPool, target: &PgPool, t: &TableInfo, method: RowHash) -> Result<Vec<String>> {
    let Some(pk) = integer_key(t) else {
        return Ok(vec![]);
    };
    let col = quote_ident(pk);
    let bounds_sql = format!(
        "SELECT min({col})::bigint, max({col})::bigint FROM ONLY {}",
        t.qualified()
    );
    type Bounds = (Option<i64>, Option<i64>);
    let (a, b): (Bounds, Bounds) = tokio::try_join!(
        async { Ok::<_, Error>(sqlx::query_as(&bounds_sql).fetch_one(source).await?) },
        async { Ok::<_, Error>(sqlx::query_as(&bounds_sql).fetch_one(target).await?) }
    )?;
    let lo = [a.0, b.0].into_iter().flatten().min();
    let hi = [a.1, b.1].into_iter().flatten().max();
    let (Some(lo), Some(hi)) = (lo, hi) else {
        return Ok(vec![]);
    };
    let mut pending = vec![(lo, hi)];
    let mut found: Vec<(i64, i64)> = vec![];
    while let Some((lo, hi)) = pending.pop() {
        if found.len() + pending.len() > 64 {
            found.push((lo, hi));
            continue;
        }
        let width = ((hi - lo) / 16).max(0) + 1;
        let mut start = lo;
        while start <= hi {
            let end = (start + width - 1).min(hi);
            let filter = format!("WHERE {col} BETWEEN {start} AND {end}");
            let (s, d) = tokio::try_join!(
                table_hash(source, t, method, &filter),
                table_hash(target, t, method, &filter)
            )?;
            if s != d {
                if end - start < 16 {
                    found.push((start, end));
                } else {
                    pending.push((start, end));
                }
            }
            start = end + 1;
        }
    }
    // Adjacent ranges read better as one.
    found.sort();
    let mut merged: Vec<(i64, i64)> = vec![];
    for (a, b) in found {
        match merged.last_mut() {
            Some(last) if a <= last.1 + 1 => last.1 = last.1.max(b),
            _ => merged.push((a, b)),
        }
    }
    Ok(merged
        .into_iter()
        .map(|(a, b)| {
            if a == b {
                format!("{pk} {a}")
            } else {
                format!("{pk} {a}..{b}")
            }
        })
        .collect())
}

/// Indexes, constraints, triggers, views, functions and types, by name.
async fn schema_objects(pool: &PgPool, journal_schema: &str) -> Result<BTreeSet<String>> {
    let app = "n.nspname NOT IN ('pg_catalog', 'information_schema', $1) AND n.nspname NOT LIKE 'pg\\_%'";
    let sql = format!(
        "SELECT 'index ' || n.nspname || '.' || c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
           WHERE c.relkind IN ('i', 'I') AND {app} \
         UNION ALL SELECT CASE c.relkind WHEN 'v' THEN 'view ' ELSE 'materialized view ' END || n.nspname || '.' || c.relname \
           FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind IN ('v', 'm') AND {app} \
         UNION ALL SELECT 'constraint ' || k.conname || ' on ' || n.nspname || '.' || c.relname FROM pg_constraint k \
           JOIN pg_class c ON c.oid = k.conrelid JOIN pg_namespace n ON n.oid = c.relnamespace WHERE {app} \
         UNION ALL SELECT 'trigger ' || t.tgname || ' on ' || n.nspname || '.' || c.relname FROM pg_trigger t \
           JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace WHERE NOT t.tgisinternal AND {app} \
         UNION ALL SELECT 'function ' || n.nspname || '.' || p.proname || '(' || pg_get_function_identity_arguments(p.oid) || ')' \
           FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE {app} \
           AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = p.oid AND d.deptype = 'e') \
         UNION ALL SELECT 'type ' || n.nspname || '.' || t.typname FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace \
           WHERE t.typtype IN ('e', 'd') AND {app} AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = t.oid AND d.deptype = 'e') \
         UNION ALL SELECT 'extension ' || extname FROM pg_extension"
    );
    let rows: Vec<String> = sqlx::query_scalar(&sql)
        .bind(journal_schema)
        .fetch_all(pool)
        .await?;
    Ok(rows.into_iter().collect())
}

/// A sequence's position for people: "at 4 (next 5)", "at 4, unused (next 4)".
fn sequence_position(last_value: Option<i64>, is_called: bool) -> String {
    match (last_value, is_called) {
        (Some(v), true) => format!("at {v} (next {})", v.saturating_add(1)),
        (Some(v), false) => format!("at {v}, unused (next {v})"),
        (None, _) => "never used".into(),
    }
}

/// verify-data: what was compared (everything matched, or the stage failed).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VerifyResult {
    pub summary: String,
    pub report: VerifyReport,
}

cutover_core::artefacts!(VerifyResult);

/// The verify-data stage: fails when anything differs.
pub struct VerifyData {
    pub description: Description,
    jobs: usize,
    split_bytes: u64,
    row_hash: RowHashChoice,
    role_map: crate::security::RoleMap,
    /// Compare sequences (not under a snapshot: they are not transactional).
    sequences: bool,
}

impl VerifyData {
    /// Leaves sequences out (the online mode sets them at the switch:
    /// they move outside any snapshot while the applications write).
    pub fn without_sequences(mut self) -> VerifyData {
        self.sequences = false;
        self
    }

    /// The comparison `run` reports and `check` relies on.
    async fn compare(&self, ctx: &RunContext) -> Result<VerifyReport> {
        self.compare_pools(&ctx.source, &ctx.target, ctx.journal.schema())
            .await
    }

    async fn compare_pools(
        &self,
        source: &PgPool,
        target: &PgPool,
        journal_schema: &str,
    ) -> Result<VerifyReport> {
        let mut report = verify(
            source,
            target,
            journal_schema,
            self.jobs,
            self.split_bytes,
            self.row_hash,
            &self.role_map,
        )
        .await?;
        if !self.sequences {
            report.leave_out_sequences();
            report.sequences_compared = 0;
        }
        Ok(report)
    }

    /// `split_bytes`, `row_hash`: the plan's options; `role_map`: its `[roles] map`.
    pub fn new(
        source: &Inventory,
        jobs: usize,
        split_bytes: u64,
        row_hash: RowHashChoice,
        role_map: crate::security::RoleMap,
    ) -> VerifyData {
        VerifyData {
            sequences: true,
            split_bytes,
            row_hash,
            role_map,
            description: Description {
                summary: format!(
                    "compare every table on both servers (exact row count and content hash; {} tables, {} rows), \
                     the schema objects, {} sequences and {} large objects",
                    source.storage_tables().count(),
                    source.rows_text(),
                    source.sequences.len(),
                    source.large_objects
                ),
                details: vec![],
                warnings: vec![],
                destructive: false,
            },
            jobs,
        }
    }
}

#[async_trait]
impl Stage for VerifyData {
    fn name(&self) -> String {
        cutover_core::stage::names::VERIFY_DATA.into()
    }
    fn describe(&self) -> &Description {
        &self.description
    }
    fn undo_kind(&self) -> Undo {
        Undo::Nothing
    }
    async fn run(&self, ctx: &RunContext) -> Result<serde_json::Value> {
        self.verify_pools(&ctx.source, &ctx.target, ctx.journal.schema())
            .await
            .map(|r| cutover_core::artefacts::Artefacts::to_value(&r))
    }
    async fn check(&self, ctx: &RunContext) -> Result<Check> {
        let report = self.compare(ctx).await?;
        Ok(if report.ok {
            Check::Holds
        } else {
            Check::Fails(report.problems().join("; "))
        })
    }
    async fn undo(&self, _ctx: &RunContext) -> Result<String> {
        Ok("nothing to undo".into())
    }
}

impl VerifyData {
    /// Compares `source` with `target` (pools that may read under a
    /// snapshot); an error with every difference when anything differs.
    pub async fn verify_pools(
        &self,
        source: &PgPool,
        target: &PgPool,
        journal_schema: &str,
    ) -> Result<VerifyResult> {
        let report = self.compare_pools(source, target, journal_schema).await?;
        if !report.ok {
            return Err(Error::new(
                ErrorKind::Differences,
                format!(
                    "the target differs from the source: {}",
                    report.problems().join("; ")
                ),
            ));
        }
        let rows: i64 = report.tables.iter().map(|t| t.source_rows).sum();
        let result = VerifyResult {
            summary: format!(
                "{} tables, {rows} rows, {} sequences and {} large objects identical",
                report.tables.len(),
                report.sequences_compared,
                report.large_objects.0
            ),
            report,
        };
        Ok(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_exact_hashes_are_used_as_they_are() {
        for ty in [
            "smallint",
            "integer",
            "bigint",
            "boolean",
            "date",
            "uuid",
            "bytea",
            "timestamp without time zone",
            "timestamp(3) with time zone",
            "time without time zone",
            "time(6) without time zone",
        ] {
            assert_eq!(column_hash(ty), ColumnHash::Own { collate: false }, "{ty}");
        }
        for ty in [
            "text",
            "character varying",
            "character varying(20)",
            "character(4)",
        ] {
            assert_eq!(column_hash(ty), ColumnHash::Own { collate: true }, "{ty}");
        }
        // Their own hash is coarser than their text.
        for ty in [
            "numeric",
            "numeric(10,2)",
            "real",
            "double precision",
            "jsonb",
            "json",
            "interval",
            "interval day to second(3)",
        ] {
            assert_eq!(column_hash(ty), ColumnHash::AsText, "{ty}");
        }
        // No exact hash, or one that differs between databases (an enum's
        // OID), or a text cast that is not the output function (inet, bpchar).
        for ty in [
            "time with time zone",
            "time(3) with time zone",
            "bpchar",
            "integer[]",
            "text[]",
            "inet",
            "mood",
            "public.mood",
            "int4range",
            "money",
            "xml",
        ] {
            assert_eq!(column_hash(ty), ColumnHash::InRecord, "{ty}");
        }
    }
}
