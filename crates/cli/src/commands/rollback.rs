//! `cutover rollback`: undoes completed stages in reverse order.

use clap::Args;

use crate::args::GlobalArgs;
use crate::exit::Code;

#[derive(Debug, Args)]
pub struct RollbackArgs {
    /// Also undo past stages that declare themselves irreversible.
    #[arg(long)]
    pub force: bool,
    /// Answer yes to the confirmation (for scripts).
    #[arg(long)]
    pub yes: bool,
}

pub(crate) fn run(_global: &GlobalArgs, _args: RollbackArgs) -> anyhow::Result<Code> {
    super::not_implemented("rollback")
}
