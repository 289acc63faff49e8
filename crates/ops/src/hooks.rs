//! Commands and probes around a consumer: `reload` after a change, `health`
//! (SQL through the consumer's connection, an HTTP GET), and the `get`/`set`
//! commands of command consumers. Commands run with `sh -c` in the plan
//! file's folder; their output is shown redacted.

use std::path::Path;
use std::time::{Duration, Instant};

use cutover_core::identity::ServerIdentity;
use cutover_core::redact::redact_text;
use cutover_core::{Error, Result};
use sqlx::Connection;
use sqlx::postgres::PgConnection;

/// Runs `command` with `sh -c`; its stdout on success, an error naming the
/// command, its exit status and its (redacted) stderr otherwise.
pub async fn run_command(
    what: &str,
    command: &str,
    dir: &Path,
    env: &[(&str, &str)],
    timeout: Duration,
) -> Result<String> {
    let mut cmd = tokio::process::Command::new("sh");
    cmd.arg("-c").arg(command).current_dir(dir).kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.stdin(std::process::Stdio::null());
    let out = tokio::time::timeout(timeout, cmd.output())
        .await
        .map_err(|_| {
            Error::failure(format!(
                "{what} `{}` did not finish within {} s",
                redact_text(command),
                timeout.as_secs()
            ))
        })?
        .map_err(|e| Error::failure(format!("cannot start {what} `{}`: {e}", redact_text(command))))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(Error::failure(format!(
            "{what} `{}` failed ({}): {}",
            redact_text(command),
            out.status,
            redact_text(stderr.trim())
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Whether the first word of a command is something `sh` can run.
pub fn command_exists(command: &str, dir: &Path) -> bool {
    let Some(first) = command.split_whitespace().next() else {
        return false;
    };
    if first.contains('/') {
        let p = dir.join(first);
        return p.exists();
    }
    // Shell builtins and keywords, then PATH.
    if [
        "cd", "echo", "exit", "true", "false", "test", "[", "printf", "exec", "env", ":",
    ]
    .contains(&first)
        || first.contains('=')
    {
        return true;
    }
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|d| d.join(first).is_file()))
        .unwrap_or(false)
}

/// What a probe through a consumer's connection found.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Reached {
    pub identity: ServerIdentity,
    pub millis: u64,
}

/// Connects with a consumer's connection (a URL), TLS settings as libpq
/// would read them.
pub async fn connect(url: &str, timeout: Duration) -> Result<PgConnection> {
    cutover_pg::connect::connect_url(url, "cutover consumer probe", timeout).await
}

/// Connects, identifies the server, runs `sql` (when given).
pub async fn probe_sql(url: &str, sql: Option<&str>, timeout: Duration) -> Result<Reached> {
    let (url, sql) = (url.to_string(), sql.map(str::to_string));
    // Spawned: keeps the connection's futures out of the stages' async-trait
    // futures (sqlx's executor lifetimes defeat their Send inference).
    tokio::spawn(async move {
        let t0 = Instant::now();
        let mut conn = connect(&url, timeout).await?;
        let identity = ServerIdentity::of_connection(&mut conn).await?;
        if let Some(sql) = sql {
            sqlx::Executor::execute(&mut conn, sql.as_str())
                .await
                .map_err(|e| Error::failure(format!("health SQL {sql:?} failed: {e}")))?;
        }
        let _ = conn.close().await;
        Ok(Reached {
            identity,
            millis: t0.elapsed().as_millis() as u64,
        })
    })
    .await
    .map_err(|e| Error::failure(format!("probe crashed: {e}")))?
}

/// Connects and counts the rows of `table` holding `token`; returns whether
/// it is there and the server reached.
/// What a consumer's own connection found: the sentinel, the server, the
/// role it logs in as and that role's privileges there.
pub struct SentinelProbe {
    pub seen: bool,
    pub identity: ServerIdentity,
    pub role: String,
    pub privileges: std::collections::BTreeSet<String>,
}

pub async fn probe_sentinel(
    url: &str,
    table: &str,
    token: &str,
    journal_schema: &str,
    timeout: Duration,
) -> Result<SentinelProbe> {
    let (url, table, token, journal_schema) = (
        url.to_string(),
        table.to_string(),
        token.to_string(),
        journal_schema.to_string(),
    );
    tokio::spawn(async move {
        let mut conn = connect(&url, timeout).await?;
        let identity = ServerIdentity::of_connection(&mut conn).await?;
        let n: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {table} WHERE token = $1"))
            .bind(&token)
            .fetch_one(&mut conn)
            .await
            .map_err(|e| Error::failure(format!("cannot read the sentinel: {e}")))?;
        let role: String = sqlx::query_scalar("SELECT current_user::text")
            .fetch_one(&mut conn)
            .await?;
        let privileges = cutover_pg::security::privileges_of(&mut conn, &role, &journal_schema).await?;
        let _ = conn.close().await;
        Ok(SentinelProbe {
            seen: n == 1,
            identity,
            role,
            privileges,
        })
    })
    .await
    .map_err(|e| Error::failure(format!("probe crashed: {e}")))?
}

/// HTTP GET `url`; `expect` is a status code (default 200) or a text the body must contain.
pub async fn probe_http(url: &str, expect: Option<&str>, timeout: Duration) -> Result<u64> {
    let url = url.to_string();
    let expect = expect.unwrap_or("200").to_string();
    let t0 = Instant::now();
    tokio::task::spawn_blocking(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .http_status_as_error(false)
            .build()
            .into();
        let mut resp = agent
            .get(&url)
            .call()
            .map_err(|e| Error::failure(format!("health GET {url} failed: {e}")))?;
        let status = resp.status().as_u16();
        let body = resp.body_mut().read_to_string().unwrap_or_default();
        let ok = match expect.parse::<u16>() {
            Ok(code) => status == code,
            Err(_) => (200..300).contains(&status) && body.contains(&expect),
        };
        if ok {
            Ok(t0.elapsed().as_millis() as u64)
        } else {
            Err(Error::failure(format!(
                "health GET {url} answered {status} ({} bytes); expected {expect:?}",
                body.len()
            )))
        }
    })
    .await
    .map_err(|e| Error::failure(format!("health probe crashed: {e}")))?
}

/// Retries `probe` until it succeeds or `timeout` passes (a reloaded app takes time to come up).
pub async fn retry<T, F, Fut>(timeout: Duration, mut probe: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match probe().await {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}
