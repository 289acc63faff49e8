//! `verify-sync`: the seed's last step, made exact. A sentinel row with a
//! random token goes into the journal schema on the target; each consumer's
//! connection, as its configuration holds it now, must see it. Then the
//! sessions still on the source are listed: decommission refuses while any
//! remain.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use cutover_core::endpoint::redact_text;
use cutover_core::event::Event;
use cutover_core::plan_file::ConsumerSpec;
use cutover_core::stage::{Check, Description, RunContext, Stage, Undo};
use cutover_core::{Error, ErrorKind, Result};
use serde_json::json;

use crate::conn::ConnString;
use crate::consumer::{self, Servers, Which};
use crate::hooks;

pub struct VerifySync {
    consumers: Vec<ConsumerSpec>,
    base: PathBuf,
    servers: Servers,
    description: Description,
}

impl VerifySync {
    pub fn new(consumers: Vec<ConsumerSpec>, base: PathBuf, servers: Servers) -> VerifySync {
        let names: Vec<&str> = consumers.iter().map(|c| c.name.as_str()).collect();
        VerifySync {
            description: Description {
                summary: format!(
                    "write a sentinel row on the target and read it through each consumer's connection ({}); then \
                     list the sessions still on the source",
                    names.join(", ")
                ),
                ..Default::default()
            },
            consumers,
            base,
            servers,
        }
    }

    /// The URL to probe a connection with: the consumer's own, with the plan's
    /// password when it names the plan's user and carries none.
    fn probe_url(&self, conn: &ConnString) -> String {
        let d = &self.servers.target_destination;
        if conn.password().is_none()
            && conn.user().as_deref() == Some(d.user.as_str())
            && d.password.is_some()
        {
            let with = crate::conn::Destination {
                host: conn.host(),
                port: conn.port(),
                dbname: conn.dbname().unwrap_or_default(),
                user: d.user.clone(),
                password: d.password.clone(),
            };
            return crate::repoint::destination_url(&with);
        }
        conn.to_url()
    }
}

#[async_trait]
impl Stage for VerifySync {
    fn name(&self) -> String {
        "verify-sync".into()
    }
    fn describe(&self) -> &Description {
        &self.description
    }
    fn undo_kind(&self) -> Undo {
        Undo::Nothing
    }

    async fn run(&self, ctx: &RunContext) -> Result<serde_json::Value> {
        let token = uuid::Uuid::new_v4().to_string();
        let table = ctx.journal.table("sentinels");
        // Consumers connect as their own users: let them read the sentinel.
        let _ = sqlx::raw_sql(&format!(
            "GRANT USAGE ON SCHEMA {} TO PUBLIC; GRANT SELECT ON {table} TO PUBLIC",
            cutover_core::journal::quote_ident(ctx.journal.schema())
        ))
        .execute(&ctx.target)
        .await;
        // A sentinel an interrupted attempt left behind goes first.
        sqlx::query(&format!("DELETE FROM {table} WHERE run_id = $1"))
            .bind(ctx.run_id)
            .execute(&ctx.target)
            .await?;
        sqlx::query(&format!("INSERT INTO {table} (token, run_id) VALUES ($1, $2)"))
            .bind(&token)
            .bind(ctx.run_id)
            .execute(&ctx.target)
            .await?;
        let result = self.probe_all(ctx, &table, &token).await;
        sqlx::query(&format!("DELETE FROM {table} WHERE token = $1"))
            .bind(&token)
            .execute(&ctx.target)
            .await?;
        let (report, misses) = result?;
        let sessions = cutover_pg::freeze::other_sessions(&ctx.source)
            .await
            .unwrap_or_default();
        for s in &sessions {
            ctx.emit(Event::Warning {
                message: format!("still connected to the source: {s}"),
            });
        }
        if !misses.is_empty() {
            return Err(Error::new(
                ErrorKind::Differences,
                format!(
                    "the sentinel was not seen through every consumer: {}. Fix those consumers' configuration \
                     (or roll back), then run again",
                    misses.join("; ")
                ),
            ));
        }
        Ok(json!({
            "summary": format!("{} consumer connection(s) saw the sentinel; {} session(s) still on the source",
                report.len(), sessions.len()),
            "consumers": report,
            "source_sessions": sessions,
        }))
    }

    async fn check(&self, _ctx: &RunContext) -> Result<Check> {
        Ok(Check::Holds)
    }

    async fn undo(&self, ctx: &RunContext) -> Result<String> {
        // A sentinel left by an attempt that was killed mid-way.
        sqlx::query(&format!(
            "DELETE FROM {} WHERE run_id = $1",
            ctx.journal.table("sentinels")
        ))
        .bind(ctx.run_id)
        .execute(&ctx.target)
        .await?;
        Ok("nothing else to undo (the sentinel is deleted when the check ends)".into())
    }
}

impl VerifySync {
    async fn probe_all(
        &self,
        ctx: &RunContext,
        table: &str,
        token: &str,
    ) -> Result<(Vec<serde_json::Value>, Vec<String>)> {
        let mut report = vec![];
        let mut misses = vec![];
        for spec in &self.consumers {
            let reading = match consumer::read(spec, &self.base, &self.servers).await {
                Ok(r) => r,
                Err(e) => {
                    misses.push(e.message);
                    continue;
                }
            };
            for f in &reading.found {
                let t0 = Instant::now();
                let url = self.probe_url(&f.conn);
                let seen: Result<(bool, String)> =
                    hooks::probe_sentinel(&url, table, token, Duration::from_secs(10))
                        .await
                        .map(|(seen, identity)| {
                            let on_target = identity.same_database_any_start(&self.servers.target.identity);
                            (seen && on_target, identity.place())
                        });
                let millis = t0.elapsed().as_millis() as u64;
                let http = match (&spec.health_url, &seen) {
                    (Some(u), Ok((true, _))) => Some(
                        hooks::probe_http(u, spec.health_expect.as_deref(), Duration::from_secs(10))
                            .await
                            .map_err(|e| e.message),
                    ),
                    _ => None,
                };
                let line = match (&seen, &http) {
                    (Ok((true, place)), None | Some(Ok(_))) => {
                        format!(
                            "consumer {} sees the sentinel through {place} in {millis} ms",
                            spec.name
                        )
                    }
                    (Ok((true, _)), Some(Err(e))) => {
                        misses.push(format!("consumer {}: {e}", spec.name));
                        format!(
                            "consumer {} sees the sentinel, but its health URL fails: {e}",
                            spec.name
                        )
                    }
                    (Ok((false, place)), _) => {
                        misses.push(format!("consumer {} reaches {place}, not the target", spec.name));
                        format!(
                            "consumer {} does not see the sentinel: it reaches {place}",
                            spec.name
                        )
                    }
                    (Err(e), _) => {
                        misses.push(format!("consumer {}: {}", spec.name, redact_text(&e.message)));
                        format!(
                            "consumer {} cannot be probed: {}",
                            spec.name,
                            redact_text(&e.message)
                        )
                    }
                };
                ctx.emit(Event::Info {
                    message: line.clone(),
                });
                report.push(json!({
                    "consumer": spec.name,
                    "line": f.occurrence.line,
                    "sees_sentinel": matches!(seen, Ok((true, _))),
                    "reached": seen.as_ref().ok().map(|(_, p)| p.clone()),
                    "points_at": f.located.which,
                    "millis": millis,
                    "http": http.map(|h| h.is_ok()),
                }));
                if f.located.which == Which::Source {
                    misses.push(format!("consumer {} still points at the source", spec.name));
                }
            }
        }
        Ok((report, misses))
    }
}
