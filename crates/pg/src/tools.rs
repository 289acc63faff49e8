//! The trusted PostgreSQL client tools (pg_dump, pg_restore): finding them,
//! checking their version against the server, and running them with the
//! password in the environment, never on the command line.

use std::path::PathBuf;
use std::process::Stdio;

use cutover_core::endpoint::Endpoint;
use cutover_core::redact::redact_text;
use cutover_core::{Error, Result};
use tokio::process::Command;

/// One PostgreSQL client program and the major version it reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tool {
    pub path: PathBuf,
    pub major: u32,
}

impl Tool {
    /// A program of the same installation (psql beside pg_restore).
    pub fn sibling(&self, name: &str) -> Option<PathBuf> {
        let p = self.path.with_file_name(name);
        p.is_file().then_some(p)
    }
}

impl AsRef<std::path::Path> for Tool {
    fn as_ref(&self) -> &std::path::Path {
        &self.path
    }
}

/// The folders searched for client tools: `$CUTOVER_PG_BINDIR` alone when
/// set (an explicit choice, honoured strictly), else `PATH`, then the usual
/// install folders (Debian's `/usr/lib/postgresql/*/bin`, the PGDG RPMs'
/// `/usr/pgsql-*/bin`, `/usr/local/pgsql/bin`, Homebrew's
/// `postgresql@*`).
fn search_dirs() -> Vec<PathBuf> {
    if let Some(dir) = std::env::var_os("CUTOVER_PG_BINDIR") {
        return std::env::split_paths(&dir).collect();
    }
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    for (parent, prefix, suffix) in [
        ("/usr/lib/postgresql", "", "bin"),
        ("/usr", "pgsql-", "bin"),
        ("/opt/homebrew/opt", "postgresql@", "bin"),
        ("/usr/local/opt", "postgresql@", "bin"),
    ] {
        let mut found: Vec<PathBuf> = std::fs::read_dir(parent)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| {
                e.file_name()
                    .to_str()
                    .is_some_and(|n| n.starts_with(prefix) && n.len() > prefix.len())
            })
            .map(|e| e.path().join(suffix))
            .collect();
        found.sort();
        dirs.extend(found);
    }
    dirs.push(PathBuf::from("/usr/local/pgsql/bin"));
    dirs
}

/// Every installation of `tool` found, with its major version, without
/// duplicates (a folder on PATH that links into another).
pub async fn candidates(tool: &str) -> Vec<Tool> {
    let mut seen = std::collections::HashSet::new();
    let mut out = vec![];
    for dir in search_dirs() {
        let p = dir.join(tool);
        if !p.is_file() {
            continue;
        }
        let real = std::fs::canonicalize(&p).unwrap_or(p.clone());
        if !seen.insert(real) {
            continue;
        }
        if let Ok(major) = major_version(&p).await {
            out.push(Tool { path: p, major });
        }
    }
    out
}

fn where_looked() -> String {
    if let Some(dir) = std::env::var_os("CUTOVER_PG_BINDIR") {
        format!("CUTOVER_PG_BINDIR={}", PathBuf::from(dir).display())
    } else {
        "PATH, /usr/lib/postgresql/*/bin, /usr/pgsql-*/bin, /usr/local/pgsql/bin".into()
    }
}

/// The installation of `tool` whose major is at least `min_major` and as low
/// as possible (the closest to the servers; a newer pg_restore writes
/// settings an older server does not know), preferring `near`'s folder.
pub async fn select(tool: &str, min_major: u32, near: Option<&Tool>, why: &str) -> Result<Tool> {
    let all = candidates(tool).await;
    let mut fit: Vec<&Tool> = all.iter().filter(|t| t.major >= min_major).collect();
    fit.sort_by_key(|t| (t.major, near.is_none_or(|n| n.path.parent() != t.path.parent())));
    if let Some(t) = fit.first() {
        return Ok((*t).clone());
    }
    let found = if all.is_empty() {
        "none found".to_string()
    } else {
        "found ".to_string()
            + &all
                .iter()
                .map(|t| format!("{} ({})", t.path.display(), t.major))
                .collect::<Vec<_>>()
                .join(", ")
    };
    Err(Error::failure(format!(
        "no {tool} of PostgreSQL {min_major} or newer, which {why}: {found} (looked in {})",
        where_looked()
    ))
    .with_hint(format!(
        "install the PostgreSQL {min_major} client tools (Debian: apt-get install postgresql-client-{min_major}) or \
         set CUTOVER_PG_BINDIR to their bin folder"
    )))
}

