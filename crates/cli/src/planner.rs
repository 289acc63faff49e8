//! Building the plan: one function, used by `plan` (to print it) and by `run`
//! and `rollback` (to execute it). Never a second copy of this logic.
//!
//! Building it is also the preflight: every consumer is read and checked
//! (file, key, writable, commands) before any stage runs, so a problem stops
//! the run with nothing changed.

use std::time::Duration;

use cutover_core::endpoint::Endpoint;
use cutover_core::plan_file::{ConsumerConfig, DecommissionDriver, LoadedPlan, Mode};
use cutover_core::stage::{Plan, Stage};
use cutover_core::{Error, Result};
use cutover_ops::consumer::{self, Servers, Which, preflight, servers};
use cutover_ops::decommission::{Decommission, Source, connect};
use cutover_ops::repoint::Repoint;
use cutover_ops::switch::{Applications, Bouncer, EndReplication, Online, Resume, Switch};
use cutover_ops::sync::VerifySync;
use cutover_pg::Databases;
use cutover_pg::backup::BackupTarget;
use cutover_pg::clear::ClearTarget;
use cutover_pg::copy::{Copy, CopySettings, default_jobs};
use cutover_pg::discover::{Discover, DiscoverSettings};
use cutover_pg::freeze::{FenceSettings, FreezeSource, other_sessions};
use cutover_pg::inventory::{Comparison, Inventory, compare};
use cutover_pg::replicate::Replicate;
use cutover_pg::roles::CreateRoles;
use cutover_pg::security::RoleMap;
use cutover_pg::verify::VerifyData;

/// Switches from the command line that change the plan.
#[derive(Debug, Clone, Copy, Default)]
pub struct Switches {
    pub allow_target_ahead: bool,
    /// `--destroy`: with `destroy = true` in the plan, destroy the source.
    pub destroy: bool,
    /// `--force`: decommission even while clients are connected to the source.
    pub force: bool,
}

/// A plan with the connections and the inspection it was built from.
pub struct Planned {
    pub plan: Plan,
    pub dbs: Databases,
    /// The source was retired by this plan's run (decommission-source).
    pub retired: bool,
    /// Roles the source's objects name that the target lacks and no stage
    /// creates: refused by the rehearsal (with every object that fails), or
    /// by [`lacking_roles_refusal`] where none runs.
    pub lacking_roles: Vec<String>,
}

/// The refusal for roles the target server lacks and `[roles]
/// create_missing` does not create.
pub fn lacking_roles_refusal(missing: &[String]) -> Error {
    Error::refused(format!(
        "the target server lacks {} role(s) that the source's owners, privileges, policies or settings \
         name: {}; the copy would fail (or the applications lose what they may do); nothing was changed",
        missing.len(),
        missing.join(", ")
    ))
    .with_hint(
        "create them on the target (CREATE ROLE …), or let cutover create them from the source's \
         attributes, without passwords: [roles] create_missing = true",
    )
}

