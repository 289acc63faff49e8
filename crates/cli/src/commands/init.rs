//! `cutover init`: writes a plan file. Without a terminal, a commented
//! template with every key; on a terminal it asks for the source and target
//! URLs. `--scan DIR` looks for configuration files that name either database
//! (its URL, or its host and port) and offers each as a consumer.

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;

use clap::Args;
use cutover_core::redact::redact_text;
use cutover_ops::conn::ConnString;
use cutover_ops::scan::Candidate;

use crate::args::GlobalArgs;
use crate::exit::{Code, coded};

/// The template: every key of the plan file, with its default.
pub const TEMPLATE: &str = include_str!("../templates/cutover.toml");
const SOURCE_EXAMPLE: &str = "url = \"postgresql://app@old-db.example:5432/app\"";
const TARGET_EXAMPLE: &str = "url = \"postgresql://app@new-db.example:5432/app\"";
const CONSUMER_EXAMPLE_START: &str = "[[consumer]]\nname = \"production-backend\"";
const CONSUMER_EXAMPLE_END: &str = "# [[consumer]]\n# name = \"backup-scripts\"";

#[derive(Debug, Args)]
pub struct InitArgs {
    /// Overwrite an existing plan file.
    #[arg(long)]
    pub force: bool,
    /// The source's URL (asked on a terminal when absent).
    #[arg(long, value_name = "URL")]
    pub source: Option<String>,
    /// The target's URL (asked on a terminal when absent).
    #[arg(long, value_name = "URL")]
    pub target: Option<String>,
    /// Look in this folder for configuration files that name either database and add them as consumers.
    #[arg(long, value_name = "DIR")]
    pub scan: Option<PathBuf>,
}

pub(crate) fn run(global: &GlobalArgs, args: InitArgs) -> anyhow::Result<Code> {
    let path = &global.plan;
    if path.exists() && !args.force {
        return Err(coded(
            cutover_core::ErrorKind::BadInput,
            format!(
                "{} already exists; nothing was written (pass --force to overwrite it)",
                path.display()
            ),
        ));
    }
    let tty = std::io::stdin().is_terminal() && std::io::stderr().is_terminal();
    let ask = |question: &str| -> anyhow::Result<Option<String>> {
        if !tty {
            return Ok(None);
        }
        eprint!("{question}: ");
        std::io::stderr().flush()?;
        let mut answer = String::new();
        std::io::stdin().lock().read_line(&mut answer)?;
        let answer = answer.trim().to_string();
        Ok((!answer.is_empty()).then_some(answer))
    };
    let source = match args.source.clone() {
        Some(u) => Some(u),
        None => ask("source URL (the database whose data wins; empty: fill it in later)")?,
    };
    let target = match args.target.clone() {
        Some(u) => Some(u),
        None => ask("target URL (the database that stays; empty: fill it in later)")?,
    };
    let mut text = TEMPLATE.to_string();
    for (url, example) in [(&source, SOURCE_EXAMPLE), (&target, TARGET_EXAMPLE)] {
        if let Some(u) = url {
            if ConnString::parse(u).is_none() {
                return Err(coded(
                    cutover_core::ErrorKind::BadInput,
                    format!(
                        "{} is not a postgresql:// URL; nothing was written",
                        redact_text(u)
                    ),
                ));
            }
            text = text.replacen(example, &format!("url = {}", toml_string(u)), 1);
        }
    }
    if let Some(dir) = &args.scan {
        let wanted: Vec<ConnString> = [&source, &target]
            .into_iter()
            .flatten()
            .filter_map(|u| ConnString::parse(u))
            .collect();
        if wanted.is_empty() {
            return Err(coded(
                cutover_core::ErrorKind::BadInput,
                "--scan needs the source or target URL (--source/--target, or answer the questions) to know what to look for",
            ));
        }
        let (found, skipped) = cutover_ops::scan::scan(dir, &wanted)?;
        let mut blocks = String::new();
        for c in &found {
            let keep = match ask(&format!(
                "add {} as consumer {} ({})? [Y/n]",
                c.path.display(),
                c.name,
                redact_text(&c.reason)
            ))? {
                Some(a) => !a.to_lowercase().starts_with('n'),
                None => true,
            };
            if keep {
                blocks.push_str(&block(c));
            }
        }
        if let (Some(a), Some(b)) = (text.find(CONSUMER_EXAMPLE_START), text.find(CONSUMER_EXAMPLE_END)) {
            let replacement = if blocks.is_empty() {
                format!(
                    "# (--scan {} found no file naming either database)\n\n",
                    dir.display()
                )
            } else {
                blocks
            };
            text.replace_range(a..b, &replacement);
        }
        for c in &found {
            eprintln!(
                "found {}: {} ({})",
                c.name,
                c.path.display(),
                redact_text(&c.reason)
            );
        }
        for sk in &skipped {
            eprintln!("skipped {}: {}", sk.path.display(), redact_text(&sk.why));
        }
        eprintln!(
            "--scan {}: {} consumer(s) found, {} connection(s) skipped",
            dir.display(),
            found.len(),
            skipped.len()
        );
    }
    cutover_ops::files::write_private(path, text.as_bytes())?;
    let has_password = [&source, &target]
        .into_iter()
        .flatten()
        .any(|u| ConnString::parse(u).and_then(|c| c.password()).is_some());
    eprintln!(
        "wrote {} (mode 0600{}): check [source] and [target], the consumers, then run `cutover plan`",
        path.display(),
        if has_password {
            "; it holds a password: password_env keeps it out of the file"
        } else {
            ""
        }
    );
    Ok(Code::Success)
}