/// The tools of a whole cutover, chosen before anything changes.
#[derive(Debug, Clone)]
pub struct Toolset {
    /// Dumps the source (at least the source's major).
    pub pg_dump: Tool,
    /// Restores the source's schema into the target (reads pg_dump's archive).
    pub pg_restore: Tool,
    /// Dumps and proves the target's backup (at least the target's major).
    pub backup_dump: Tool,
    pub backup_restore: Tool,
    pub source_major: u32,
    pub target_major: u32,
}

impl Toolset {
    pub async fn choose(source_version_num: i32, target_version_num: i32) -> Result<Toolset> {
        let (source_major, target_major) = (
            (source_version_num / 10000) as u32,
            (target_version_num / 10000) as u32,
        );
        let (pg_dump, pg_restore) = for_copy(source_version_num).await?;
        let (backup_dump, backup_restore) = for_backup(target_version_num).await?;
        let set = Toolset {
            pg_dump,
            pg_restore,
            backup_dump,
            backup_restore,
            source_major,
            target_major,
        };
        for r in [&set.pg_restore, &set.backup_restore] {
            if needs_filter(r, target_major) && r.sibling("psql").is_none() {
                return Err(Error::failure(format!(
                    "{} (PostgreSQL {}) sets transaction_timeout, which the target (PostgreSQL {target_major}) does \
                     not know; cutover then restores through the psql beside it, and there is none",
                    r.path.display(),
                    r.major
                ))
                .with_hint("install that version's psql too, or the target's own client tools"));
            }
        }
        Ok(set)
    }

    /// One line for the plan.
    pub fn describe(&self) -> String {
        let mut s = format!(
            "pg_dump {} and pg_restore {} for the source's schema ({} -> {})",
            self.pg_dump.major,
            self.pg_restore.major,
            self.pg_dump.path.display(),
            self.pg_restore.path.display()
        );
        if self.backup_dump != self.pg_dump {
            s.push_str(&format!(
                "; pg_dump {} for the target's backup",
                self.backup_dump.major
            ));
        }
        if needs_filter(&self.pg_restore, self.target_major) {
            s.push_str(&format!(
                "; pg_restore {} restores through psql without its `SET transaction_timeout` (unknown to \
                 PostgreSQL {})",
                self.pg_restore.major, self.target_major
            ));
        }
        s
    }
}

/// pg_dump and pg_restore for the source's schema: pg_dump at least the
/// source's major, pg_restore able to read its archive.
pub async fn for_copy(source_version_num: i32) -> Result<(Tool, Tool)> {
    dump_and_restore(source_version_num, "the source", "of the source").await
}

/// pg_dump and pg_restore for the target's backup and its proof.
pub async fn for_backup(target_version_num: i32) -> Result<(Tool, Tool)> {
    dump_and_restore(target_version_num, "the target's backup", "the target's backup").await
}

async fn dump_and_restore(version_num: i32, dumped: &str, archive: &str) -> Result<(Tool, Tool)> {
    let major = (version_num / 10000) as u32;
    let pg_dump = select(
        "pg_dump",
        major,
        None,
        &format!("{dumped} (PostgreSQL {major}) needs"),
    )
    .await?;
    let pg_restore = select(
        "pg_restore",
        pg_dump.major,
        Some(&pg_dump),
        &format!("reads the archive of pg_dump {} ({archive})", pg_dump.major),
    )
    .await?;
    Ok((pg_dump, pg_restore))
}

/// Whether `pg_restore` writes `SET transaction_timeout` (17 and newer, in
/// every session) into a server that does not know it (before 17).
pub fn needs_filter(pg_restore: &Tool, target_major: u32) -> bool {
    pg_restore.major >= 17 && target_major < 17
}

/// The statement a pg_restore 17+ sends that an older server refuses.
pub const TRANSACTION_TIMEOUT_LINE: &str = "SET transaction_timeout = 0;";

