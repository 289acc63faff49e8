//! `repoint:<consumer>`: back the consumer's configuration up (run directory,
//! mode 0600), write the target's connection in its place atomically, run
//! its reload, wait for its health. A consumer already on the target is a
//! verified no-op. Undo restores the backup byte for byte and reloads, after
//! saying how many writes the target took since (rolling back loses them).

use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use cutover_core::artefacts::Artefacts;
use cutover_core::event::Event;
use cutover_core::journal::{Item, ItemKey};
use cutover_core::plan_file::{ConsumerConfig, ConsumerKind};
use cutover_core::redact::redact_text;
use cutover_core::stage::{Check, Description, RunContext, Stage, Undo};
use cutover_core::{Error, Result};
use serde::{Deserialize, Serialize};

use crate::conn::Destination;
use crate::consumer::{self, Reading, Servers, Which};
use crate::{files, hooks};

/// repoint:<consumer>: where the consumer pointed and how its new
/// connection answered.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RepointResult {
    pub summary: String,
    /// Where it pointed before the stage.
    pub before: Which,
    /// Whether the stage wrote its configuration.
    pub changed: bool,
    /// The configuration's backup and its checksum (when written).
    pub backup: Option<String>,
    pub backup_sha256: Option<String>,
    pub probe: Probe,
    /// PgBouncer: how long its database was paused for the switch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause_millis: Option<u64>,
}

cutover_core::artefacts!(RepointResult);

/// The consumer's connection, probed after the change.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Probe {
    /// The server and database it reached.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reached: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub millis: Option<u64>,
    /// The health URL's answer time, when the plan gives one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_millis: Option<u64>,
    /// Why the connection could not be probed (a consumer already on the target).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unverified: Option<String>,
}

pub struct Repoint {
    reading: Reading,
    dest: Destination,
    base: PathBuf,
    servers: Servers,
    description: Description,
    /// The online mode: the reverse stream brought the target's writes back
    /// to the source before this undo runs.
    online: bool,
}

/// Row writes (inserts, updates, deletes) the target's application tables have taken, from the statistics.
pub async fn target_writes(ctx: &RunContext) -> Result<i64> {
    Ok(sqlx::query_scalar(
        "SELECT coalesce(sum(n_tup_ins + n_tup_upd + n_tup_del), 0)::bigint FROM pg_stat_user_tables \
         WHERE schemaname <> $1",
    )
    .bind(ctx.journal.schema())
    .fetch_one(&ctx.target)
    .await?)
}

/// A URL for probing the destination (with its password when known).
pub fn destination_url(d: &Destination) -> String {
    let mut url = url::Url::parse("postgresql://localhost/").unwrap();
    let _ = url.set_host(Some(&d.host));
    let _ = url.set_port(Some(d.port));
    url.set_path(&format!(
        "/{}",
        percent_encoding::utf8_percent_encode(&d.dbname, percent_encoding::NON_ALPHANUMERIC)
    ));
    let _ = url.set_username(
        &percent_encoding::utf8_percent_encode(&d.user, percent_encoding::NON_ALPHANUMERIC).to_string(),
    );
    if let Some(p) = &d.password {
        let _ = url.set_password(Some(
            &percent_encoding::utf8_percent_encode(p, percent_encoding::NON_ALPHANUMERIC).to_string(),
        ));
    }
    url.to_string()
}

