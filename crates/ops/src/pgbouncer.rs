//! PgBouncer's admin console, for `kind = "pgbouncer"` consumers: a
//! `[databases]` entry is switched with `PAUSE db` (new queries wait, the
//! server connections are released), the file rewritten, `RELOAD`,
//! `RESUME db`, then `SHOW DATABASES` must show the entry unpaused and
//! pointing where the file says. The applications keep their client
//! connections and see a pause, not errors.
//!
//! The console speaks only the simple query protocol, so it is driven with
//! `psql` (the trusted client), its password in the environment, never on
//! the command line. A `PAUSE` that does not finish in time (a client holds
//! its server connection: session pooling, or an open transaction) is
//! abandoned: its connection is closed, `RESUME` is sent from another one,
//! and nothing is changed.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use cutover_core::redact::redact_text;
use cutover_core::{Error, Result};
use tokio::process::Command;
use url::Url;

/// How long one console command other than `PAUSE` may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(15);

/// PgBouncer's admin console.
pub struct Console {
    url: Url,
    psql: PathBuf,
}

/// One row of `SHOW DATABASES`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    pub host: String,
    pub port: u16,
    pub database: String,
    pub paused: bool,
}

impl Console {
    /// The console at `url` (`postgresql://admin:pw@host:6432/pgbouncer`).
    pub async fn new(url: &str) -> Result<Console> {
        let url = Url::parse(url).map_err(|e| {
            Error::bad_input(format!(
                "PgBouncer's admin_url {} is not a URL ({e}); write postgresql://user@host:port/pgbouncer",
                redact_text(url)
            ))
        })?;
        let psql = cutover_pg::tools::candidates("psql")
            .await
            .into_iter()
            .next()
            .ok_or_else(|| {
                Error::failure("no psql found: PgBouncer's admin console is driven with psql; install it")
            })?
            .path;
        Ok(Console { url, psql })
    }

    fn where_(&self) -> String {
        format!(
            "PgBouncer's admin console at {}:{}",
            self.url.host_str().unwrap_or("localhost"),
            self.url.port().unwrap_or(6432)
        )
    }

