//! The schema rehearsal: the source's schema (pre-data and post-data, no
//! rows; owners and privileges as the copy restores them) restored into a
//! scratch database on the target server before anything destructive, so
//! that every object the target server cannot recreate is named at once
//! while the target is untouched. `cutover plan` runs it (the dry run finds
//! what the run would stop at) and discover runs it again, unless the
//! record of a passed rehearsal says nothing it depends on changed since:
//! the source's schema script (the dump's fingerprint), the target server
//! (its identity, version, roles, tablespaces and available extensions),
//! the tools and the role map. A rehearsal of 10,000 tables costs as much as
//! a whole `pg_dump | psql`, so it does not run twice for nothing.

use std::path::Path;

use cutover_core::endpoint::Endpoint;
use cutover_core::redact::redact_text;
use cutover_core::{Error, Result};
use serde::{Deserialize, Serialize};
use sha2::Digest;

use crate::inventory::quote_ident;
use crate::security::RoleMap;
use crate::tools;

/// What a rehearsal restores, and from where.
#[derive(Debug, Clone)]
pub struct RehearsalSettings<'a> {
    pub source: &'a Endpoint,
    pub target: &'a Endpoint,
    pub role_map: &'a RoleMap,
    pub journal_schema: &'a str,
    /// server_version_num of the source and the target.
    pub versions: (i32, i32),
    /// Roles the source's objects name that the target lacks and no stage
    /// creates: refused with every object that fails, in one list.
    pub lacking_roles: &'a [String],
}

/// Where a rehearsal works and what it keeps.
#[derive(Debug, Clone)]
pub struct RehearsalPlace<'a> {
    /// The scratch database on the target server.
    pub scratch: &'a str,
    /// A private folder for the schema's archive.
    pub dir: &'a Path,
    /// The record of the last rehearsal that passed (read, then written).
    pub record: &'a Path,
    /// First drop every scratch database killed attempts left (a run),
    /// else only this one (a plan, beside which a run may be rehearsing).
    pub sweep: bool,
    /// Who rehearses ("plan", "discover"), for the record.
    pub by: &'a str,
}

/// The record of a rehearsal that passed (`<run_dir>/rehearsal/passed.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Passed {
    /// sha256 of everything the outcome depends on ([`fingerprint`]).
    pub fingerprint: String,
    pub at: chrono::DateTime<chrono::Utc>,
    pub by: String,
    /// How long the restore into the scratch database took.
    pub seconds: f64,
}

/// How a rehearsal went: what to say, and whether it restored the schema
/// itself (`false`: not rehearsed, or a passed record reused).
#[derive(Debug, Clone)]
pub struct Rehearsed {
    pub said: String,
    pub ran: bool,
    /// A rehearsal that passed now or before (not: not rehearsed).
    pub passed: bool,
}

/// sha256, in hex, over the schema script pg_restore makes of the archive
/// (with the arguments the rehearsal restores with), the facts of the
/// target server a restore depends on, the tools' majors and the role map.
/// The script's `\restrict` and `\unrestrict` lines are left out: their key
/// is drawn at random on every run of pg_restore (17.6, 16.10, 15.14 on).
pub fn fingerprint(script: &str, target_facts: &str, tools: (u32, u32), map: &RoleMap) -> String {
    let mut h = sha2::Sha256::new();
    h.update(b"cutover rehearsal 1\n");
    h.update(format!("tools {} {}\n", tools.0, tools.1).as_bytes());
    h.update(format!("roles map {:?}\n", map.0).as_bytes());
    h.update(format!("target {target_facts}\n").as_bytes());
    for line in script.lines() {
        if !(line.starts_with("\\restrict ") || line.starts_with("\\unrestrict ")) {
            h.update(line.as_bytes());
            h.update(b"\n");
        }
    }
    format!("{:x}", h.finalize())
}

