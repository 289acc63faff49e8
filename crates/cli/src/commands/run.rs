//! `cutover run`: starts or resumes the cutover.

use clap::Args;

use crate::args::GlobalArgs;
use crate::exit::Code;

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Answer yes to the destructive-stage confirmation (for scripts).
    #[arg(long)]
    pub yes: bool,
    /// Stop after this stage.
    #[arg(long, value_name = "STAGE")]
    pub until: Option<String>,
    /// Run only this stage.
    #[arg(long, value_name = "STAGE", conflicts_with = "until")]
    pub only: Option<String>,
    /// Forget the previous run of this plan and start over.
    #[arg(long)]
    pub restart: bool,
    /// Clear the target even when it holds data the source lacks.
    #[arg(long)]
    pub allow_target_ahead: bool,
}

pub(crate) fn run(_global: &GlobalArgs, _args: RunArgs) -> anyhow::Result<Code> {
    super::not_implemented("run")
}
