//! Building the plan: one function, used by `plan` (to print it) and by `run`
//! and `rollback` (to execute it). Never a second copy of this logic.
//!
//! Building it is also the preflight: every consumer is read and checked
//! (file, key, writable, commands) before any stage runs, so a problem stops
//! the run with nothing changed. Its checks are named steps of
//! [`preflight`].

mod preflight;

use std::time::Duration;

use cutover_core::endpoint::Endpoint;
use cutover_core::loaded::LoadedPlan;
use cutover_core::plan_file::{ConsumerConfig, DecommissionDriver, Mode};
use cutover_core::stage::{Plan, Stage};
use cutover_core::{Error, Result};
use cutover_ops::consumer::{self, Servers, Which, servers};
use cutover_ops::decommission::Decommission;
use cutover_ops::online::Online;
use cutover_ops::online::end_replication::EndReplication;
use cutover_ops::online::pause::{Applications, Bouncer};
use cutover_ops::online::resume::Resume;
use cutover_ops::online::switch::Switch;
use cutover_ops::repoint::Repoint;
use cutover_ops::sync::VerifySync;
use cutover_pg::Databases;
use cutover_pg::backup::BackupTarget;
use cutover_pg::clear::ClearTarget;
use cutover_pg::connect::SourceState as Source;
use cutover_pg::copy::{Copy, CopySettings, default_jobs};
use cutover_pg::discover::{Discover, DiscoverSettings};
use cutover_pg::freeze::{FenceSettings, FreezeSource, other_sessions};
use cutover_pg::inventory::{Comparison, Inventory};
use cutover_pg::online::replicate::Replicate;
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

/// Inspects both databases and every consumer (read-only) and builds the
/// stages in their safe order: each check is a named step of [`preflight`],
/// and a refusal there leaves nothing changed.
pub async fn build(loaded: &LoadedPlan, switches: Switches) -> Result<Planned> {
    let jobs = default_jobs(loaded.file.options.jobs);
    // Copy: a connection per job on each side, the snapshot and the journal;
    // verify-data: up to two per job (key ranges of large tables).
    let (dbs, state) = Databases::connect_or_retired(loaded, jobs as u32 * 2 + 3).await?;
    let retired = state != Source::Live;
    let online = loaded.file.options.mode == Mode::Online;
    let (source, target) = preflight::inspect(loaded, &dbs, retired).await?;
    let mut warnings = vec![];
    if online && !retired {
        warnings.extend(preflight::online_readiness(loaded, &dbs).await?);
    }
    let (source, comparison) = preflight::compare_sides(source, &target, &dbs, &mut warnings).await?;
    if !retired {
        warnings.extend(preflight::client_tools(loaded, &source, &target).await?);
    }
    let allow_ahead = switches.allow_target_ahead || loaded.file.target.allow_ahead;
    let sessions = if retired {
        vec![]
    } else {
        other_sessions(&dbs.source_pool).await?
    };
    if loaded.file.options.freeze_source && !retired && !online {
        warnings.extend(preflight::unendable_sessions(&dbs).await?);
    }
    warnings.extend(preflight::operator_notes(&dbs).await?);
    if !comparison.target_ahead.is_empty() && !allow_ahead {
        warnings.push(cutover_pg::discover::target_ahead_error(&comparison.target_ahead).message);
    }
    if !loaded.file.options.freeze_source && !online {
        warnings
            .push("freeze_source = false: writes to the source after the copy's snapshot are lost".into());
    }
    let servers = servers(loaded, &dbs)?;
    let base = consumer::base_dir(&loaded.path);
    let readings = consumer::preflight(loaded, &servers).await?;
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
    let roles = if retired {
        preflight::Roles::default()
    } else {
        preflight::roles(loaded, &dbs, &readings, &servers).await?
    };
    let mut repoints = vec![];
    for reading in &readings {
        let dest = consumer::destination(&reading.spec, &servers)?;
        let repoint = Repoint::new(reading.clone(), dest, base.clone(), servers.clone())?;
        repoints.push(if online { repoint.online() } else { repoint });
    }
    if !retired && !repoints.is_empty() {
        preflight::decommission_rights(loaded, &dbs).await?;
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
        create_roles: roles.create_roles,
        security_note: roles.security_note,
        repoints,
        servers,
        // What was done decides what undo can do, whatever the flags now.
        destroy: switches.destroy || state == Source::Destroyed,
        force: switches.force,
        applications,
        fence,
        lacking_roles: roles.lacking.clone(),
    })?;
    for s in &stages {
        let name = s.name();
        if name.starts_with(cutover_core::stage::names::REPOINT_PREFIX)
            || name == cutover_ops::decommission::NAME
        {
            warnings.extend(s.describe().warnings.iter().cloned());
        }
    }
    Ok(Planned {
        plan: Plan { stages, warnings },
        dbs,
        retired,
        lacking_roles: roles.lacking,
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
    pub source_endpoint: std::sync::Arc<Endpoint>,
    pub target_endpoint: std::sync::Arc<Endpoint>,
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
        let loaded = LoadedPlan::new(
            "/plans/cutover.toml".into(),
            parse(&format!("{PLAN}{extra}")).unwrap(),
            String::new(),
        );
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
            source_endpoint: s.into(),
            target_endpoint: t.into(),
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