impl Repoint {
    /// Builds the stage from the consumer as read at plan time.
    pub fn new(reading: Reading, dest: Destination, base: PathBuf, servers: Servers) -> Result<Repoint> {
        let spec = &reading.spec;
        let file = reading
            .path
            .as_deref()
            .unwrap_or(std::path::Path::new(""))
            .display();
        let place = match &spec.config {
            ConsumerConfig::Command { set, .. } => format!("through `{}`", redact_text(set)),
            ConsumerConfig::Text { .. } => format!("{file} (text)"),
            ConsumerConfig::PgService { service, .. } => {
                format!("service [{service}] in {file} (pg_service)")
            }
            ConsumerConfig::Pgbouncer { database, .. } => {
                format!("[databases] {database} in {file} (pgbouncer)")
            }
            ConsumerConfig::Keyed { key, keys, .. } => {
                let keys: Vec<&str> = key
                    .iter()
                    .map(String::as_str)
                    .chain(keys.named().map(|(_, k)| k))
                    .collect();
                let kind = serde_json::to_value(spec.kind())
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default();
                format!("{} in {file} ({kind})", keys.join(", "))
            }
        };
        let mut details = reading.describe_connections();
        let mut warnings = vec![];
        let summary = match reading.points_at() {
            Which::Target => format!(
                "consumer {} already points at the target ({place}): nothing to write",
                spec.name
            ),
            Which::Source => {
                reading.rewritten(&dest)?;
                details.extend(reading.diff(&dest)?.lines().map(str::to_string));
                if reading.found.iter().any(|f| f.has_password()) && dest.password.is_none() {
                    let split = reading.found.iter().any(|f| {
                        f.parts
                            .iter()
                            .any(|p| matches!(p.holds, consumer::Holds::Field(crate::conn::Field::Password)))
                    });
                    warnings.push(format!(
                        "consumer {}: its connection carries a password, but the target's is not known to cutover; \
                         {} (set target_url_env, or a password in [target])",
                        spec.name,
                        if split {
                            "its password key keeps the value it has"
                        } else {
                            "the new connection is written without one"
                        }
                    ));
                }
                let mut s = format!("point consumer {} at the target: {place}", spec.name);
                if let Some(r) = &spec.reload {
                    s.push_str(&format!("; reload with `{}`", redact_text(r)));
                }
                s
            }
            Which::Other => {
                return Err(Error::bad_input(format!(
                    "consumer {}: its connection points at neither the source nor the target ({}); fix the \
                     configuration, or add the host:port it uses to [source] aliases or [target] aliases",
                    spec.name,
                    reading.describe_connections().join("; ")
                )));
            }
        };
        Ok(Repoint {
            description: Description {
                summary,
                details,
                warnings,
                destructive: false,
            },
            reading,
            dest,
            base,
            servers,
            online: false,
        })
    }

    /// In the online mode (no warning about the target's writes on undo:
    /// the reverse stream carried them to the source).
    pub fn online(mut self) -> Repoint {
        self.online = true;
        self
    }

    fn backup_path(&self, ctx: &RunContext) -> PathBuf {
        ctx.run_dir
            .join("consumers")
            .join(ctx.run_id.to_string())
            .join(format!("{}.orig", self.reading.spec.name))
    }

    fn timeout(&self) -> Duration {
        Duration::from_secs(self.reading.spec.timeout.unwrap_or(60))
    }

    /// Writes `content` where the consumer keeps its connection; for a
    /// PgBouncer entry, between `PAUSE` and `RELOAD`/`RESUME` (returns how
    /// long the pause lasted).
    async fn store(&self, content: &str) -> Result<Option<Duration>> {
        let spec = &self.reading.spec;
        if let (
            ConsumerConfig::Pgbouncer {
                database,
                admin,
                pause_timeout,
                ..
            },
            Some(path),
        ) = (&spec.config, &self.reading.path)
        {
            let console = crate::pgbouncer::Console::new(&admin.url()?).await?;
            let wanted = pgbouncer_entry(content, database);
            let paused = console
                .switch(
                    database,
                    Duration::from_secs(*pause_timeout),
                    || files::replace_atomically(path, content.as_bytes()),
                    |e| {
                        wanted.as_ref().is_none_or(|c| {
                            e.host == c.host()
                                && e.port == c.port()
                                && c.dbname().is_none_or(|d| d == e.database)
                        })
                    },
                )
                .await
                .map_err(|e| e.context(format!("consumer {}", spec.name)))?;
            return Ok(Some(paused));
        }
        match (&spec.config, &self.reading.path) {
            (ConsumerConfig::Command { set, .. }, _) => hooks::run_command(
                "the set command",
                set,
                &self.base,
                &[("CUTOVER_VALUE", content)],
                self.timeout(),
            )
            .await
            .map(|_| None),
            (_, Some(path)) => files::replace_atomically(path, content.as_bytes()).map(|_| None),
            _ => Err(Error::failure("consumer has no path")),
        }
    }

