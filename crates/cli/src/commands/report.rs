//! `cutover report`: a Markdown report of the cutover from the journal.

use clap::Args;

use crate::args::GlobalArgs;
use crate::exit::Code;

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// Write the report to this file instead of stdout.
    #[arg(long, value_name = "FILE")]
    pub out: Option<std::path::PathBuf>,
}

pub(crate) fn run(_global: &GlobalArgs, _args: ReportArgs) -> anyhow::Result<Code> {
    super::not_implemented("report")
}
