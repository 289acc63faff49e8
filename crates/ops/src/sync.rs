//! `verify-sync`: the seed's last step, made exact. A sentinel row with a
//! random token goes into the journal schema on the target; each consumer's
//! connection, as its configuration holds it now, must see it. Then the
//! sessions still on the source are listed: decommission refuses while any
//! remain.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use cutover_core::artefacts::Artefacts;
use cutover_core::event::Event;
use cutover_core::journal::{Item, ItemKey};
use cutover_core::plan_file::ConsumerSpec;
use cutover_core::redact::redact_text;
use cutover_core::stage::{Check, Description, RunContext, Stage, Undo};
use cutover_core::{Error, ErrorKind, Result};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::conn::Field;
use crate::consumer::{self, Servers, Which};
use crate::hooks;

/// verify-sync: what each consumer's own connection saw.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct SyncResult {
    pub summary: String,
    pub consumers: Vec<ConsumerProof>,
    /// Sessions still connected to the source.
    pub source_sessions: Vec<String>,
    /// Each consumer's role, logging in on the source: refused there.
    pub fence: Vec<FenceProof>,
}

/// One consumer role's proof that the source no longer lets it in.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FenceProof {
    pub consumer: String,
    pub role: String,
    /// What the source answered its login (SQLSTATE and message), or why
    /// the proof rests on the catalog alone.
    pub answer: String,
    pub holds: bool,
}

cutover_core::artefacts!(SyncResult);

/// One consumer connection's proof.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConsumerProof {
    pub consumer: String,
    /// The line of its file where its connection is written.
    pub line: usize,
    /// How the probe logged in, when the file holds no password.
    pub login: Option<String>,
    pub sees_sentinel: bool,
    /// The server and database its connection reached.
    pub reached: Option<String>,
    pub points_at: Which,
    pub millis: u64,
    /// Whether its health URL answered as expected (when it has one).
    pub http: Option<bool>,
    /// Its role's privileges on the target against the source's.
    pub privileges: Option<String>,
    pub privileges_as_on_source: Option<bool>,
}

pub struct VerifySync {
    /// The source is fenced by now (the freeze or the switch): prove it.
    fenced: bool,
    role_map: cutover_pg::security::RoleMap,
    consumers: Vec<ConsumerSpec>,
    base: PathBuf,
    servers: Servers,
    description: Description,
}

impl VerifySync {
    /// `role_map`: the plan's `[roles] map` (privilege parity is compared through it).
    pub fn new(
        consumers: Vec<ConsumerSpec>,
        base: PathBuf,
        servers: Servers,
        role_map: cutover_pg::security::RoleMap,
        fenced: bool,
    ) -> VerifySync {
        let names: Vec<&str> = consumers.iter().map(|c| c.name.as_str()).collect();
        VerifySync {
            fenced,
            description: Description {
                summary: format!(
                    "write a sentinel row on the target and read it through each consumer's connection ({}); {}then \
                     list the sessions still on the source",
                    names.join(", "),
                    if fenced {
                        "log in on the source as each consumer's role, which the fence must refuse; "
                    } else {
                        ""
                    }
                ),
                ..Default::default()
            },
            role_map,
            consumers,
            base,
            servers,
        }
    }
}

#[async_trait]
impl Stage for VerifySync {
    fn name(&self) -> String {
        cutover_core::stage::names::VERIFY_SYNC.into()
    }
    fn describe(&self) -> &Description {
        &self.description
    }
    fn undo_kind(&self) -> Undo {
        Undo::Nothing
    }

