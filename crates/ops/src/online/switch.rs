//! switch: the applications paused on the source, the target caught up
//! with everything written before the pause (within `max_pause`), the
//! sequences set, the forward stream ended and the reverse one started.

use std::time::Instant;

use async_trait::async_trait;
use cutover_core::artefacts::Artefacts;
use cutover_core::endpoint::Endpoint;
use cutover_core::engine::crash_point;
use cutover_core::event::Event;
use cutover_core::journal::{Item, ItemKey};
use cutover_core::plan_file::OnlineOptions;
use cutover_core::stage::{Check, Description, RunContext, Stage, Undo};
use cutover_core::{Error, ErrorKind, Result};
use cutover_pg::fence;
use cutover_pg::online::{FORWARD, REVERSE, publication, sentinel, slot, subscription};
use serde::{Deserialize, Serialize};

use super::pause::Applications;
use super::rollback::back_to_source;
use super::{Online, Paused, now, pause_start};

pub const SWITCH: &str = cutover_core::stage::names::SWITCH;

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

/// After the forward stream is gone: start the reverse one (idempotent).
async fn reverse(ctx: &RunContext, target: &Endpoint, options: &OnlineOptions) -> Result<()> {
    let schema = ctx.journal.schema();
    publication::publish(&ctx.target, REVERSE, schema).await?;
    slot::create_slot(&ctx.target, REVERSE).await?;
    let conninfo = subscription::conninfo(target, options.target_address.as_deref());
    subscription::subscribe(&ctx.source, REVERSE, &conninfo).await
}

impl Switch {
    /// Inside the pause, before the point of no return: the target applies
    /// everything written before the pause (within `max_pause`), then the
    /// sequences. Returns the source's WAL position and the sequences set.
    async fn catch_up(&self, ctx: &RunContext, t0: Instant) -> Result<(String, usize)> {
        let schema = ctx.journal.schema();
        let max_pause = self.online.options.max_pause;
        let lsn = slot::wal_position(&ctx.source).await?;
        let token = sentinel::write_sentinel(&ctx.source, schema).await?;
        let seen = sentinel::wait_for_sentinel(&ctx.target, schema, token, t0 + max_pause, Some(&ctx.cancel))
            .await?;
        if !seen {
            let lag = slot::lag(&ctx.source, FORWARD).await?.unwrap_or(0);
            let why = match subscription::subscription(&ctx.target, FORWARD).await? {
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
        let sequences = sentinel::copy_sequences(&ctx.source, &ctx.target, schema).await?;
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
        let forward = subscription::subscription(&ctx.target, FORWARD).await?.is_some();
        let paused = pause_start(ctx).await?.is_some() || fence::is_up(&ctx.source, schema).await?;
        match restart(forward, paused) {
            Restart::Finish => {
                // An earlier attempt passed the point of no return (the target
                // had caught up with the applications paused, and they still
                // are): finish it.
                slot::drop_slot(&ctx.source, FORWARD).await?;
                publication::drop_publication(&ctx.source, FORWARD).await?;
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
        let new = publication::unpublished(&ctx.source, FORWARD, schema).await?;
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
        subscription::unsubscribe(&ctx.target, FORWARD).await?;
        crash_point("switch:forward-dropped");
        slot::drop_slot(&ctx.source, FORWARD).await?;
        publication::drop_publication(&ctx.source, FORWARD).await?;
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
        let forward = subscription::subscription(&ctx.target, FORWARD).await?;
        let reverse = subscription::subscription(&ctx.source, REVERSE).await?;
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
