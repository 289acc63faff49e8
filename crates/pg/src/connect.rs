//! Connection pools for the source and target, with the same session
//! settings on both sides (row text forms and hashes depend on them).

use std::time::Duration;

use cutover_core::endpoint::{Endpoint, Role};
use cutover_core::identity::ServerIdentity;
use cutover_core::plan_file::LoadedPlan;
use cutover_core::{Error, ErrorKind, Result};
use sqlx::Executor;
use sqlx::postgres::{PgPool, PgPoolOptions};

/// Settings every cutover session uses on both servers, so that the text form
/// of a row (and any hash of it) is the same on both.
pub const SESSION_SETTINGS: &str = "SET TimeZone = 'UTC'; SET DateStyle = 'ISO, YMD'; \
    SET IntervalStyle = 'postgres'; SET extra_float_digits = 3; SET bytea_output = 'hex'";

/// The two databases of a plan, connected.
pub struct Databases {
    pub source: Endpoint,
    pub target: Endpoint,
    pub source_pool: PgPool,
    pub target_pool: PgPool,
    pub source_identity: ServerIdentity,
    pub target_identity: ServerIdentity,
}

impl Databases {
    /// Resolves and connects both sides, and refuses when they are the same database.
    pub async fn connect(plan: &LoadedPlan, max_connections: u32) -> Result<Databases> {
        let source = Endpoint::resolve(Role::Source, &plan.file.source)?;
        let target = Endpoint::resolve(Role::Target, &plan.file.target)?;
        let opts = &plan.file.options;
        let (source_pool, target_pool) = tokio::try_join!(
            pool(
                &source,
                opts.connect_timeout,
                opts.statement_timeout,
                opts.lock_timeout,
                max_connections
            ),
            pool(
                &target,
                opts.connect_timeout,
                opts.statement_timeout,
                opts.lock_timeout,
                max_connections
            ),
        )?;
        let (source_identity, target_identity) =
            tokio::try_join!(ServerIdentity::of(&source_pool), ServerIdentity::of(&target_pool))?;
        if source_identity.same_database(&target_identity) {
            return Err(Error::refused(format!(
                "source ({source}) and target ({target}) are the same database: server {} started {}, database {} \
                 (oid {}). Point [source] and [target] at the two different databases",
                source_identity.system_identifier,
                source_identity.started_at,
                source_identity.database,
                source_identity.database_oid
            )));
        }
        Ok(Databases {
            source,
            target,
            source_pool,
            target_pool,
            source_identity,
            target_identity,
        })
    }
}

impl Databases {
    /// The databases when the source was retired by this plan's run: the
    /// target connected, the source's pool connecting only when used (after
    /// a rollback of the retirement) and its identity from the journal.
    pub async fn with_retired_source(
        plan: &LoadedPlan,
        target_pool: PgPool,
        source_identity: ServerIdentity,
        max_connections: u32,
    ) -> Result<Databases> {
        let source = Endpoint::resolve(Role::Source, &plan.file.source)?;
        let target = Endpoint::resolve(Role::Target, &plan.file.target)?;
        let opts = &plan.file.options;
        let source_pool = pool_options(
            opts.connect_timeout,
            opts.statement_timeout,
            opts.lock_timeout,
            max_connections,
        )
        .connect_lazy_with(source.connect_options(Duration::from_secs(opts.connect_timeout))?);
        let target_identity = ServerIdentity::of(&target_pool).await?;
        Ok(Databases {
            source,
            target,
            source_pool,
            target_pool,
            source_identity,
            target_identity,
        })
    }
}

/// Connects once, to turn a failure into a message that names the server and
/// the fix (a pool only reports that it timed out).
pub async fn probe(endpoint: &Endpoint, connect_timeout: u64) -> Result<()> {
    use sqlx::Connection;
    let options = endpoint.connect_options(Duration::from_secs(connect_timeout))?;
    let wait = Duration::from_secs(connect_timeout.max(1));
    match tokio::time::timeout(wait, sqlx::PgConnection::connect_with(&options)).await {
        Ok(Ok(conn)) => {
            let _ = conn.close().await;
            Ok(())
        }
        Ok(Err(e)) => Err(connect_error(endpoint, &e)),
        Err(_) => Err(Error::failure(format!(
            "cannot connect to the {} {endpoint}: no answer within {}s; check the host and port, the firewall, or \
             raise options.connect_timeout",
            endpoint.role,
            wait.as_secs()
        ))),
    }
}

/// Pool settings: sessions carry [`SESSION_SETTINGS`] and the plan's timeouts.
fn pool_options(
    connect_timeout: u64,
    statement_timeout: u64,
    lock_timeout: u64,
    max_connections: u32,
) -> PgPoolOptions {
    let setup = format!(
        "{SESSION_SETTINGS}; SET statement_timeout = '{statement_timeout}s'; SET lock_timeout = '{lock_timeout}s'"
    );
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(connect_timeout.max(1)))
        .after_connect(move |conn, _| {
            let setup = setup.clone();
            Box::pin(async move {
                conn.execute(sqlx::raw_sql(&setup)).await?;
                Ok(())
            })
        })
}

/// A pool whose sessions carry [`SESSION_SETTINGS`] and the plan's timeouts.
pub async fn pool(
    endpoint: &Endpoint,
    connect_timeout: u64,
    statement_timeout: u64,
    lock_timeout: u64,
    max_connections: u32,
) -> Result<PgPool> {
    probe(endpoint, connect_timeout).await?;
    let options = endpoint.connect_options(Duration::from_secs(connect_timeout))?;
    let attempt =
        pool_options(connect_timeout, statement_timeout, lock_timeout, max_connections).connect_with(options);
    let connect_timeout = Duration::from_secs(connect_timeout.max(1));
    let pool = match tokio::time::timeout(connect_timeout + Duration::from_secs(1), attempt).await {
        Ok(Ok(pool)) => pool,
        Ok(Err(e)) => return Err(connect_error(endpoint, &e)),
        Err(_) => {
            return Err(Error::failure(format!(
                "cannot connect to the {} {endpoint}: no answer within {}s; check the host and port, the \
                 firewall, or raise options.connect_timeout",
                endpoint.role,
                connect_timeout.as_secs()
            )));
        }
    };
    Ok(pool)
}

fn connect_error(endpoint: &Endpoint, e: &sqlx::Error) -> Error {
    let text = cutover_core::endpoint::redact_text(&e.to_string());
    let hint = if text.contains("password authentication failed") {
        "check the password (url, password_env, PGPASSWORD or ~/.pgpass)"
    } else if text.contains("does not exist") {
        "check the database and user names in the url"
    } else if text.contains("Connection refused") || text.contains("connection refused") {
        "is the server running and listening on that host and port?"
    } else {
        "check the url and that the server accepts connections from here"
    };
    Error::new(
        ErrorKind::Failure,
        format!(
            "cannot connect to the {} {endpoint}: {text}; {hint}",
            endpoint.role
        ),
    )
}
