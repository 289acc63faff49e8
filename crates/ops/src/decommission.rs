//! `decommission-source`: retire the source once the data and the sync are
//! proven. Runs only after verify-data and verify-sync passed in this run,
//! and only when no client is still connected to the source (unless forced).
//! Always takes a final `pg_dump` of the source into the run directory first.
//!
//! Drivers: `postgres` quarantines the database (no connections, CONNECT
//! revoked, renamed with a dated suffix); `docker` stops the container;
//! `command` runs the plan's commands. Destroying (drop / remove) needs
//! `destroy = true` in the plan and `--destroy` on the command line, and is
//! the one irreversible step.

use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use cutover_core::artefacts::{Artefacts, DecommissionResult, FinalDump, Retirement};
use cutover_core::endpoint::Endpoint;
use cutover_core::event::Event;
use cutover_core::journal::{Item, ItemKey, quote_ident};
use cutover_core::plan_file::{DecommissionDriver, DecommissionSpec};
use cutover_core::stage::{Check, Description, RunContext, Stage, Undo};
use cutover_core::{Error, Result};
use sqlx::postgres::{PgPool, PgPoolOptions};

use crate::hooks;

pub const NAME: &str = cutover_core::stage::names::DECOMMISSION_SOURCE;

/// The proof that the source took no write since it stopped taking the
/// applications' (the tables' own counters against those read when the
/// fence went up, offline, or when the reverse stream ended, online).
/// `retiring`: decommission's check (online, only once the rollback window
/// closed); verify-sync's, offline only (online, the reverse stream writes
/// there until end-replication). Without a fence (freeze_source = false)
/// there is nothing to compare with.
pub async fn source_untouched(ctx: &RunContext, retiring: bool, force: bool) -> Result<()> {
    let states = ctx.journal.stage_states(ctx.run_id).await?;
    let done = |stage: &str| {
        states
            .get(stage)
            .filter(|s| s.is_done())
            .and_then(|s| s.artefacts.as_ref())
            .and_then(|a| a.get("write_counts"))
            .and_then(|w| serde_json::from_value::<std::collections::BTreeMap<String, i64>>(w.clone()).ok())
    };
    let (baseline, since) = match (
        done(crate::online::end_replication::END),
        done(cutover_core::stage::names::FREEZE_SOURCE),
    ) {
        (Some(b), _) if retiring => (b, "the rollback window closed (end-replication)"),
        (_, Some(b)) => (b, "the fence went up (freeze-source)"),
        _ => return Ok(()),
    };
    let now = cutover_pg::fence::write_counts(&ctx.source, ctx.journal.schema()).await?;
    let (written, unknown) = cutover_pg::fence::writes_since(&baseline, &now);
    if !unknown.is_empty() {
        let said = format!(
            "the source's write counters went back since {since} (a statistics reset, or a restart after a crash) \
             for {}: writes there cannot be told",
            unknown.join(", ")
        );
        if retiring && !force {
            return Err(Error::refused(format!("{said}; nothing was retired")).with_hint(
                "compare the source with the target yourself (`cutover verify`), then pass --force to retire it",
            ));
        }
        ctx.emit(Event::Warning { message: said });
    }
    if written.is_empty() {
        return Ok(());
    }
    Err(Error::new(
        cutover_core::ErrorKind::Differences,
        format!(
            "the source took writes after {since}: {}. Those rows are not on the target; nothing was retired",
            written.join("; ")
        ),
    )
    .with_hint(
        "a role no fence stops (a superuser, or cutover's own user) wrote them: find it in the source's log, then \
         `cutover rollback` and run again (the new copy takes them)",
    ))
}

/// Journals what the retirement did (before it is done, so that its undo
/// and its check know what to look for).
async fn record_retire(ctx: &RunContext, retirement: &Retirement) -> Result<()> {
    let detail = serde_json::to_value(retirement).expect("a retirement serialises");
    let item = Item {
        detail: Some(&detail),
        ..Item::new(NAME, &ItemKey::Retire)
    };
    ctx.journal.item_done(ctx.run_id, &item).await
}

