//! discover: inspect both databases, refuse the same database twice, and run
//! the direction check (the target must not look like the live database).

use cutover_core::endpoint::Endpoint;
use cutover_core::journal::ItemKey;

use crate::security::RoleMap;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use cutover_core::artefacts::Artefacts;
use cutover_core::stage::{Check, Description, RunContext, Stage, Undo};
use cutover_core::{Error, Result};
use serde::{Deserialize, Serialize};

use cutover_core::endpoint::redact_text;

use crate::inventory::{Comparison, Inventory, compare, quote_ident};
use crate::tools;

pub struct Discover {
    pub description: Description,
    allow_target_ahead: bool,
    settings: DiscoverSettings,
    /// The inspection the plan was built from, and when it was taken.
    planned: (Inventory, Inventory, Comparison, Instant),
}

/// discover: both databases as they were found, and how they compare.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct DiscoverResult {
    pub summary: String,
    /// The schema rehearsal's outcome.
    pub rehearsal: String,
    /// Whose inspection this is (the plan's or the stage's own).
    pub inspection: String,
    pub source: SideFacts,
    pub target: SideFacts,
    pub comparison: Comparison,
}

/// One database as discover found it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct SideFacts {
    pub tables: usize,
    pub rows: i64,
    pub place: String,
    /// (table, rows) of every table.
    pub table_rows: Vec<(String, i64)>,
    /// Tables whose rows are the statistics' estimate.
    pub rows_estimated: Vec<String>,
}

impl SideFacts {
    fn of(inv: &Inventory) -> SideFacts {
        SideFacts {
            tables: inv.tables.len(),
            rows: inv.total_rows(),
            place: inv.identity.place(),
            table_rows: inv.storage_tables().map(|t| (t.display(), t.rows)).collect(),
            rows_estimated: inv
                .storage_tables()
                .filter(|t| t.rows_estimated)
                .map(|t| t.display())
                .collect(),
        }
    }

    /// Rows of one table, if it was there.
    pub fn rows_of(&self, table: &str) -> Option<i64> {
        self.table_rows.iter().find(|(t, _)| t == table).map(|(_, n)| *n)
    }
}

cutover_core::artefacts!(DiscoverResult);

/// How old the plan's own inspection may be for discover to record it rather
/// than count every row again (the same invocation, no wait for a
/// confirmation in between). Counting a large database takes seconds.
const REUSE_WITHIN: Duration = Duration::from_secs(10);

/// What discover takes from the plan, resolved when the plan is built.
#[derive(Debug, Clone)]
pub struct DiscoverSettings {
    pub source: Endpoint,
    pub target: Endpoint,
    /// options.rehearse_schema
    pub rehearse_schema: bool,
    pub role_map: RoleMap,
}

impl Discover {
    pub fn new(
        source: &Inventory,
        target: &Inventory,
        cmp: &Comparison,
        allow_target_ahead: bool,
        settings: DiscoverSettings,
    ) -> Discover {
        let mut details = vec![summary("source", source), summary("target", target)];
        if !cmp.only_source.is_empty() {
            details.push(format!("only on the source: {}", cmp.only_source.join(", ")));
        }
        if !cmp.only_target.is_empty() {
            details.push(format!("only on the target: {}", cmp.only_target.join(", ")));
        }
        let mut warnings = vec![];
        if !cmp.target_ahead.is_empty() {
            warnings.push(format!(
                "the target looks like the live database: {}{}",
                cmp.target_ahead.join("; "),
                if allow_target_ahead {
                    " (allowed by allow_ahead / --allow-target-ahead)"
                } else {
                    ""
                }
            ));
        }
        Discover {
            description: Description {
                summary: "inspect both databases, check they are different servers and that the source is the live one"
                    .into(),
                details,
                warnings,
                destructive: false,
            },
            allow_target_ahead,
            settings,
            planned: (source.clone(), target.clone(), cmp.clone(), Instant::now()),
        }
    }
}

fn summary(label: &str, inv: &Inventory) -> String {
    format!(
        "{label}: {} tables, {} rows, {} sequences, {} large objects (database {}, PostgreSQL {})",
        inv.tables.len(),
        inv.rows_text(),
        inv.sequences.len(),
        inv.large_objects,
        inv.identity.database,
        inv.identity.version
    )
}

