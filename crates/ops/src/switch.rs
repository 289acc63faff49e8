//! The online mode's write pause: `switch` pauses the applications on the
//! source, waits until the target has applied everything written before
//! the pause, sets the sequences, ends the forward stream and starts the
//! reverse one (target -> source, for a lossless rollback); the `repoint`
//! stages then move each consumer (a PgBouncer entry resumes as it is
//! switched), and `resume` ends the pause and records its length.
//!
//! Pausing: a PgBouncer consumer's entry by `PAUSE` on its admin console
//! (its clients keep their connections and wait); every other consumer by
//! its login role made read-only on the source (`ALTER ROLE … IN DATABASE …
//! SET default_transaction_read_only`) and its sessions there ended. The
//! source stays read-only for those roles until decommission or rollback:
//! never both databases taking the applications' writes.
//!
//! Rollback after the switch (`back_to_source`) does the same the other
//! way: pause on the target, wait for the reverse stream's sentinel on the
//! source, sequences back, drop the reverse stream, lift the source's fence.

use std::time::{Duration, Instant};

use async_trait::async_trait;
use cutover_core::artefacts::Artefacts;
use cutover_core::endpoint::Endpoint;
use cutover_core::engine::crash_point;
use cutover_core::event::Event;
use cutover_core::journal::{Item, ItemKey};
use cutover_core::plan_file::{AdminConsole, OnlineOptions};
use cutover_core::stage::{Check, Description, RunContext, Stage, Undo};
use cutover_core::{Error, ErrorKind, Result};
use cutover_pg::replication::{self, FORWARD, REVERSE};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;

use crate::pgbouncer::Console;

pub const SWITCH: &str = "switch";
pub const RESUME: &str = "resume";

/// A PgBouncer consumer's entry, paused through its admin console.
#[derive(Debug, Clone)]
pub struct Bouncer {
    pub consumer: String,
    pub admin: AdminConsole,
    pub entry: String,
    pub pause_timeout: Duration,
}

/// The applications, as the switch pauses them.
#[derive(Debug, Clone, Default)]
pub struct Applications {
    pub bouncers: Vec<Bouncer>,
    /// The login roles of every other consumer (fenced).
    pub roles: Vec<String>,
}