pub struct Decommission {
    spec: DecommissionSpec,
    source: std::sync::Arc<Endpoint>,
    destroy: bool,
    force_clients: bool,
    base: PathBuf,
    /// options.connect_timeout
    connect_timeout: Duration,
    description: Description,
    /// The stages that prove the data and the sync (done in this run first).
    proofs: [&'static str; 2],
    /// What retiring the source does, for the summary.
    what: String,
}

/// The stage's one line: what it does and the proofs it waits for.
fn summary(what: &str, [data, sync]: [&str; 2]) -> String {
    format!(
        "after a final pg_dump of the source into the run directory, {what}; only once {data} and {sync} passed in \
         this run"
    )
}

impl Decommission {
    /// `destroy_flag` is `--destroy`; `force_clients` is `--force` (go on while clients remain).
    pub fn new(
        spec: DecommissionSpec,
        source: std::sync::Arc<Endpoint>,
        destroy_flag: bool,
        force_clients: bool,
        base: PathBuf,
        sessions: &[String],
        connect_timeout: Duration,
    ) -> Decommission {
        let destroy = spec.destroy && destroy_flag;
        let db = &source.dbname;
        let mut warnings = vec![];
        let what = match (spec.driver, destroy) {
            (DecommissionDriver::Postgres, false) => format!(
                "quarantine the source database {db}: no connections allowed, CONNECT revoked from PUBLIC, renamed \
                 to {db}_retired_<date>"
            ),
            (DecommissionDriver::Postgres, true) => {
                format!("DESTROY the source database {db}: DROP DATABASE. This cannot be undone")
            }
            (DecommissionDriver::Docker, false) => format!(
                "stop the source's container {}",
                spec.container.as_deref().unwrap_or_default()
            ),
            (DecommissionDriver::Docker, true) => format!(
                "DESTROY the source's container {}{}. This cannot be undone",
                spec.container.as_deref().unwrap_or_default(),
                if spec.remove_volumes {
                    " and its volumes"
                } else {
                    " (its volumes are kept)"
                }
            ),
            (DecommissionDriver::Command, false) => "retire the source with the plan's stop command".into(),
            (DecommissionDriver::Command, true) => {
                "DESTROY the source with the plan's destroy_command. This cannot be undone".into()
            }
            (DecommissionDriver::None, _) => "leave the source alone".into(),
        };
        if spec.destroy && !destroy_flag {
            warnings.push(
                "the plan says destroy = true, but --destroy was not given: the source is retired reversibly, not \
                 destroyed"
                    .into(),
            );
        }
        if !sessions.is_empty() {
            warnings.push(format!(
                "{} session(s) are connected to the source now; decommission refuses while any remain{}",
                sessions.len(),
                if force_clients {
                    " (overridden by --force)"
                } else {
                    " (--force overrides)"
                }
            ));
        }
        let proofs = [
            cutover_core::stage::names::VERIFY_DATA,
            cutover_core::stage::names::VERIFY_SYNC,
        ];
        Decommission {
            description: Description {
                summary: summary(&what, proofs),
                details: sessions.iter().map(|s| format!("connected now: {s}")).collect(),
                warnings,
                destructive: true,
            },
            spec,
            source,
            destroy,
            force_clients,
            base,
            connect_timeout,
            proofs,
            what,
        }
    }

    /// The online mode proves the data inside replicate (under the slot's snapshot).
    pub fn online(mut self) -> Decommission {
        self.proofs = [
            cutover_core::stage::names::REPLICATE,
            cutover_core::stage::names::VERIFY_SYNC,
        ];
        self.description.summary = summary(&self.what, self.proofs);
        self
    }

    fn timeout(&self) -> Duration {
        Duration::from_secs(120)
    }

    /// A one-connection pool on the source server's maintenance database.
    async fn maintenance(&self) -> Result<PgPool> {
        let timeout = self.connect_timeout;
        let mut last = None;
        for db in ["postgres", "template1"] {
            let opts = self.source.with_database(db).connect_options()?;
            match PgPoolOptions::new()
                .max_connections(1)
                .acquire_timeout(timeout)
                .connect_with(opts)
                .await
            {
                Ok(c) => return Ok(c),
                Err(e) => last = Some(e),
            }
        }
        Err(Error::failure(format!(
            "cannot connect to the source server's maintenance database (postgres or template1) as {}: {}",
            self.source.user,
            last.map(|e| cutover_core::redact::redact_text(&e.to_string()))
                .unwrap_or_default()
        )))
    }

    async fn recorded(&self, ctx: &RunContext) -> Result<Option<Retirement>> {
        let detail = ctx
            .journal
            .item_detail(ctx.run_id, NAME, &ItemKey::Retire)
            .await?;
        detail
            .filter(|d| !d.is_null())
            .map(|d| {
                serde_json::from_value(d).map_err(|e| {
                    Error::failure(format!("the journal's record of the retirement is damaged ({e})"))
                })
            })
            .transpose()
    }

    async fn docker(&self, args: &[&str]) -> Result<String> {
        let cmd = format!("docker {}", args.join(" "));
        hooks::run_command("docker", &cmd, &self.base, &[], self.timeout()).await
    }

