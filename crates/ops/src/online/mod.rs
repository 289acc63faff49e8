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

//! - [`pause`]: pausing and resuming the applications (PgBouncer, fence);
//! - [`switch`]: the pause, the catch-up, the point of no return;
//! - [`resume`]: the pause's end, once every consumer is repointed;
//! - [`end_replication`]: the rollback window closes;
//! - [`rollback`]: the way back to the source, the undo of both stages
//!   inside the window.

use std::sync::Arc;

use cutover_core::Result;
use cutover_core::endpoint::Endpoint;
use cutover_core::journal::ItemKey;
use cutover_core::plan_file::OnlineOptions;
use cutover_core::stage::RunContext;

pub mod end_replication;
pub mod pause;
pub mod resume;
pub mod rollback;
pub mod switch;

/// What the switch and resume stages share.
#[derive(Clone)]
pub struct Online {
    pub apps: pause::Applications,
    pub options: OnlineOptions,
    pub target: Arc<Endpoint>,
}

/// The detail of the switch's `paused` item: when the applications were
/// paused (RFC 3339, UTC).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub(crate) struct Paused {
    pub(crate) since: String,
}

/// When the applications were paused, as the switch journaled it.
pub(crate) async fn pause_start(ctx: &RunContext) -> Result<Option<String>> {
    Ok(ctx
        .journal
        .item_detail(ctx.run_id, switch::SWITCH, &ItemKey::Paused)
        .await?
        .and_then(|d| serde_json::from_value::<Paused>(d).ok())
        .map(|p| p.since))
}

pub(crate) fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}
