//! `cutover plan`: the dry run. Builds the same plan object `run` executes,
//! from live read-only inspection, and prints it. Writes nothing anywhere.

use clap::Args;
use cutover_core::plan_file::LoadedPlan;

use crate::args::{GlobalArgs, Output};
use crate::exit::Code;
use crate::{planner, render};

#[derive(Debug, Args)]
pub struct PlanArgs {
    /// Plan as if the target were allowed to hold data the source lacks.
    #[arg(long)]
    pub allow_target_ahead: bool,
    /// Plan as `run --destroy` would (with `destroy = true` in the plan: destroy the source).
    #[arg(long)]
    pub destroy: bool,
}

pub(crate) fn run(global: &GlobalArgs, args: PlanArgs) -> anyhow::Result<Code> {
    let loaded = LoadedPlan::load(&global.plan)?;
    let planned = super::runtime()?.block_on(planner::build(
        &loaded,
        planner::Switches {
            allow_target_ahead: args.allow_target_ahead,
            destroy: args.destroy,
            force: false,
        },
    ))?;
    match global.output {
        Output::Json => println!("{}", render::plan_json(&planned.plan)),
        Output::Text => {
            println!(
                "Plan for {} → {} ({} stages; nothing has been changed):\n",
                planned.dbs.source,
                planned.dbs.target,
                planned.plan.stages.len()
            );
            print!("{}", render::plan_text(&planned.plan));
        }
    }
    Ok(Code::Success)
}
