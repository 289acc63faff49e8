//! The online mode's write pause: `switch` pauses the applications on the
//! source, waits until the target has applied everything written before
//! the pause, sets the sequences, ends the forward stream and starts the
//! reverse one (target -> source, for a lossless rollback); the `repoint`
//! stages then move each consumer (a PgBouncer entry resumes as it is
//! switched), and `resume` ends the pause and records its length.
//!
//! Pausing: a PgBouncer consumer's entry by `PAUSE` on its admin console
//! (its clients keep their connections and wait); then the fence
//! ([`cutover_pg::fence`]): every role but cutover's own (or those
//! `options.fence` names) loses CONNECT on the source and its sessions end,
//! whether or not it had one at that moment, and the roles no fence stops
//! get the read-only default. The source stays fenced until decommission
//! or rollback: never both databases taking the applications' writes.
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
use cutover_pg::fence;
use cutover_pg::freeze::FenceSettings;
use cutover_pg::replication::{self, FORWARD, REVERSE};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;

use crate::pgbouncer::Console;

pub const SWITCH: &str = cutover_core::stage::names::SWITCH;
pub const RESUME: &str = cutover_core::stage::names::RESUME;

/// A PgBouncer consumer's entry, paused through its admin console.
#[derive(Debug, Clone)]
pub struct Bouncer {
    pub consumer: String,
    pub admin: AdminConsole,
    pub entry: String,
    pub pause_timeout: Duration,
}

/// The applications, as the switch pauses them.
#[derive(Debug, Clone)]
pub struct Applications {
    pub bouncers: Vec<Bouncer>,
    /// Who the fence keeps off the side the applications leave.
    pub fence: FenceSettings,
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
        let reach = &self.fence.reach;
        parts.push(if reach.fenced.is_empty() {
            "no role to fence".to_string()
        } else {
            format!(
                "the fence: role(s) {} may not connect to the database any more and their sessions end",
                reach.fenced.join(", ")
            )
        });
        parts.join("; ")
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
        // Every role the fence reaches, whether or not it has a session now.
        let fenced = async {
            let reach = fence::reach(pool, &self.fence.scope, &self.fence.consumers).await?;
            let raised = fence::raise(pool, &reach, &self.fence.journal_schema).await?;
            // The roles no fence stops get the read-only default at least.
            let soft: Vec<String> = reach.unstoppable.iter().map(|(r, _)| r.clone()).collect();
            replication::fence(pool, &soft).await?;
            Ok::<_, Error>(raised.sessions_ended)
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
        replication::unfence(pool, &self.fence.journal_schema).await?;
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
    pub target: std::sync::Arc<Endpoint>,
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
                    online.options.max_pause.as_secs_f64()
                ),
                details: [
                    "the pause lasts until every consumer is repointed; `resume` records its length".to_string(),
                    format!(
                        "the reverse stream: publication and slot {REVERSE} on the target, subscription {REVERSE} \
                         on the source, until end-replication"
                    ),
                ]
                .into_iter()
                .chain(online.apps.fence.reach.lines().into_iter().skip(1))
                .collect(),
                warnings: vec![],
                destructive: true,
            },
            online,
        }
    }
}

/// What the switch does when it starts, from what an earlier attempt left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restart {
    /// Nothing of an earlier pause: pause and switch.
    Fresh,
    /// An earlier attempt paused (its journaled start, or the fence up) and
    /// stopped before the point of no return: resume on the source, then
    /// pause and switch again.
    Resume,
    /// An earlier attempt passed the point of no return (the forward stream
    /// is gone; the applications are still paused): finish it.
    Finish,
    /// The forward stream is gone but nothing is paused or fenced: the
    /// target may lack the source's latest writes. Refused.
    Refuse,
}