fn toml_string(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// The `[[consumer]]` block for a scan's candidate.
fn block(c: &Candidate) -> String {
    let kind = serde_json::to_value(c.kind)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    let mut b = format!(
        "# {}\n[[consumer]]\nname = \"{}\"\nkind = \"{kind}\"\npath = {}\n",
        c.reason,
        c.name,
        toml_string(&c.path.display().to_string())
    );
    if let Some(k) = &c.key {
        b.push_str(&format!("key = {}\n", toml_string(k)));
    }
    if !c.keys.is_empty() {
        let pairs: Vec<String> = c
            .keys
            .named()
            .map(|(field, key)| format!("{field} = {}", toml_string(key)))
            .collect();
        b.push_str(&format!("keys = {{ {} }}\n", pairs.join(", ")));
    }
    if c.encoding.is_some() {
        b.push_str("encoding = \"base64\"\n");
    }
    if c.kind == cutover_core::plan_file::ConsumerKind::Pgbouncer {
        b.push_str(
            "# switched through PgBouncer's admin console (PAUSE, RELOAD, RESUME): export its URL,\n\
             # postgresql://<an admin_users user>:<password>@<host>:<port>/pgbouncer\n\
             admin_url_env = \"PGBOUNCER_ADMIN_URL\"\n",
        );
    }
    b.push_str("# reload = \"...\"       # e.g. docker compose up -d <service>\n\n");
    b
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
        assert!(uncommented.is_ok(), "{uncommented:?}\n{all}"); // And every option is there.
        let options = serde_json::to_value(cutover_core::plan_file::Options::default()).unwrap();
        for key in options.as_object().unwrap().keys() {
            assert!(
                super::TEMPLATE.contains(&format!("# {key} = ")),
                "the template lacks options.{key}"
            );
        }
    }

    #[test]
    fn the_markers_init_replaces_are_in_the_template() {
        for marker in [
            super::SOURCE_EXAMPLE,
            super::TARGET_EXAMPLE,
            super::CONSUMER_EXAMPLE_START,
            super::CONSUMER_EXAMPLE_END,
        ] {
            assert!(super::TEMPLATE.contains(marker), "{marker}");
        }
    }
}
