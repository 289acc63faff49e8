//! [`PgServer`] and [`PgPair`]: real PostgreSQL servers on either backend,
//! with admin helpers and fault hooks.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::fixtures::Fixture;
use crate::local::{LocalServer, ServerOptions};
use crate::psql::{Conn, TableDigest, quote_literal};

/// Where the kit's servers run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// `initdb` + `pg_ctl` from the installed PostgreSQL binaries.
    Local,
    /// A container per server, through testcontainers.
    Docker,
}

impl Backend {
    /// `CUTOVER_TEST_BACKEND=local|docker`, default `local`.
    pub fn from_env() -> Result<Backend> {
        match std::env::var("CUTOVER_TEST_BACKEND").as_deref() {
            Err(_) | Ok("") | Ok("local") => Ok(Backend::Local),
            Ok("docker") => Ok(Backend::Docker),
            Ok(other) => {
                bail!("CUTOVER_TEST_BACKEND={other:?} is not a backend: use `local` or `docker`")
            }
        }
    }
}

enum Inner {
    Local(LocalServer),
    #[cfg(feature = "docker")]
    Docker(Box<crate::docker::DockerServer>),
}

/// One real, independent PostgreSQL server with a password-protected superuser,
/// reached over TCP on 127.0.0.1. Stopped and removed when dropped (also when
/// a test panics).
pub struct PgServer {
    inner: Inner,
    user: String,
    password: String,
    tls: bool,
}

/// The superuser the kit creates on every server.
const ADMIN_USER: &str = "kit_admin";

impl PgServer {
    /// Starts a server on the backend chosen by `CUTOVER_TEST_BACKEND`.
    pub fn start() -> Result<PgServer> {
        PgServer::start_on(Backend::from_env()?)
    }

    pub fn start_on(backend: Backend) -> Result<PgServer> {
        let password = crate::distinctive_password();
        let inner = match backend {
            Backend::Local => Inner::Local(LocalServer::start(
                ADMIN_USER,
                &password,
                false,
                &ServerOptions::default(),
            )?),
            #[cfg(feature = "docker")]
            Backend::Docker => Inner::Docker(Box::new(crate::docker::DockerServer::start(
                ADMIN_USER, &password, "postgres",
            )?)),
            #[cfg(not(feature = "docker"))]
            Backend::Docker => {
                bail!("this build of the test kit has no docker backend (feature `docker`)")
            }
        };
        let server = PgServer {
            inner,
            user: ADMIN_USER.into(),
            password,
            tls: false,
        };
        server.wait_ready(Duration::from_secs(60))?;
        Ok(server)
    }

    /// A local server set up as `opts` says (another major, TLS only, another
    /// language).
    pub fn start_with(opts: &ServerOptions) -> Result<PgServer> {
        let password = crate::distinctive_password();
        let server = PgServer {
            inner: Inner::Local(LocalServer::start(ADMIN_USER, &password, false, opts)?),
            user: ADMIN_USER.into(),
            password,
            tls: opts.tls.is_some(),
        };
        server.wait_ready(Duration::from_secs(60))?;
        Ok(server)
    }

    /// The major version the server runs.
    pub fn major(&self) -> Result<u32> {
        let v: u32 = self.sql("postgres", "SHOW server_version_num")?.trim().parse()?;
        Ok(v / 10000)
    }

    /// A local server with PostgreSQL's default durability (fsync and
    /// synchronous commit on), for benchmarks.
    pub fn start_durable() -> Result<PgServer> {
        PgServer::start_durable_with(&ServerOptions::default())
    }

    /// [`PgServer::start_durable`] with options (`wal_level = logical` for
    /// the online benchmark: PostgreSQL's default is `replica`).
    pub fn start_durable_with(opts: &ServerOptions) -> Result<PgServer> {
        let password = crate::distinctive_password();
        let server = PgServer {
            inner: Inner::Local(LocalServer::start(ADMIN_USER, &password, true, opts)?),
            user: ADMIN_USER.into(),
            password,
            tls: false,
        };
        server.wait_ready(Duration::from_secs(60))?;
        Ok(server)
    }

    pub fn backend(&self) -> Backend {
        match self.inner {
            Inner::Local(_) => Backend::Local,
            #[cfg(feature = "docker")]
            Inner::Docker(_) => Backend::Docker,
        }
    }

