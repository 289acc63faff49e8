//! `cutover inspect`: both databases side by side, and the direction check.

use clap::Args;

use crate::args::GlobalArgs;
use crate::exit::Code;

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// Use the planner's row estimates instead of exact counts.
    #[arg(long)]
    pub fast: bool,
}

pub(crate) fn run(_global: &GlobalArgs, _args: InspectArgs) -> anyhow::Result<Code> {
    super::not_implemented("inspect")
}