    async fn final_dump(&self, ctx: &RunContext) -> Result<FinalDump> {
        let dir = ctx.run_dir.join("final");
        let path = dir.join(format!("source-{}.dump", self.source.dbname));
        if path.exists() {
            return Ok(FinalDump {
                path: path.display().to_string(),
                sha256: cutover_pg::backup::sha256_file(&path)?,
            });
        }
        let version: i32 = sqlx::query_scalar("SELECT current_setting('server_version_num')::int")
            .fetch_one(&ctx.source)
            .await?;
        let (pg_dump, _) = cutover_pg::tools::for_copy(version).await?;
        let partial = path.with_extension("dump.partial");
        // Created 0600 first: pg_dump truncates an existing file and keeps its mode.
        crate::files::write_private(&partial, b"")?;
        let mut cmd = cutover_pg::tools::command(&pg_dump, &self.source);
        cmd.arg("--format=custom")
            .arg(format!("--file={}", partial.display()));
        cutover_pg::tools::run(cmd, "the final pg_dump of the source").await?;
        std::fs::rename(&partial, &path)?;
        Ok(FinalDump {
            path: path.display().to_string(),
            sha256: cutover_pg::backup::sha256_file(&path)?,
        })
    }

    async fn source_reachable(&self, ctx: &RunContext) -> bool {
        tokio::time::timeout(Duration::from_secs(5), ctx.source.acquire())
            .await
            .is_ok_and(|r| r.is_ok())
    }
}

#[async_trait]
impl Stage for Decommission {
    fn name(&self) -> String {
        NAME.into()
    }
    fn describe(&self) -> &Description {
        &self.description
    }
    fn undo_kind(&self) -> Undo {
        if self.destroy {
            return Undo::Irreversible(
                "the source was destroyed; its final dump is in the run directory".into(),
            );
        }
        Undo::Reversible(match self.spec.driver {
            DecommissionDriver::Postgres => {
                "rename the database back, allow connections, restore CONNECT".into()
            }
            DecommissionDriver::Docker => "start the container again".into(),
            _ => "run the plan's start command".into(),
        })
    }

    async fn run(&self, ctx: &RunContext) -> Result<serde_json::Value> {
        if let Check::Holds = self.check(ctx).await? {
            return Ok(DecommissionResult {
                summary: "the source was already retired".into(),
                retirement: None,
            }
            .to_value());
        }
        // Invariant: nothing destructive touches the source before the data
        // and the sync are proven, in this run.
        let states = ctx.journal.stage_states(ctx.run_id).await?;
        for needed in self.proofs {
            if !states.get(needed).is_some_and(|s| s.is_done()) {
                return Err(Error::refused(format!(
                    "{NAME} needs {needed} to have passed in this run first; run the whole plan (`cutover run`)"
                )));
            }
        }
        source_untouched(ctx, true, self.force_clients).await?;
        let sessions = cutover_pg::freeze::other_sessions(&ctx.source).await?;
        if !sessions.is_empty() && !self.force_clients {
            return Err(Error::refused(format!(
                "{} client session(s) are still connected to the source: {}. Repoint or stop them, then run again \
                 (or pass --force to end those sessions)",
                sessions.len(),
                sessions.join("; ")
            )));
        }
        let dump = self.final_dump(ctx).await?;
        let db = self.source.dbname.clone();
        let detail = match self.spec.driver {
            DecommissionDriver::Postgres => {
                let maint = self.maintenance().await?;
                let had_public: bool =
                    sqlx::query_scalar("SELECT has_database_privilege('public', $1, 'CONNECT')")
                        .bind(&db)
                        .fetch_one(&maint)
                        .await?;
                let retired = format!("{db}_retired_{}", chrono::Utc::now().format("%Y%m%d"));
                let detail = Retirement {
                    database: Some(db.clone()),
                    retired_as: Some(retired.clone()),
                    public_connect: Some(had_public),
                    destroyed: self.destroy,
                    final_dump: dump,
                    ..Retirement::default()
                };
                record_retire(ctx, &detail).await?;
                ctx.source.close().await;
                let q = quote_ident(&db);
                sqlx::raw_sql(&format!(
                    "ALTER DATABASE {q} ALLOW_CONNECTIONS false; REVOKE CONNECT ON DATABASE {q} FROM PUBLIC"
                ))
                .execute(&maint)
                .await?;
                sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()")
                    .bind(&db)
                    .execute(&maint)
                    .await?;
                let sql = if self.destroy {
                    format!("DROP DATABASE {q} WITH (FORCE)")
                } else {
                    format!("ALTER DATABASE {q} RENAME TO {}", quote_ident(&retired))
                };
                sqlx::raw_sql(&sql).execute(&maint).await?;
                detail
            }
            DecommissionDriver::Docker => {
                let container = self.spec.container.clone().unwrap_or_default();
                let detail = Retirement {
                    container: Some(container.clone()),
                    destroyed: self.destroy,
                    final_dump: dump,
                    ..Retirement::default()
                };
                record_retire(ctx, &detail).await?;
                ctx.source.close().await;
                self.docker(&["stop", &container]).await?;
                if self.destroy {
                    let mut args = vec!["rm"];
                    if self.spec.remove_volumes {
                        args.push("--volumes");
                    }
                    args.push(&container);
                    self.docker(&args).await?;
                }
                detail
            }
            DecommissionDriver::Command => {
                let detail = Retirement {
                    destroyed: self.destroy,
                    final_dump: dump,
                    ..Retirement::default()
                };
                ctx.source.close().await;
                let cmd = if self.destroy {
                    &self.spec.destroy_command
                } else {
                    &self.spec.stop
                };
                hooks::run_command(
                    "the decommission command",
                    cmd.as_deref().unwrap_or_default(),
                    &self.base,
                    &[],
                    self.timeout(),
                )
                .await?;
                record_retire(ctx, &detail).await?;
                detail
            }
            DecommissionDriver::None => {
                return Ok(DecommissionResult {
                    summary: "the source is left alone".into(),
                    retirement: None,
                }
                .to_value());
            }
        };
        let summary = if self.destroy {
            format!(
                "source {db} destroyed; its final dump is {:?}",
                detail.final_dump.path
            )
        } else {
            format!("source {db} retired")
        };
        Ok(DecommissionResult {
            summary,
            retirement: Some(detail),
        }
        .to_value())
    }