impl Applications {
    fn describe(&self) -> String {
        let mut parts = vec![];
        if !self.bouncers.is_empty() {
            parts.push(format!(
                "PAUSE of PgBouncer entries {}",
                self.bouncers
                    .iter()
                    .map(|b| b.entry.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        if !self.roles.is_empty() {
            parts.push(format!(
                "role(s) {} made read-only and their sessions ended",
                self.roles.join(", ")
            ));
        }
        if parts.is_empty() {
            "no consumer to pause (nothing writes through a consumer cutover knows)".into()
        } else {
            parts.join("; ")
        }
    }

    async fn console(b: &Bouncer) -> Result<Console> {
        Console::new(&b.admin.url().map_err(Error::bad_input)?).await
    }

    /// Pauses every application on the side `pool` serves (the PgBouncer
    /// entries point there). On failure, what was paused is resumed.
    async fn pause(&self, pool: &PgPool) -> Result<usize> {
        for (i, b) in self.bouncers.iter().enumerate() {
            let paused = async {
                let console = Self::console(b).await?;
                if !console.entry(&b.entry).await?.is_some_and(|e| e.paused) {
                    console.pause(&b.entry, b.pause_timeout).await?;
                }
                Ok::<_, Error>(())
            }
            .await;
            if let Err(e) = paused {
                for done in &self.bouncers[..i] {
                    let _ = Self::resume_one(done).await;
                }
                return Err(e.context(format!("pausing consumer {}", b.consumer)));
            }
        }
        // The consumers' roles and any other role writing there now.
        let fenced = async {
            let mut roles = self.roles.clone();
            roles.extend(replication::session_roles(pool).await?);
            roles.sort();
            roles.dedup();
            replication::fence(pool, &roles).await
        };
        match fenced.await {
            Ok(n) => Ok(n),
            Err(e) => {
                let _ = self.resume(pool).await;
                Err(e)
            }
        }
    }

    async fn resume_one(b: &Bouncer) -> Result<()> {
        let console = Self::console(b).await?;
        if console.entry(&b.entry).await?.is_some_and(|e| e.paused) {
            console.resume(&b.entry).await?;
        }
        Ok(())
    }

    /// Lifts the fence on `pool` and resumes every paused entry.
    async fn resume(&self, pool: &PgPool) -> Result<()> {
        replication::unfence(pool).await?;
        for b in &self.bouncers {
            Self::resume_one(b)
                .await
                .map_err(|e| e.context(format!("resuming consumer {}", b.consumer)))?;
        }
        Ok(())
    }
}

/// switch: the pause's start and what happened inside it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct SwitchResult {
    pub summary: String,
    /// When the applications were paused (RFC 3339).
    pub pause_started: String,
    /// The source's WAL position once they were.
    pub source_lsn: String,
    /// How long pausing took (PgBouncer's PAUSE waits for transactions in flight).
    pub pausing_millis: u64,
    /// From the pause to the target showing the sentinel.
    pub catch_up_millis: u64,
    pub sequences: usize,
    pub sessions_ended: usize,
    /// From the pause to the reverse stream's start.
    pub millis: u64,
}

cutover_core::artefacts!(SwitchResult);

/// resume: the pause's end and length.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ResumeResult {
    pub summary: String,
    pub pause_started: String,
    pub pause_ended: String,
    pub pause_millis: u64,
}

cutover_core::artefacts!(ResumeResult);

/// What both stages share.
#[derive(Clone)]
pub struct Online {
    pub apps: Applications,
    pub options: OnlineOptions,
    pub target: Endpoint,
}

pub struct Switch {
    pub description: Description,
    online: Online,
}

impl Switch {
    pub fn new(online: Online) -> Switch {
        Switch {
            description: Description {
                summary: format!(
                    "pause the applications ({}), wait until the target has applied every write made before the \
                     pause (at most {} s, else they resume on the source), set the sequences, end the forward \
                     stream, start the reverse one (target -> source) for a lossless rollback",
                    online.apps.describe(),
                    online.options.max_pause
                ),
                details: vec![
                    "the pause lasts until every consumer is repointed; `resume` records its length".into(),
                    format!(
                        "the reverse stream: publication and slot {REVERSE} on the target, subscription {REVERSE} \
                         on the source, until end-replication"
                    ),
                ],
                warnings: vec![],
                destructive: true,
            },
            online,
        }
    }
}

/// When the applications were paused, as the switch journaled it.
async fn pause_start(ctx: &RunContext) -> Result<Option<String>> {
    Ok(ctx
        .journal
        .item_detail(ctx.run_id, SWITCH, &ItemKey::Paused)
        .await?
        .and_then(|d| d["since"].as_str().map(str::to_string)))
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// After the forward stream is gone: start the reverse one (idempotent).
async fn reverse(ctx: &RunContext, target: &Endpoint, options: &OnlineOptions) -> Result<()> {
    let schema = ctx.journal.schema();
    replication::publish(&ctx.target, REVERSE, schema).await?;
    replication::create_slot(&ctx.target, REVERSE).await?;
    let conninfo = replication::conninfo(target, options.target_address.as_deref());
    replication::subscribe(&ctx.source, REVERSE, &conninfo).await
}

#[async_trait]
impl Stage for Switch {
    fn name(&self) -> String {
        SWITCH.into()
    }
    fn describe(&self) -> &Description {
        &self.description
    }
    fn undo_kind(&self) -> Undo {
        Undo::Reversible(
            "pause the applications on the target, wait for the reverse stream to bring every write back to the \
             source, set the sequences back, end the reverse stream, resume on the source"
                .into(),
        )
    }

    async fn run(&self, ctx: &RunContext) -> Result<serde_json::Value> {
        let schema = ctx.journal.schema();
        let apps = &self.online.apps;
        if replication::subscription(&ctx.target, FORWARD).await?.is_none() {
            // An earlier attempt passed the point of no return (the target
            // had caught up with the applications paused, and they still
            // are): finish it.
            replication::drop_slot(&ctx.source, FORWARD).await?;
            replication::drop_publication(&ctx.source, FORWARD).await?;
            reverse(ctx, &self.online.target, &self.online.options).await?;
            let pause_started = pause_start(ctx).await?.unwrap_or_else(now);
            return Ok(SwitchResult {
                summary: format!(
                    "the forward stream had ended in an earlier attempt (applications paused since \
                     {pause_started}); reverse stream started"
                ),
                pause_started,
                ..Default::default()
            }
            .to_value());
        }
        // Whatever an earlier, killed attempt paused resumes on the source first.
        apps.resume(&ctx.source).await?;
        // Replication carries no DDL: a table created since the copy would
        // lose every row written to it.
        let new = replication::unpublished(&ctx.source, FORWARD, schema).await?;
        if !new.is_empty() {
            return Err(Error::refused(format!(
                "table(s) {} were created on the source after the copy: logical replication does not carry DDL, \
                 so their rows would not reach the target; nothing was paused or changed",
                new.join(", ")
            ))
            .with_hint(
                "`cutover rollback` (the applications stay on the source), then `cutover run` again: the new copy \
                 takes them; or drop them on the source if they are not the applications'",
            ));
        }
        ctx.journal
            .remove_item(ctx.run_id, SWITCH, &ItemKey::Paused)
            .await?;
        let pause_started = now();
        let t0 = Instant::now();
        ctx.emit(Event::Info {
            message: format!("switch: pausing the applications ({})", apps.describe()),
        });
        let sessions_ended = apps.pause(&ctx.source).await?;
        let detail = serde_json::json!({ "since": pause_started });
        ctx.journal
            .item_done(
                ctx.run_id,
                &Item {
                    detail: Some(&detail),
                    ..Item::new(SWITCH, &ItemKey::Paused)
                },
            )
            .await?;
        let pausing_millis = t0.elapsed().as_millis() as u64;
        crash_point("switch:paused");
        let deadline = t0 + Duration::from_secs_f64(self.online.options.max_pause);
        let caught_up = async {
            let lsn = replication::wal_position(&ctx.source).await?;
            let token = replication::write_sentinel(&ctx.source, schema).await?;
            let seen = replication::wait_for_sentinel(&ctx.target, schema, token, deadline).await?;
            Ok::<_, Error>((lsn, seen))
        }
        .await;
        let (lsn, seen) = match caught_up {
            Ok(x) => x,
            Err(e) => {
                apps.resume(&ctx.source).await?;
                return Err(e.context(
                    "waiting for the target at the switch (the applications resumed on the source)",
                ));
            }
        };
        if !seen {
            let lag = replication::lag(&ctx.source, FORWARD).await?.unwrap_or(0);
            let sub = replication::subscription(&ctx.target, FORWARD).await?;
            apps.resume(&ctx.source).await?;
            ctx.journal
                .remove_item(ctx.run_id, SWITCH, &ItemKey::Paused)
                .await?;
            let why = match sub {
                Some(s) if !s.enabled || !s.streaming => {
                    "the subscription is not applying (an apply error? the target's log says)".to_string()
                }
                _ => format!("it still trailed by {}", cutover_core::units::bytes(lag)),
            };
            return Err(Error::new(
                ErrorKind::Failure,
                format!(
                    "the target did not catch up within options.online.max_pause ({} s): {why}; the applications \
                     were resumed on the source after {} ms and nothing else changed",
                    self.online.options.max_pause,
                    t0.elapsed().as_millis()
                ),
            )
            .with_hint(
                "run again when the source writes less (replicate's lag is what the switch must apply inside the \
                 pause), or raise options.online.max_pause",
            ));
        }
        let catch_up_millis = t0.elapsed().as_millis() as u64;
        let sequences = replication::copy_sequences(&ctx.source, &ctx.target, schema).await?;
        // The point of no return: the target has everything; the forward
        // stream goes, the reverse one starts before anyone writes there.
        replication::unsubscribe(&ctx.target, FORWARD).await?;
        crash_point("switch:forward-dropped");
        replication::drop_slot(&ctx.source, FORWARD).await?;
        replication::drop_publication(&ctx.source, FORWARD).await?;
        reverse(ctx, &self.online.target, &self.online.options).await?;
        let millis = t0.elapsed().as_millis() as u64;
        ctx.emit(Event::Info {
            message: format!(
                "switch: paused in {pausing_millis} ms; the target caught up {catch_up_millis} ms into the pause; \
                 sequences set, reverse stream started at {millis} ms; repointing the consumers"
            ),
        });
        Ok(SwitchResult {
            summary: format!(
                "applications paused at {pause_started}; the target caught up in {catch_up_millis} ms (source at \
                 {lsn}), {sequences} sequences set, reverse stream on"
            ),
            pause_started,
            source_lsn: lsn,
            pausing_millis,
            catch_up_millis,
            sequences,
            sessions_ended,
            millis,
        }
        .to_value())
    }

    async fn check(&self, ctx: &RunContext) -> Result<Check> {
        let forward = replication::subscription(&ctx.target, FORWARD).await?;
        let reverse = replication::subscription(&ctx.source, REVERSE).await?;
        Ok(match (forward, reverse) {
            (None, Some(_)) => Check::Holds,
            (Some(_), _) => Check::Fails(format!("subscription {FORWARD} still exists on the target")),
            (None, None) => Check::Fails(format!("there is no subscription {REVERSE} on the source")),
        })
    }

    async fn undo(&self, ctx: &RunContext) -> Result<String> {
        let said = back_to_source(ctx, &self.online).await?;
        // The pause on the target (the rollback's) ends here: the
        // consumers were repointed to the source before this undo.
        self.online.apps.resume(&ctx.target).await?;
        Ok(said)
    }
}

/// Rollback after the switch: pause the applications on the target, wait
/// until the reverse stream brought every write back, sequences back,
/// reverse stream dropped, source unfenced. Idempotent; without a reverse
/// stream (never started, or already ended) it only resumes the source.
pub async fn back_to_source(ctx: &RunContext, online: &Online) -> Result<String> {
    let schema = ctx.journal.schema();
    let apps = &online.apps;
    let mut said = String::new();
    if replication::subscription(&ctx.source, REVERSE).await?.is_some() {
        let t0 = Instant::now();
        apps.pause(&ctx.target).await?;
        let token = replication::write_sentinel(&ctx.target, schema).await?;
        let wait = Duration::from_secs_f64(online.options.max_pause.max(60.0));
        if !replication::wait_for_sentinel(&ctx.source, schema, token, t0 + wait).await? {
            apps.resume(&ctx.target).await?;
            return Err(Error::failure(format!(
                "the reverse stream did not bring the target's writes back to the source within {} s; the \
                 applications resumed on the target and nothing was rolled back",
                wait.as_secs()
            ))
            .with_hint(format!(
                "look at subscription {REVERSE} on the source (pg_stat_subscription, its server log), then run \
                 `cutover rollback` again"
            )));
        }
        let sequences = replication::copy_sequences(&ctx.target, &ctx.source, schema).await?;
        said = format!(
            "every write made on the target is back on the source ({} ms into the pause), {sequences} sequences set \
             back; ",
            t0.elapsed().as_millis()
        );
    }
    replication::unsubscribe(&ctx.source, REVERSE).await?;
    replication::drop_slot(&ctx.target, REVERSE).await?;
    replication::unpublish(&ctx.target, REVERSE, schema, false).await?;
    replication::unfence(&ctx.source).await?;
    Ok(format!(
        "{said}reverse stream ended; the source takes writes again"
    ))
}

pub struct Resume {
    pub description: Description,
    online: Online,
}

impl Resume {
    pub fn new(online: Online) -> Resume {
        Resume {
            description: Description {
                summary: "end the pause: every PgBouncer entry resumed, the pause's length recorded".into(),
                details: vec![],
                warnings: vec![],
                destructive: false,
            },
            online,
        }
    }
}

#[async_trait]
impl Stage for Resume {
    fn name(&self) -> String {
        RESUME.into()
    }
    fn describe(&self) -> &Description {
        &self.description
    }
    fn undo_kind(&self) -> Undo {
        Undo::Reversible(
            "pause the applications on the target and bring every write made there back to the source".into(),
        )
    }

    async fn run(&self, ctx: &RunContext) -> Result<serde_json::Value> {
        // The consumers point at the target now; a PgBouncer entry that
        // pointed there already was never paused, one left paused resumes.
        for b in &self.online.apps.bouncers {
            Applications::resume_one(b).await?;
        }
        let ended = chrono::Utc::now();
        let started = pause_start(ctx).await?.unwrap_or_default();
        let millis = chrono::DateTime::parse_from_rfc3339(&started)
            .map(|s| (ended - s.with_timezone(&chrono::Utc)).num_milliseconds().max(0) as u64)
            .unwrap_or(0);
        ctx.emit(Event::Info {
            message: format!("resume: the applications were paused for {millis} ms"),
        });
        Ok(ResumeResult {
            summary: format!("the applications write to the target; the write pause lasted {millis} ms"),
            pause_started: started,
            pause_ended: ended.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            pause_millis: millis,
        }
        .to_value())
    }

    async fn check(&self, _ctx: &RunContext) -> Result<Check> {
        Ok(Check::Holds)
    }

    async fn undo(&self, ctx: &RunContext) -> Result<String> {
        back_to_source(ctx, &self.online).await
    }
}

pub const END: &str = "end-replication";

/// end-replication: the rollback window closes. The reverse stream and
/// the source's sentinel schema go; the source stays read-only for the
/// applications' roles (it is about to be retired).
pub struct EndReplication {
    pub description: Description,
    /// options.online.replica_identity_full, set back to DEFAULT on both sides.
    identity_full: Vec<String>,
}

impl EndReplication {
    pub fn new(identity_full: Vec<String>) -> EndReplication {
        EndReplication {
            identity_full,
            description: Description {
                summary: format!(
                    "close the rollback window: drop the reverse stream ({REVERSE}: subscription on the source, slot \
                     and publication on the target); writes on the target from then on are not on the source"
                ),
                details: vec![
                    "stop before it (`cutover run --until verify-sync`) to keep the window open while you watch the \
                     applications on the target"
                        .into(),
                ],
                warnings: vec![],
                destructive: true,
            },
        }
    }
}

#[async_trait]
impl Stage for EndReplication {
    fn name(&self) -> String {
        END.into()
    }
    fn describe(&self) -> &Description {
        &self.description
    }
    fn undo_kind(&self) -> Undo {
        Undo::Irreversible(
            "the rollback window is closed: writes made on the target since are not on the source".into(),
        )
    }
    async fn run(&self, ctx: &RunContext) -> Result<serde_json::Value> {
        let schema = ctx.journal.schema();
        replication::remove_all(&ctx.source, &ctx.target, schema).await?;
        for pool in [&ctx.source, &ctx.target] {
            replication::identity_full(pool, &self.identity_full, false).await?;
        }
        let left = replication::leftovers(&ctx.source, &ctx.target).await?;
        if !left.is_empty() {
            return Err(Error::failure(format!(
                "replication objects remain after dropping them: {:?}",
                left
            )));
        }
        Ok(cutover_core::artefacts::Summary {
            summary: "reverse stream dropped; no slot, publication or subscription of cutover's remains"
                .into(),
        }
        .to_value())
    }
    async fn check(&self, ctx: &RunContext) -> Result<Check> {
        let left = replication::leftovers(&ctx.source, &ctx.target).await?;
        Ok(if left.is_empty() {
            Check::Holds
        } else {
            Check::Fails(format!("still there: {:?}", left))
        })
    }
    async fn undo(&self, _ctx: &RunContext) -> Result<String> {
        Err(Error::refused(
            "the rollback window was closed (end-replication): writes made on the target since are not on the \
             source, so a rollback would lose them",
        )
        .with_hint("`cutover rollback --force` goes on and loses them"))
    }
}