/// The major version a tool reports (`pg_dump (PostgreSQL) 15.18` → 15).
pub async fn major_version(tool: &std::path::Path) -> Result<u32> {
    let out = Command::new(tool).arg("--version").output().await?;
    let text = String::from_utf8_lossy(&out.stdout);
    // "pg_dump (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)": the word after "(PostgreSQL)".
    let mut words = text.split_whitespace();
    words
        .find(|w| *w == "(PostgreSQL)")
        .and_then(|_| words.next())
        .or_else(|| text.split_whitespace().last())
        .and_then(|v| v.split(['.', 'b', 'r']).next())
        .and_then(|m| m.parse().ok())
        .ok_or_else(|| Error::failure(format!("cannot read the version of {}: {text:?}", tool.display())))
}

/// A command for `tool` against `endpoint`: `--dbname` carries the URL without
/// its password and TLS parameters; the password goes through `PGPASSWORD`,
/// the TLS settings through `PGSSLMODE` and friends, as cutover resolved them.
pub fn command(tool: impl AsRef<std::path::Path>, endpoint: &Endpoint) -> Command {
    let mut cmd = Command::new(tool.as_ref());
    cmd.arg(format!("--dbname={}", endpoint.child_url()));
    for (k, v) in endpoint.libpq_env() {
        cmd.env(k, v);
    }
    // Messages in English whatever the machine's locale: cutover reads some.
    cmd.env(
        "PGCONNECT_TIMEOUT",
        endpoint.connect_timeout().as_secs().to_string(),
    )
    .env("LC_MESSAGES", "C")
    .env_remove("LANGUAGE")
    .stdin(Stdio::null())
    .kill_on_drop(true);
    cmd
}

/// A command for `tool` that reads files only (no server: `pg_restore
/// --list`, `--file`).
pub fn offline(tool: impl AsRef<std::path::Path>) -> Command {
    let mut cmd = Command::new(tool.as_ref());
    cmd.stdin(Stdio::null()).kill_on_drop(true);
    cmd
}

