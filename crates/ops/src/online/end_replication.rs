//! end-replication: the rollback window closes.

use async_trait::async_trait;
use cutover_core::artefacts::Artefacts;
use cutover_core::stage::{Check, Description, RunContext, Stage, Undo};
use cutover_core::{Error, Result};
use cutover_pg::fence;
use cutover_pg::online::{REVERSE, leftovers, publication};
use serde::{Deserialize, Serialize};

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
        leftovers::remove_all(&ctx.source, &ctx.target, schema).await?;
        for pool in [&ctx.source, &ctx.target] {
            publication::identity_full(pool, &self.identity_full, false).await?;
        }
        let left = leftovers::leftovers(&ctx.source, &ctx.target).await?;
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
        let left = leftovers::leftovers(&ctx.source, &ctx.target).await?;
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