    async fn run(&self, ctx: &RunContext) -> Result<serde_json::Value> {
        let token = uuid::Uuid::new_v4().to_string();
        let table = ctx.journal.sentinel_table();
        // Consumers connect as their own roles: those roles may read the
        // sentinel for the proof only. Grants an interrupted attempt left
        // are taken back first; these are journaled before they are made.
        revoke_sentinel_grants(ctx).await?;
        self.grant_sentinel(ctx, &table).await?;
        // A sentinel an interrupted attempt left behind goes first.
        ctx.journal.put_sentinel(ctx.run_id, &token).await?;
        let result = self.probe_all(ctx, &table, &token).await;
        ctx.journal.delete_sentinel(&token).await?;
        revoke_sentinel_grants(ctx).await?;
        let (report, misses) = result?;
        let (fence, open) = if self.fenced && misses.is_empty() {
            self.prove_fence(ctx).await?
        } else {
            (vec![], vec![])
        };
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
        if !open.is_empty() {
            return Err(Error::new(
                ErrorKind::Differences,
                format!(
                    "the source still lets an application in after the fence: {}. Both databases could take its \
                     writes; nothing is retired while this holds",
                    open.join("; ")
                ),
            )
            .with_hint(
                "give that application a login role of its own (not a superuser, not a member of cutover's user), \
                 or REVOKE CONNECT ON DATABASE from it on the source; then run again",
            ));
        }
        crate::decommission::source_untouched(ctx, false, false).await?;
        Ok(SyncResult {
            summary: format!(
                "{} consumer connection(s) saw the sentinel; {}{} session(s) still on the source",
                report.len(),
                if self.fenced {
                    format!(
                        "the source refused {} consumer role(s) ({} beyond any fence); ",
                        fence.iter().filter(|f| f.holds).count(),
                        fence.iter().filter(|f| !f.holds).count()
                    )
                } else {
                    String::new()
                },
                sessions.len()
            ),
            consumers: report,
            source_sessions: sessions,
            fence,
        }
        .to_value())
    }

    async fn check(&self, _ctx: &RunContext) -> Result<Check> {
        Ok(Check::Holds)
    }

    async fn undo(&self, ctx: &RunContext) -> Result<String> {
        revoke_sentinel_grants(ctx).await?;
        // A sentinel left by an attempt that was killed mid-way.
        ctx.journal.delete_sentinels(ctx.run_id).await?;
        Ok("nothing else to undo (the sentinel is deleted when the check ends)".into())
    }
}

/// Takes back the proof's grants recorded in the journal (by this attempt or
/// one that was killed before it could).
async fn revoke_sentinel_grants(ctx: &RunContext) -> Result<()> {
    let Some(detail) = ctx
        .journal
        .item_detail(
            ctx.run_id,
            cutover_core::stage::names::VERIFY_SYNC,
            &ItemKey::SentinelGrants,
        )
        .await?
    else {
        return Ok(());
    };
    let schema = cutover_core::journal::quote_ident(ctx.journal.schema());
    let table = ctx.journal.sentinel_table();
    for (key, sql) in [
        ("usage", format!("REVOKE USAGE ON SCHEMA {schema} FROM")),
        ("select", format!("REVOKE SELECT ON {table} FROM")),
    ] {
        for role in detail[key]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| r.as_str())
        {
            sqlx::query(&format!("{sql} {}", cutover_core::journal::quote_ident(role)))
                .execute(&ctx.target)
                .await
                .map_err(|e| {
                    Error::from(e).context(format!("taking back the sentinel proof's grant to {role}"))
                })?;
        }
    }
    ctx.journal
        .remove_item(
            ctx.run_id,
            cutover_core::stage::names::VERIFY_SYNC,
            &ItemKey::SentinelGrants,
        )
        .await
}

