//! `cutover inspect`: both databases side by side, how they differ, and what
//! clearing the target would destroy. Read-only.

use clap::Args;
use cutover_core::loaded::LoadedPlan;
use cutover_pg::Databases;
use cutover_pg::inventory::{Inventory, compare};

use crate::args::{GlobalArgs, Output};
use crate::exit::Code;

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// Use the planner's row estimates instead of exact counts.
    #[arg(long)]
    pub fast: bool,
}

pub(crate) fn run(global: &GlobalArgs, args: InspectArgs) -> anyhow::Result<Code> {
    let loaded = LoadedPlan::load(&global.plan)?;
    super::runtime()?.block_on(async {
        let dbs = Databases::connect(&loaded, 4).await?;
        let schema = &loaded.file.options.journal_schema;
        let exact = !args.fast;
        let (source, target) = tokio::try_join!(
            Inventory::read(&dbs.source_pool, schema, exact),
            Inventory::read(&dbs.target_pool, schema, exact)
        )?;
        let cmp = compare(&source, &target, &dbs.source_pool, &dbs.target_pool).await?;
        if global.output == Output::Json {
            println!(
                "{}",
                serde_json::json!({ "source": source, "target": target, "comparison": cmp })
            );
            return Ok(Code::Success);
        }
        for (label, ep, inv) in [("source", &dbs.source, &source), ("target", &dbs.target, &target)] {
            println!(
                "{label}: {ep} — PostgreSQL {}, system id {}, {}, {} tables, {} rows{}, {} sequences, \
                 {} large objects, extensions [{}]",
                inv.identity.version,
                inv.identity.system_identifier,
                cutover_core::units::bytes(inv.database_bytes),
                inv.tables.len(),
                inv.total_rows(),
                if exact { "" } else { " (estimated)" },
                inv.sequences.len(),
                inv.large_objects,
                inv.extensions
                    .iter()
                    .map(|(n, v)| format!("{n} {v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        println!();
        println!("{:<40} {:>12} {:>12}", "table", "source rows", "target rows");
        let mut names: Vec<(String, String)> = source
            .tables
            .iter()
            .chain(&target.tables)
            .map(|t| (t.schema.clone(), t.name.clone()))
            .collect();
        names.sort();
        names.dedup();
        for (schema, name) in &names {
            let s = source.table(schema, name);
            let t = target.table(schema, name);
            let display = s.or(t).map(|x| x.display()).unwrap_or_default();
            let fmt = |x: Option<&cutover_pg::inventory::TableInfo>| match x {
                Some(x) if x.has_storage() => x.rows.to_string(),
                Some(_) => "partitioned".into(),
                None => "—".into(),
            };
            println!("{display:<40} {:>12} {:>12}", fmt(s), fmt(t));
        }
        println!();
        if !cmp.only_source.is_empty() {
            println!(
                "only on the source ({}): {}",
                cmp.only_source.len(),
                cmp.only_source.join(", ")
            );
        }
        if !cmp.only_target.is_empty() {
            println!(
                "only on the target ({}): {}",
                cmp.only_target.len(),
                cmp.only_target.join(", ")
            );
        }
        for c in &cmp.column_differences {
            println!("columns differ: {c}");
        }
        if cmp.destroyed.is_empty() {
            println!("clearing the target destroys nothing the source lacks.");
        } else {
            println!("clearing the target destroys:");
            for d in &cmp.destroyed {
                println!("  - {d}");
            }
        }
        if cmp.target_ahead.is_empty() {
            println!("direction: the source is ahead of the target (as a cutover expects).");
        } else {
            println!(
                "DIRECTION WARNING: the target looks like the live database: {}. `run` refuses to clear it \
                 without --allow-target-ahead.",
                cmp.target_ahead.join("; ")
            );
        }
        Ok(Code::Success)
    })
}
