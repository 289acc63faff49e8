//! The plan's checks, one function each, in the order `planner::build`
//! runs them: what both servers hold, whether they are ready for the mode,
//! which client tools fit, what the operator's users may do, which roles
//! the target lacks. Each reads only; a refusal names the problem and its
//! fix and leaves nothing changed. The privilege facts come from
//! `pg::security` ([`Attributes`]), read once per server.

use cutover_core::loaded::LoadedPlan;
use cutover_core::plan_file::DecommissionDriver;
use cutover_core::{Error, Result};
use cutover_ops::consumer::{self, Servers};
use cutover_pg::Databases;
use cutover_pg::inventory::{Comparison, Inventory, compare};
use cutover_pg::roles::CreateRoles;
use cutover_pg::security::{Attributes, RoleMap};

use super::lacking_roles_refusal;

const PRIVILEGES: &str =
    "its user must be able to read every table (an owner of the database or a superuser)";

/// Both servers inspected at once (counting rows is most of the planning
/// time); the source not at all when this plan's run retired it (None).
pub async fn inspect(
    loaded: &LoadedPlan,
    dbs: &Databases,
    retired: bool,
) -> Result<(Option<Inventory>, Inventory)> {
    let schema = &loaded.file.options.journal_schema;
    let read_target = async {
        Inventory::read(&dbs.target_pool, schema, true)
            .await
            .map_err(|e| e.context(format!("inspecting the target {} ({PRIVILEGES})", dbs.target)))
    };
    let read_source = async {
        if retired {
            return Ok(None);
        }
        // Large tables keep the statistics' estimate for now: counting them
        // only matters where the target has them too (compare_sides).
        Inventory::read_estimating(&dbs.source_pool, schema)
            .await
            .map(Some)
            .map_err(|e| e.context(format!("inspecting the source {} ({PRIVILEGES})", dbs.source)))
    };
    let (target, source) = tokio::try_join!(read_target, read_source)?;
    Ok((source, target))
}

/// The online mode: both servers ready for logical replication (else a
/// refusal listing every problem), and the notes and stream warnings.
pub async fn online_readiness(loaded: &LoadedPlan, dbs: &Databases) -> Result<Vec<String>> {
    let r = cutover_pg::online::readiness::check(
        &dbs.source_pool,
        &dbs.target_pool,
        &loaded.file.options.journal_schema,
        &loaded.file.options.online.replica_identity_full,
    )
    .await?;
    if !r.problems.is_empty() {
        return Err(online_refused(&r));
    }
    let mut notes = r.notes;
    notes.extend(cutover_pg::online::subscription::health(&dbs.source_pool, &dbs.target_pool).await?);
    Ok(notes)
}

fn online_refused(r: &cutover_pg::online::readiness::Readiness) -> Error {
    Error::refused(format!(
        "options.mode = \"online\": the servers are not ready for logical replication; nothing was changed. \
         Fix these, then run again:\n  - {}",
        r.lines().join("\n  - ")
    ))
    .with_hint("or remove options.mode (\"offline\": the source read-only during the copy)")
}

/// The source's tables counted exactly where the target has them too, and
/// the two compared; a retired source is described without inspection.
pub async fn compare_sides(
    source: Option<Inventory>,
    target: &Inventory,
    dbs: &Databases,
    warnings: &mut Vec<String>,
) -> Result<(Inventory, Comparison)> {
    let Some(mut source) = source else {
        warnings.push(
            "the source was retired by this plan's run (decommission-source): stages before it are described \
             without inspecting it; `cutover rollback` brings it back"
                .into(),
        );
        return Ok((
            Inventory::empty(dbs.source_identity.clone()),
            Comparison::default(),
        ));
    };
    // Exact where the two are compared (row differences, the direction
    // check); a table only the source has is copied and counted by the
    // copy, and verified by verify-data, so its estimate is only shown.
    source
        .count_exactly(&dbs.source_pool, |t| target.table(&t.schema, &t.name).is_some())
        .await
        .map_err(|e| e.context(format!("counting rows on the source {}", dbs.source)))?;
    let comparison = compare(&source, target, &dbs.source_pool, &dbs.target_pool).await?;
    Ok((source, comparison))
}

