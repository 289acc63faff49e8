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
use cutover_core::endpoint::Endpoint;
use cutover_core::journal::{Item, quote_ident};
use cutover_core::plan_file::{DecommissionDriver, DecommissionSpec};
use cutover_core::stage::{Check, Description, RunContext, Stage, Undo};
use cutover_core::{Error, Result};
use serde_json::json;
use sqlx::Row;
use sqlx::postgres::{PgPool, PgPoolOptions};

use crate::hooks;

pub const NAME: &str = "decommission-source";

/// Journals what the retirement did (before it is done, so that its undo
/// and its check know what to look for).
async fn record_retire(ctx: &RunContext, detail: &serde_json::Value) -> Result<()> {
    let item = Item {
        stage: NAME,
        item: "retire",
        detail: Some(detail),
        ..Default::default()
    };
    ctx.journal.item_done(ctx.run_id, &item).await
}

pub struct Decommission {
    spec: DecommissionSpec,
    source: Endpoint,
    destroy: bool,
    force_clients: bool,
    base: PathBuf,
    description: Description,
}

impl Decommission {
    /// `destroy_flag` is `--destroy`; `force_clients` is `--force` (go on while clients remain).
    pub fn new(
        spec: DecommissionSpec,
        source: Endpoint,
        destroy_flag: bool,
        force_clients: bool,
        base: PathBuf,
        sessions: &[String],
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
        Decommission {
            description: Description {
                summary: format!(
                    "after a final pg_dump of the source into the run directory, {what}; only once verify-data and \
                     verify-sync passed in this run"
                ),
                details: sessions.iter().map(|s| format!("connected now: {s}")).collect(),
                warnings,
                destructive: true,
            },
            spec,
            source,
            destroy,
            force_clients,
            base,
        }
    }

    fn timeout(&self) -> Duration {
        Duration::from_secs(120)
    }

    /// A one-connection pool on the source server's maintenance database.
    async fn maintenance(&self, ctx: &RunContext) -> Result<PgPool> {
        let timeout = Duration::from_secs(ctx.plan.file.options.connect_timeout);
        let mut last = None;
        for db in ["postgres", "template1"] {
            let opts = self.source.with_database(db).connect_options(timeout)?;
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
            last.map(|e| cutover_core::endpoint::redact_text(&e.to_string()))
                .unwrap_or_default()
        )))
    }

    async fn recorded(&self, ctx: &RunContext) -> Result<Option<serde_json::Value>> {
        let row = sqlx::query(&format!(
            "SELECT detail FROM {} WHERE run_id = $1 AND stage = $2 AND item = 'retire'",
            ctx.journal.table("item_progress")
        ))
        .bind(ctx.run_id)
        .bind(NAME)
        .fetch_optional(ctx.journal.pool())
        .await?;
        Ok(row.and_then(|r| r.get::<Option<serde_json::Value>, _>(0)))
    }

    async fn docker(&self, args: &[&str]) -> Result<String> {
        let cmd = format!("docker {}", args.join(" "));
        hooks::run_command("docker", &cmd, &self.base, &[], self.timeout()).await
    }

    async fn final_dump(&self, ctx: &RunContext) -> Result<serde_json::Value> {
        let dir = ctx.run_dir.join("final");
        let path = dir.join(format!("source-{}.dump", self.source.dbname));
        if path.exists() {
            return Ok(
                json!({ "path": path.display().to_string(), "sha256": cutover_pg::backup::sha256_file(&path)? }),
            );
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
        Ok(json!({ "path": path.display().to_string(), "sha256": cutover_pg::backup::sha256_file(&path)? }))
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
            return Ok(json!({ "summary": "the source was already retired" }));
        }
        // Invariant: nothing destructive touches the source before the data
        // and the sync are proven, in this run.
        let states = ctx.journal.stage_states(ctx.run_id).await?;
        for needed in ["verify-data", "verify-sync"] {
            if !states.get(needed).is_some_and(|s| s.is_done()) {
                return Err(Error::refused(format!(
                    "{NAME} needs {needed} to have passed in this run first; run the whole plan (`cutover run`)"
                )));
            }
        }
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
                let maint = self.maintenance(ctx).await?;
                let had_public: bool =
                    sqlx::query_scalar("SELECT has_database_privilege('public', $1, 'CONNECT')")
                        .bind(&db)
                        .fetch_one(&maint)
                        .await?;
                let retired = format!("{db}_retired_{}", chrono::Utc::now().format("%Y%m%d"));
                let detail = json!({ "database": db, "retired_as": retired, "public_connect": had_public,
                                     "destroyed": self.destroy, "final_dump": dump });
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
                let detail = json!({ "container": container, "destroyed": self.destroy, "final_dump": dump });
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
                let detail = json!({ "destroyed": self.destroy, "final_dump": dump });
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
            DecommissionDriver::None => return Ok(json!({ "summary": "the source is left alone" })),
        };
        let mut artefacts = detail;
        artefacts["summary"] = json!(if self.destroy {
            format!(
                "source {db} destroyed; its final dump is {}",
                artefacts["final_dump"]["path"]
            )
        } else {
            format!("source {db} retired")
        });
        Ok(artefacts)
    }

    async fn check(&self, ctx: &RunContext) -> Result<Check> {
        let Some(detail) = self.recorded(ctx).await? else {
            return Ok(Check::Fails("not retired by this run".into()));
        };
        match self.spec.driver {
            DecommissionDriver::Postgres => {
                let maint = self.maintenance(ctx).await?;
                let names: Vec<String> = sqlx::query_scalar(
                    "SELECT datname::text FROM pg_database WHERE datname = $1 OR datname = $2",
                )
                .bind(&self.source.dbname)
                .bind(detail["retired_as"].as_str().unwrap_or_default())
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
        if detail["destroyed"].as_bool() == Some(true) {
            return Err(Error::refused(
                "the source was destroyed; restore it from the final dump by hand",
            ));
        }
        let db = &self.source.dbname;
        match self.spec.driver {
            DecommissionDriver::Postgres => {
                let maint = self.maintenance(ctx).await?;
                let retired = detail["retired_as"].as_str().unwrap_or_default().to_string();
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
                if detail["public_connect"].as_bool() != Some(false) {
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
        sqlx::query(&format!(
            "DELETE FROM {} WHERE run_id = $1 AND stage = $2",
            ctx.journal.table("item_progress")
        ))
        .bind(ctx.run_id)
        .bind(NAME)
        .execute(ctx.journal.pool())
        .await?;
        Ok(format!("source {db} is back in service"))
    }
}
