//! `cutover plan`: the dry run; writes nothing anywhere.

use clap::Args;

use crate::args::GlobalArgs;
use crate::exit::Code;

#[derive(Debug, Args)]
pub struct PlanArgs {}

pub(crate) fn run(_global: &GlobalArgs, _args: PlanArgs) -> anyhow::Result<Code> {
    super::not_implemented("plan")
}
