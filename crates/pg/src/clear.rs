//! clear-target: drop the application objects on the target (every schema
//! but the system ones and the journal's), so the copy starts from nothing.
//! Its undo restores the proven backup.

use async_trait::async_trait;
use cutover_core::Result;
use cutover_core::artefacts::{Artefacts, Summary};
use cutover_core::endpoint::Endpoint;
use cutover_core::stage::{Check, Description, RunContext, Stage, Undo};

use crate::backup;
use crate::inventory::Inventory;
use crate::target_objects::{drop_application_objects, is_empty};

pub struct ClearTarget {
    pub description: Description,
    /// The target database, as the plan resolved it (undo restores into it).
    target: std::sync::Arc<Endpoint>,
}

impl ClearTarget {
    pub fn new(target: &Inventory, destroyed: &[String], endpoint: std::sync::Arc<Endpoint>) -> ClearTarget {
        let mut details: Vec<String> = destroyed.iter().map(|d| format!("destroys: {d}")).collect();
        details.push(format!(
            "drops schemas {} with {} tables ({} rows), {} sequences, extensions [{}], {} large objects",
            target.schemas.join(", "),
            target.tables.len(),
            target.total_rows(),
            target.sequences.len(),
            target
                .extensions
                .iter()
                .map(|(n, _)| n.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            target.large_objects
        ));
        ClearTarget {
            target: endpoint,
            description: Description {
                summary: format!(
                    "drop every application object on the target ({} tables, {} rows); the journal schema stays",
                    target.tables.len(),
                    target.total_rows()
                ),
                details,
                warnings: vec![],
                destructive: true,
            },
        }
    }
}

#[async_trait]
impl Stage for ClearTarget {
    fn name(&self) -> String {
        cutover_core::stage::names::CLEAR_TARGET.into()
    }
    fn describe(&self) -> &Description {
        &self.description
    }
    fn undo_kind(&self) -> Undo {
        Undo::Reversible("restore the proven backup of the target".into())
    }
    async fn run(&self, ctx: &RunContext) -> Result<serde_json::Value> {
        // Invariant 1: a proven backup exists before anything destructive.
        backup::require_proven(ctx).await?;
        drop_application_objects(&ctx.target, ctx.journal.schema()).await?;
        Ok(Summary {
            summary: "target cleared".into(),
        }
        .to_value())
    }
    async fn check(&self, ctx: &RunContext) -> Result<Check> {
        Ok(if is_empty(&ctx.target, ctx.journal.schema()).await? {
            Check::Holds
        } else {
            Check::Fails("the target holds application objects".into())
        })
    }
    async fn undo(&self, ctx: &RunContext) -> Result<String> {
        let path = backup::restore(ctx, &self.target).await?;
        Ok(format!("target restored from {}", path.display()))
    }
}