/// What of the target server a schema restore depends on, beyond the
/// script: which server and database, its version and locale, its roles,
/// tablespaces and the extensions its packages provide. `None` when the
/// server cannot list its extensions (a package's control file that does
/// not read, e.g. a dangling alternatives link): then what it provides is
/// not known, so a rehearsal is neither reused nor recorded.
async fn target_facts(target: &sqlx::PgPool) -> Result<Option<String>> {
    let id = cutover_core::identity::ServerIdentity::of(target).await?;
    let facts: (String, String, String, String, String) = sqlx::query_as(
        "SELECT pg_encoding_to_char(d.encoding)::text || ' ' || d.datcollate || ' ' || d.datctype, \
                current_setting('server_version_num'), \
                coalesce((SELECT string_agg(rolname::text, ',' ORDER BY rolname) FROM pg_roles), ''), \
                coalesce((SELECT string_agg(spcname::text, ',' ORDER BY spcname) FROM pg_tablespace), ''), \
                coalesce((SELECT string_agg(collname::text, ',' ORDER BY collname) FROM pg_collation), '') \
         FROM pg_database d WHERE d.datname = current_database()",
    )
    .fetch_one(target)
    .await?;
    let extensions: std::result::Result<String, sqlx::Error> = sqlx::query_scalar(
        "SELECT coalesce(string_agg(name || '=' || coalesce(default_version, ''), ',' ORDER BY name), '') \
         FROM pg_available_extensions",
    )
    .fetch_one(target)
    .await;
    let extensions = match extensions {
        Ok(e) => e,
        Err(sqlx::Error::Database(e)) => {
            tracing::warn!(
                "the target server cannot list the extensions its packages provide ({}); the schema \
                 rehearsal runs and is not recorded for reuse",
                e.message()
            );
            return Ok(None);
        }
        Err(e) => return Err(e.into()),
    };
    Ok(Some(format!(
        "{} {} | {} | {} | {} | {} | {} | {}",
        id.system_identifier, id.database, facts.0, facts.1, facts.2, facts.3, extensions, facts.4
    )))
}

/// Where a run directory keeps the record of the last rehearsal that passed.
pub fn record_path(run_dir: &Path) -> std::path::PathBuf {
    run_dir.join("rehearsal").join("passed.json")
}

fn read_record(path: &Path) -> Option<Passed> {
    serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()
}

/// Restores the source's schema into `place.scratch` on the target server
/// (dropped afterwards), unless `place.record` holds a passed rehearsal of
/// the same fingerprint. Ok: what it found to say; Err: every object that
/// fails, each with the server's error and the fix for the known classes.
pub async fn rehearse(
    source: &sqlx::PgPool,
    target: &sqlx::PgPool,
    settings: &RehearsalSettings<'_>,
    place: &RehearsalPlace<'_>,
) -> Result<Rehearsed> {
    let outcome = rehearse_schema(source, target, settings, place).await;
    // Its work files go whatever happened (the record stays where it passed).
    for file in ["schema.dump", "schema.list"] {
        let _ = std::fs::remove_file(place.dir.join(file));
    }
    let failures = match outcome? {
        Ok(rehearsed) if settings.lacking_roles.is_empty() => return Ok(rehearsed),
        Ok(_) => vec![],
        Err(objects) => objects,
    };
    let _ = std::fs::remove_file(place.record);
    Err(refused_with_roles(
        settings.lacking_roles,
        &failures,
        (settings.versions.0 / 10000) as u32,
        settings.versions.1 / 10000,
    ))
}

