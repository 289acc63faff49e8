//! Connection pools for the source and target, with the same session
//! settings on both sides (row text forms and hashes depend on them).

use std::time::Duration;

use cutover_core::redact::redact_text;
use std::sync::Arc;

use cutover_core::endpoint::Endpoint;
use cutover_core::error::{codes, sqlstate};
use cutover_core::identity::ServerIdentity;
use cutover_core::journal::Journal;
use cutover_core::loaded::LoadedPlan;
use cutover_core::loaded::SessionSettings;
use cutover_core::tls::{SslMode, TlsSettings};
use cutover_core::{Error, ErrorKind, Result};
use sqlx::Executor;
use sqlx::postgres::PgSslMode;
use sqlx::postgres::{PgPool, PgPoolOptions};

/// Settings every cutover session uses on both servers, so that the text form
/// of a row (and any hash of it) is the same on both. `row_security = off`:
/// a table whose row-level security would hide rows from cutover's user (not
/// a superuser, not its owner, or FORCE ROW LEVEL SECURITY) fails loudly
/// instead of being copied, counted and verified with fewer rows.
pub const SESSION_SETTINGS: &str = "SET TimeZone = 'UTC'; SET DateStyle = 'ISO, YMD'; \
    SET IntervalStyle = 'postgres'; SET extra_float_digits = 3; SET bytea_output = 'hex'; \
    SET row_security = off";

/// The two databases of a plan, connected.
pub struct Databases {
    pub source: Arc<Endpoint>,
    pub target: Arc<Endpoint>,
    pub source_pool: PgPool,
    pub target_pool: PgPool,
    pub source_identity: ServerIdentity,
    pub target_identity: ServerIdentity,
}

