//! The command line's global options (the subcommands are in `commands`).

use std::path::PathBuf;

use clap::{Args, ValueEnum};

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