/// Restores the source's schema (pre-data and post-data, no rows; owners and
/// privileges as the copy restores them) into a scratch database on the
/// target server, before anything destructive: an object the target server
/// cannot recreate (a tablespace or an extension it lacks, a newer server's
/// syntax) is refused here, naming it, while the target is untouched.
/// Without CREATEDB it says so and leaves the check to the copy.
async fn rehearse(
    ctx: &RunContext,
    settings: &DiscoverSettings,
    source_version: i32,
    target_version: i32,
) -> Result<String> {
    if !settings.rehearse_schema {
        return Ok("not rehearsed (options.rehearse_schema = false)".into());
    }
    let done = ctx.journal.items_done(ctx.run_id, "discover").await?;
    if done.contains(&ItemKey::SchemaRehearsal) {
        return Ok(
            "the source's schema restored on the target server (an earlier attempt of this run)".into(),
        );
    }
    let journal_schema = ctx.journal.schema().to_string();
    let scratch = format!("cutover_rehearsal_{}", &ctx.run_id.simple().to_string()[..12]);
    let summary = rehearse_into(
        &ctx.source,
        &ctx.target,
        settings,
        &journal_schema,
        (source_version, target_version),
        &scratch,
        &ctx.run_dir.join("rehearsal"),
        true,
    )
    .await?;
    // Journaled only when it ran (without CREATEDB it says why it did not).
    if !summary.starts_with("not rehearsed") {
        ctx.journal
            .item_done(
                ctx.run_id,
                &cutover_core::journal::Item::new("discover", &ItemKey::SchemaRehearsal),
            )
            .await?;
    }
    Ok(summary)
}

