//! `cutover init`: writes a commented plan-file template.

use clap::Args;

use crate::args::GlobalArgs;
use crate::exit::Code;

#[derive(Debug, Args)]
pub struct InitArgs {
    /// Overwrite an existing plan file.
    #[arg(long)]
    pub force: bool,
}

pub(crate) fn run(_global: &GlobalArgs, _args: InitArgs) -> anyhow::Result<Code> {
    super::not_implemented("init")
}
