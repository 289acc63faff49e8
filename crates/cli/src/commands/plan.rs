//! `cutover plan`: the dry run. Builds the same plan object `run` executes,
//! from live read-only inspection, and prints it. It changes nothing in
//! either database (the rehearsal's scratch database is dropped again); the
//! only file it writes is the record of a rehearsal that passed, in the run
//! directory, which lets discover skip restoring the same schema again.

use clap::Args;
use cutover_core::loaded::LoadedPlan;

use crate::args::{GlobalArgs, Output};
use crate::exit::Code;
use crate::{planner, render};

#[derive(Debug, Args)]
pub struct PlanArgs {
    /// Plan as if the target were allowed to hold data the source lacks.
    #[arg(long)]
    pub allow_target_ahead: bool,
    /// Plan as `run --destroy` would (with `destroy = true` in the plan: destroy the source).
    #[arg(long)]
    pub destroy: bool,
    /// Skip the schema rehearsal (the run's discover still does it).
    #[arg(long)]
    pub no_rehearse: bool,
}

pub(crate) fn run(global: &GlobalArgs, args: PlanArgs) -> anyhow::Result<Code> {
    let loaded = LoadedPlan::load(&global.plan)?;
    let rt = super::runtime()?;
    let planned = rt.block_on(planner::build(
        &loaded,
        planner::Switches {
            allow_target_ahead: args.allow_target_ahead,
            destroy: args.destroy,
            force: false,
        },
    ))?;
    // The dry run finds what the run would stop at: the schema rehearsed on
    // the target server now, in a scratch database of its own.
    let rehearsal = if args.no_rehearse || !loaded.file.options.rehearse_schema || planned.retired {
        None
    } else {
        let t0 = std::time::Instant::now();
        Some(rt.block_on(rehearse(&loaded, &planned))?).map(|said| {
            format!(
                "{said} ({:.1} s; `cutover plan --no-rehearse` skips it)",
                t0.elapsed().as_secs_f64()
            )
        })
    };
    // Roles the target lacks: the rehearsal named them; without it, alone.
    if rehearsal.is_none() && !planned.lacking_roles.is_empty() {
        return Err(planner::lacking_roles_refusal(&planned.lacking_roles).into());
    }
    match global.output {
        Output::Json => println!("{}", render::plan_json(&planned.plan)),
        Output::Text => {
            println!(
                "Plan for {} → {} ({} stages; nothing has been changed):\n",
                planned.dbs.source,
                planned.dbs.target,
                planned.plan.stages.len()
            );
            print!("{}", render::plan_text(&planned.plan));
            if let Some(r) = &rehearsal {
                println!("\nSchema rehearsal: {r}");
            }
        }
    }
    Ok(Code::Success)
}

/// The schema rehearsal for the plan: its dump in a private folder of its
/// own (the plan writes nothing in the run directory), its scratch database
/// named after this process; an error lists every object that fails.
async fn rehearse(loaded: &LoadedPlan, planned: &planner::Planned) -> cutover_core::Result<String> {
    let dbs = &planned.dbs;
    let dir = std::env::temp_dir().join(format!("cutover-plan-{}", std::process::id()));
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .mode(0o700)
            .recursive(true)
            .create(&dir)
            .map_err(|e| cutover_core::Error::failure(format!("cannot create {} ({e})", dir.display())))?;
    }
    let scratch = format!("cutover_rehearsal_plan_{}", std::process::id());
    let map = cutover_pg::security::RoleMap(loaded.file.roles.map.clone());
    let said = cutover_pg::rehearsal::rehearse(
        &dbs.source_pool,
        &dbs.target_pool,
        &cutover_pg::rehearsal::RehearsalSettings {
            source: &dbs.source,
            target: &dbs.target,
            role_map: &map,
            journal_schema: &loaded.file.options.journal_schema,
            versions: (dbs.source_identity.version_num, dbs.target_identity.version_num),
            lacking_roles: &planned.lacking_roles,
        },
        &cutover_pg::rehearsal::RehearsalPlace {
            scratch: &scratch,
            dir: &dir,
            record: &cutover_pg::rehearsal::record_path(&loaded.run_dir()),
            sweep: false,
            by: "plan",
        },
    )
    .await
    .map(|r| r.said);
    let _ = std::fs::remove_dir_all(&dir);
    let said = said?;
    Ok(if said.starts_with("not rehearsed") {
        format!("{said}; discover tries again when the run starts")
    } else {
        format!("{said}; discover reuses it while the source's schema and the target server stay as they are")
    })
}