/// Inspects both databases and every consumer (read-only) and builds the stages in their safe order.
pub async fn build(loaded: &LoadedPlan, switches: Switches) -> Result<Planned> {
    let jobs = default_jobs(loaded.file.options.jobs);
    // Copy: a connection per job on each side, the snapshot and the journal;
    // verify-data: up to two per job (key ranges of large tables).
    let (dbs, state) = connect(loaded, jobs as u32 * 2 + 3).await?;
    let retired = state != Source::Live;
    let schema = &loaded.file.options.journal_schema;
    let privileges = "its user must be able to read every table (an owner of the database or a superuser)";
    // Both servers inspected at once (counting rows is most of the planning time).
    let read_target = async {
        Inventory::read(&dbs.target_pool, schema, true)
            .await
            .map_err(|e| e.context(format!("inspecting the target {} ({privileges})", dbs.target)))
    };
    let read_source = async {
        if retired {
            return Ok(None);
        }
        // Large tables keep the statistics' estimate for now: counting them
        // only matters where the target has them too (below).
        Inventory::read_estimating(&dbs.source_pool, schema)
            .await
            .map(Some)
            .map_err(|e| e.context(format!("inspecting the source {} ({privileges})", dbs.source)))
    };
    let (target, source) = tokio::try_join!(read_target, read_source)?;
    let online = loaded.file.options.mode == Mode::Online;
    let mut warnings = vec![];
    if online && !retired {
        let r = cutover_pg::online::readiness(
            &dbs.source_pool,
            &dbs.target_pool,
            schema,
            &loaded.file.options.online.replica_identity_full,
        )
        .await?;
        if !r.problems.is_empty() {
            return Err(online_refused(&r));
        }
        warnings.extend(r.notes);
        warnings.extend(cutover_pg::replication::health(&dbs.source_pool, &dbs.target_pool).await?);
    }
    let (source, comparison) = if let Some(mut source) = source {
        // Exact where the two are compared (row differences, the direction
        // check); a table only the source has is copied and counted by the
        // copy, and verified by verify-data, so its estimate is only shown.
        source
            .count_exactly(&dbs.source_pool, |t| target.table(&t.schema, &t.name).is_some())
            .await
            .map_err(|e| e.context(format!("counting rows on the source {}", dbs.source)))?;
        let comparison = compare(&source, &target, &dbs.source_pool, &dbs.target_pool).await?;
        (source, comparison)
    } else {
        warnings.push(
            "the source was retired by this plan's run (decommission-source): stages before it are described \
             without inspecting it; `cutover rollback` brings it back"
                .into(),
        );
        (
            Inventory::empty(dbs.source_identity.clone()),
            Comparison::default(),
        )
    };
    if !retired {
        // The client tools must fit both servers before anything changes.
        let tools =
            cutover_pg::tools::Toolset::choose(source.identity.version_num, target.identity.version_num)
                .await?;
        // A role map restores the schema through the psql beside pg_restore.
        if !loaded.file.roles.map.is_empty() && tools.pg_restore.sibling("psql").is_none() {
            return Err(Error::failure(format!(
                "[roles] map restores the schema through psql, and there is none beside {}; nothing was changed",
                tools.pg_restore.path.display()
            ))
            .with_hint("install psql of the same PostgreSQL version"));
        }
        if tools.source_major != tools.target_major {
            warnings.push(format!(
                "the source runs PostgreSQL {}, the target {}: {}",
                tools.source_major,
                tools.target_major,
                tools.describe()
            ));
        }
    }
    let allow_ahead = switches.allow_target_ahead || loaded.file.target.allow_ahead;
    let freeze = loaded.file.options.freeze_source;
    let sessions = if retired {
        vec![]
    } else {
        other_sessions(&dbs.source_pool).await?
    };
    if freeze && !retired && !online {
        let operator = &dbs.source.user;
        if let Some(e) =
            cutover_pg::freeze::unendable(&cutover_pg::freeze::sessions(&dbs.source_pool).await?, operator)
        {
            warnings.push(format!("{}; {}", e.message, e.hint.unwrap_or_default()));
        }
    }
    warnings.extend(operator_notes(&dbs).await?);
    if !comparison.target_ahead.is_empty() && !allow_ahead {
        warnings.push(cutover_pg::discover::target_ahead_error(&comparison.target_ahead).message);
    }
    if !freeze && !online {
        warnings
            .push("freeze_source = false: writes to the source after the copy's snapshot are lost".into());
    }
    let servers = servers(loaded, &dbs)?;
    let base = consumer::base_dir(&loaded.path);
    let readings = preflight(loaded, &servers).await?;
    let fence = fence_settings(loaded, &readings, &dbs, retired).await?;
    let applications = if online {
        Some(applications(
            loaded,
            &readings,
            [&dbs.source.user, &dbs.target.user],
            fence.clone(),
        )?)
    } else {
        None
    };
    // Roles are cluster objects: every one the source's objects name must
    // exist on the target (or be created) before anything changes.
    let mut create_roles = None;
    let mut security_note = None;
    let mut lacking_roles = vec![];
    if !retired {
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
        let map = cutover_pg::security::RoleMap(loaded.file.roles.map.clone());
        let mut sec = sec.mapped(&map);
        for (from, to) in &map.0 {
            if !on_target.contains(to) {
                return Err(Error::refused(format!(
                    "[roles] map sends {from} to {to}, which the target server lacks; nothing was changed"
                ))
                .with_hint(format!("create {to} on the target, or fix the map")));
            }
        }
        for r in &readings {
            let Ok(dest) = consumer::destination(&r.spec, &servers) else {
                continue;
            };
            if on_target.contains(&dest.user) {
                // Preflight: the application's login must be able to log in there.
                let login: bool = sqlx::query_scalar("SELECT rolcanlogin FROM pg_roles WHERE rolname = $1")
                    .bind(&dest.user)
                    .fetch_one(&dbs.target_pool)
                    .await?;
                if !login {
                    return Err(Error::refused(format!(
                        "consumer {} will log in as {} on the target, and that role may not log in there (NOLOGIN); \
                         nothing was changed",
                        r.spec.name, dest.user
                    ))
                    .with_hint(format!("ALTER ROLE {} LOGIN on the target, or give the consumer another login", dest.user)));
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
        if !missing.is_empty() && !loaded.file.roles.create_missing {
            // With the rehearsal on, it names them beside every object the
            // target cannot recreate, in one refusal (plan's, discover's).
            if !loaded.file.options.rehearse_schema {
                return Err(lacking_roles_refusal(&missing));
            }
            lacking_roles = missing.clone();
        } else if !missing.is_empty() {
            // What create-roles needs, checked before anything changes.
            let (t_super, t_createrole): (bool, bool) =
                sqlx::query_as("SELECT rolsuper, rolcreaterole FROM pg_roles WHERE rolname = current_user")
                    .fetch_one(&dbs.target_pool)
                    .await?;
            if !t_super && !t_createrole {
                return Err(Error::refused(format!(
                    "[roles] create_missing: the target user {} may not create roles; nothing was changed",
                    dbs.target.user
                ))
                .with_hint(format!(
                    "ALTER ROLE {} CREATEROLE, or create the roles yourself",
                    dbs.target.user
                )));
            }
            if loaded.file.roles.copy_passwords {
                let s_super: bool =
                    sqlx::query_scalar("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
                        .fetch_one(&dbs.source_pool)
                        .await?;
                if !s_super {
                    return Err(Error::refused(format!(
                        "[roles] copy_passwords: reading password hashes needs a superuser on the source, and {} is \
                         not one; nothing was changed",
                        dbs.source.user
                    ))
                    .with_hint("set copy_passwords = false and set the passwords on the target yourself"));
                }
            }
        }
        // Always there with create_missing: after the run has created
        // them, its undo (rollback) still finds the stage.
        if loaded.file.roles.create_missing {
            create_roles = Some(
                cutover_pg::roles::CreateRoles::new(
                    &dbs.source_pool,
                    &missing,
                    loaded.file.roles.copy_passwords,
                )
                .await?,
            );
        }
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
        security_note = Some(sec.summary());
    }

    let mut repoints = vec![];
    for reading in &readings {
        let dest = consumer::destination(&reading.spec, &servers)?;
        let repoint = Repoint::new(reading.clone(), dest, base.clone(), servers.clone())?;
        repoints.push(if online { repoint.online() } else { repoint });
    }
    if let Some(d) = &loaded.file.decommission
        && d.driver == DecommissionDriver::Postgres
        && !retired
        && !repoints.is_empty()
    {
        // Quarantine renames the database: CREATEDB (or a superuser).
        // Refused here, not half-way after connections were disallowed.
        let (sup, createdb): (bool, bool) =
            sqlx::query_as("SELECT rolsuper, rolcreatedb FROM pg_roles WHERE rolname = current_user")
                .fetch_one(&dbs.source_pool)
                .await?;
        if !sup && !createdb {
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
    }
    let stages = assemble(Parts {
        loaded,
        source: &source,
        target: &target,
        comparison: &comparison,
        source_endpoint: dbs.source.clone(),
        target_endpoint: dbs.target.clone(),
        allow_ahead,
        jobs,
        sessions,
        create_roles,
        security_note,
        repoints,
        servers,
        // What was done decides what undo can do, whatever the flags now.
        destroy: switches.destroy || state == Source::Destroyed,
        force: switches.force,
        applications,
        fence,
        lacking_roles: lacking_roles.clone(),
    })?;
    for s in &stages {
        let name = s.name();
        if name.starts_with("repoint:") || name == cutover_ops::decommission::NAME {
            warnings.extend(s.describe().warnings.iter().cloned());
        }
    }
    Ok(Planned {
        plan: Plan { stages, warnings },
        dbs,
        retired,
        lacking_roles,
    })
}

/// What the stages are made of once the databases are inspected and the
/// consumers read: the stage objects get their settings from here, resolved
/// once, and never read the plan file again.
pub struct Parts<'a> {
    pub loaded: &'a LoadedPlan,
    pub source: &'a Inventory,
    pub target: &'a Inventory,
    pub comparison: &'a Comparison,
    pub source_endpoint: Endpoint,
    pub target_endpoint: Endpoint,
    pub allow_ahead: bool,
    /// Tables copied (and verified) at once.
    pub jobs: usize,
    /// Other sessions on the source (freeze and decommission name them).
    pub sessions: Vec<String>,
    pub create_roles: Option<CreateRoles>,
    /// Owners and privileges the copy keeps, for its description.
    pub security_note: Option<String>,
    /// One per consumer, in the plan file's order.
    pub repoints: Vec<Repoint>,
    pub servers: Servers,
    /// Destroy the source (`--destroy` with `destroy = true`, or already destroyed).
    pub destroy: bool,
    /// `--force`: decommission while clients remain.
    pub force: bool,
    /// The online mode: how the switch pauses the applications.
    pub applications: Option<Applications>,
    /// Who the fence keeps off the source (the freeze's, the switch's).
    pub fence: FenceSettings,
    /// Roles the target lacks and no stage creates (discover refuses them).
    pub lacking_roles: Vec<String>,
}

/// The stages in their safe order: discover, the proven backup, the roles
/// (before anything destructive), freeze, clear, copy, verify-data, each
/// repoint, verify-sync, decommission.
pub fn assemble(p: Parts<'_>) -> Result<Vec<Box<dyn Stage>>> {
    let loaded = p.loaded;
    let options = &loaded.file.options;
    let role_map = RoleMap(loaded.file.roles.map.clone());
    let base = consumer::base_dir(&loaded.path);
    let mut discover = Discover::new(
        p.source,
        p.target,
        p.comparison,
        p.allow_ahead,
        DiscoverSettings {
            source: p.source_endpoint.clone(),
            target: p.target_endpoint.clone(),
            rehearse_schema: options.rehearse_schema,
            role_map: role_map.clone(),
            lacking_roles: p.lacking_roles.clone(),
        },
    );
    discover
        .description
        .details
        .push(journal_note(&options.journal_schema));
    let mut stages: Vec<Box<dyn Stage>> = vec![
        Box::new(discover),
        Box::new(BackupTarget::new(
            p.target,
            &loaded.run_dir(),
            p.target_endpoint.clone(),
        )),
    ];
    // Roles first: creating them changes no data, and a failure must come
    // before the source is frozen or the target cleared.
    if let Some(stage) = p.create_roles {
        stages.push(Box::new(stage));
    }
    if p.applications.is_none() {
        stages.push(Box::new(FreezeSource::new(
            options.freeze_source,
            &p.source_endpoint.dbname,
            p.sessions.clone(),
            p.fence.clone(),
        )));
    }
    stages.push(Box::new(ClearTarget::new(
        p.target,
        &p.comparison.destroyed,
        p.target_endpoint.clone(),
    )));
    let mut copy = Copy::new(
        p.source,
        p.target,
        CopySettings::new(
            options,
            p.source_endpoint.clone(),
            p.target_endpoint.clone(),
            role_map.clone(),
        ),
    );
    if let Some(note) = p.security_note {
        copy.description.details.insert(0, note);
    }
    let verify = VerifyData::new(
        p.source,
        p.jobs,
        options.split_bytes,
        options.row_hash,
        role_map.clone(),
    );
    let online = p.applications.map(|apps| Online {
        apps,
        options: options.online.clone(),
        target: p.target_endpoint.clone(),
    });
    if let Some(online) = &online {
        stages.push(Box::new(Replicate::new(
            copy,
            verify.without_sequences(),
            p.source,
            p.source_endpoint.clone(),
            options.online.clone(),
            options.connect_timeout,
            p.jobs,
        )));
        stages.push(Box::new(Switch::new(online.clone())));
    } else {
        stages.push(Box::new(copy));
        stages.push(Box::new(verify));
    }
    let consumers = !p.repoints.is_empty();
    for stage in p.repoints {
        stages.push(Box::new(stage));
    }
    if let Some(online) = &online {
        stages.push(Box::new(Resume::new(online.clone())));
    }
    if consumers {
        stages.push(Box::new(VerifySync::new(
            loaded.file.consumers.clone(),
            base.clone(),
            p.servers,
            role_map,
            online.is_some() || options.freeze_source,
        )));
    }
    if online.is_some() {
        stages.push(Box::new(EndReplication::new(
            options.online.replica_identity_full.clone(),
        )));
    }
    if let Some(d) = &loaded.file.decommission
        && d.driver != DecommissionDriver::None
    {
        if !consumers {
            return Err(Error::bad_input(format!(
                "{}: [decommission] needs the [[consumer]] entries: the source is retired only after the sync \
                 through every consumer is proven (verify-sync). List the applications that connect to the \
                 databases, or remove [decommission]",
                loaded.path.display()
            )));
        }
        let decommission = Decommission::new(
            d.clone(),
            p.source_endpoint,
            p.destroy,
            p.force,
            base,
            &p.sessions,
            Duration::from_secs(options.connect_timeout),
        );
        stages.push(Box::new(if online.is_some() {
            decommission.online()
        } else {
            decommission
        }));
    }
    Ok(stages)
}

/// `mode = "online"` while the servers are not ready for it: every
/// problem with its fix. Nothing was changed.
fn online_refused(r: &cutover_pg::online::Readiness) -> Error {
    Error::refused(format!(
        "options.mode = \"online\": the servers are not ready for logical replication; nothing was changed. \
         Fix these, then run again:\n  - {}",
        r.lines().join("\n  - ")
    ))
    .with_hint("or remove options.mode (\"offline\": the source read-only during the copy)")
}

/// How the online switch pauses each consumer: a PgBouncer entry through
/// its console, any other by fencing the role it logs in as on the source.
/// `operators`: cutover's users on the source and on the target.
fn applications(
    loaded: &LoadedPlan,
    readings: &[consumer::Reading],
    [operator, target_operator]: [&String; 2],
    fence: FenceSettings,
) -> Result<Applications> {
    if readings.is_empty() {
        return Err(Error::bad_input(format!(
            "{}: options.mode = \"online\" needs the [[consumer]] entries: the switch pauses the applications \
             and moves them to the target inside a pause of seconds, so it must know them",
            loaded.path.display()
        )));
    }
    let mut apps = Applications {
        bouncers: vec![],
        fence,
    };
    for r in readings {
        if let ConsumerConfig::Pgbouncer {
            database,
            admin,
            pause_timeout,
            ..
        } = &r.spec.config
        {
            apps.bouncers.push(Bouncer {
                consumer: r.spec.name.clone(),
                admin: admin.clone(),
                entry: database.clone(),
                pause_timeout: Duration::from_secs(*pause_timeout),
            });
            continue;
        }
        for f in &r.found {
            let Some(user) = f.conn.user() else { continue };
            if (user == *operator || user == *target_operator) && f.located.which != Which::Source {
                // Pointed at the target already with cutover's own user: not
                // fenced there (a rollback's pause ends its sessions anyway).
                continue;
            }
            if user == *operator {
                return Err(Error::bad_input(format!(
                    "consumer {} logs in as {user}, the user cutover replicates with: the online switch keeps the \
                     applications off the source by taking CONNECT from every role but cutover's own, so it would \
                     go on writing there",
                    r.spec.name
                ))
                .with_hint("give the application its own login role (or put it behind PgBouncer), or use the offline mode"));
            }
        }
    }
    Ok(apps)
}

/// The roles the consumers log in as (their connections' users).
fn consumer_roles(readings: &[consumer::Reading]) -> Vec<String> {
    let mut roles: Vec<String> = readings
        .iter()
        .flat_map(|r| r.found.iter().filter_map(|f| f.conn.user()))
        .collect();
    roles.sort();
    roles.dedup();
    roles
}

/// Who the fence will keep off the source, read now for the plan (the
/// stage reads it again when it raises the fence).
async fn fence_settings(
    loaded: &LoadedPlan,
    readings: &[consumer::Reading],
    dbs: &Databases,
    retired: bool,
) -> Result<FenceSettings> {
    let consumers = consumer_roles(readings);
    let scope = loaded.file.options.fence.clone();
    let reach = if retired {
        Default::default()
    } else {
        cutover_pg::fence::reach(&dbs.source_pool, &scope, &consumers).await?
    };
    Ok(FenceSettings {
        scope,
        consumers,
        reach,
        journal_schema: loaded.file.options.journal_schema.clone(),
    })
}

/// Where the journal lives and how it goes away (plan and the run's end).
pub fn journal_note(schema: &str) -> String {
    format!(
        "the journal (runs, stage events, items, sentinels) is kept in schema {schema} of the target database, \
         where status, report and rollback read it (and the applications' backups and schema tools see it); once \
         no rollback is needed, `cutover archive-journal --yes` moves it into the run directory and drops the \
         schema"
    )
}

/// What the plan does differently when cutover's users are not superusers
/// (a managed service's operator role).
async fn operator_notes(dbs: &Databases) -> Result<Vec<String>> {
    const SQL: &str = "SELECT rolsuper, rolcreatedb FROM pg_roles WHERE rolname = current_user";
    let (t_super, t_createdb): (bool, bool) = sqlx::query_as(SQL).fetch_one(&dbs.target_pool).await?;
    let mut notes = vec![];
    if !t_super {
        notes.push(format!(
            "the target user {} is not a superuser: the copy loads with the target's triggers as they are \
             (session_replication_role needs a superuser; triggers, keys and indexes are created after the data \
             anyway)",
            dbs.target.user
        ));
    }
    if !t_createdb && !t_super {
        notes.push(format!(
            "the target user {} may not create databases: backup-target proves the backup by reading its data \
             back and counting each table's rows, not by a restore into a scratch database",
            dbs.target.user
        ));
    }
    if let Ok((s_super, _)) = sqlx::query_as::<_, (bool, bool)>(SQL)
        .fetch_one(&dbs.source_pool)
        .await
        && !s_super
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

#[cfg(test)]
mod tests {
    use super::*;
    use cutover_core::endpoint::Role;
    use cutover_core::identity::ServerIdentity;
    use cutover_core::plan_file::{EndpointSpec, parse};
    use cutover_ops::conn::Destination;
    use cutover_ops::consumer::Side;

    const PLAN: &str = "[source]\nurl = \"postgresql://ops@src.internal:5433/app\"\n\
                        [target]\nurl = \"postgresql://ops@tgt.internal/app\"\n";

    fn identity(database: &str) -> ServerIdentity {
        ServerIdentity {
            system_identifier: "1".into(),
            started_at: "t".into(),
            database: database.into(),
            database_oid: 1,
            server_addr: String::new(),
            server_port: 5432,
            version: "15.18".into(),
            version_num: 150018,
        }
    }

    fn endpoint(role: Role, url: &str) -> Endpoint {
        Endpoint::resolve(
            role,
            &EndpointSpec {
                url: Some(url.into()),
                ..Default::default()
            },
        )
        .unwrap()
    }

    /// The stages of `plan` (the text after [source] and [target]) for two
    /// empty databases and no consumer.
    fn stages(extra: &str) -> Result<Vec<Box<dyn Stage>>> {
        stages_with(extra, None)
    }

    fn stages_with(extra: &str, applications: Option<Applications>) -> Result<Vec<Box<dyn Stage>>> {
        let loaded = LoadedPlan {
            path: "/plans/cutover.toml".into(),
            file: parse(&format!("{PLAN}{extra}")).unwrap(),
            fingerprint: String::new(),
        };
        let source = Inventory::empty(identity("app"));
        let target = Inventory::empty(identity("app"));
        let (s, t) = (
            endpoint(Role::Source, "postgresql://ops@src.internal:5433/app"),
            endpoint(Role::Target, "postgresql://ops@tgt.internal/app"),
        );
        let spec = EndpointSpec::default();
        let servers = Servers {
            source: Side::new(identity("app"), &s, &spec).unwrap(),
            target: Side::new(identity("app"), &t, &spec).unwrap(),
            target_destination: Destination {
                host: t.host.clone(),
                port: t.port,
                dbname: t.dbname.clone(),
                user: t.user.clone(),
                password: None,
            },
            probe_timeout: Duration::from_secs(1),
        };
        assemble(Parts {
            loaded: &loaded,
            source: &source,
            target: &target,
            comparison: &Comparison::default(),
            source_endpoint: s,
            target_endpoint: t,
            allow_ahead: false,
            jobs: default_jobs(loaded.file.options.jobs),
            sessions: vec!["10.0.0.9 app (app_rw)".into()],
            create_roles: None,
            security_note: Some("owners and privileges kept".into()),
            repoints: vec![],
            servers,
            destroy: false,
            force: false,
            applications,
            fence: fence(&["app_rw", "reporter"]),
            lacking_roles: vec![],
        })
    }

    fn fence(fenced: &[&str]) -> FenceSettings {
        FenceSettings {
            scope: Default::default(),
            consumers: vec![],
            reach: cutover_pg::fence::Reach {
                fenced: fenced.iter().map(|r| r.to_string()).collect(),
                kept: vec!["ops".into()],
                unstoppable: vec![("postgres".into(), "a superuser".into())],
            },
            journal_schema: "cutover".into(),
        }
    }

    fn names(stages: &[Box<dyn Stage>]) -> Vec<String> {
        stages.iter().map(|s| s.name()).collect()
    }

    #[test]
    fn the_stages_come_in_their_safe_order_with_the_destructive_ones_marked() {
        let stages = stages("").unwrap();
        assert_eq!(
            names(&stages),
            [
                "discover",
                "backup-target",
                "freeze-source",
                "clear-target",
                "copy",
                "verify-data"
            ]
        );
        let destructive: Vec<String> = stages
            .iter()
            .filter(|s| s.describe().destructive)
            .map(|s| s.name())
            .collect();
        assert_eq!(destructive, ["freeze-source", "clear-target", "copy"]);
        // The plan names who the fence keeps off the source, and who not.
        let freeze = stages[2].describe();
        assert!(
            freeze.summary.contains("only cutover's user may connect"),
            "{}",
            freeze.summary
        );
        assert_eq!(
            freeze.details[..2],
            [
                "fenced (CONNECT taken away, sessions ended): app_rw, reporter".to_string(),
                "no fence keeps these off the source for sure (name them in your checks): postgres (a superuser)"
                    .into()
            ]
        );
        // The journal's note goes to discover, the security note to the copy.
        assert!(
            stages[0]
                .describe()
                .details
                .last()
                .unwrap()
                .contains("schema cutover")
        );
        assert_eq!(stages[4].describe().details[0], "owners and privileges kept");
    }

    #[test]
    fn the_plans_options_are_resolved_into_the_stages() {
        let stages =
            stages("[options]\njobs = 3\nfreeze_source = false\njournal_schema = \"cutover_log\"\n").unwrap();
        let copy = stages[4].describe();
        assert!(copy.summary.contains("3 tables at a time"), "{}", copy.summary);
        let freeze = stages[2].describe();
        assert!(!freeze.destructive);
        assert!(
            freeze.summary.starts_with("freezing is off"),
            "{}",
            freeze.summary
        );
        assert!(
            stages[0]
                .describe()
                .details
                .last()
                .unwrap()
                .contains("schema cutover_log")
        );
    }

    #[test]
    fn decommission_without_consumers_is_refused_naming_the_plan() {
        let err = stages("[decommission]\ndriver = \"docker\"\ncontainer = \"old-db\"\n")
            .err()
            .expect("refused");
        assert_eq!(err.kind, cutover_core::ErrorKind::BadInput);
        assert!(
            err.message
                .starts_with("/plans/cutover.toml: [decommission] needs the [[consumer]] entries"),
            "{}",
            err.message
        );
        // driver = "none" retires nothing, so it needs no consumer.
        let stages = stages("[decommission]\ndriver = \"none\"\n").unwrap();
        assert_eq!(stages.len(), 6);
    }

    #[test]
    fn the_online_mode_replicates_and_switches_instead_of_freezing() {
        let apps = Applications {
            bouncers: vec![],
            fence: fence(&["app_rw"]),
        };
        let stages = stages_with(
            "[options]\nmode = \"online\"\n[options.online]\nmax_pause = 2.5\n",
            Some(apps),
        )
        .unwrap();
        assert_eq!(
            names(&stages),
            [
                "discover",
                "backup-target",
                "clear-target",
                "replicate",
                "switch",
                "resume",
                "end-replication"
            ]
        );
        let switch = stages[4].describe();
        assert!(
            switch.summary.contains("role(s) app_rw may not connect"),
            "{}",
            switch.summary
        );
        assert!(switch.summary.contains("at most 2.5 s"), "{}", switch.summary);
        // Closing the rollback window cannot be undone.
        assert!(matches!(
            stages[6].undo_kind(),
            cutover_core::stage::Undo::Irreversible(_)
        ));
    }
}