/// The rehearsal itself: the source's schema restored into scratch
/// database `scratch` on the target server (its dump in `dir`), dropped
/// afterwards. `sweep`: first drop every scratch database killed attempts
/// left (a run), else only this one (a plan, beside which a run may be
/// rehearsing). Ok: what it found to say; Err: every object that fails.
#[allow(clippy::too_many_arguments)]
pub async fn rehearse_into(
    source: &sqlx::PgPool,
    target: &sqlx::PgPool,
    settings: &DiscoverSettings,
    journal_schema: &str,
    (source_version, target_version): (i32, i32),
    scratch: &str,
    dir: &std::path::Path,
    sweep: bool,
) -> Result<String> {
    let journal_schema = journal_schema.to_string();
    let drop = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", quote_ident(scratch));
    // Scratch databases of killed attempts (this run's or another's) go
    // first; a plan's own only (a run's may be in use).
    let leftovers: Vec<String> = if sweep {
        sqlx::query_scalar(
            "SELECT datname::text FROM pg_database WHERE datname LIKE 'cutover\\_rehearsal\\_%'",
        )
        .fetch_all(target)
        .await?
    } else {
        vec![scratch.to_string()]
    };
    for db in leftovers {
        let _ = sqlx::query(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            quote_ident(&db)
        ))
        .execute(target)
        .await;
    }
    // From template0 with the target database's encoding and locale: what
    // an administrator added to template1 must not fail the rehearsal, and a
    // collation the target lacks must.
    let (encoding, collate, ctype): (String, String, String) = sqlx::query_as(
        "SELECT pg_encoding_to_char(encoding)::text, datcollate::text, datctype::text FROM pg_database \
         WHERE datname = current_database()",
    )
    .fetch_one(target)
    .await?;
    if let Err(e) = sqlx::query(&format!(
        "CREATE DATABASE {} TEMPLATE template0 ENCODING {} LC_COLLATE {} LC_CTYPE {}",
        quote_ident(scratch),
        crate::inventory::quote_literal(&encoding),
        crate::inventory::quote_literal(&collate),
        crate::inventory::quote_literal(&ctype)
    ))
    .execute(target)
    .await
    {
        return Ok(format!(
            "not rehearsed: the target user may not create a scratch database ({}); a schema object the target \
             server cannot recreate shows only in the copy, after clear-target (the backup restores the target)",
            redact_text(&e.to_string())
        ));
    }
    let result = async {
        let (pg_dump, pg_restore) = tools::for_copy(source_version).await?;
        let dir = dir.to_path_buf();
        std::fs::create_dir_all(&dir).map_err(|e| {
            Error::failure(format!(
                "cannot create {} ({e}): make the run directory writable, or set options.run_dir to a folder \
                 that is",
                dir.display()
            ))
        })?;
        let archive = dir.join("schema.dump");
        let mut cmd = tools::command(&pg_dump, &settings.source);
        cmd.args(["--format=custom", "--schema-only"])
            .arg(format!("--exclude-schema={}", quote_ident(&journal_schema)))
            .arg(format!("--file={}", archive.display()));
        tools::run(cmd, "pg_dump --schema-only of the source").await?;
        let scratch_ep = settings.target.with_database(scratch);
        // Roles create-roles has yet to make: their owners, grants and
        // policies cannot be rehearsed before it runs (discover checked the
        // roles themselves).
        let map = &settings.role_map;
        let sec = crate::security::Security::read(source, &journal_schema)
            .await?
            .mapped(map);
        let on_target = crate::security::roles_of(target).await?;
        let roles_pending = sec.roles.iter().any(|r| !on_target.contains(r));
        let mut args: Vec<String> = vec![];
        if roles_pending {
            let mut cmd = tools::offline(&pg_restore);
            cmd.arg("--list").arg(&archive);
            let list = tools::run(cmd, "pg_restore --list of the source's schema").await?;
            let kept: String = list
                .lines()
                .filter(|l| !l.contains(" POLICY "))
                .map(|l| format!("{l}\n"))
                .collect();
            let list_file = dir.join("schema.list");
            tools::write_private(&list_file, &kept)?;
            args.extend([
                "--no-owner".to_string(),
                "--no-privileges".into(),
                format!("--use-list={}", list_file.display()),
            ]);
        }
        args.push(archive.display().to_string());
        let what = "pg_restore of the source's schema into a scratch database";
        // Every object that does not restore, in one pass (through the psql
        // beside pg_restore); without one, the first.
        let failures = if pg_restore.sibling("psql").is_some() {
            tools::restore_collecting(
                &pg_restore,
                &scratch_ep,
                (target_version / 10000) as u32,
                &args,
                map,
                what,
            )
            .await
        } else {
            let mut first = vec!["--exit-on-error".to_string()];
            first.extend(args.iter().cloned());
            tools::restore(
                &pg_restore,
                &scratch_ep,
                (target_version / 10000) as u32,
                &first,
                &[],
                map,
                what,
            )
            .await
            .map(|_| vec![])
            .or_else(|e| {
                Ok::<_, Error>(vec![tools::Failure {
                    object: failed_object(&e.message).unwrap_or_else(|| "an object".into()),
                    error: e.message,
                }])
            })
        };
        let _ = std::fs::remove_file(&archive);
        let failures = failures?;
        if !failures.is_empty() {
            return Err(rehearsal_refused(
                &failures,
                pg_dump.major,
                target_version / 10000,
            ));
        }
        Ok(format!(
            "the source's schema restored into a scratch database on the target server ({} -> {}){}",
            pg_dump.major,
            target_version / 10000,
            if roles_pending {
                " (without owners, privileges and policies: create-roles makes their roles later)"
            } else {
                ""
            }
        ))
    }
    .await;
    // Best effort: the rehearsal's own error is the one to show.
    let dropped = sqlx::query(&drop).execute(target).await;
    let summary = result?;
    dropped?;
    Ok(summary)
}

/// Every object of the source's schema that does not restore on the target
/// server, each with the server's error and, for the known classes, what
/// to do; nothing was changed.
pub fn rehearsal_refused(failures: &[tools::Failure], source_major: u32, target_major: i32) -> Error {
    let lines: Vec<String> = failures
        .iter()
        .map(|f| match known_class(&f.error, source_major, target_major) {
            Some(fix) => format!("{}: {} — {fix}", f.object, f.error),
            None => format!("{}: {}", f.object, f.error),
        })
        .collect();
    Error::refused(format!(
        "the source's schema does not restore on the target server: {} object(s) fail; nothing was changed. Fix \
         these, then run again:\n  - {}",
        failures.len(),
        lines.join("\n  - ")
    ))
    .with_hint(
        "give the target server what each object needs (a role, a tablespace, an extension's package, a library), \
         or change the object on the source",
    )
}

