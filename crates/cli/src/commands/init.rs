//! `cutover init`: writes a plan file. Without a terminal, a commented
//! template with every key; on a terminal it asks for the source and target
//! URLs. `--scan DIR` looks for configuration files that name either database
//! (its URL, or its host and port) and offers each as a consumer.

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};

use clap::Args;
use cutover_core::endpoint::redact_text;
use cutover_ops::conn::{ConnString, same_host};
use cutover_ops::locate;

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
            Code::BadInput,
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
                    Code::BadInput,
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
                Code::BadInput,
                "--scan needs the source or target URL (--source/--target, or answer the questions) to know what to look for",
            ));
        }
        let found = scan(dir, &wanted)?;
        let mut blocks = String::new();
        for (i, c) in found.iter().enumerate() {
            let keep = match ask(&format!(
                "add {} ({}, {})? [Y/n]",
                c.path.display(),
                c.kind,
                c.reason
            ))? {
                Some(a) => !a.to_lowercase().starts_with('n'),
                None => true,
            };
            if keep {
                blocks.push_str(&c.block(i, &blocks));
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
        eprintln!("--scan {}: {} consumer(s) found", dir.display(), found.len());
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

/// A configuration file that names one of the databases.
struct Candidate {
    path: PathBuf,
    kind: &'static str,
    key: Option<String>,
    reason: String,
}

impl Candidate {
    fn block(&self, index: usize, so_far: &str) -> String {
        let stem = self
            .path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("consumer")
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '-'
                }
            })
            .collect::<String>();
        let stem = stem.trim_matches('-');
        let mut name = if stem.is_empty() {
            format!("consumer-{}", index + 1)
        } else {
            stem.to_string()
        };
        if so_far.contains(&format!("name = \"{name}\"")) {
            name = format!("{name}-{}", index + 1);
        }
        let mut b = format!(
            "[[consumer]]\nname = \"{name}\"\nkind = \"{}\"\npath = {}\n",
            self.kind,
            toml_string(&self.path.display().to_string())
        );
        if let Some(k) = &self.key {
            b.push_str(&format!("key = {}\n", toml_string(k)));
        }
        b.push_str("# reload = \"...\"       # e.g. docker compose up -d <service>\n\n");
        b
    }
}

/// Files under `dir` (4 levels, text under 1 MB, no VCS or build folders)
/// that name one of `wanted` by URL, keyword string or host and port.
fn scan(dir: &Path, wanted: &[ConnString]) -> anyhow::Result<Vec<Candidate>> {
    let mut found = vec![];
    let mut stack = vec![(dir.to_path_buf(), 0)];
    while let Some((d, depth)) = stack.pop() {
        let mut entries: Vec<_> = std::fs::read_dir(&d)?.flatten().collect();
        entries.sort_by_key(|e| e.path());
        for e in entries {
            let p = e.path();
            let name = e.file_name().to_string_lossy().to_string();
            if p.is_dir() {
                if depth < 4 && !matches!(name.as_str(), ".git" | "node_modules" | "target" | "cutover-run") {
                    stack.push((p, depth + 1));
                }
                continue;
            }
            if name.ends_with(".toml") && name.starts_with("cutover") {
                continue;
            }
            let Ok(meta) = e.metadata() else { continue };
            if meta.len() > 1 << 20 {
                continue;
            }
            let Ok(text) = std::fs::read_to_string(&p) else {
                continue;
            };
            if let Some(c) = candidate(&p, &name, &text, wanted) {
                found.push(c);
            }
        }
    }
    found.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(found)
}

fn names(c: &ConnString, wanted: &[ConnString]) -> bool {
    wanted
        .iter()
        .any(|w| same_host(&c.host(), &w.host()) && c.port() == w.port() && c.dbname() == w.dbname())
}

fn candidate(path: &Path, name: &str, text: &str, wanted: &[ConnString]) -> Option<Candidate> {
    // An env file: the variable that holds a matching connection.
    if name.ends_with(".env") || name.starts_with(".env") || name.ends_with(".conf") && text.contains('=') {
        for line in text.lines() {
            let l = line.trim_start().trim_start_matches("export ").trim_start();
            let Some((key, _)) = l.split_once('=') else {
                continue;
            };
            let key = key.trim();
            if key.is_empty()
                || key.starts_with('#')
                || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            {
                continue;
            }
            if let Ok(Some(o)) = locate::env(text, key)
                && let Some(c) = ConnString::parse(&o.value)
                && names(&c, wanted)
            {
                return Some(Candidate {
                    path: path.to_path_buf(),
                    kind: "env",
                    key: Some(key.to_string()),
                    reason: format!("{key} names {}", c.address()),
                });
            }
        }
    }
    // Anything else: a URL, keyword string or .pgpass line naming it.
    locate::text(text).into_iter().find_map(|o| {
        let c = ConnString::parse(&o.value)?;
        names(&c, wanted).then(|| Candidate {
            path: path.to_path_buf(),
            kind: "text",
            key: None,
            reason: format!("line {} names {}", o.line, c.address()),
        })
    })
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