impl VerifySync {
    /// The fence, proved the way an application meets it: each consumer's
    /// role logs in on the source with its own configuration's credentials
    /// and must be refused (SQLSTATE 42501, no CONNECT). A login that fails
    /// for another reason (the password is the target's) leaves the proof
    /// to the catalog (`has_database_privilege`); a login let in fails the
    /// stage, naming the role.
    async fn prove_fence(&self, ctx: &RunContext) -> Result<(Vec<FenceProof>, Vec<String>)> {
        if !cutover_pg::fence::is_up(&ctx.source, ctx.journal.schema()).await? {
            return Ok((
                vec![],
                vec!["the source's fence is down (no role has lost CONNECT): `cutover rollback`, then run again".into()],
            ));
        }
        let src = &self.servers.source;
        let mut proofs: Vec<FenceProof> = vec![];
        let mut misses = vec![];
        for spec in &self.consumers {
            let Ok(reading) = consumer::read(spec, &self.base, &self.servers).await else {
                continue;
            };
            for f in &reading.found {
                let Some(user) = f.conn.user() else { continue };
                let role = self.role_map.source(&user).to_string();
                if proofs.iter().any(|p| p.consumer == spec.name && p.role == role) {
                    continue;
                }
                let on_source = f.conn.with_fields(&[
                    (Field::Host, src.host.clone()),
                    (Field::Port, src.port.to_string()),
                    (Field::Dbname, src.dbname.clone()),
                    (Field::User, role.clone()),
                ]);
                let row: Option<(bool, bool)> = sqlx::query_as(
                    "SELECT has_database_privilege(oid, current_database(), 'CONNECT'), \
                            rolsuper OR pg_has_role(oid, current_user, 'USAGE') FROM pg_roles WHERE rolname = $1",
                )
                .bind(&role)
                .fetch_optional(&ctx.source)
                .await?;
                let Some((may, beyond)) = row else { continue };
                if beyond {
                    // cutover's own user, a superuser, or a member of cutover's
                    // user: the plan named it; the write counters prove,
                    // before the source is retired, that it wrote nothing.
                    let answer = format!(
                        "{role} is beyond any fence (cutover's own user, a superuser, or holding cutover's user's \
                         privileges): the source's read-only default and its write counters are the proof"
                    );
                    ctx.emit(Event::Warning {
                        message: format!("consumer {}: {answer}", spec.name),
                    });
                    proofs.push(FenceProof {
                        consumer: spec.name.clone(),
                        role,
                        answer,
                        holds: false,
                    });
                    continue;
                }
                let attempt = hooks::probe_sql(&on_source.to_url(), None, Duration::from_secs(10)).await;
                let (answer, holds) = match attempt {
                    Err(e) if e.sqlstate.as_deref() == Some("42501") => (
                        format!(
                            "refused by the source: {} (SQLSTATE 42501)",
                            redact_text(&e.message)
                        ),
                        true,
                    ),
                    Ok(_) => ("let in by the source: it can write there".to_string(), false),
                    Err(e) => (
                        format!(
                            "its login failed for another reason (SQLSTATE {}); by the catalog it {} CONNECT",
                            e.sqlstate.as_deref().unwrap_or("none"),
                            if may { "still has" } else { "has lost" }
                        ),
                        !may,
                    ),
                };
                let line = format!(
                    "consumer {} logging in on the source as {role}: {answer}",
                    spec.name
                );
                ctx.emit(Event::Info {
                    message: line.clone(),
                });
                if !holds {
                    misses.push(line);
                }
                proofs.push(FenceProof {
                    consumer: spec.name.clone(),
                    role,
                    answer,
                    holds,
                });
            }
        }
        Ok((proofs, misses))
    }

    /// The roles the consumers log in as on the target (their connections'
    /// users; the plan's target user where a connection names none).
    async fn consumer_roles(&self) -> Vec<String> {
        let mut roles = vec![];
        for spec in &self.consumers {
            if let Ok(reading) = consumer::read(spec, &self.base, &self.servers).await {
                for f in &reading.found {
                    let user = f
                        .conn
                        .user()
                        .unwrap_or_else(|| self.servers.target_destination.user.clone());
                    if !roles.contains(&user) {
                        roles.push(user);
                    }
                }
            }
        }
        roles
    }

