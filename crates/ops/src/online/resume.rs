//! resume: the pause ends once every consumer points at the target; its
//! length is recorded.

use async_trait::async_trait;
use cutover_core::Result;
use cutover_core::artefacts::Artefacts;
use cutover_core::event::Event;
use cutover_core::stage::{Check, Description, RunContext, Stage, Undo};
use serde::{Deserialize, Serialize};

use super::pause::Applications;
use super::rollback::back_to_source;
use super::{Online, pause_start};

pub const RESUME: &str = cutover_core::stage::names::RESUME;

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