    pub fn host(&self) -> &str {
        "127.0.0.1"
    }

    /// The TCP port (on docker, the host port mapped to the container's 5432).
    pub fn port(&self) -> u16 {
        match &self.inner {
            Inner::Local(s) => s.port,
            #[cfg(feature = "docker")]
            Inner::Docker(s) => s.port().unwrap_or(0),
        }
    }

    pub fn user(&self) -> &str {
        &self.user
    }

    pub fn password(&self) -> &str {
        &self.password
    }

    /// `postgresql://user:password@127.0.0.1:port/dbname`.
    pub fn url(&self, dbname: &str) -> String {
        format!(
            "postgresql://{}:{}@{}:{}/{}",
            self.user,
            self.password,
            self.host(),
            self.port(),
            dbname
        )
    }

    /// The same URL without the password (for plans that take it from elsewhere).
    pub fn url_without_password(&self, dbname: &str) -> String {
        format!(
            "postgresql://{}@{}:{}/{}",
            self.user,
            self.host(),
            self.port(),
            dbname
        )
    }

    pub(crate) fn conn<'a>(&'a self, dbname: &'a str) -> Conn<'a> {
        Conn {
            host: self.host(),
            port: self.port(),
            user: &self.user,
            password: &self.password,
            dbname,
            tls: self.tls,
        }
    }

    /// Runs SQL as the superuser through psql; returns the rows as tab-separated lines.
    pub fn sql(&self, dbname: &str, sql: &str) -> Result<String> {
        self.conn(dbname).run(sql)
    }

    pub fn create_database(&self, name: &str) -> Result<()> {
        self.sql(
            "postgres",
            &format!("CREATE DATABASE \"{}\"", name.replace('"', "\"\"")),
        )?;
        Ok(())
    }

    /// Creates `dbname` if needed and loads a fixture into it.
    pub fn load_fixture(&self, dbname: &str, fixture: Fixture) -> Result<()> {
        let exists = self.sql(
            "postgres",
            &format!(
                "SELECT 1 FROM pg_database WHERE datname = {}",
                quote_literal(dbname)
            ),
        )?;
        if exists.is_empty() {
            self.create_database(dbname)?;
        }
        self.sql(dbname, &fixture.sql())
            .with_context(|| format!("failed to load fixture {fixture:?}"))?;
        Ok(())
    }

    /// The cluster's system identifier (unique per `initdb`).
    pub fn system_identifier(&self) -> Result<String> {
        self.sql("postgres", "SELECT system_identifier FROM pg_control_system()")
    }

    /// Table-by-table digest of a database (see [`crate::digest_database`]).
    pub fn digest(&self, dbname: &str, exclude_schemas: &[&str]) -> Result<BTreeMap<String, TableDigest>> {
        crate::psql::digest(&self.conn(dbname), exclude_schemas)
    }