    /// USAGE on the journal's schema and SELECT on the sentinels, for the
    /// consumers' roles that lack them (never a superuser or the owner),
    /// recorded first so that a kill before the revoke is cleaned up.
    async fn grant_sentinel(&self, ctx: &RunContext, table: &str) -> Result<()> {
        let schema_name = ctx.journal.schema();
        let roles = self.consumer_roles().await;
        let (usage, select): (Vec<String>, Vec<String>) = sqlx::query_as(
            "SELECT coalesce(array_agg(r.rolname::text) FILTER (WHERE NOT has_schema_privilege(r.oid, $2::text, 'USAGE')), '{}'), \
                    coalesce(array_agg(r.rolname::text) FILTER (WHERE NOT has_table_privilege(r.oid, $3::text, 'SELECT')), '{}') \
             FROM pg_roles r WHERE r.rolname = ANY($1) AND NOT r.rolsuper",
        )
        .bind(&roles)
        .bind(schema_name)
        .bind(table)
        .fetch_one(&ctx.target)
        .await?;
        if usage.is_empty() && select.is_empty() {
            return Ok(());
        }
        let detail = json!({ "usage": usage, "select": select });
        ctx.journal
            .item_done(
                ctx.run_id,
                &Item {
                    detail: Some(&detail),
                    ..Item::new(cutover_core::stage::names::VERIFY_SYNC, &ItemKey::SentinelGrants)
                },
            )
            .await?;
        let schema = cutover_core::journal::quote_ident(schema_name);
        for role in &usage {
            sqlx::query(&format!(
                "GRANT USAGE ON SCHEMA {schema} TO {}",
                cutover_core::journal::quote_ident(role)
            ))
            .execute(&ctx.target)
            .await?;
        }
        for role in &select {
            sqlx::query(&format!(
                "GRANT SELECT ON {table} TO {}",
                cutover_core::journal::quote_ident(role)
            ))
            .execute(&ctx.target)
            .await?;
        }
        Ok(())
    }

    async fn probe_all(
        &self,
        ctx: &RunContext,
        table: &str,
        token: &str,
    ) -> Result<(Vec<ConsumerProof>, Vec<String>)> {
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
                let login = consumer::Login::new(&f.conn, &self.servers, true);
                let probe = hooks::probe_sentinel(
                    &login.url,
                    table,
                    token,
                    ctx.journal.schema(),
                    Duration::from_secs(10),
                )
                .await;
                let mut privileges = None;
                let seen: Result<(bool, String)> = match probe {
                    Ok(p) => {
                        let on_target = p.identity.same_database_any_start(&self.servers.target.identity);
                        if p.seen && on_target {
                            privileges = Some(self.privilege_parity(ctx, &p).await?);
                        }
                        Ok((p.seen && on_target, p.identity.place()))
                    }
                    Err(e) => Err(e),
                };
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
                            "consumer {} sees the sentinel through {place} in {millis} ms{}",
                            spec.name,
                            login.note.as_ref().map(|n| format!(" ({n})")).unwrap_or_default()
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
                let parity = privileges
                    .as_ref()
                    .map(|(role, p)| format!("{}: role {role}, {}", spec.name, p.said));
                if let Some((_, p)) = &privileges
                    && !p.same
                {
                    misses.push(parity.clone().unwrap_or_default());
                }
                if let Some(p) = &parity {
                    ctx.emit(Event::Info { message: p.clone() });
                }
                report.push(ConsumerProof {
                    consumer: spec.name.clone(),
                    line: f.line(),
                    login: login.note.clone(),
                    sees_sentinel: matches!(seen, Ok((true, _))),
                    reached: seen.as_ref().ok().map(|(_, p)| p.clone()),
                    points_at: f.located.which,
                    millis,
                    http: http.map(|h| h.is_ok()),
                    privileges: parity,
                    privileges_as_on_source: privileges.as_ref().map(|(_, p)| p.same),
                });
                if f.located.which == Which::Source {
                    misses.push(format!("consumer {} still points at the source", spec.name));
                }
            }
        }
        Ok((report, misses))
    }

    /// The consumer's role's privileges on the target (read through its own
    /// connection) against the same role's on the source.
    async fn privilege_parity(
        &self,
        ctx: &RunContext,
        probe: &hooks::SentinelProbe,
    ) -> Result<(String, cutover_pg::security::Parity)> {
        let mut conn = ctx.source.acquire().await?;
        let map = &self.role_map;
        let source_role = map.source(&probe.role).to_string();
        let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)")
            .bind(&source_role)
            .fetch_one(&mut *conn)
            .await?;
        if !exists {
            return Ok((
                probe.role.clone(),
                cutover_pg::security::Parity {
                    same: true,
                    said: format!(
                        "{} privilege(s) on the target (the role does not exist on the source)",
                        probe.privileges.len()
                    ),
                },
            ));
        }
        let on_source =
            cutover_pg::security::privileges_of(&mut conn, &source_role, ctx.journal.schema()).await?;
        Ok((
            probe.role.clone(),
            cutover_pg::security::parity(&on_source, &probe.privileges),
        ))
    }
}
