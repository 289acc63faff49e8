//! replicate (online mode): the copy and verify-data under the snapshot a
//! replication slot exported when it was created, then PostgreSQL's own
//! logical replication carries every write made on the source since, until
//! the target trails by less than `options.online.max_lag`. The
//! applications keep writing to the source throughout.
//!
//! Only a slot created with `CREATE_REPLICATION_SLOT … (SNAPSHOT 'export')`
//! ties the copy's snapshot to the stream's start: every change before its
//! consistent point is in the snapshot, every change after it in the
//! stream. The snapshot lives only while that replication connection stays
//! open, so an attempt killed before the subscription exists cannot resume
//! its copy: the next one drops the slot and what was copied, and starts
//! again. Once the subscription exists, a new attempt only waits for it.

use std::time::{Duration, Instant};

use async_trait::async_trait;
use cutover_core::artefacts::Artefacts;
use cutover_core::endpoint::Endpoint;
use cutover_core::event::Event;
use cutover_core::plan_file::OnlineOptions;
use cutover_core::stage::{Check, Description, RunContext, Stage, Undo};
use cutover_core::{Error, ErrorKind, Result};
use serde::{Deserialize, Serialize};

use super::{FORWARD, publication, sentinel, slot, subscription};
use crate::copy::Copy;
use crate::inventory::Inventory;
use crate::verify::{VerifyData, VerifyResult};

pub const NAME: &str = cutover_core::stage::names::REPLICATE;

/// replicate: where the stream starts, what was copied and verified, the lag.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ReplicateResult {
    pub summary: String,
    /// The slot's consistent point (the stream's start), when this attempt made it.
    pub consistent_point: Option<String>,
    /// The copy's result (as the copy stage reports it).
    pub copy: Option<crate::copy::CopyResult>,
    /// verify-data under the slot's snapshot.
    pub verify: Option<VerifyResult>,
    /// Bytes the target trailed by at the end.
    pub lag_bytes: i64,
    pub copy_seconds: f64,
    pub catch_up_seconds: f64,
    /// From writing the sentinel on the source to seeing it on the target.
    pub sentinel_millis: u64,
}

cutover_core::artefacts!(ReplicateResult);

pub struct Replicate {
    pub description: Description,
    copy: Copy,
    verify: VerifyData,
    source: std::sync::Arc<Endpoint>,
    online: OnlineOptions,
    connect_timeout: u64,
    jobs: usize,
}

impl Replicate {
    pub fn new(
        copy: Copy,
        verify: VerifyData,
        source_inventory: &Inventory,
        source: std::sync::Arc<Endpoint>,
        online: OnlineOptions,
        connect_timeout: u64,
        jobs: usize,
    ) -> Replicate {
        let mut details = vec![format!("copy: {}", copy.description.summary)];
        details.extend(copy.description.details.iter().cloned());
        details.push(format!(
            "verify under the same snapshot: {}",
            verify.description.summary
        ));
        details.push(format!(
            "publication {FORWARD} and slot {FORWARD} on the source, subscription {FORWARD} on the target; the \
             source's journal schema gets a one-table sentinel for the switch"
        ));
        Replicate {
            description: Description {
                summary: format!(
                    "copy {} tables ({} rows) under a replication slot's snapshot while the applications keep \
                     writing, verify them under it, then stream the writes since until the target trails by \
                     less than {}",
                    source_inventory.storage_tables().count(),
                    source_inventory.rows_text(),
                    cutover_core::units::bytes(online.max_lag as i64)
                ),
                details,
                warnings: copy.description.warnings.clone(),
                destructive: true,
            },
            copy,
            verify,
            source,
            online,
            connect_timeout,
            jobs,
        }
    }