/// The switch's decision at its start: `forward`, whether the forward
/// subscription still exists on the target; `paused`, whether an earlier
/// attempt's pause is journaled or its fence is up on the source.
pub fn restart(forward: bool, paused: bool) -> Restart {
    match (forward, paused) {
        (false, true) => Restart::Finish,
        (false, false) => Restart::Refuse,
        (true, true) => Restart::Resume,
        (true, false) => Restart::Fresh,
    }
}

/// The detail of the switch's `paused` item: when the applications were
/// paused (RFC 3339, UTC).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Paused {
    since: String,
}

/// When the applications were paused, as the switch journaled it.
async fn pause_start(ctx: &RunContext) -> Result<Option<String>> {
    Ok(ctx
        .journal
        .item_detail(ctx.run_id, SWITCH, &ItemKey::Paused)
        .await?
        .and_then(|d| serde_json::from_value::<Paused>(d).ok())
        .map(|p| p.since))
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

impl Switch {
    /// Inside the pause, before the point of no return: the target applies
    /// everything written before the pause (within `max_pause`), then the
    /// sequences. Returns the source's WAL position and the sequences set.
    async fn catch_up(&self, ctx: &RunContext, t0: Instant) -> Result<(String, usize)> {
        let schema = ctx.journal.schema();
        let max_pause = self.online.options.max_pause;
        let lsn = replication::wal_position(&ctx.source).await?;
        let token = replication::write_sentinel(&ctx.source, schema).await?;
        let seen =
            replication::wait_for_sentinel(&ctx.target, schema, token, t0 + max_pause, Some(&ctx.cancel))
                .await?;
        if !seen {
            let lag = replication::lag(&ctx.source, FORWARD).await?.unwrap_or(0);
            let why = match replication::subscription(&ctx.target, FORWARD).await? {
                Some(s) if !s.enabled || !s.streaming => {
                    "the subscription is not applying (an apply error? the target's log says)".to_string()
                }
                _ => format!("it still trailed by {}", cutover_core::units::bytes(lag)),
            };
            return Err(Error::new(
                ErrorKind::Failure,
                format!(
                    "the target did not catch up within options.online.max_pause ({} s): {why}",
                    max_pause.as_secs_f64()
                ),
            )
            .with_hint(
                "run again when the source writes less (replicate's lag is what the switch must apply inside the \
                 pause), or raise options.online.max_pause",
            ));
        }
        let sequences = replication::copy_sequences(&ctx.source, &ctx.target, schema).await?;
        Ok((lsn, sequences))
    }
}

/// The one way out of a pause that cannot go on: the applications resume
/// where they were (`apps` on the source), the pause's journal item goes,
/// and `err` stays the error reported, saying where the applications are.
async fn abort_pause(ctx: &RunContext, apps: &Applications, err: Error, t0: Instant) -> Error {
    let resumed = async {
        apps.resume(&ctx.source).await?;
        ctx.journal
            .remove_item(ctx.run_id, SWITCH, &ItemKey::Paused)
            .await
    }
    .await;
    let ms = t0.elapsed().as_millis();
    match resumed {
        Ok(()) => err.context(format!(
            "inside the switch's pause (the applications resumed on the source after {ms} ms; nothing else changed)"
        )),
        Err(r) => err.context(format!(
            "inside the switch's pause; resuming the applications on the source failed too ({r}): they may be \
             paused or fenced there until `cutover run` or `cutover rollback`"
        )),
    }
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
        let forward = replication::subscription(&ctx.target, FORWARD).await?.is_some();
        let paused = pause_start(ctx).await?.is_some() || fence::is_up(&ctx.source, schema).await?;
        match restart(forward, paused) {
            Restart::Finish => {
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
            Restart::Refuse => {
                return Err(Error::refused(format!(
                    "the forward stream ({FORWARD}) is gone but the applications are neither paused nor fenced on the \
                     source: the target may lack what they wrote since; nothing was changed"
                ))
                .with_hint("`cutover rollback`, then `cutover run`: the copy starts again"));
            }
            Restart::Resume => {
                ctx.emit(Event::Warning {
                    message:
                        "switch: an earlier attempt stopped inside the pause before the target caught up; \
                              the applications resume on the source first"
                            .into(),
                });
                apps.resume(&ctx.source).await?;
            }
            // A PAUSE an attempt killed before it journaled anything may
            // still hold: resuming is idempotent.
            Restart::Fresh => apps.resume(&ctx.source).await?,
        }
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
        let detail = serde_json::to_value(Paused {
            since: pause_started.clone(),
        })
        .expect("a pause serializes");
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
        // Until the point of no return, every way out of the pause (an
        // error, a timeout, Ctrl-C or SIGTERM, a panic) resumes the
        // applications on the source.
        let inside = cutover_core::engine::catch_panic(self.catch_up(ctx, t0)).await;
        let (lsn, sequences) = match inside {
            Ok(x) => x,
            Err(e) => return Err(abort_pause(ctx, apps, e, t0).await),
        };
        let catch_up_millis = t0.elapsed().as_millis() as u64;
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
        ctx.journal
            .remove_item(ctx.run_id, SWITCH, &ItemKey::Paused)
            .await?;
        Ok(said)
    }
}

/// Rollback after the switch: pause the applications on the target, wait
/// until the reverse stream brought every write back, sequences back,
/// reverse stream dropped, source unfenced. Idempotent; without a reverse
/// stream (never started, or already ended) it only resumes the source.
///
/// Nothing is paused before the reverse stream is proven to apply and to
/// have caught up ([`reverse_ready`]); inside the pause the wait is bounded
/// by `max_pause`, and every way out of it resumes the applications on the
/// target.
pub async fn back_to_source(ctx: &RunContext, online: &Online) -> Result<String> {
    let schema = ctx.journal.schema();
    let apps = &online.apps;
    let mut said = String::new();
    if replication::subscription(&ctx.source, REVERSE).await?.is_some() {
        reverse_ready(ctx, &online.options).await?;
        let t0 = Instant::now();
        apps.pause(&ctx.target).await?;
        let max_pause = online.options.max_pause;
        let inside = cutover_core::engine::catch_panic(async {
            let token = replication::write_sentinel(&ctx.target, schema).await?;
            // Bounded by max_pause; Ctrl-C does not cut the way back short.
            if !replication::wait_for_sentinel(&ctx.source, schema, token, t0 + max_pause, None).await? {
                return Err(Error::failure(format!(
                    "the reverse stream did not bring the target's last writes back to the source within \
                     options.online.max_pause ({} s)",
                    max_pause.as_secs_f64()
                ))
                .with_hint(format!(
                    "`cutover status` shows subscription {REVERSE}; run `cutover rollback` again when the target \
                     writes less, or raise options.online.max_pause"
                )));
            }
            replication::copy_sequences(&ctx.target, &ctx.source, schema).await
        })
        .await;
        let sequences = match inside {
            Ok(n) => n,
            Err(e) => {
                let resumed = apps.resume(&ctx.target).await;
                let ms = t0.elapsed().as_millis();
                return Err(match resumed {
                    Ok(()) => e.context(format!(
                        "inside the rollback's pause (the applications resumed on the target after {ms} ms; nothing \
                         was rolled back)"
                    )),
                    Err(r) => e.context(format!(
                        "inside the rollback's pause; resuming the applications on the target failed too ({r})"
                    )),
                });
            }
        };
        said = format!(
            "every write made on the target is back on the source ({} ms into the pause), {sequences} sequences set \
             back; ",
            t0.elapsed().as_millis()
        );
    }
    // The source takes writes again before the stream goes: a failure
    // dropping it leaves the applications one side to go to, not two fenced.
    replication::unfence(&ctx.source, schema).await?;
    replication::unsubscribe(&ctx.source, REVERSE).await?;
    replication::drop_slot(&ctx.target, REVERSE).await?;
    replication::unpublish(&ctx.target, REVERSE, schema, false).await?;
    Ok(format!(
        "{said}reverse stream ended; the source takes writes again"
    ))
}

/// Before a rollback pauses anything: the reverse stream applies (a
/// disabled one, stopped by an apply error whose cause the operator has
/// since fixed, is enabled again) and has brought back what the target
/// held a moment ago, within `catch_up_timeout`. Refuses otherwise, with
/// nothing paused.
async fn reverse_ready(ctx: &RunContext, options: &OnlineOptions) -> Result<()> {
    let schema = ctx.journal.schema();
    let Some(sub) = replication::subscription(&ctx.source, REVERSE).await? else {
        return Ok(());
    };
    let errors_before = sub.apply_errors;
    if !sub.enabled {
        replication::enable(&ctx.source, REVERSE).await?;
        ctx.emit(Event::Warning {
            message: format!(
                "subscription {REVERSE} on the source had stopped ({} apply error(s)); enabled it again",
                sub.apply_errors
            ),
        });
    }
    let token = replication::write_sentinel(&ctx.target, schema).await?;
    let deadline = Instant::now() + options.catch_up_timeout;
    let mut checked = Instant::now();
    loop {
        if replication::wait_for_sentinel(&ctx.source, schema, token, Instant::now(), Some(&ctx.cancel))
            .await?
        {
            return Ok(());
        }
        let broken = if checked.elapsed() >= Duration::from_millis(250) {
            checked = Instant::now();
            match replication::subscription(&ctx.source, REVERSE).await? {
                Some(s) if !s.enabled => {
                    Some(format!("it stopped again ({} apply error(s))", s.apply_errors))
                }
                Some(s) if s.apply_errors > errors_before => {
                    Some(format!("it fails to apply ({} apply error(s))", s.apply_errors))
                }
                None => Some("it is gone".into()),
                _ => None,
            }
        } else {
            None
        };
        let why = match broken {
            Some(why) => why,
            None if Instant::now() >= deadline => format!(
                "it did not catch up within options.online.catch_up_timeout ({} s)",
                options.catch_up_timeout.as_secs_f64()
            ),
            None => {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        return Err(Error::failure(format!(
            "the reverse stream ({REVERSE}, target -> source) does not bring the target's writes back: {why}; \
             nothing was paused and nothing rolled back, the applications keep writing to the target"
        ))
        .with_hint(
            "the source's server log names the row it cannot apply (a conflict: a row written on the source since \
             the switch, a duplicate key); fix or delete that row on the source, then run `cutover rollback` again: it \
             enables the stream itself and waits for it before pausing anything",
        ));
    }
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
    fn inside_pause(&self) -> bool {
        true
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

pub const END: &str = cutover_core::stage::names::END_REPLICATION;

/// end-replication: the window closed, and the source's write counters then.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct EndResult {
    pub summary: String,
    pub write_counts: std::collections::BTreeMap<String, i64>,
}

cutover_core::artefacts!(EndResult);

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
        // From here on nothing writes on the source: decommission compares.
        let write_counts = fence::settled_write_counts(&ctx.source, schema).await?;
        Ok(EndResult {
            summary: "reverse stream dropped; no slot, publication or subscription of cutover's remains; the source \
                      stays fenced"
                .into(),
            write_counts,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_switch_finishes_past_the_point_of_no_return_and_otherwise_starts_over_from_the_source() {
        // The forward stream gone: the target has everything; finish.
        assert_eq!(restart(false, true), Restart::Finish);
        // Gone with nothing paused: the source may have written since.
        assert_eq!(restart(false, false), Restart::Refuse);
        // Killed inside the pause before that: back to the source first.
        assert_eq!(restart(true, true), Restart::Resume);
        assert_eq!(restart(true, false), Restart::Fresh);
    }
}