    fn command(&self, sql: &str) -> Command {
        let mut cmd = Command::new(&self.psql);
        cmd.args(["-X", "-q", "-A", "-F", "|", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("PGHOST", self.url.host_str().unwrap_or("localhost"))
            .env("PGPORT", self.url.port().unwrap_or(6432).to_string())
            .env("PGCONNECT_TIMEOUT", "5")
            .env("PGDATABASE", {
                let db = self.url.path().trim_start_matches('/');
                if db.is_empty() { "pgbouncer" } else { db }.to_string()
            })
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if !self.url.username().is_empty() {
            cmd.env("PGUSER", decode(self.url.username()));
        }
        if let Some(pw) = self.url.password() {
            cmd.env("PGPASSWORD", decode(pw));
        }
        for (k, v) in self.url.query_pairs() {
            if k == "sslmode" {
                cmd.env("PGSSLMODE", v.as_ref());
            }
        }
        cmd
    }

    /// Runs one console command; its output (`|`-separated, with a header).
    async fn run(&self, sql: &str, timeout: Duration) -> Result<String> {
        let child = self
            .command(sql)
            .spawn()
            .map_err(|e| Error::failure(format!("cannot start {}: {e}", self.psql.display())))?;
        let out = tokio::time::timeout(timeout, child.wait_with_output())
            .await
            .map_err(|_| {
                Error::failure(format!(
                    "{} did not answer `{sql}` within {} s",
                    self.where_(),
                    timeout.as_secs()
                ))
            })?
            .map_err(|e| Error::failure(format!("psql failed: {e}")))?;
        if !out.status.success() {
            return Err(Error::failure(format!(
                "{}: `{sql}` failed: {}",
                self.where_(),
                redact_text(String::from_utf8_lossy(&out.stderr).trim())
            ))
            .with_hint(
                "check admin_url: its user must be in PgBouncer's admin_users, and PgBouncer must be running",
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The `SHOW DATABASES` row of `name`.
    pub async fn entry(&self, name: &str) -> Result<Option<Entry>> {
        let out = self.run("SHOW DATABASES", COMMAND_TIMEOUT).await?;
        Ok(parse_databases(&out).into_iter().find(|e| e.name == name))
    }

    /// Switches entry `name`: `PAUSE` (abandoned after `pause_timeout`),
    /// `change` (writes the file), `RELOAD`, `RESUME`; then checks the entry
    /// is unpaused and `check` accepts it. Returns how long the pause lasted.
    pub async fn switch(
        &self,
        name: &str,
        pause_timeout: Duration,
        change: impl FnOnce() -> Result<()>,
        check: impl Fn(&Entry) -> bool,
    ) -> Result<Duration> {
        let Some(before) = self.entry(name).await? else {
            return Err(Error::failure(format!(
                "{} has no database {name:?} (SHOW DATABASES); fix `key` in the plan file, or RELOAD PgBouncer \
                 if its file was changed by hand",
                self.where_()
            )));
        };
        let started = Instant::now();
        // Already paused by the online mode's switch: it holds until RESUME.
        if !before.paused {
            self.pause(name, pause_timeout).await?;
        }
        let changed = async {
            change()?;
            self.run("RELOAD", COMMAND_TIMEOUT).await?;
            Ok::<_, Error>(())
        }
        .await;
        // Resumed whatever happened: the applications must not stay paused.
        let resumed = self.resume(name).await;
        let paused_for = started.elapsed();
        changed?;
        resumed?;
        let entry = self.entry(name).await?.ok_or_else(|| {
            Error::failure(format!(
                "{} lost database {name:?} after RELOAD: the rewritten file is not what PgBouncer expects",
                self.where_()
            ))
        })?;
        if entry.paused {
            return Err(Error::failure(format!(
                "{}: database {name:?} is still paused after RESUME; run `RESUME {name}` on the console",
                self.where_()
            )));
        }
        if !check(&entry) {
            return Err(Error::failure(format!(
                "{}: after RELOAD, database {name:?} points at {}:{}/{}, not where the file now says; is \
                 admin_url the PgBouncer that reads this file?",
                self.where_(),
                entry.host,
                entry.port,
                entry.database
            )));
        }
        Ok(paused_for)
    }

    /// `PAUSE name`, waiting at most `timeout`; when it does not finish,
    /// its connection is closed and `RESUME` sent from another.
    pub async fn pause(&self, name: &str, timeout: Duration) -> Result<()> {
        let sql = format!("PAUSE {}", quote(name));
        let child = self
            .command(&sql)
            .spawn()
            .map_err(|e| Error::failure(format!("cannot start {}: {e}", self.psql.display())))?;
        match tokio::time::timeout(timeout, child.wait_with_output()).await {
            Ok(Ok(out)) if out.status.success() => Ok(()),
            Ok(Ok(out)) => Err(Error::failure(format!(
                "{}: `{sql}` failed: {}",
                self.where_(),
                redact_text(String::from_utf8_lossy(&out.stderr).trim())
            ))),
            Ok(Err(e)) => Err(Error::failure(format!("psql failed: {e}"))),
            Err(_) => {
                // Dropping the timed-out future killed psql: its PAUSE is
                // abandoned with its connection. RESUME from another one
                // (it may answer that nothing is paused), then check.
                let _ = self.resume(name).await;
                let still = self.entry(name).await?.is_some_and(|e| e.paused);
                Err(Error::failure(format!(
                    "PgBouncer did not finish `PAUSE {name}` within {} s: a client holds its server connection \
                     (an open transaction, or session pooling); the pause was abandoned and the applications \
                     resumed{}; nothing was changed",
                    timeout.as_secs(),
                    if still {
                        format!(", but the database still shows paused: run `RESUME {name}` on the console")
                    } else {
                        String::new()
                    }
                ))
                .with_hint(
                    "end the long transactions (or use transaction pooling), or raise pause_timeout in the plan; \
                     then run again",
                ))
            }
        }
    }

    pub async fn resume(&self, name: &str) -> Result<()> {
        match self
            .run(&format!("RESUME {}", quote(name)), COMMAND_TIMEOUT)
            .await
        {
            Ok(_) => Ok(()),
            // Not paused (an abandoned PAUSE was cancelled with its connection).
            Err(e) if e.message.contains("not paused") => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// A database name as the console's commands take it.
fn quote(name: &str) -> String {
    if name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        name.to_string()
    } else {
        format!("\"{}\"", name.replace('"', "\"\""))
    }
}

fn decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

/// `SHOW DATABASES` as psql prints it unaligned with a header.
fn parse_databases(out: &str) -> Vec<Entry> {
    let mut lines = out.lines().filter(|l| !l.is_empty());
    let Some(header) = lines.next() else {
        return vec![];
    };
    let cols: Vec<&str> = header.split('|').collect();
    let at = |name: &str| cols.iter().position(|c| *c == name);
    let (Some(n), Some(h), Some(p), Some(d), Some(paused)) =
        (at("name"), at("host"), at("port"), at("database"), at("paused"))
    else {
        return vec![];
    };
    lines
        .filter(|l| !l.starts_with('('))
        .filter_map(|l| {
            let f: Vec<&str> = l.split('|').collect();
            Some(Entry {
                name: f.get(n)?.to_string(),
                host: f.get(h)?.to_string(),
                port: f.get(p)?.parse().unwrap_or(5432),
                database: f.get(d)?.to_string(),
                paused: f.get(paused)? == &"1",
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn show_databases_is_read_by_its_header() {
        let out = "name|host|port|database|force_user|pool_size|min_pool_size|reserve_pool|pool_mode|\
                   max_connections|current_connections|paused|disabled\n\
                   app|127.0.0.1|5433|app||20|0|0|transaction|0|1|1|0\n\
                   pgbouncer||6432|pgbouncer|pgbouncer|2|0|0|statement|0|0|0|0\n(2 rows)\n";
        let e = parse_databases(out);
        assert_eq!(
            e[0],
            Entry {
                name: "app".into(),
                host: "127.0.0.1".into(),
                port: 5433,
                database: "app".into(),
                paused: true
            }
        );
        assert_eq!(e.len(), 2);
        assert!(!e[1].paused);
    }

    #[test]
    fn names_are_quoted_only_when_needed() {
        assert_eq!(quote("app_db"), "app_db");
        assert_eq!(quote("my-app"), "\"my-app\"");
    }
}
