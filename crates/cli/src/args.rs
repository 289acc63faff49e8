//! The command line: global options and the subcommands.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::commands;

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

#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// The plan file (TOML) that declares source, target, consumers and options.
    #[arg(
        long,
        global = true,
        value_name = "FILE",
        default_value = "cutover.toml",
        env = "CUTOVER_PLAN"
    )]
    pub plan: PathBuf,
    /// Output format: text for people, json for one JSON object per line.
    #[arg(long, global = true, value_enum, default_value_t = Output::Text)]
    pub output: Output,
    /// More log detail (-v info, -vv debug, -vvv trace). RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count, conflicts_with = "quiet")]
    pub verbose: u8,
    /// Only errors.
    #[arg(short, long, global = true)]
    pub quiet: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Write a commented plan file to start from.
    Init(commands::init::InitArgs),
    /// Show both databases side by side and what clearing the target would destroy.
    Inspect(commands::inspect::InspectArgs),
    /// Find which database each consumer really uses (split-brain check).
    Doctor(commands::doctor::DoctorArgs),
    /// Dry run: the numbered stages `run` would execute, from live read-only inspection.
    Plan(commands::plan::PlanArgs),
    /// Start or resume the cutover described by the plan file.
    Run(commands::run::RunArgs),
    /// The run's stage table from the journal.
    Status(commands::status::StatusArgs),
    /// Compare source and target table by table (row counts and content hashes).
    Verify(commands::verify::VerifyArgs),
    /// Undo completed stages in reverse order.
    Rollback(commands::rollback::RollbackArgs),
    /// A Markdown report of the cutover, built from the journal.
    Report(commands::report::ReportArgs),
    /// Move the journal into the run directory and drop its schema from the target (no rollback after).
    ArchiveJournal(commands::archive::ArchiveArgs),
    /// The whole story on two throwaway local PostgreSQL servers.
    Demo(commands::demo::DemoArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}
