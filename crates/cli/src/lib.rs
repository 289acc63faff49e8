//! cutover's command-line front end: parses arguments, sets up logging and the
//! runtime, dispatches to one file per subcommand, and maps errors to the exit
//! codes documented in [`exit`].

mod args;
mod commands;
pub mod exit;
mod journal_archive;
mod planner;
mod render;
mod session;

use std::process::ExitCode;

use clap::Parser;

pub use commands::Cli;

/// Parses the command line, runs the command and returns its exit code.
pub fn main() -> ExitCode {
    main_from(std::env::args_os())
}

/// The same with explicit arguments (the first is the program's name).
pub fn main_from<I, T>(args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    // Everything cutover and its tools (pg_dump…) create is private to the
    // operator: backups, dumps, logs, reports (files 0600, folders 0700).
    // SAFETY: umask only changes this process's file-creation mask.
    unsafe { libc::umask(0o077) };
    let cli = Cli::parse_from(args);
    init_logging(&cli.global);
    let result = commands::run(cli);
    match result {
        Ok(code) => code.into(),
        Err(err) => {
            let code = exit::code_for(&err);
            eprintln!("error: {}", exit::render(&err));
            code.into()
        }
    }
}

fn init_logging(global: &args::GlobalArgs) {
    use tracing_subscriber::EnvFilter;
    let default = match (global.quiet, global.verbose) {
        (true, _) => "error",
        // sqlx logs slow statements at warn: only -vv shows them.
        (false, 0) => "warn,sqlx=error",
        (false, 1) => "info,sqlx=error",
        (false, 2) => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| render::LogWriter)
        .with_target(false)
        .try_init();
}