/// The rehearsal itself: Ok(Err(failures)) when objects do not restore.
async fn rehearse_schema(
    source: &sqlx::PgPool,
    target: &sqlx::PgPool,
    settings: &RehearsalSettings<'_>,
    place: &RehearsalPlace<'_>,
) -> Result<std::result::Result<Rehearsed, Vec<tools::Failure>>> {
    let journal_schema = settings.journal_schema.to_string();
    let (source_version, target_version) = settings.versions;
    let scratch = place.scratch;
    let drop = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", quote_ident(scratch));
    // Scratch databases of killed attempts (this run's or another's) go
    // first; a plan's own only (a run's may be in use).
    let leftovers: Vec<String> = if place.sweep {
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
    let (pg_dump, pg_restore) = tools::for_copy(source_version).await?;
    let dir = place.dir.to_path_buf();
    std::fs::create_dir_all(&dir).map_err(|e| {
        Error::failure(format!(
            "cannot create {} ({e}): make the run directory writable, or set options.run_dir to a folder that is",
            dir.display()
        ))
    })?;
    let archive = dir.join("schema.dump");
    let prepared = async {
        let mut cmd = tools::command(&pg_dump, settings.source);
        cmd.args(["--format=custom", "--schema-only"])
            .arg(format!("--exclude-schema={}", quote_ident(&journal_schema)))
            .arg(format!("--file={}", archive.display()));
        tools::run(cmd, "pg_dump --schema-only of the source").await?;
        // Roles create-roles has yet to make: their owners, grants and
        // policies cannot be rehearsed before it runs (discover checked the
        // roles themselves).
        let map = settings.role_map;
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
        // The script the restore runs, for the fingerprint.
        let mut cmd = tools::offline(&pg_restore);
        cmd.args(&args).arg("--file=-");
        let script = tools::run(cmd, "pg_restore --file=- of the source's schema").await?;
        let print = target_facts(target)
            .await?
            .map(|facts| fingerprint(&script, &facts, (pg_dump.major, pg_restore.major), map));
        Ok::<_, Error>((args, roles_pending, print))
    }
    .await;
    let (args, roles_pending, print) = match prepared {
        Ok(p) => p,
        Err(e) => {
            let _ = std::fs::remove_file(&archive);
            return Err(e);
        }
    };
    let what_of = |roles_pending: bool| {
        format!(
            "the source's schema restored into a scratch database on the target server ({} -> {}){}",
            pg_dump.major,
            target_version / 10000,
            if roles_pending {
                " (without owners, privileges and policies: create-roles makes their roles later)"
            } else {
                ""
            }
        )
    };
    let reused = print
        .as_ref()
        .and_then(|print| read_record(place.record).filter(|p| &p.fingerprint == print));
    if let Some(prev) = reused {
        let _ = std::fs::remove_file(&archive);
        return Ok(Ok(Rehearsed {
            said: format!(
                "{} by {} at {} ({:.1} s); the source's schema, the target server and the tools are unchanged \
                 since (fingerprint {}), so it is not restored again",
                what_of(roles_pending),
                prev.by,
                prev.at.format("%Y-%m-%d %H:%M:%S UTC"),
                prev.seconds,
                &prev.fingerprint[..12]
            ),
            ran: false,
            passed: true,
        }));
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
        let _ = std::fs::remove_file(&archive);
        return Ok(Ok(Rehearsed {
            said: format!(
                "not rehearsed: the target user may not create a scratch database ({}); a schema object the \
                 target server cannot recreate shows only in the copy, after clear-target (the backup restores \
                 the target)",
                redact_text(&e.to_string())
            ),
            ran: false,
            passed: false,
        }));
    }
    let started = std::time::Instant::now();
    let result = async {
        let scratch_ep = settings.target.with_database(scratch);
        let map = settings.role_map;
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
        let failures = failures?;
        if !failures.is_empty() {
            return Ok(Err(failures));
        }
        Ok(Ok(what_of(roles_pending)))
    }
    .await;
    let _ = std::fs::remove_file(&archive);
    let seconds = started.elapsed().as_secs_f64();
    // Best effort: the rehearsal's own error is the one to show.
    let dropped = sqlx::query(&drop).execute(target).await;
    let said = match result {
        Ok(Ok(said)) => said,
        other => {
            // A record of an earlier pass no longer holds.
            let _ = std::fs::remove_file(place.record);
            return other.map(|failed| Err(failed.err().unwrap_or_default()));
        }
    };
    dropped?;
    let Some(print) = print else {
        // What the target server provides is not known: nothing to reuse.
        let _ = std::fs::remove_file(place.record);
        return Ok(Ok(Rehearsed {
            said,
            ran: true,
            passed: true,
        }));
    };
    let record = Passed {
        fingerprint: print,
        at: chrono::Utc::now(),
        by: place.by.to_string(),
        seconds,
    };
    // Kept where it can be: without it the next rehearsal only runs again.
    let kept = place
        .record
        .parent()
        .map_or(Ok(()), std::fs::create_dir_all)
        .map_err(|e| Error::failure(e.to_string()))
        .and_then(|_| {
            tools::write_private(
                place.record,
                &serde_json::to_string_pretty(&record).expect("a record serializes"),
            )
        });
    if let Err(e) = kept {
        tracing::warn!("the rehearsal's record was not kept ({e}); the next one restores the schema again");
    }
    Ok(Ok(Rehearsed {
        said,
        ran: true,
        passed: true,
    }))
}

/// Every object of the source's schema that does not restore on the target
/// server, each with the server's error and, for the known classes, what
/// to do; nothing was changed.
pub fn rehearsal_refused(failures: &[tools::Failure], source_major: u32, target_major: i32) -> Error {
    refused_with_roles(&[], failures, source_major, target_major)
}

/// The refusal for roles the target lacks (no stage creates them) and every
/// object that does not restore, in one list: one pass, every problem.
fn refused_with_roles(
    lacking: &[String],
    failures: &[tools::Failure],
    source_major: u32,
    target_major: i32,
) -> Error {
    let roles = lacking.iter().map(|r| tools::Failure {
        object: format!("ROLE {r} (named by the source's owners, privileges, policies or settings)"),
        error: format!("role \"{r}\" does not exist on the target server, and [roles] create_missing is off"),
    });
    let lines: Vec<String> = roles
        .chain(failures.iter().cloned())
        .map(|f| match known_class(&f, source_major, target_major) {
            Some(fix) => format!("{}: {} — {fix}", f.object, f.error),
            None => format!("{}: {}", f.object, f.error),
        })
        .collect();
    let mut what = vec![];
    if !lacking.is_empty() {
        what.push(format!(
            "the target server lacks {} role(s) that the source's owners, privileges, policies or settings name: \
             {} (the copy would fail, or the applications lose what they may do)",
            lacking.len(),
            lacking.join(", ")
        ));
    }
    if !failures.is_empty() {
        what.push(format!(
            "the source's schema does not restore on the target server: {} object(s) fail",
            failures.len()
        ));
    }
    let mut hint = vec![];
    if !lacking.is_empty() {
        hint.push(
            "create the roles on the target (CREATE ROLE …), or let cutover create them from the source's \
             attributes, without passwords: [roles] create_missing = true",
        );
    }
    if !failures.is_empty() {
        hint.push(
            "give the target server what each object needs (a role, a tablespace, an extension's package, a \
             library), or change the object on the source",
        );
    }
    Error::refused(format!(
        "{}; nothing was changed. Fix these, then run again:\n  - {}",
        what.join("; and "),
        lines.join("\n  - ")
    ))
    .with_hint(hint.join("; "))
}

/// The fix for a known class of restore failure, in plain words.
fn known_class(f: &tools::Failure, source_major: u32, target_major: i32) -> Option<String> {
    let error = &f.error;
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
    } else if code == Some("42611") && source_major < 16 && target_major >= 16 {
        // "child column "b" specifies generation expression", in the
        // server's language: only the SQLSTATE is the same everywhere.
        format!(
            "a child table whose column is generated while its parent's is not, which PostgreSQL 16 and newer \
             refuse (the source runs {source_major}): on the source, detach the child (ALTER TABLE child NO \
             INHERIT parent), make its column plain (ALTER TABLE child ALTER COLUMN c DROP EXPRESSION) and attach \
             it again, or give the parent's column the same generation expression"
        )
    } else if code == Some("42P01") && refers_to_itself(f) {
        // The source keeps a view that selects from itself (CREATE OR
        // REPLACE VIEW made it; querying it fails with "infinite recursion"):
        // its dump cannot create it.
        "a view that selects from itself (on the source it fails whenever it is queried, with \"infinite \
         recursion detected in rules\"): fix its definition on the source, or drop it"
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

/// A view whose restore fails because the relation it does not find is
/// itself ("VIEW public.v (owner o)", `relation "public.v" does not exist`).
fn refers_to_itself(f: &tools::Failure) -> bool {
    let Some(rest) = f
        .object
        .strip_prefix("VIEW ")
        .or_else(|| f.object.strip_prefix("MATERIALIZED VIEW "))
    else {
        return false;
    };
    let name = rest.split(" (").next().unwrap_or(rest);
    f.error.split('"').skip(1).step_by(2).any(|quoted| quoted == name)
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

    #[test]
    fn a_view_that_selects_from_itself_is_told_from_one_that_lacks_another() {
        let f = |object: &str, error: &str| crate::tools::Failure {
            object: object.into(),
            error: error.into(),
        };
        assert!(super::refers_to_itself(&f(
            "VIEW public.loop_a (owner app)",
            "relation \"public.loop_a\" does not exist (SQLSTATE 42P01)"
        )));
        assert!(super::refers_to_itself(&f(
            "VIEW public.loop_a",
            "relation \"public.loop_a\" does not exist (SQLSTATE 42P01)"
        )));
        assert!(!super::refers_to_itself(&f(
            "VIEW public.loop_a",
            "relation \"public.other\" does not exist (SQLSTATE 42P01)"
        )));
        assert!(!super::refers_to_itself(&f(
            "TABLE public.loop_a",
            "relation \"public.loop_a\" does not exist (SQLSTATE 42P01)"
        )));
    }

    #[test]
    fn the_fingerprint_ignores_the_restrict_key_and_nothing_else() {
        let map = crate::security::RoleMap(Default::default());
        let script = |key: &str, table: &str| {
            format!("\\restrict {key}\nSET x = 1;\nCREATE TABLE {table} (id int);\n\\unrestrict {key}\n")
        };
        let print = |script: &str, facts: &str| super::fingerprint(script, facts, (15, 15), &map);
        let first = print(&script("4ZdUu2Ibl6Iyrd", "a"), "facts");
        assert_eq!(first, print(&script("KJmj6k3DAXISEk", "a"), "facts"));
        assert_ne!(first, print(&script("4ZdUu2Ibl6Iyrd", "b"), "facts"));
        assert_ne!(first, print(&script("4ZdUu2Ibl6Iyrd", "a"), "other facts"));
        assert_ne!(
            first,
            super::fingerprint(&script("4ZdUu2Ibl6Iyrd", "a"), "facts", (15, 17), &map)
        );
    }
}