    /// Slot, copy and verify under its snapshot, subscription.
    async fn start(&self, ctx: &RunContext, result: &mut ReplicateResult) -> Result<()> {
        let schema = ctx.journal.schema();
        // A slot without a subscription is an earlier attempt's, and its
        // snapshot went with it: so does what it copied.
        if slot::drop_slot(&ctx.source, FORWARD).await? {
            ctx.emit(Event::Warning {
                message: format!(
                    "an earlier attempt's slot {FORWARD} had no subscription yet: its snapshot is gone, so its copy \
                     cannot be resumed; dropping both and copying again"
                ),
            });
        }
        if !ctx
            .journal
            .items_done(ctx.run_id, crate::copy::STAGE)
            .await?
            .is_empty()
        {
            self.copy.drop_copied(ctx).await?;
        }
        publication::identity_full(&ctx.source, &self.online.replica_identity_full, true).await?;
        let tables = publication::publish(&ctx.source, FORWARD, schema).await?;
        sentinel::sentinel_table(&ctx.target, schema).await?;
        let version = crate::connect::server_version(&ctx.source).await?;
        let slot = slot::ExportedSlot::create(&self.source, FORWARD, version).await?;
        ctx.emit(Event::Info {
            message: format!(
                "replicate: slot {FORWARD} created at {} (snapshot {}), publication of {tables} tables; copying \
                 under its snapshot",
                slot.consistent_point, slot.snapshot
            ),
        });
        result.consistent_point = Some(slot.consistent_point.clone());
        cutover_core::engine::crash_point("replicate:copying");
        let started = Instant::now();
        let under = async {
            let copied = self.copy.copy(ctx, Some(&slot.snapshot)).await?;
            ctx.cancel.check()?;
            let pool = crate::connect::snapshot_pool(
                &self.source,
                self.connect_timeout,
                (self.jobs as u32 * 2).max(2),
                &slot.snapshot,
            )
            .await?;
            let verified = self.verify.verify_pools(&pool, &ctx.target, schema).await;
            pool.close().await;
            Ok::<_, Error>((copied, verified?))
        }
        .await;
        slot.release().await;
        let (copied, verified) = match under {
            Ok(done) => done,
            Err(e) => {
                // The slot is useless without its snapshot, and keeps WAL.
                if let Err(d) = slot::drop_slot(&ctx.source, FORWARD).await {
                    ctx.emit(Event::Warning {
                        message: format!("dropping slot {FORWARD} after the failure: {}", d.message),
                    });
                }
                return Err(e);
            }
        };
        result.copy_seconds = started.elapsed().as_secs_f64();
        ctx.emit(Event::Info {
            message: format!(
                "replicate: copied and verified under the snapshot: {}",
                verified.summary
            ),
        });
        result.copy = Some(copied);
        result.verify = Some(verified);
        let conninfo = subscription::conninfo(&self.source, self.online.source_address.as_deref());
        if let Err(e) = subscription::subscribe(&ctx.target, FORWARD, &conninfo).await {
            // Without a subscription the slot only keeps WAL; the next
            // attempt copies again anyway.
            slot::drop_slot(&ctx.source, FORWARD).await?;
            return Err(e);
        }
        Ok(())
    }