/// The fix for a known class of restore failure, in plain words.
fn known_class(error: &str, source_major: u32, target_major: i32) -> Option<String> {
    let e = error.to_lowercase();
    let code = error.rsplit("(SQLSTATE ").next().map(|c| c.trim_end_matches(')'));
    Some(if e.contains("role") && e.contains("does not exist") {
        "a role the target server lacks: create it there, or use [roles] create_missing or [roles.map]".into()
    } else if e.contains("tablespace") {
        "a tablespace the target server lacks: CREATE TABLESPACE there, or move the object on the source"
            .into()
    } else if e.contains("extension control file") || (e.contains("extension") && e.contains("not available"))
    {
        "an extension whose package the target server lacks: install it there (Debian: postgresql-<major>-<name>)"
            .into()
    } else if e.contains("could not access file") || e.contains("could not load library") {
        "a C function whose shared library the target server lacks: install that library there".into()
    } else if e.contains("icu") {
        "an ICU collation on a target server built without ICU: use a server with ICU, or a libc collation"
            .into()
    } else if e.contains("infinite recursion") {
        "a view that refers to itself: fix its definition on the source".into()
    } else if matches!(code, Some("42601" | "42703" | "42883" | "42704"))
        && i64::from(source_major) > i64::from(target_major)
    {
        format!(
            "syntax or a function the target's PostgreSQL {target_major} does not know (the source runs \
             {source_major}): change the object on the source, or use a target of version {source_major} or newer"
        )
    } else {
        return None;
    })
}

/// The archive entry a pg_restore failure names ("from TOC entry 215; 1259
/// 16390 TABLE books kit_admin" → "TABLE books, owner kit_admin").
fn failed_object(stderr: &str) -> Option<String> {
    let at = stderr.find("from TOC entry ")?;
    let rest = &stderr[at..];
    let rest = rest.split(" | ").next().unwrap_or(rest);
    let words: Vec<&str> = rest.split(';').nth(1)?.split_whitespace().skip(2).collect();
    match words.as_slice() {
        [] => None,
        [.., owner] if words.len() >= 3 => {
            Some(format!("{}, owner {owner}", words[..words.len() - 1].join(" ")))
        }
        _ => Some(words.join(" ")),
    }
}

/// The refusal when the target looks ahead of the source.
pub fn target_ahead_error(reasons: &[String]) -> Error {
    Error::refused(format!(
        "the target looks like the live database, not the source: {}. Clearing it would lose that data. Check that \
         [source] and [target] are not swapped; if the target's extra data really is stale, run again with \
         --allow-target-ahead (or set allow_ahead = true under [target])",
        reasons.join("; ")
    ))
}

#[async_trait]
impl Stage for Discover {
    fn name(&self) -> String {
        "discover".into()
    }
    fn describe(&self) -> &Description {
        &self.description
    }
    fn undo_kind(&self) -> Undo {
        Undo::Nothing
    }
    async fn run(&self, ctx: &RunContext) -> Result<serde_json::Value> {
        let (s, t, c, at) = &self.planned;
        let (source, target, cmp, fresh) = match at.elapsed() < REUSE_WITHIN {
            true => (s.clone(), t.clone(), c.clone(), true),
            false => {
                let schema = ctx.journal.schema();
                let (source, target) = tokio::try_join!(
                    Inventory::read(&ctx.source, schema, true),
                    Inventory::read(&ctx.target, schema, true)
                )?;
                let cmp = compare(&source, &target, &ctx.source, &ctx.target).await?;
                (source, target, cmp, false)
            }
        };
        if !cmp.target_ahead.is_empty() && !self.allow_target_ahead {
            return Err(target_ahead_error(&cmp.target_ahead));
        }
        let rehearsal = rehearse(
            ctx,
            &self.settings,
            source.identity.version_num,
            target.identity.version_num,
        )
        .await?;
        let result = DiscoverResult {
            summary: format!(
                "source {} tables / {} rows, target {} tables / {} rows",
                source.tables.len(),
                source.rows_text(),
                target.tables.len(),
                target.rows_text()
            ),
            rehearsal,
            inspection: if fresh {
                "the plan's, taken moments before"
            } else {
                "taken by this stage"
            }
            .into(),
            source: SideFacts::of(&source),
            target: SideFacts::of(&target),
            comparison: cmp,
        };
        Ok(result.to_value())
    }
    async fn check(&self, _ctx: &RunContext) -> Result<Check> {
        Ok(Check::Holds)
    }
    async fn undo(&self, _ctx: &RunContext) -> Result<String> {
        Ok("nothing to undo".into())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_failed_restore_names_its_object() {
        let stderr = "pg_restore failed (exit status: 1): pg_restore: while PROCESSING TOC: | pg_restore: from TOC \
                      entry 215; 1259 16390 TABLE books kit_admin | pg_restore: error: could not execute query";
        assert_eq!(
            super::failed_object(stderr).as_deref(),
            Some("TABLE books, owner kit_admin")
        );
        assert_eq!(super::failed_object("no entry"), None);
    }
}
