//! `cutover verify`: compares source and target table by table.

use clap::Args;

use crate::args::GlobalArgs;
use crate::exit::Code;

#[derive(Debug, Args)]
pub struct VerifyArgs {}

pub(crate) fn run(_global: &GlobalArgs, _args: VerifyArgs) -> anyhow::Result<Code> {
    super::not_implemented("verify")
}
