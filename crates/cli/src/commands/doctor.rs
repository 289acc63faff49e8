//! `cutover doctor`: which database each consumer really uses.

use clap::Args;

use crate::args::GlobalArgs;
use crate::exit::Code;

#[derive(Debug, Args)]
pub struct DoctorArgs {}

pub(crate) fn run(_global: &GlobalArgs, _args: DoctorArgs) -> anyhow::Result<Code> {
    super::not_implemented("doctor")
}
