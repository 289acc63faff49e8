//! `cutover run`: starts or resumes the cutover described by the plan file.

use std::sync::Arc;

use clap::Args;
use cutover_core::engine::{self, Selection};
use cutover_core::loaded::LoadedPlan;
use cutover_core::stage::CancelFlag;

use crate::args::GlobalArgs;
use crate::exit::Code;
use crate::planner;
use crate::render::Reporter;
use crate::session::{self, Mode};

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Answer yes to the destructive-stage confirmation (for scripts).
    #[arg(long)]
    pub yes: bool,
    /// Stop after this stage.
    #[arg(long, value_name = "STAGE")]
    pub until: Option<String>,
    /// Run only this stage.
    #[arg(long, value_name = "STAGE", conflicts_with = "until")]
    pub only: Option<String>,
    /// Abandon the previous run of this plan and start over.
    #[arg(long)]
    pub restart: bool,
    /// Clear the target even when it holds data the source lacks.
    #[arg(long)]
    pub allow_target_ahead: bool,
    /// With `destroy = true` under [decommission]: destroy the source instead of retiring it (irreversible).
    #[arg(long)]
    pub destroy: bool,
    /// Decommission the source even while clients are still connected to it (they are disconnected).
    #[arg(long)]
    pub force: bool,
}

pub(crate) fn run(global: &GlobalArgs, args: RunArgs) -> anyhow::Result<Code> {
    let loaded = LoadedPlan::load(&global.plan)?;
    let events = Arc::new(Reporter::new(global.output, global.quiet));
    let cancel = CancelFlag::default();
    super::runtime()?.block_on(async {
        if !args.restart
            && let Some(run) = session::finished_run(&loaded).await?
        {
            use cutover_core::event::EventSink;
            events.emit(cutover_core::event::Event::RunAlreadyFinished {
                run_id: run.id.to_string(),
                finished_at: run
                    .finished_at
                    .unwrap_or(run.started_at)
                    .format("%Y-%m-%d %H:%M:%S UTC")
                    .to_string(),
            });
            return Ok(Code::Success);
        }
        session::cancel_on_ctrl_c(&cancel, events.clone());
        let s = session::open(
            &loaded,
            planner::Switches {
                allow_target_ahead: args.allow_target_ahead,
                destroy: args.destroy,
                force: args.force,
            },
            Mode::Run {
                restart: args.restart,
            },
            events,
            cancel,
        )
        .await?;
        let confirm = session::confirmer(args.yes, s.planned.dbs.target.dbname.clone(), "stage");
        let selection = Selection {
            until: args.until,
            only: args.only,
        };
        engine::run(s.plan(), &s.ctx, &selection, &confirm).await?;
        if let Some(run) = s.ctx.journal.latest_run().await?
            && run.status == cutover_core::journal::RunStatus::Done
        {
            s.ctx.events.emit(cutover_core::event::Event::Info {
                message: planner::journal_note(s.ctx.journal.schema()),
            });
        }
        Ok::<_, anyhow::Error>(Code::Success)
    })
}
