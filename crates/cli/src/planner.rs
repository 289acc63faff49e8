//! Building the plan: one function, used by `plan` (to print it) and by `run`
//! and `rollback` (to execute it). Never a second copy of this logic.

use cutover_core::plan_file::{DecommissionDriver, LoadedPlan};
use cutover_core::stage::Plan;
use cutover_core::{Error, ErrorKind, Result};
use cutover_pg::Databases;
use cutover_pg::backup::BackupTarget;
use cutover_pg::clear::ClearTarget;
use cutover_pg::copy::{Copy, default_jobs};
use cutover_pg::discover::Discover;
use cutover_pg::freeze::{FreezeSource, other_sessions};
use cutover_pg::inventory::{Inventory, compare};
use cutover_pg::verify::VerifyData;

/// A plan with the connections and the inspection it was built from.
pub struct Planned {
    pub plan: Plan,
    pub dbs: Databases,
}

/// Refuses what this version cannot do yet, before anything is touched.
fn supported(loaded: &LoadedPlan) -> Result<()> {
    if !loaded.file.consumers.is_empty() {
        return Err(Error::new(
            ErrorKind::NotImplemented,
            format!(
                "{}: [[consumer]] entries (repointing applications) are not implemented in this version; remove \
                 them to run the database stages, and repoint the applications by hand afterwards",
                loaded.path.display()
            ),
        ));
    }
    if let Some(d) = &loaded.file.decommission
        && d.driver != DecommissionDriver::None
    {
        return Err(Error::new(
            ErrorKind::NotImplemented,
            format!(
                "{}: [decommission] driver {:?} is not implemented in this version; use driver = \"none\" or remove \
                 the section (the source is then left alone)",
                loaded.path.display(),
                d.driver
            ),
        ));
    }
    Ok(())
}

/// Inspects both databases (read-only) and builds the stages in their safe order.
pub async fn build(loaded: &LoadedPlan, allow_target_ahead: bool) -> Result<Planned> {
    supported(loaded)?;
    let jobs = default_jobs(loaded.file.options.jobs);
    let dbs = Databases::connect(loaded, jobs as u32 + 3).await?;
    let schema = &loaded.file.options.journal_schema;
    let (source, target) = tokio::try_join!(
        Inventory::read(&dbs.source_pool, schema, true),
        Inventory::read(&dbs.target_pool, schema, true)
    )?;
    let comparison = compare(&source, &target, &dbs.source_pool, &dbs.target_pool).await?;
    let allow_ahead = allow_target_ahead || loaded.file.target.allow_ahead;
    let freeze = loaded.file.options.freeze_source;
    let sessions = if freeze {
        other_sessions(&dbs.source_pool).await?
    } else {
        vec![]
    };
    let mut warnings = vec![];
    if !comparison.target_ahead.is_empty() && !allow_ahead {
        warnings.push(cutover_pg::discover::target_ahead_error(&comparison.target_ahead).message);
    }
    if !freeze {
        warnings
            .push("freeze_source = false: writes to the source after the copy's snapshot are lost".into());
    }
    let run_dir = loaded.run_dir();
    let plan = Plan {
        stages: vec![
            Box::new(Discover::new(&source, &target, &comparison, allow_ahead)),
            Box::new(BackupTarget::new(&target, &run_dir)),
            Box::new(FreezeSource::new(freeze, &dbs.source.dbname, sessions)),
            Box::new(ClearTarget::new(&target, &comparison.destroyed)),
            Box::new(Copy::new(&source, &target, jobs)),
            Box::new(VerifyData::new(&source, jobs)),
        ],
        warnings,
    };
    Ok(Planned { plan, dbs })
}