/// Runs a tool to completion; a failure carries its (redacted) stderr.
pub async fn run(mut cmd: Command, what: &str) -> Result<String> {
    let out = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .await
        .map_err(|e| Error::failure(format!("cannot start {what}: {e}")))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(8).collect();
        return Err(Error::failure(format!(
            "{what} failed ({}): {}",
            out.status,
            redact_text(&tail.into_iter().rev().collect::<Vec<_>>().join(" | "))
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs a pg_restore into `target`. When that pg_restore writes `SET
/// transaction_timeout` and the target is older than 17, or a role map
/// renames roles, the same restore runs as pg_restore's script (`--file=-`)
/// without that statement and with the roles of its owners, grants and
/// policies mapped, into the psql beside it: every other statement, error
/// and exit code as before; `--jobs` is dropped there (a script runs in one
/// session).
pub async fn restore(
    pg_restore: &Tool,
    target: &Endpoint,
    target_major: u32,
    args: &[String],
    env: &[(&str, &str)],
    map: &crate::security::RoleMap,
    what: &str,
) -> Result<String> {
    let strip_timeout = needs_filter(pg_restore, target_major);
    if !strip_timeout && map.is_empty() {
        let mut cmd = command(pg_restore, target);
        cmd.args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        return run(cmd, what).await;
    }
    let piped = through_psql(pg_restore, target, args, env, map, strip_timeout, false, what).await?;
    Ok(piped.stdout)
}

/// One statement of a schema restore that failed: the object (as the
/// script's `-- Name: …; Type: …` comment names it) and the server's error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub object: String,
    pub error: String,
}

/// Restores like [`restore`], but goes on past a failing statement and
/// returns every failure (none: it restored whole), each named after its
/// object: what `pg_upgrade --check` is to an upgrade.
pub async fn restore_collecting(
    pg_restore: &Tool,
    target: &Endpoint,
    target_major: u32,
    args: &[String],
    map: &crate::security::RoleMap,
    what: &str,
) -> Result<Vec<Failure>> {
    let strip_timeout = needs_filter(pg_restore, target_major);
    let piped = through_psql(pg_restore, target, args, &[], map, strip_timeout, true, what).await?;
    let mut failures: Vec<Failure> = vec![];
    let lines: Vec<&str> = piped.stderr.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        // psql:<stdin>:57: ERROR:  42601: syntax error at or near "SYSTEM_USER"
        // (the severity in the server's language, the SQLSTATE not).
        let Some(rest) = line.strip_prefix("psql:<stdin>:") else {
            continue;
        };
        let Some((at, msg)) = rest.split_once(": ") else {
            continue;
        };
        let Some((_, msg)) = msg.split_once(":  ") else {
            continue;
        };
        let Some((code, msg)) = msg.split_once(": ") else {
            continue;
        };
        if code.len() != 5 || ["00", "01", "02"].contains(&&code[..2]) {
            continue;
        }
        // Its DETAIL line, where the server gave one ("Tablespace "fast"
        // does not exist.").
        let detail = lines[i + 1..]
            .iter()
            .take_while(|l| !l.starts_with("psql:"))
            .find_map(|l| {
                l.split_once(":  ")
                    .filter(|(k, _)| k.starts_with("DETAIL"))
                    .map(|(_, d)| d)
            })
            .map(|d| format!(" ({})", d.trim_end_matches('.')))
            .unwrap_or_default();
        let msg = format!("{msg}{detail} (SQLSTATE {code})");
        let at: usize = at.parse().unwrap_or(0);
        // A `SET default_tablespace` comes before the object that needs it.
        let before = piped.objects.iter().rev().find(|(l, _)| *l <= at);
        let after = piped.objects.iter().find(|(l, _)| *l > at);
        let chosen = if msg.contains("\"default_tablespace\"") {
            after.or(before)
        } else {
            before
        };
        let object = chosen
            .map(|(_, o)| o.clone())
            .unwrap_or_else(|| format!("the statement ending at line {at} of the schema script"));
        // The first error per object: its ALTER … OWNER after a failed
        // CREATE only says the object does not exist.
        if failures.iter().any(|f| f.object == object) {
            continue;
        }
        failures.push(Failure {
            object,
            error: redact_text(msg.trim()),
        });
    }
    let failures = without_knock_ons(failures);
    if failures.is_empty() && !piped.psql_ok {
        return Err(Error::failure(format!(
            "{what} failed in psql: {}",
            redact_text(&piped.stderr.lines().rev().take(8).collect::<Vec<_>>().join(" | "))
        )));
    }
    Ok(failures)
}

/// The failures that are not only the consequence of an earlier one: an
/// index or constraint of a table that did not restore fails with
/// "relation … does not exist" (42P01) naming that table, and says nothing
/// new. Told by the SQLSTATE and the quoted name, whatever the server's
/// language.
pub fn without_knock_ons(failures: Vec<Failure>) -> Vec<Failure> {
    let mut kept: Vec<Failure> = vec![];
    for f in failures {
        let follows = f.error.ends_with("(SQLSTATE 42P01)")
            && f.error.split('"').skip(1).step_by(2).any(|name| {
                kept.iter().any(|k| {
                    k.object
                        .split_once(' ')
                        .is_some_and(|(_, rest)| rest.starts_with(&format!("{name} ")) || rest == name)
                })
            });
        if !follows {
            kept.push(f);
        }
    }
    kept
}

/// What a restore through psql gave.
struct Piped {
    stdout: String,
    stderr: String,
    psql_ok: bool,
    /// Each object's `-- Name: x; Type: T; Schema: s; Owner: o` comment, by
    /// the script's line it is on ("VIEW public.v (owner o)").
    objects: Vec<(usize, String)>,
}

/// `pg_restore --file=-` into the psql beside it, the script relayed line
/// by line (`SET transaction_timeout` dropped where `strip_timeout`, roles
/// renamed by `map`). `keep_going`: psql runs past failing statements
/// (its errors are in `stderr`); else it stops at the first, an error.
#[allow(clippy::too_many_arguments)]
async fn through_psql(
    pg_restore: &Tool,
    target: &Endpoint,
    args: &[String],
    env: &[(&str, &str)],
    map: &crate::security::RoleMap,
    strip_timeout: bool,
    keep_going: bool,
    what: &str,
) -> Result<Piped> {
    let map = map.clone();
    let psql = pg_restore.sibling("psql").ok_or_else(|| {
        Error::failure(format!(
            "{what}: no psql beside {} to restore through",
            pg_restore.path.display()
        ))
    })?;
    let single = args.iter().any(|a| a == "--single-transaction" || a == "-1");
    let mut dump = offline(pg_restore);
    dump.args(
        args.iter().filter(|a| {
            !(a.starts_with("--jobs") || *a == "--exit-on-error" || *a == "--single-transaction")
        }),
    )
    .arg("--file=-")
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut load = command(&psql, target);
    load.args([
        "-X",
        "-q",
        "-v",
        if keep_going {
            "ON_ERROR_STOP=0"
        } else {
            "ON_ERROR_STOP=1"
        },
        "--no-psqlrc",
    ]);
    if keep_going {
        // Each message with its SQLSTATE (errors told from notices whatever
        // the server's language) and its script line (`-f -`).
        load.args(["-v", "VERBOSITY=verbose", "-f", "-"]);
    }
    if single {
        load.arg("--single-transaction");
    }
    for (k, v) in env {
        load.env(k, v);
    }
    load.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut dump = dump
        .spawn()
        .map_err(|e| Error::failure(format!("cannot start {what}: {e}")))?;
    let mut load = load
        .spawn()
        .map_err(|e| Error::failure(format!("cannot start psql for {what}: {e}")))?;
    let (mut out, mut input) = (dump.stdout.take().unwrap(), load.stdin.take().unwrap());
    let relay = async move {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
        // Byte for byte, line by line: only whole statements outside any
        // dollar-quoted body (a function's source) are dropped or rewritten.
        let mut reader = BufReader::new(&mut out);
        let mut quotes = DollarQuotes::default();
        let mut buf = Vec::new();
        let mut objects: Vec<(usize, String)> = vec![];
        let mut n = 0usize;
        loop {
            buf.clear();
            if reader.read_until(b'\n', &mut buf).await? == 0 {
                break;
            }
            n += 1;
            let outside = !quotes.inside();
            quotes.scan(&buf);
            let text = std::str::from_utf8(&buf)
                .ok()
                .map(|t| t.trim_end_matches(['\n', '\r']));
            if keep_going
                && outside
                && let Some(o) = text.and_then(object_comment)
            {
                objects.push((n, o));
            }
            match text {
                Some(line) if outside && strip_timeout && line == TRANSACTION_TIMEOUT_LINE => continue,
                Some(line) if outside && !map.is_empty() => {
                    let rewritten = map.rewrite_line(line);
                    if rewritten != line {
                        input.write_all(rewritten.as_bytes()).await?;
                        input.write_all(b"\n").await?;
                        continue;
                    }
                    input.write_all(&buf).await?;
                }
                _ => input.write_all(&buf).await?,
            }
        }
        input.shutdown().await?;
        drop(input);
        std::io::Result::Ok(objects)
    };
    let (relayed, dumped, loaded) = tokio::join!(relay, dump.wait_with_output(), load.wait_with_output());
    let (dumped, loaded) = (dumped?, loaded?);
    // psql first: when it stops on an error, pg_restore dies writing to it.
    for (status, stderr, who) in [
        (loaded.status, &loaded.stderr, "psql"),
        (dumped.status, &dumped.stderr, "pg_restore --file=-"),
    ] {
        if !(status.success() || keep_going && who == "psql") {
            let stderr = String::from_utf8_lossy(stderr);
            let tail: Vec<&str> = stderr.lines().rev().take(8).collect();
            return Err(Error::failure(format!(
                "{what} failed in {who} ({status}): {}",
                redact_text(&tail.into_iter().rev().collect::<Vec<_>>().join(" | "))
            )));
        }
    }
    let objects =
        relayed.map_err(|e| Error::failure(format!("{what}: relaying pg_restore's script to psql: {e}")))?;
    Ok(Piped {
        stdout: String::from_utf8_lossy(&loaded.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&loaded.stderr).into_owned(),
        psql_ok: loaded.status.success(),
        objects,
    })
}

/// pg_dump's comment before each object (`-- Name: v; Type: VIEW; Schema:
/// public; Owner: app`) as "VIEW public.v (owner app)".
fn object_comment(line: &str) -> Option<String> {
    let rest = line.strip_prefix("-- Name: ")?;
    let mut name = "";
    let mut kind = "";
    let mut schema = "-";
    let mut owner = "-";
    for (i, part) in rest.split("; ").enumerate() {
        if i == 0 {
            name = part;
        } else if let Some(v) = part.strip_prefix("Type: ") {
            kind = v;
        } else if let Some(v) = part.strip_prefix("Schema: ") {
            schema = v;
        } else if let Some(v) = part.strip_prefix("Owner: ") {
            owner = v;
        }
    }
    let qualified = if schema == "-" {
        name.to_string()
    } else {
        format!("{schema}.{name}")
    };
    Some(if owner == "-" {
        format!("{kind} {qualified}")
    } else {
        format!("{kind} {qualified} (owner {owner})")
    })
}

/// Whether a script's position is inside a dollar-quoted string (`$$ … $$`,
/// `$_$ … $_$`: how pg_dump writes function bodies), line after line.
#[derive(Debug, Default)]
struct DollarQuotes {
    open: Option<Vec<u8>>,
}

impl DollarQuotes {
    fn inside(&self) -> bool {
        self.open.is_some()
    }

    /// Follows one line: each `$tag$` opens a quote, or closes the open one
    /// with the same tag. (Single-quoted strings of pg_dump's own lines do
    /// not hold `$tag$`.)
    fn scan(&mut self, line: &[u8]) {
        let mut i = 0;
        while i < line.len() {
            if line[i] == b'$' {
                let tag_end = line[i + 1..]
                    .iter()
                    .position(|c| !(c.is_ascii_alphanumeric() || *c == b'_'));
                if let Some(len) = tag_end {
                    let end = i + 1 + len;
                    // "$1" is a parameter, not a quote: tags do not start with a digit.
                    let starts_digit = len > 0 && line[i + 1].is_ascii_digit();
                    if end < line.len() && line[end] == b'$' && !starts_digit {
                        let tag = line[i..=end].to_vec();
                        match &self.open {
                            Some(open) if *open == tag => self.open = None,
                            Some(_) => {}
                            None => self.open = Some(tag),
                        }
                        i = end + 1;
                        continue;
                    }
                }
            }
            i += 1;
        }
    }
}

/// Writes a file only its owner may read (lists name the schema's objects).
pub fn write_private(path: &std::path::Path, text: &str) -> Result<()> {
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

#[cfg(test)]
mod tests {
    use super::{DollarQuotes, Failure, without_knock_ons};

    #[test]
    fn the_objects_of_a_table_that_did_not_restore_are_not_listed_again() {
        let f = |object: &str, error: &str| Failure {
            object: object.into(),
            error: error.into(),
        };
        let failures = vec![
            f(
                "TABLE public.readings_2026 (owner kit_admin)",
                "child column \"doubled\" specifies generation expression (SQLSTATE 42611)",
            ),
            f(
                "CONSTRAINT public.readings_2026 readings_2026_pkey (owner kit_admin)",
                "relation \"public.readings_2026\" does not exist (SQLSTATE 42P01)",
            ),
            // A relation missing for another reason stays.
            f(
                "VIEW public.v (owner kit_admin)",
                "relation \"public.gone\" does not exist (SQLSTATE 42P01)",
            ),
        ];
        let kept = without_knock_ons(failures.clone());
        assert_eq!(kept, vec![failures[0].clone(), failures[2].clone()]);
    }

    #[test]
    fn function_bodies_are_told_from_statements() {
        let mut q = DollarQuotes::default();
        let script = [
            ("CREATE FUNCTION f() RETURNS void LANGUAGE plpgsql AS $_$", false),
            ("GRANT SELECT ON t TO app_ro; -- inside the body", true),
            ("SELECT $1, '$$';", true),
            ("$_$;", true),
            ("GRANT SELECT ON t TO app_ro;", false),
            (
                "CREATE FUNCTION g() RETURNS int LANGUAGE sql AS $$SELECT 1$$;",
                false,
            ),
            ("ALTER FUNCTION g() OWNER TO app_owner;", false),
        ];
        for (line, inside) in script {
            assert_eq!(q.inside(), inside, "{line}");
            q.scan(line.as_bytes());
        }
    }
}
