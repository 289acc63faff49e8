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

use clap::{Parser, Subcommand};

use crate::args::GlobalArgs;
use crate::exit::Code;

/// Consolidate two diverged PostgreSQL databases into one and move every
/// application over to it: planned first, run in resumable stages, proven at
/// the end, reversible after a failed step.
#[derive(Debug, Parser)]
#[command(name = "cutover", version, propagate_version = true, max_term_width = 100)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Write a commented plan file to start from.
    Init(init::InitArgs),
    /// Show both databases side by side and what clearing the target would destroy.
    Inspect(inspect::InspectArgs),
    /// Find which database each consumer really uses (split-brain check).
    Doctor(doctor::DoctorArgs),
    /// Dry run: the numbered stages `run` would execute, from live read-only inspection.
    Plan(plan::PlanArgs),
    /// Start or resume the cutover described by the plan file.
    Run(run::RunArgs),
    /// The run's stage table from the journal.
    Status(status::StatusArgs),
    /// Compare source and target table by table (row counts and content hashes).
    Verify(verify::VerifyArgs),
    /// Undo completed stages in reverse order.
    Rollback(rollback::RollbackArgs),
    /// A Markdown report of the cutover, built from the journal.
    Report(report::ReportArgs),
    /// Move the journal into the run directory and drop its schema from the target (no rollback after).
    ArchiveJournal(archive::ArchiveArgs),
    /// The whole story on two throwaway local PostgreSQL servers.
    Demo(demo::DemoArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

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
            let mut cmd = Cli::command();
            clap_complete::generate(shell, &mut cmd, "cutover", &mut std::io::stdout());
            Ok(Code::Success)
        }
    }
}

/// The async runtime for commands that talk to databases.
pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}