    /// Reload, then the health probes through the new connection.
    async fn reload_and_probe(&self, ctx: &RunContext) -> Result<Probe> {
        let spec = &self.reading.spec;
        if let Some(reload) = &spec.reload {
            hooks::run_command("the reload command", reload, &self.base, &[], self.timeout()).await?;
        }
        let url = destination_url(&self.dest);
        let sql = spec.health_sql.as_deref();
        let reached = hooks::retry(self.timeout(), || {
            hooks::probe_sql(&url, sql, Duration::from_secs(5))
        })
        .await?;
        if !reached
            .identity
            .same_database_any_start(&self.servers.target.identity)
        {
            return Err(Error::failure(format!(
                "consumer {}: its new connection reached {}, which is not the target",
                spec.name,
                reached.identity.place()
            )));
        }
        let http_ms = match &spec.health_url {
            Some(u) => Some(
                hooks::retry(self.timeout(), || {
                    hooks::probe_http(u, spec.health_expect.as_deref(), Duration::from_secs(5))
                })
                .await?,
            ),
            None => None,
        };
        ctx.emit(Event::Info {
            message: format!(
                "consumer {}: connection reaches the target ({}) in {} ms{}",
                spec.name,
                reached.identity.place(),
                reached.millis,
                http_ms
                    .map(|m| format!("; health URL answered in {m} ms"))
                    .unwrap_or_default()
            ),
        });
        Ok(Probe {
            reached: Some(reached.identity.place()),
            millis: Some(reached.millis),
            http_millis: http_ms,
            unverified: None,
        })
    }
}

#[async_trait]
impl Stage for Repoint {
    fn name(&self) -> String {
        cutover_core::stage::names::repoint(&self.reading.spec.name)
    }
    fn describe(&self) -> &Description {
        &self.description
    }
    fn undo_kind(&self) -> Undo {
        Undo::Reversible("restore the configuration from its backup byte for byte, then reload".into())
    }
    fn inside_pause(&self) -> bool {
        // Online, the consumers move between the switch and resume.
        self.online
    }

    async fn run(&self, ctx: &RunContext) -> Result<serde_json::Value> {
        let spec = &self.reading.spec;
        let backup = self.backup_path(ctx);
        let now = consumer::read(spec, &self.base, &self.servers).await?;
        let mut paused = None;
        match now.points_at() {
            Which::Target if !backup.exists() => {
                let probe = self.reload_and_probe_readonly(ctx).await?;
                return Ok(RepointResult {
                    summary: format!("{} already pointed at the target; nothing written", spec.name),
                    before: Which::Target,
                    changed: false,
                    backup: None,
                    backup_sha256: None,
                    probe,
                    pause_millis: None,
                }
                .to_value());
            }
            // Written by an earlier attempt of this run: finish reload and
            // health (PgBouncer: load the file, which may not have happened).
            Which::Target => {
                if spec.kind() == ConsumerKind::Pgbouncer {
                    paused = self.store(&now.content).await?;
                }
            }
            Which::Source => {
                if !backup.exists() {
                    files::write_private(&backup, now.content.as_bytes())?;
                }
                let writes = target_writes(ctx).await?;
                ctx.journal
                    .item_done(
                        ctx.run_id,
                        &Item {
                            rows: Some(writes),
                            ..Item::new(&self.name(), &ItemKey::Written)
                        },
                    )
                    .await?;
                let new = now.rewritten(&consumer::destination(spec, &self.servers)?)?;
                paused = self.store(&new).await?;
            }
            Which::Other => {
                return Err(Error::failure(format!(
                    "consumer {} now points at neither the source nor the target: {}",
                    spec.name,
                    now.describe_connections().join("; ")
                )));
            }
        }
        let probe = self.reload_and_probe(ctx).await?;
        let bytes = std::fs::read(&backup)?;
        Ok(RepointResult {
            summary: format!("{} now points at the target", spec.name),
            before: Which::Source,
            changed: true,
            backup: Some(backup.display().to_string()),
            backup_sha256: Some(files::sha256(&bytes)),
            probe,
            pause_millis: paused.map(|d| d.as_millis() as u64),
        }
        .to_value())
    }