    /// Waits until the target trails by less than `max_lag`.
    async fn catch_up(&self, ctx: &RunContext) -> Result<(i64, u64)> {
        let started = Instant::now();
        let deadline = started + Duration::from_secs(self.online.lag_timeout);
        let baseline = subscription::subscription(&ctx.target, FORWARD)
            .await?
            .map_or(0, |s| s.apply_errors);
        // A sentinel proves the stream applies end to end (a lag near zero
        // alone does not: a stopped apply worker holds a small lag too).
        let token = sentinel::write_sentinel(&ctx.source, ctx.journal.schema()).await?;
        let written = Instant::now();
        let table_seen =
            || sentinel::wait_for_sentinel(&ctx.target, ctx.journal.schema(), token, Instant::now(), None);
        let mut reported = Instant::now();
        loop {
            ctx.cancel.check()?;
            let sub = subscription::subscription(&ctx.target, FORWARD)
                .await?
                .ok_or_else(|| Error::failure(format!("subscription {FORWARD} vanished from the target")))?;
            if !sub.enabled || sub.apply_errors > baseline {
                return Err(apply_error(sub.apply_errors));
            }
            let lag = slot::lag(&ctx.source, FORWARD).await?.ok_or_else(|| {
                Error::failure(format!(
                    "slot {FORWARD} vanished from the source: the stream cannot go on; `cutover rollback`, then run \
                     again"
                ))
            })?;
            if sub.streaming && lag < self.online.max_lag as i64 && table_seen().await? {
                return Ok((lag, written.elapsed().as_millis() as u64));
            }
            if reported.elapsed() >= Duration::from_secs(2) {
                ctx.emit(Event::Info {
                    message: format!(
                        "replicate: the target trails the source by {}{}",
                        cutover_core::units::bytes(lag),
                        if sub.streaming {
                            ""
                        } else {
                            " (apply worker starting)"
                        }
                    ),
                });
                reported = Instant::now();
            }
            if Instant::now() >= deadline {
                return Err(Error::failure(format!(
                    "the target still trails the source by {} after {} s (options.online.lag_timeout); the \
                     applications keep running on the source and the stream goes on",
                    cutover_core::units::bytes(lag),
                    self.online.lag_timeout
                ))
                .with_hint(
                    "run again to keep waiting; if the source writes faster than the target applies, raise \
                            options.online.max_lag or pause the heaviest writer",
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The target refused a replicated change.
fn apply_error(count: i64) -> Error {
    Error::new(
        ErrorKind::Failure,
        format!(
            "the target refused a change replicated from the source ({count} apply error(s); subscription \
             {FORWARD} is disabled): a row on the target conflicts with the source's, most often a duplicate key \
             written on the target since the copy. The applications keep running on the source; nothing was lost"
        ),
    )
    .with_hint(
        "the target server's log names the table and the key (\"logical replication worker\"); delete or correct \
         that row on the target, then run again (the subscription resumes where it stopped)",
    )
}

#[async_trait]
impl Stage for Replicate {
    fn name(&self) -> String {
        NAME.into()
    }
    fn describe(&self) -> &Description {
        &self.description
    }
    fn undo_kind(&self) -> Undo {
        Undo::Reversible(
            "drop the subscription, the slot and the publication, then what the copy created on the target"
                .into(),
        )
    }

    async fn run(&self, ctx: &RunContext) -> Result<serde_json::Value> {
        let mut result = ReplicateResult::default();
        if subscription::subscription(&ctx.target, FORWARD).await?.is_none() {
            self.start(ctx, &mut result).await?;
        } else {
            // An earlier attempt subscribed: the stream goes on from where it was.
            subscription::enable(&ctx.target, FORWARD).await?;
        }
        let started = Instant::now();
        (result.lag_bytes, result.sentinel_millis) = self.catch_up(ctx).await?;
        result.catch_up_seconds = started.elapsed().as_secs_f64();
        result.summary = format!(
            "{}streaming; the target trails by {}",
            result
                .verify
                .as_ref()
                .map(|v| format!("copied and verified under the slot's snapshot ({}); ", v.summary))
                .unwrap_or_default(),
            cutover_core::units::bytes(result.lag_bytes)
        );
        Ok(result.to_value())
    }

    async fn check(&self, ctx: &RunContext) -> Result<Check> {
        Ok(match subscription::subscription(&ctx.target, FORWARD).await? {
            Some(s) if s.enabled && s.streaming => Check::Holds,
            // A restarted source: the apply worker reconnects by itself;
            // replicate runs again and waits for the stream's sentinel.
            Some(s) if s.enabled => Check::Fails(format!("subscription {FORWARD} is not streaming")),
            Some(_) => Check::Fails(format!("subscription {FORWARD} is disabled")),
            None => Check::Fails(format!("there is no subscription {FORWARD} on the target")),
        })
    }

    async fn undo(&self, ctx: &RunContext) -> Result<String> {
        let schema = ctx.journal.schema();
        subscription::unsubscribe(&ctx.target, FORWARD).await?;
        slot::drop_slot(&ctx.source, FORWARD).await?;
        publication::unpublish(&ctx.source, FORWARD, schema, true).await?;
        publication::unpublish(&ctx.target, FORWARD, schema, false).await?;
        publication::identity_full(&ctx.source, &self.online.replica_identity_full, false).await?;
        let dropped = self.copy.drop_copied(ctx).await?;
        Ok(format!(
            "subscription, slot and publication {FORWARD} dropped; {dropped}"
        ))
    }
}