    fn wait_ready(&self, timeout: Duration) -> Result<()> {
        let start = Instant::now();
        loop {
            match self.sql("postgres", "SELECT 1") {
                Ok(_) => return Ok(()),
                Err(e) if start.elapsed() > timeout => {
                    return Err(e.context(format!("server not ready after {timeout:?}")));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    // ---- fault hooks -------------------------------------------------------

    /// Clean shutdown; [`PgServer::restart`] brings it back with its data.
    pub fn stop(&self) -> Result<()> {
        match &self.inner {
            Inner::Local(s) => s.stop(),
            #[cfg(feature = "docker")]
            Inner::Docker(s) => s.stop(),
        }
    }

    /// Immediate, crash-like stop (no checkpoint; recovery on the next start).
    pub fn kill(&self) -> Result<()> {
        match &self.inner {
            Inner::Local(s) => s.kill(),
            #[cfg(feature = "docker")]
            Inner::Docker(s) => s.kill(),
        }
    }

    /// Starts the server again (stopping it first if it runs) and waits until
    /// it accepts connections. On docker the mapped port may change: read
    /// [`PgServer::port`] / [`PgServer::url`] again afterwards.
    pub fn restart(&self) -> Result<()> {
        match &self.inner {
            Inner::Local(s) => s.restart()?,
            #[cfg(feature = "docker")]
            Inner::Docker(s) => {
                if s.is_running() {
                    s.stop()?;
                }
                s.start_again()?
            }
        }
        self.wait_ready(Duration::from_secs(60))
    }

    /// The container behind a docker-backend server; the network and pause
    /// faults exist only there.
    #[cfg(feature = "docker")]
    fn container(&self, what: &str) -> Result<&crate::docker::DockerServer> {
        match &self.inner {
            Inner::Docker(s) => Ok(s),
            Inner::Local(_) => {
                bail!("{what} needs the docker backend (CUTOVER_TEST_BACKEND=docker)")
            }
        }
    }

    /// Freezes every process of the server (docker only).
    #[cfg(feature = "docker")]
    pub fn pause(&self) -> Result<()> {
        self.container("pause")?.pause()
    }

    #[cfg(feature = "docker")]
    pub fn unpause(&self) -> Result<()> {
        self.container("unpause")?.unpause()
    }

    /// Cuts the server off the network (docker only).
    #[cfg(feature = "docker")]
    pub fn disconnect_network(&self) -> Result<()> {
        self.container("network disconnect")?.disconnect_network()
    }

    #[cfg(feature = "docker")]
    pub fn reconnect_network(&self) -> Result<()> {
        self.container("network connect")?.reconnect_network()
    }

    /// The postmaster's pid (local backend, while running).
    pub fn postmaster_pid(&self) -> Option<u32> {
        match &self.inner {
            Inner::Local(s) => s.postmaster_pid(),
            #[cfg(feature = "docker")]
            Inner::Docker(_) => None,
        }
    }

    /// The cluster's data directory (local backend).
    pub fn data_dir(&self) -> Option<std::path::PathBuf> {
        match &self.inner {
            Inner::Local(s) => Some(s.data_dir_path()),
            #[cfg(feature = "docker")]
            Inner::Docker(_) => None,
        }
    }

    /// The server's log (local backend; on docker, None).
    pub fn server_log(&self) -> Option<String> {
        match &self.inner {
            Inner::Local(s) => Some(s.log()),
            #[cfg(feature = "docker")]
            Inner::Docker(_) => None,
        }
    }

    /// `host:port` at which another server of the kit reaches this one
    /// (a subscription's connection): on the docker backend the container's
    /// address on Docker's bridge network; None where the published address
    /// serves (local servers).
    pub fn address_for_peers(&self) -> Option<String> {
        let id = self.container_id()?;
        let out = std::process::Command::new("docker")
            .args(["inspect", "-f", "{{.NetworkSettings.IPAddress}}", id])
            .output()
            .ok()?;
        let ip = String::from_utf8_lossy(&out.stdout).trim().to_string();
        (!ip.is_empty()).then(|| format!("{ip}:5432"))
    }

    /// The container's id (docker backend).
    pub fn container_id(&self) -> Option<&str> {
        match &self.inner {
            Inner::Local(_) => None,
            #[cfg(feature = "docker")]
            Inner::Docker(s) => Some(s.id()),
        }
    }
}

/// The two servers of a cutover: the source whose data wins, and the target
/// that becomes the single source of truth.
pub struct PgPair {
    pub source: PgServer,
    pub target: PgServer,
}

/// The database name the seed scenario uses on both servers.
pub const SEED_DB: &str = "app";

impl PgPair {
    /// Starts two servers in parallel on the backend from `CUTOVER_TEST_BACKEND`.
    pub fn start() -> Result<PgPair> {
        PgPair::start_on(Backend::from_env()?)
    }

    pub fn start_on(backend: Backend) -> Result<PgPair> {
        let (source, target) = std::thread::scope(|s| {
            let source = s.spawn(|| PgServer::start_on(backend));
            let target = s.spawn(|| PgServer::start_on(backend));
            (
                source.join().expect("server start panicked"),
                target.join().expect("server start panicked"),
            )
        });
        Ok(PgPair {
            source: source.context("source server")?,
            target: target.context("target server")?,
        })
    }

    /// Two servers holding the seed scenario in database `app`: the source is
    /// the live "local" database, the target the stale "external" one.
    pub fn seed() -> Result<PgPair> {
        let pair = PgPair::start()?;
        pair.source.load_fixture(SEED_DB, Fixture::SeedSource)?;
        pair.target.load_fixture(SEED_DB, Fixture::SeedTarget)?;
        Ok(pair)
    }
}