impl Databases {
    /// Connects both sides, and refuses when they are the same database.
    pub async fn connect(plan: &LoadedPlan, max_connections: u32) -> Result<Databases> {
        let (source, target) = (plan.source()?, plan.target()?);
        let session = plan.session();
        let (source_pool, target_pool) = tokio::try_join!(
            pool(&source, session, max_connections),
            pool(&target, session, max_connections),
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
        let (source, target) = (plan.source()?, plan.target()?);
        let source_pool =
            pool_options(plan.session(), max_connections).connect_lazy_with(source.connect_options()?);
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

/// The source as a plan finds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceState {
    Live,
    /// Retired by this plan's run (quarantined or stopped): can be brought back.
    Retired,
    /// Destroyed by this plan's run: its final dump is the way back.
    Destroyed,
}

impl Databases {
    /// Connects both databases; when the source cannot be reached because
    /// this plan's run retired it (its decommission-source stage done, not
    /// undone), goes on with a lazy source connection so that `status`,
    /// `rollback` and a resume still work. Else the source's error.
    pub async fn connect_or_retired(loaded: &LoadedPlan, max: u32) -> Result<(Databases, SourceState)> {
        use cutover_core::journal::{ItemKey, StageEvent};
        use cutover_core::stage::names::DECOMMISSION_SOURCE;
        let err = match Databases::connect(loaded, max).await {
            Ok(d) => return Ok((d, SourceState::Live)),
            Err(e) => e,
        };
        let Ok(TargetJournal {
            pool,
            journal: Some(journal),
            ..
        }) = target_journal(loaded, loaded.session(), max).await
        else {
            return Err(err);
        };
        let Some(run) = journal.latest_run().await? else {
            return Err(err);
        };
        let retired = journal
            .stage_states(run.id)
            .await?
            .get(DECOMMISSION_SOURCE)
            .is_some_and(|s| s.event != StageEvent::Undone);
        if !retired {
            return Err(err);
        }
        let destroyed = journal
            .item_detail(run.id, DECOMMISSION_SOURCE, &ItemKey::Retire)
            .await?
            .and_then(|d| serde_json::from_value::<cutover_core::artefacts::Retirement>(d).ok())
            .is_some_and(|r| r.destroyed);
        let dbs = Databases::with_retired_source(loaded, pool, run.source_identity, max).await?;
        Ok((
            dbs,
            if destroyed {
                SourceState::Destroyed
            } else {
                SourceState::Retired
            },
        ))
    }
}

/// Connects once, to turn a failure into a message that names the server and
/// the fix (a pool only reports that it timed out). With `sslmode=allow`, a
/// server that refuses the plain connection is tried again over TLS, as
/// libpq does, and the endpoint keeps TLS from then on.
pub async fn probe(endpoint: &Endpoint, connect_timeout: u64) -> Result<()> {
    use sqlx::Connection;
    let wait = Duration::from_secs(connect_timeout.max(1));
    let conn = connect_like_libpq(
        || endpoint.connect_options(),
        &endpoint.tls,
        &format!("the {} {endpoint}", endpoint.role),
        (&endpoint.user, &endpoint.dbname),
        wait,
    )
    .await?;
    let _ = conn.close().await;
    Ok(())
}

/// One connection as libpq would make it: `allow` retried over TLS after a
/// refused plain attempt, and a failure explained ([`connect_error`]).
/// `options` gives the connection's options for the TLS mode in effect now.
async fn connect_like_libpq(
    options: impl Fn() -> Result<sqlx::postgres::PgConnectOptions>,
    tls: &TlsSettings,
    what: &str,
    who: (&str, &str),
    wait: Duration,
) -> Result<sqlx::PgConnection> {
    use sqlx::Connection;
    let attempt = |options: sqlx::postgres::PgConnectOptions| async move {
        match tokio::time::timeout(wait, sqlx::PgConnection::connect_with(&options)).await {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(e)) => Err(Some(e)),
            Err(_) => Err(None),
        }
    };
    let mut result = attempt(options()?).await;
    if let Err(Some(e)) = &result
        && refused_plain(e)
        && tls.upgrade_allow()
    {
        result = attempt(options()?).await;
    }
    match result {
        Ok(conn) => Ok(conn),
        Err(Some(e)) => {
            let tls_only = refused_plain(&e)
                && tls.effective_mode() <= SslMode::Allow
                && accepts_tls(options()?.ssl_mode(PgSslMode::Require), wait).await;
            Err(connect_error(what, who, tls, tls_only, &e))
        }
        Err(None) => Err(no_answer(what, wait)),
    }
}

fn no_answer(what: &str, wait: Duration) -> Error {
    Error::failure(format!(
        "cannot connect to {what}: no answer within {}s",
        wait.as_secs()
    ))
    .with_hint("check the host and port, the firewall, or raise options.connect_timeout")
}

/// Whether the server refused the connection by its rules for this address
/// and user (pg_hba.conf: SQLSTATE 28000).
fn refused_plain(e: &sqlx::Error) -> bool {
    sqlstate(e).as_deref() == Some(codes::INVALID_AUTHORIZATION)
}

/// Whether a TLS connection (certificate unchecked: this only asks whether
/// the server would take one) gets past the server's address rules.
async fn accepts_tls(options: sqlx::postgres::PgConnectOptions, wait: Duration) -> bool {
    use sqlx::Connection;
    match tokio::time::timeout(wait, sqlx::PgConnection::connect_with(&options)).await {
        Ok(Ok(conn)) => {
            let _ = conn.close().await;
            true
        }
        Ok(Err(e)) => !refused_plain(&e) && sqlstate(&e).is_some(),
        Err(_) => false,
    }
}

/// Connects with a consumer's connection URL as libpq would: its TLS
/// parameters (or the `PGSSL*` variables), `allow` retried over TLS.
pub async fn connect_url(url: &str, application_name: &str, timeout: Duration) -> Result<sqlx::PgConnection> {
    let shown = redact_text(url);
    let mut parsed = url::Url::parse(url)
        .map_err(|e| Error::bad_input(format!("cannot use the connection {shown}: {e}")))?;
    let params: Vec<(String, String)> = parsed
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let tls = TlsSettings::resolve(&params, &shown)?;
    cutover_core::tls::strip_tls_params(&mut parsed);
    let base: sqlx::postgres::PgConnectOptions = parsed
        .as_str()
        .parse()
        .map_err(|e| Error::bad_input(format!("cannot use the connection {shown}: {e}")))?;
    let base = base.application_name(application_name);
    let who = (
        base.get_username().to_string(),
        base.get_database().unwrap_or("<db>").to_string(),
    );
    connect_like_libpq(
        || Ok(tls.apply(base.clone())),
        &tls,
        &shown,
        (&who.0, &who.1),
        timeout,
    )
    .await
}

/// Pool settings: sessions carry [`SESSION_SETTINGS`] and the plan's timeouts.
fn pool_options(session: SessionSettings, max_connections: u32) -> PgPoolOptions {
    with_setup(
        format!(
            "{SESSION_SETTINGS}; SET statement_timeout = '{}s'; SET lock_timeout = '{}s'",
            session.statement_timeout, session.lock_timeout
        ),
        session.connect_timeout,
        max_connections,
    )
}

/// Pool settings whose sessions each run `setup` when they connect.
fn with_setup(setup: String, connect_timeout: u64, max_connections: u32) -> PgPoolOptions {
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

/// The plan's target connected, with its journal when it has one.
pub struct TargetJournal {
    pub target: Arc<Endpoint>,
    pub pool: PgPool,
    /// None: no run of a cutover yet, or its journal archived and dropped.
    pub journal: Option<Journal>,
}

/// Connects to the plan's target (`max_connections` sessions of `session`)
/// and opens its journal without creating it: what the commands that read a
/// run (status, report, archive-journal, a finished run's check) and the
/// retired source's recovery start from.
pub async fn target_journal(
    plan: &LoadedPlan,
    session: SessionSettings,
    max_connections: u32,
) -> Result<TargetJournal> {
    let target = plan.target()?;
    let pool = pool(&target, session, max_connections).await?;
    let journal = Journal::open_existing(&pool, &plan.file.options.journal_schema).await?;
    Ok(TargetJournal {
        target,
        pool,
        journal,
    })
}

/// A pool whose sessions carry [`SESSION_SETTINGS`] and the plan's timeouts.
pub async fn pool(endpoint: &Endpoint, session: SessionSettings, max_connections: u32) -> Result<PgPool> {
    probe(endpoint, session.connect_timeout).await?;
    let options = endpoint.connect_options()?;
    let attempt = pool_options(session, max_connections).connect_with(options);
    let connect_timeout = Duration::from_secs(session.connect_timeout.max(1));
    let pool = match tokio::time::timeout(connect_timeout + Duration::from_secs(1), attempt).await {
        Ok(Ok(pool)) => pool,
        Ok(Err(e)) => {
            return Err(connect_error(
                &format!("the {} {endpoint}", endpoint.role),
                (&endpoint.user, &endpoint.dbname),
                &endpoint.tls,
                false,
                &e,
            ));
        }
        Err(_) => {
            return Err(no_answer(
                &format!("the {} {endpoint}", endpoint.role),
                connect_timeout,
            ));
        }
    };
    Ok(pool)
}

/// A connection failure as the operator can act on it: classified by the
/// server's SQLSTATE (the same in every language the server speaks) or by the
/// TLS library's own error, never by the server's text.
fn connect_error(
    what: &str,
    (user, db): (&str, &str),
    tls: &TlsSettings,
    tls_only: bool,
    e: &sqlx::Error,
) -> Error {
    let text = redact_text(&e.to_string());
    let code = sqlstate(e);
    let (message, hint) = if tls_only {
        (
            format!(
                "cannot connect to {what}: the server accepts only TLS connections from this address ({text})"
            ),
            format!(
                "set sslmode=require or stronger (verify-full with sslrootcert checks the server too); sslmode is {} now",
                tls.mode
            ),
        )
    } else if let Some(code) = code.as_deref() {
        let hint = match code {
            codes::INVALID_PASSWORD => "check the password (url, password_env, PGPASSWORD or ~/.pgpass)".to_string(),
            codes::INVALID_AUTHORIZATION => "the server refuses this user from this address (its pg_hba.conf), or the role does not exist: check the user name, or ask for a pg_hba.conf entry"
                .to_string(),
            codes::INVALID_CATALOG_NAME => "check the database name in the url".to_string(),
            codes::INSUFFICIENT_PRIVILEGE => {
                format!("the user may not connect to this database: GRANT CONNECT ON DATABASE {db} TO {user}")
            }
            codes::TOO_MANY_CONNECTIONS => {
                "the server has no free connection slot: lower options.jobs or raise the server's max_connections"
                    .to_string()
            }
            codes::CANNOT_CONNECT_NOW => "the server is starting up or shutting down: try again".to_string(),
            _ => "check the url and that the server accepts connections from here".to_string(),
        };
        (
            format!("cannot connect to {what}: {text} (SQLSTATE {code})"),
            hint,
        )
    } else if let Some(cert) = certificate_error(e) {
        use rustls::CertificateError as C;
        let ca = match &tls.root_cert {
            Some(cutover_core::tls::RootCert::File(p)) => format!("the CA in sslrootcert={}", p.display()),
            Some(cutover_core::tls::RootCert::System) => "the system's CAs".to_string(),
            None => "a trusted CA".to_string(),
        };
        match cert {
            C::UnknownIssuer | C::BadSignature => (
                format!(
                    "cannot connect to {what}: the server's certificate is not signed by {ca} (unknown CA)"
                ),
                "point sslrootcert at the CA that signed the server's certificate".to_string(),
            ),
            C::NotValidForName => (
                format!(
                    "cannot connect to {what}: the server's certificate is not valid for the host name in the url (wrong host name; sslmode=verify-full checks it)"
                ),
                "connect by a name the certificate carries, or use sslmode=verify-ca to check the CA only"
                    .to_string(),
            ),
            C::Expired => (
                format!("cannot connect to {what}: the server's certificate has expired"),
                "renew the server's certificate (or check this machine's clock)".to_string(),
            ),
            C::NotValidYet => (
                format!("cannot connect to {what}: the server's certificate is not valid yet"),
                "check this machine's clock and the certificate's dates".to_string(),
            ),
            other => (
                format!("cannot connect to {what}: the server's certificate was refused ({other:?})"),
                "check the server's certificate and sslrootcert".to_string(),
            ),
        }
    } else if let sqlx::Error::Tls(inner) = e {
        let inner = inner.to_string();
        if inner.contains("does not support TLS") {
            (
                format!("cannot connect to {what}: the server does not accept TLS connections"),
                format!(
                    "sslmode={} needs TLS: turn ssl on on the server, or use sslmode=prefer to allow plain connections",
                    tls.mode
                ),
            )
        } else {
            (
                format!("cannot connect to {what}: TLS failed: {}", redact_text(&inner)),
                "check sslmode, sslrootcert, sslcert and sslkey".to_string(),
            )
        }
    } else if let sqlx::Error::Io(io) = e
        && io.kind() == std::io::ErrorKind::ConnectionRefused
    {
        (
            format!("cannot connect to {what}: connection refused"),
            "is the server running and listening on that host and port?".to_string(),
        )
    } else if let sqlx::Error::Configuration(_) = e {
        (
            format!("cannot connect to {what}: {text}"),
            "check sslcert and sslkey (PEM files, the key matching the certificate)".to_string(),
        )
    } else {
        (
            format!("cannot connect to {what}: {text}"),
            "check the url and that the server accepts connections from here".to_string(),
        )
    };
    Error::new(ErrorKind::Failure, message)
        .with_sqlstate(code)
        .with_hint(hint)
}

/// The certificate check that failed in a TLS handshake, if that is what failed.
fn certificate_error(e: &sqlx::Error) -> Option<rustls::CertificateError> {
    let mut current: Option<&(dyn std::error::Error + 'static)> = match e {
        sqlx::Error::Io(io) => Some(io),
        sqlx::Error::Tls(inner) => Some(inner.as_ref()),
        _ => None,
    };
    while let Some(err) = current {
        if let Some(rustls::Error::InvalidCertificate(c)) = err.downcast_ref::<rustls::Error>() {
            return Some(c.clone());
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && let Some(inner) = io.get_ref()
        {
            if let Some(rustls::Error::InvalidCertificate(c)) = inner.downcast_ref::<rustls::Error>() {
                return Some(c.clone());
            }
            current = inner.source();
            continue;
        }
        current = err.source();
    }
    None
}

/// A pool of read-only sessions of `endpoint` that all see exported
/// snapshot `snapshot`: each session opens a repeatable-read transaction
/// importing it when it connects and keeps it open (the pool never commits
/// it), so every query through the pool reads the same state. For reading
/// the source as a replication slot's start saw it (the online mode's
/// verify) while the exporting connection stays open.
pub async fn snapshot_pool(
    endpoint: &Endpoint,
    connect_timeout: u64,
    max_connections: u32,
    snapshot: &str,
) -> Result<PgPool> {
    let setup = format!(
        "{SESSION_SETTINGS}; BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT {}",
        crate::inventory::quote_literal(snapshot)
    );
    let options = endpoint.connect_options()?;
    with_setup(setup, connect_timeout, max_connections)
        // A reader that opened and committed its own transaction (sqlx's
        // `begin`: a BEGIN inside ours is only a warning, its COMMIT ends
        // ours) left the snapshot: that session is closed, not reused.
        .after_release(|conn, _| {
            Box::pin(async move {
                let isolation: String = sqlx::query_scalar("SELECT current_setting('transaction_isolation')")
                    .fetch_one(&mut *conn)
                    .await?;
                Ok(isolation == "repeatable read")
            })
        })
        .connect_with(options)
        .await
        .map_err(|e| {
            Error::from(e).context(format!(
                "reading the {} under the replication slot's snapshot",
                endpoint.role
            ))
        })
}

/// A session of `pool` that may write even where a freeze or a fence made
/// new sessions read-only (`default_transaction_read_only` on the database
/// or the role): for cutover's own writes there (the fence's saved
/// privileges, a sentinel, sequences, the freeze itself).
pub async fn writable(pool: &sqlx::PgPool) -> Result<sqlx::pool::PoolConnection<sqlx::Postgres>> {
    let mut conn = pool.acquire().await?;
    sqlx::query("SET default_transaction_read_only = off")
        .execute(&mut *conn)
        .await?;
    Ok(conn)
}

/// `server_version_num` of the server behind `executor` (150004 for 15.4).
pub async fn server_version<'e>(executor: impl sqlx::PgExecutor<'e>) -> Result<i32> {
    Ok(
        sqlx::query_scalar("SELECT current_setting('server_version_num')::int")
            .fetch_one(executor)
            .await?,
    )
}

/// The name of the database `executor` is connected to.
pub async fn current_database<'e>(executor: impl sqlx::PgExecutor<'e>) -> Result<String> {
    Ok(sqlx::query_scalar("SELECT current_database()::text")
        .fetch_one(executor)
        .await?)
}
