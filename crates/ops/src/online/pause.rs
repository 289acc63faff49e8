//! Pausing the applications on the side they leave, and resuming them: a
//! PgBouncer consumer's entry by `PAUSE` on its admin console, then the
//! CONNECT fence and, for the roles no fence stops, the read-only default.

use std::time::Duration;

use cutover_core::plan_file::AdminConsole;
use cutover_core::{Error, Result};
use cutover_pg::fence;
use cutover_pg::freeze::FenceSettings;
use cutover_pg::online::read_only;
use sqlx::PgPool;

use crate::pgbouncer::Console;

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
    pub(super) fn describe(&self) -> String {
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
        Console::new(&b.admin.url()?).await
    }

    /// Pauses every application on the side `pool` serves (the PgBouncer
    /// entries point there). On failure, what was paused is resumed.
    pub(super) async fn pause(&self, pool: &PgPool) -> Result<usize> {
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
            read_only::impose(pool, &soft).await?;
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

    pub(super) async fn resume_one(b: &Bouncer) -> Result<()> {
        let console = Self::console(b).await?;
        if console.entry(&b.entry).await?.is_some_and(|e| e.paused) {
            console.resume(&b.entry).await?;
        }
        Ok(())
    }

    /// Lifts the fence on `pool` and resumes every paused entry.
    pub(super) async fn resume(&self, pool: &PgPool) -> Result<()> {
        // The mirror of `pause`: the CONNECT fence, then the read-only default.
        fence::lift(pool, &self.fence.journal_schema).await?;
        read_only::lift(pool).await?;
        for b in &self.bouncers {
            Self::resume_one(b)
                .await
                .map_err(|e| e.context(format!("resuming consumer {}", b.consumer)))?;
        }
        Ok(())
    }
}
