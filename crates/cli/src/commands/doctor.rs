//! `cutover doctor`: which database each consumer really uses. Reads every
//! consumer's connection with the same readers the repoint stages use,
//! connects with it where it can, and groups consumers by the database they
//! reach. Two or more groups is the seed's split brain (exit 3).

use std::collections::BTreeMap;

use clap::Args;
use cutover_core::loaded::LoadedPlan;
use cutover_core::redact::redact_text;
use cutover_ops::consumer::{self, Which};
use cutover_pg::inventory::Inventory;

use crate::args::{GlobalArgs, Output};
use crate::exit::{Code, coded};

#[derive(Debug, Args)]
pub struct DoctorArgs {}

pub(crate) fn run(global: &GlobalArgs, _args: DoctorArgs) -> anyhow::Result<Code> {
    let loaded = LoadedPlan::load(&global.plan)?;
    if loaded.file.consumers.is_empty() {
        return Err(coded(
            cutover_core::ErrorKind::BadInput,
            format!(
                "{} has no [[consumer]] entries: list the applications that connect to the databases (see \
                 docs/consumers.md)",
                loaded.path.display()
            ),
        ));
    }
    super::runtime()?.block_on(async {
        let (dbs, _) = cutover_pg::Databases::connect_or_retired(&loaded, 2).await?;
        let servers = cutover_ops::consumer::servers(&loaded, &dbs)?;
        let schema = &loaded.file.options.journal_schema;
        let base = consumer::base_dir(&loaded.path);
        // database label -> consumers
        let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut rows = vec![];
        let mut problems = vec![];
        for spec in &loaded.file.consumers {
            match consumer::read(spec, &base, &servers).await {
                Ok(reading) => {
                    for f in &reading.found {
                        let label = match (f.located.which, &f.located.reached) {
                            (Which::Source, _) => "source".to_string(),
                            (Which::Target, _) => "target".to_string(),
                            (Which::Other, Some(id)) => format!("other database {}", id.place()),
                            (Which::Other, None) => format!("other database {}", f.conn.address()),
                        };
                        let names = groups.entry(label.clone()).or_default();
                        if !names.contains(&spec.name) {
                            names.push(spec.name.clone());
                        }
                        rows.push(serde_json::json!({
                            "consumer": spec.name,
                            "line": f.line(),
                            "connection": f.shown(),
                            "points_at": f.located.which,
                            "how": redact_text(&f.located.how),
                        }));
                    }
                }
                Err(e) => problems.push(e.message),
            }
        }
        let mut counts = BTreeMap::new();
        for (label, pool) in [("source", &dbs.source_pool), ("target", &dbs.target_pool)] {
            if groups.contains_key(label)
                && let Ok(inv) = Inventory::read(pool, schema, true).await
            {
                counts.insert(label, format!("{} tables, {} rows", inv.tables.len(), inv.total_rows()));
            }
        }
        let describe = |label: &str| match label {
            "source" => format!("source {} ({})", dbs.source, counts.get("source").cloned().unwrap_or_default()),
            "target" => format!("target {} ({})", dbs.target, counts.get("target").cloned().unwrap_or_default()),
            other => other.to_string(),
        };
        let split = groups.len() > 1;
        if global.output == Output::Json {
            let g: Vec<_> = groups
                .iter()
                .map(|(label, names)| serde_json::json!({ "database": describe(label), "consumers": names }))
                .collect();
            println!(
                "{}",
                serde_json::json!({ "consumers": rows, "groups": g, "split_brain": split, "problems": problems })
            );
        } else {
            println!("{:<24} {:<44} {:<10} how", "consumer", "connection", "points at");
            for r in &rows {
                println!(
                    "{:<24} {:<44} {:<10} {}",
                    r["consumer"].as_str().unwrap_or_default(),
                    r["connection"].as_str().unwrap_or_default(),
                    r["points_at"].as_str().unwrap_or_default(),
                    r["how"].as_str().unwrap_or_default()
                );
            }
            println!();
            for (label, names) in &groups {
                println!("{} → {}", names.join(", "), describe(label));
            }
            for p in &problems {
                println!("problem: {p}");
            }
            println!();
            if split {
                println!(
                    "split brain: the consumers use {} different databases. `cutover plan` shows how to \
                     consolidate them into the target",
                    groups.len()
                );
            } else if problems.is_empty() {
                println!("healthy: every consumer uses the same database");
            }
        }
        Ok::<_, anyhow::Error>(if !problems.is_empty() {
            Code::BadInput
        } else if split {
            Code::Differences
        } else {
            Code::Success
        })
    })
}