/// The client tools must fit both servers before anything changes; a role
/// map needs the psql beside pg_restore. Ok: what the plan should say.
pub async fn client_tools(
    loaded: &LoadedPlan,
    source: &Inventory,
    target: &Inventory,
) -> Result<Vec<String>> {
    let tools =
        cutover_pg::tools::Toolset::choose(source.identity.version_num, target.identity.version_num).await?;
    if !loaded.file.roles.map.is_empty() && tools.pg_restore.sibling("psql").is_none() {
        return Err(Error::failure(format!(
            "[roles] map restores the schema through psql, and there is none beside {}; nothing was changed",
            tools.pg_restore.path.display()
        ))
        .with_hint("install psql of the same PostgreSQL version"));
    }
    Ok(if tools.source_major != tools.target_major {
        vec![format!(
            "the source runs PostgreSQL {}, the target {}: {}",
            tools.source_major,
            tools.target_major,
            tools.describe()
        )]
    } else {
        vec![]
    })
}

/// The offline freeze: sessions on the source that cutover's user could not
/// end (said now; the freeze refuses them before changing anything).
pub async fn unendable_sessions(dbs: &Databases) -> Result<Vec<String>> {
    let sessions = cutover_pg::freeze::sessions(&dbs.source_pool).await?;
    Ok(cutover_pg::freeze::unendable(&sessions, &dbs.source.user)
        .map(|e| format!("{}; {}", e.message, e.hint.unwrap_or_default()))
        .into_iter()
        .collect())
}

/// What the plan does differently when cutover's users are not superusers
/// (a managed service's operator role).
pub async fn operator_notes(dbs: &Databases) -> Result<Vec<String>> {
    let target = Attributes::of_current_user(&dbs.target_pool).await?;
    let mut notes = vec![];
    if !target.superuser {
        notes.push(format!(
            "the target user {} is not a superuser: the copy loads with the target's triggers as they are \
             (session_replication_role needs a superuser; triggers, keys and indexes are created after the data \
             anyway)",
            dbs.target.user
        ));
    }
    if !target.createdb && !target.superuser {
        notes.push(format!(
            "the target user {} may not create databases: backup-target proves the backup by reading its data \
             back and counting each table's rows, not by a restore into a scratch database",
            dbs.target.user
        ));
    }
    if let Ok(source) = Attributes::of_current_user(&dbs.source_pool).await
        && !source.superuser
    {
        notes.push(format!(
            "the source user {} is not a superuser: freeze-source ends the sessions of roles whose privileges it \
             has (all but superusers' with pg_signal_backend) and refuses, before changing anything, when others \
             are connected",
            dbs.source.user
        ));
    }
    Ok(notes)
}

/// What the roles preflight found: the create-roles stage when the plan
/// creates missing roles, the owners-and-privileges line, and the roles
/// the target lacks that no stage creates (refused with the rehearsal).
#[derive(Default)]
pub struct Roles {
    pub create_roles: Option<CreateRoles>,
    pub security_note: Option<String>,
    pub lacking: Vec<String>,
}