    async fn check(&self, _ctx: &RunContext) -> Result<Check> {
        let now = consumer::read(&self.reading.spec, &self.base, &self.servers).await?;
        Ok(match now.points_at() {
            Which::Target => Check::Holds,
            other => Check::Fails(format!("it points at {other}")),
        })
    }

    async fn undo(&self, ctx: &RunContext) -> Result<String> {
        let spec = &self.reading.spec;
        let backup = self.backup_path(ctx);
        let name = self.name();
        let recorded = ctx
            .journal
            .stage_states(ctx.run_id)
            .await?
            .get(&name)
            .and_then(|st| st.artefacts.as_ref())
            .and_then(|a| RepointResult::from_value(a).ok());
        let recorded_sha = recorded.as_ref().and_then(|a| a.backup_sha256.clone());
        if !backup.exists() {
            if recorded.as_ref().is_some_and(|a| a.changed) {
                return Err(Error::failure(format!(
                    "the journal records a backup of {} at {}, but it is missing (was the run started on another \
                     machine, or the run directory moved?); put it back, or restore the consumer's configuration by \
                     hand and re-run with --force",
                    spec.name,
                    backup.display()
                )));
            }
            return Ok(format!(
                "{} was not changed by this run; nothing to restore",
                spec.name
            ));
        }
        let at_repoint = ctx
            .journal
            .item_rows(ctx.run_id, &name, &ItemKey::Written)
            .await?;
        if let Some(before) = at_repoint.filter(|_| !self.online) {
            let since = target_writes(ctx).await? - before;
            if since > 0 {
                ctx.emit(Event::Warning {
                    message: format!(
                        "the target took {since} row writes since {name} (from its statistics); {} goes back to \
                         the source, which does not have them",
                        spec.name
                    ),
                });
            }
        }
        let bytes = std::fs::read(&backup)
            .map_err(|e| Error::failure(format!("cannot read the backup {}: {e}", backup.display())))?;
        if let Some(sha) = recorded_sha
            && files::sha256(&bytes) != sha
        {
            return Err(Error::failure(format!(
                "the backup {} does not match the sha256 the journal recorded: it was changed since; nothing was \
                 restored",
                backup.display()
            )));
        }
        let content = String::from_utf8(bytes)
            .map_err(|_| Error::failure(format!("the backup {} is not text", backup.display())))?;
        self.store(&content).await?;
        if let Some(reload) = &spec.reload {
            hooks::run_command("the reload command", reload, &self.base, &[], self.timeout()).await?;
        }
        std::fs::remove_file(&backup)?;
        Ok(format!("{} restored byte for byte from its backup", spec.name))
    }
}

impl Repoint {
    /// A consumer already on the target: only prove its connection works.
    async fn reload_and_probe_readonly(&self, _ctx: &RunContext) -> Result<Probe> {
        let f = &self.reading.found[0];
        let login = consumer::Login::new(&f.conn, &self.servers, true);
        match hooks::probe_sql(
            &login.url,
            self.reading.spec.health_sql.as_deref(),
            Duration::from_secs(5),
        )
        .await
        {
            Ok(r) => Ok(Probe {
                reached: Some(r.identity.place()),
                millis: Some(r.millis),
                ..Probe::default()
            }),
            Err(e) => Ok(Probe {
                unverified: Some(redact_text(&e.message)),
                ..Probe::default()
            }),
        }
    }
}

/// The connection a PgBouncer file's `[databases]` entry `name` holds.
fn pgbouncer_entry(content: &str, name: &str) -> Option<crate::conn::ConnString> {
    let leaves = crate::locate::leaves(ConsumerKind::Pgbouncer, content).ok()?;
    let occ = crate::locate::find(&leaves, &format!("databases.{name}")).ok()??;
    crate::conn::ConnString::parse(&occ.value)
}
