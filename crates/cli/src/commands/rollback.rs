//! `cutover rollback`: undoes the latest run's stages in reverse order.

use std::sync::Arc;

use clap::Args;
use cutover_core::engine;
use cutover_core::loaded::LoadedPlan;
use cutover_core::stage::CancelFlag;

use crate::args::GlobalArgs;
use crate::exit::Code;
use crate::planner;
use crate::render::Reporter;
use crate::session::{self, Mode};

#[derive(Debug, Args)]
pub struct RollbackArgs {
    /// Go on past stages that cannot be undone (they are left as they are).
    #[arg(long)]
    pub force: bool,
    /// Answer yes to the confirmation (for scripts).
    #[arg(long)]
    pub yes: bool,
}

pub(crate) fn run(global: &GlobalArgs, args: RollbackArgs) -> anyhow::Result<Code> {
    let loaded = LoadedPlan::load(&global.plan)?;
    let events = Arc::new(Reporter::new(global.output, global.quiet));
    let cancel = CancelFlag::default();
    super::runtime()?.block_on(async {
        session::cancel_on_ctrl_c(&cancel, events.clone());
        // Rolling back must work when the target now holds more than the source.
        let s = session::open(
            &loaded,
            planner::Switches {
                allow_target_ahead: true,
                ..Default::default()
            },
            Mode::Rollback,
            events,
            cancel,
        )
        .await?;
        let confirm = session::confirmer(args.yes, s.planned.dbs.target.dbname.clone(), "rollback of");
        confirm(&["the latest run".to_string()])?;
        engine::rollback(s.plan(), &s.ctx, args.force).await?;
        Ok::<_, anyhow::Error>(Code::Success)
    })
}