/// Roles are cluster objects: every one the source's objects name (and
/// every login a consumer will use on the target) must exist on the target,
/// be created by the plan, or be named in the rehearsal's refusal; and
/// cutover's target user must be able to give objects to their owners.
pub async fn roles(
    loaded: &LoadedPlan,
    dbs: &Databases,
    readings: &[consumer::Reading],
    servers: &Servers,
) -> Result<Roles> {
    let schema = &loaded.file.options.journal_schema;
    let sec = cutover_pg::security::Security::read(&dbs.source_pool, schema)
        .await
        .map_err(|e| {
            e.context(format!(
                "reading owners and privileges on the source {}",
                dbs.source
            ))
        })?;
    let on_target = cutover_pg::security::roles_of(&dbs.target_pool).await?;
    // The roles the consumers will log in as on the target count too
    // (one that only PUBLIC's privileges serve names no object).
    let on_source = cutover_pg::security::roles_of(&dbs.source_pool).await?;
    let map = RoleMap(loaded.file.roles.map.clone());
    let mut sec = sec.mapped(&map);
    for (from, to) in &map.0 {
        if !on_target.contains(to) {
            return Err(Error::refused(format!(
                "[roles] map sends {from} to {to}, which the target server lacks; nothing was changed"
            ))
            .with_hint(format!("create {to} on the target, or fix the map")));
        }
    }
    for r in readings {
        let Ok(dest) = consumer::destination(&r.spec, servers) else {
            continue;
        };
        if on_target.contains(&dest.user) {
            // The application's login must be able to log in there.
            if cutover_pg::security::can_login(&dbs.target_pool, &dest.user).await? == Some(false) {
                return Err(Error::refused(format!(
                    "consumer {} will log in as {} on the target, and that role may not log in there (NOLOGIN); \
                     nothing was changed",
                    r.spec.name, dest.user
                ))
                .with_hint(format!(
                    "ALTER ROLE {} LOGIN on the target, or give the consumer another login",
                    dest.user
                )));
            }
        } else if on_source.contains(&dest.user) {
            sec.roles.insert(dest.user);
        }
    }
    let missing: Vec<String> = sec
        .roles
        .iter()
        .filter(|r| !on_target.contains(*r))
        .cloned()
        .collect();
    let mut lacking = vec![];
    if !missing.is_empty() && !loaded.file.roles.create_missing {
        // With the rehearsal on, it names them beside every object the
        // target cannot recreate, in one refusal (plan's, discover's).
        if !loaded.file.options.rehearse_schema {
            return Err(lacking_roles_refusal(&missing));
        }
        lacking = missing.clone();
    } else if !missing.is_empty() {
        create_roles_rights(loaded, dbs).await?;
    }
    // Always there with create_missing: after the run has created them,
    // its undo (rollback) still finds the stage.
    let create_roles = if loaded.file.roles.create_missing {
        Some(CreateRoles::new(&dbs.source_pool, &missing, loaded.file.roles.copy_passwords).await?)
    } else {
        None
    };
    let not_member = cutover_pg::security::owners_not_settable(&dbs.target_pool, &sec, &missing).await?;
    if !not_member.is_empty() {
        return Err(Error::refused(format!(
            "the target user {} may not give objects to the role(s) that own them on the source ({}): the copy \
             keeps owners; nothing was changed",
            dbs.target.user,
            not_member.join(", ")
        ))
        .with_hint(format!("GRANT {} TO {}", not_member.join(", "), dbs.target.user)));
    }
    Ok(Roles {
        create_roles,
        security_note: Some(sec.summary()),
        lacking,
    })
}

/// What create-roles needs, checked before anything changes: CREATEROLE on
/// the target, and a superuser on the source to read password hashes.
async fn create_roles_rights(loaded: &LoadedPlan, dbs: &Databases) -> Result<()> {
    let target = Attributes::of_current_user(&dbs.target_pool).await?;
    if !target.superuser && !target.createrole {
        return Err(Error::refused(format!(
            "[roles] create_missing: the target user {} may not create roles; nothing was changed",
            dbs.target.user
        ))
        .with_hint(format!(
            "ALTER ROLE {} CREATEROLE, or create the roles yourself",
            dbs.target.user
        )));
    }
    if loaded.file.roles.copy_passwords && !Attributes::of_current_user(&dbs.source_pool).await?.superuser {
        return Err(Error::refused(format!(
            "[roles] copy_passwords: reading password hashes needs a superuser on the source, and {} is not one; \
             nothing was changed",
            dbs.source.user
        ))
        .with_hint("set copy_passwords = false and set the passwords on the target yourself"));
    }
    Ok(())
}

/// `[decommission] driver = "postgres"` quarantines the source by renaming
/// its database: CREATEDB (or a superuser), refused here rather than
/// half-way after connections were disallowed.
pub async fn decommission_rights(loaded: &LoadedPlan, dbs: &Databases) -> Result<()> {
    let Some(d) = &loaded.file.decommission else {
        return Ok(());
    };
    if d.driver != DecommissionDriver::Postgres {
        return Ok(());
    }
    let source = Attributes::of_current_user(&dbs.source_pool).await?;
    if !source.superuser && !source.createdb {
        return Err(Error::refused(format!(
            "[decommission] driver = \"postgres\" quarantines the source by renaming its database, and the \
             source user {} may not (renaming a database needs CREATEDB); nothing was changed",
            dbs.source.user
        ))
        .with_hint(format!(
            "ALTER ROLE {} CREATEDB (as a superuser or a role with CREATEROLE), or use driver = \"command\" \
             with your provider's tooling, or driver = \"none\"",
            dbs.source.user
        )));
    }
    Ok(())
}
