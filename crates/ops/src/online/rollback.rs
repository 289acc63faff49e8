//! Rollback inside the window (the undo of switch and resume): pause the
//! applications on the target, wait until the reverse stream brought every
//! write back, set the sequences back, end the reverse stream, lift the
//! source's fence.

use std::time::{Duration, Instant};

use cutover_core::event::Event;
use cutover_core::plan_file::OnlineOptions;
use cutover_core::stage::RunContext;
use cutover_core::{Error, Result};
use cutover_pg::online::{REVERSE, publication, read_only, sentinel, slot, subscription};

use super::Online;

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
    if subscription::subscription(&ctx.source, REVERSE).await?.is_some() {
        reverse_ready(ctx, &online.options).await?;
        let t0 = Instant::now();
        apps.pause(&ctx.target).await?;
        let max_pause = online.options.max_pause;
        let inside = cutover_core::engine::catch_panic(async {
            let token = sentinel::write_sentinel(&ctx.target, schema).await?;
            // Bounded by max_pause; Ctrl-C does not cut the way back short.
            if !sentinel::wait_for_sentinel(&ctx.source, schema, token, t0 + max_pause, None).await? {
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
            sentinel::copy_sequences(&ctx.target, &ctx.source, schema).await
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
    cutover_pg::fence::lift(&ctx.source, schema).await?;
    read_only::lift(&ctx.source).await?;
    subscription::unsubscribe(&ctx.source, REVERSE).await?;
    slot::drop_slot(&ctx.target, REVERSE).await?;
    publication::unpublish(&ctx.target, REVERSE, schema, false).await?;
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
    let Some(sub) = subscription::subscription(&ctx.source, REVERSE).await? else {
        return Ok(());
    };
    let errors_before = sub.apply_errors;
    if !sub.enabled {
        subscription::enable(&ctx.source, REVERSE).await?;
        ctx.emit(Event::Warning {
            message: format!(
                "subscription {REVERSE} on the source had stopped ({} apply error(s)); enabled it again",
                sub.apply_errors
            ),
        });
    }
    let token = sentinel::write_sentinel(&ctx.target, schema).await?;
    let deadline = Instant::now() + options.catch_up_timeout;
    let mut checked = Instant::now();
    loop {
        if sentinel::wait_for_sentinel(&ctx.source, schema, token, Instant::now(), Some(&ctx.cancel)).await? {
            return Ok(());
        }
        let broken = if checked.elapsed() >= Duration::from_millis(250) {
            checked = Instant::now();
            match subscription::subscription(&ctx.source, REVERSE).await? {
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
