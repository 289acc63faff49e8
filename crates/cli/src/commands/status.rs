//! `cutover status`: the run's stage table from the journal.

use clap::Args;

use crate::args::GlobalArgs;
use crate::exit::Code;

#[derive(Debug, Args)]
pub struct StatusArgs {}

pub(crate) fn run(_global: &GlobalArgs, _args: StatusArgs) -> anyhow::Result<Code> {
    super::not_implemented("status")
}