    async fn check(&self, ctx: &RunContext) -> Result<Check> {
        let Some(detail) = self.recorded(ctx).await? else {
            return Ok(Check::Fails("not retired by this run".into()));
        };
        match self.spec.driver {
            DecommissionDriver::Postgres => {
                let maint = self.maintenance().await?;
                let names: Vec<String> = sqlx::query_scalar(
                    "SELECT datname::text FROM pg_database WHERE datname = $1 OR datname = $2",
                )
                .bind(&self.source.dbname)
                .bind(detail.retired_as.as_deref().unwrap_or_default())
                .fetch_all(&maint)
                .await?;
                Ok(if names.contains(&self.source.dbname) {
                    Check::Fails(format!(
                        "the database {} still exists under its name",
                        self.source.dbname
                    ))
                } else {
                    Check::Holds
                })
            }
            DecommissionDriver::Docker => {
                let container = self.spec.container.clone().unwrap_or_default();
                match self
                    .docker(&["inspect", "--format", "'{{.State.Running}}'", &container])
                    .await
                {
                    Ok(out) if out.trim() == "true" => {
                        Ok(Check::Fails(format!("container {container} is running")))
                    }
                    _ => Ok(Check::Holds),
                }
            }
            _ => Ok(if self.source_reachable(ctx).await {
                Check::Fails("the source still accepts connections".into())
            } else {
                Check::Holds
            }),
        }
    }

    async fn undo(&self, ctx: &RunContext) -> Result<String> {
        let Some(detail) = self.recorded(ctx).await? else {
            return Ok("the source was not retired by this run; nothing to undo".into());
        };
        if detail.destroyed {
            return Err(Error::refused(
                "the source was destroyed; restore it from the final dump by hand",
            ));
        }
        let db = &self.source.dbname;
        match self.spec.driver {
            DecommissionDriver::Postgres => {
                let maint = self.maintenance().await?;
                let retired = detail.retired_as.clone().unwrap_or_default();
                let exists = |name: String| {
                    sqlx::query_scalar::<_, bool>(
                        "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)",
                    )
                    .bind(name)
                };
                if exists(retired.clone()).fetch_one(&maint).await?
                    && !exists(db.clone()).fetch_one(&maint).await?
                {
                    sqlx::raw_sql(&format!(
                        "ALTER DATABASE {} RENAME TO {}",
                        quote_ident(&retired),
                        quote_ident(db)
                    ))
                    .execute(&maint)
                    .await?;
                }
                let q = quote_ident(db);
                let mut sql = format!("ALTER DATABASE {q} ALLOW_CONNECTIONS true");
                if detail.public_connect != Some(false) {
                    sql.push_str(&format!("; GRANT CONNECT ON DATABASE {q} TO PUBLIC"));
                }
                sqlx::raw_sql(&sql).execute(&maint).await?;
            }
            DecommissionDriver::Docker => {
                let container = self.spec.container.clone().unwrap_or_default();
                self.docker(&["start", &container]).await?;
            }
            _ => {
                hooks::run_command(
                    "the start command",
                    self.spec.start.as_deref().unwrap_or_default(),
                    &self.base,
                    &[],
                    self.timeout(),
                )
                .await?;
            }
        }
        // The source must answer again before the earlier stages' undo runs.
        hooks::retry(Duration::from_secs(60), || async {
            ctx.source
                .acquire()
                .await
                .map(|_| ())
                .map_err(|e| Error::failure(e.to_string()))
        })
        .await
        .map_err(|e| e.context("the source did not come back"))?;
        ctx.journal.clear_items(ctx.run_id, NAME).await?;
        Ok(format!("source {db} is back in service"))
    }
}
