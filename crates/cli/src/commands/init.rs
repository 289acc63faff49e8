//! `cutover init`: writes a commented plan-file template with every key.

use std::io::Write;

use clap::Args;

use crate::args::GlobalArgs;
use crate::exit::{Code, coded};

/// The template: every key of the plan file, with its default.
pub const TEMPLATE: &str = include_str!("../templates/cutover.toml");

#[derive(Debug, Args)]
pub struct InitArgs {
    /// Overwrite an existing plan file.
    #[arg(long)]
    pub force: bool,
}

pub(crate) fn run(global: &GlobalArgs, args: InitArgs) -> anyhow::Result<Code> {
    let path = &global.plan;
    let mut options = std::fs::OpenOptions::new();
    options.write(true);
    if args.force {
        options.create(true).truncate(true);
    } else {
        options.create_new(true);
    }
    let mut file = match options.open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(coded(
                Code::BadInput,
                format!(
                    "{} already exists; nothing was written (pass --force to overwrite it)",
                    path.display()
                ),
            ));
        }
        Err(e) => {
            return Err(coded(
                Code::Failure,
                format!("cannot write {}: {e}", path.display()),
            ));
        }
    };
    file.write_all(TEMPLATE.as_bytes())?;
    eprintln!(
        "wrote {}: set [source] and [target], list the consumers, then run `cutover plan`",
        path.display()
    );
    Ok(Code::Success)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_template_parses_and_names_every_key() {
        let plan = cutover_core::plan_file::parse(super::TEMPLATE).unwrap();
        assert_eq!(plan.consumers.len(), 1);
        // Uncommenting every key must still parse: each one is a real key.
        let all: String = super::TEMPLATE
            .lines()
            .map(|l| {
                let t = l.trim_start();
                let is_key = t.starts_with("# ") && t[2..].split_whitespace().nth(1) == Some("=");
                if is_key || t.starts_with("# [") {
                    t[2..].to_string()
                } else {
                    l.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        let uncommented = cutover_core::plan_file::parse(&all.replace("...", "true"));
        assert!(uncommented.is_ok(), "{uncommented:?}\n{all}");
    }
}
