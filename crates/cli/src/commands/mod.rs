//! One module per subcommand, each with its clap `Args` and its `run`.

pub mod archive;
pub mod demo;
pub mod doctor;
pub mod init;
pub mod inspect;
pub mod plan;
pub mod report;
pub mod rollback;
pub mod run;
pub mod status;
pub mod verify;

use crate::args::{Cli, Command};
use crate::exit::Code;

/// Dispatches to the subcommand.
pub(crate) fn run(cli: Cli) -> anyhow::Result<Code> {
    let global = cli.global;
    match cli.command {
        Command::Init(args) => init::run(&global, args),
        Command::Inspect(args) => inspect::run(&global, args),
        Command::Doctor(args) => doctor::run(&global, args),
        Command::Plan(args) => plan::run(&global, args),
        Command::Run(args) => run::run(&global, args),
        Command::Status(args) => status::run(&global, args),
        Command::Verify(args) => verify::run(&global, args),
        Command::Rollback(args) => rollback::run(&global, args),
        Command::Report(args) => report::run(&global, args),
        Command::Demo(args) => demo::run(&global, args),
        Command::ArchiveJournal(args) => archive::run(&global, args),
        Command::Completions { shell } => {
            use clap::CommandFactory;
            let mut cmd = crate::args::Cli::command();
            clap_complete::generate(shell, &mut cmd, "cutover", &mut std::io::stdout());
            Ok(Code::Success)
        }
    }
}

/// The async runtime for commands that talk to databases.
pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}
