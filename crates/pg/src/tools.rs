//! The trusted PostgreSQL client tools (pg_dump, pg_restore): finding them,
//! checking their version against the server, and running them with the
//! password in the environment, never on the command line.

use std::path::PathBuf;
use std::process::Stdio;

use cutover_core::endpoint::{Endpoint, redact_text};
use cutover_core::{Error, Result};
use tokio::process::Command;

/// Finds a client tool: `$CUTOVER_PG_BINDIR` (only there, when set), else the newest
/// `/usr/lib/postgresql/*/bin`, then `PATH`.
pub fn find(tool: &str) -> Result<PathBuf> {
    // An explicit choice is honoured strictly: no silent fallback to other tools.
    if let Some(dir) = std::env::var_os("CUTOVER_PG_BINDIR") {
        let p = PathBuf::from(&dir).join(tool);
        if p.exists() {
            return Ok(p);
        }
        return Err(Error::failure(format!(
            "{tool} not found in CUTOVER_PG_BINDIR={}: point it at the bin folder of PostgreSQL client tools at least \
             as new as the servers, or unset it",
            PathBuf::from(dir).display()
        )));
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse().ok()?;
            let p = e.path().join("bin").join(tool);
            p.exists().then_some((v, p))
        })
        .collect();
    versions.sort();
    if let Some((_, p)) = versions.pop() {
        return Ok(p);
    }
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            let p = dir.join(tool);
            if p.exists() {
                return Ok(p);
            }
        }
    }
    Err(Error::failure(format!(
        "{tool} not found (looked in $CUTOVER_PG_BINDIR, /usr/lib/postgresql/*/bin and PATH): install the \
         PostgreSQL client tools (Debian: apt-get install postgresql-client)"
    )))
}

/// The major version a tool reports (`pg_dump (PostgreSQL) 15.18` → 15).
pub async fn major_version(tool: &PathBuf) -> Result<u32> {
    let out = Command::new(tool).arg("--version").output().await?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .last()
        .and_then(|v| v.split('.').next())
        .and_then(|m| m.parse().ok())
        .ok_or_else(|| Error::failure(format!("cannot read the version of {}: {text:?}", tool.display())))
}

/// Finds a tool and checks it is not older than the server (pg_dump refuses
/// to dump a newer server).
pub async fn checked(tool: &str, server_version_num: i32) -> Result<PathBuf> {
    let path = find(tool)?;
    let major = major_version(&path).await?;
    let server_major = (server_version_num / 10000) as u32;
    if major < server_major {
        return Err(Error::failure(format!(
            "{} is version {major}, older than the server (version {server_major}): install the PostgreSQL \
             {server_major} client tools or set CUTOVER_PG_BINDIR to their bin directory",
            path.display()
        )));
    }
    Ok(path)
}

/// A command for `tool` against `endpoint`: `--dbname` carries the URL without
/// its password; the password goes through `PGPASSWORD`.
pub fn command(tool: &PathBuf, endpoint: &Endpoint) -> Command {
    let mut cmd = Command::new(tool);
    cmd.arg(format!("--dbname={}", endpoint.url_without_password()));
    for (k, v) in endpoint.libpq_env() {
        cmd.env(k, v);
    }
    cmd.env("PGCONNECT_TIMEOUT", "10")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    cmd
}

/// A command for `tool` that reads files only (no server: `pg_restore
/// --list`, `--file`).
pub fn offline(tool: &PathBuf) -> Command {
    let mut cmd = Command::new(tool);
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
