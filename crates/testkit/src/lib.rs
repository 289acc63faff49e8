//! Two real PostgreSQL servers for cutover's tests and its demo.
//!
//! A [`PgServer`] is one independent PostgreSQL server reached over TCP with
//! password authentication; a [`PgPair`] is the source and target of a
//! cutover. The backend comes from `CUTOVER_TEST_BACKEND` (`local`, the
//! default: `initdb` + `pg_ctl` from the installed binaries; or `docker`:
//! testcontainers). Admin helpers go through `psql`, never through cutover's
//! own code, so a test that checks cutover's work with them checks it
//! independently.

mod binaries;
#[cfg(feature = "docker")]
mod docker;
mod fixtures;
mod local;
mod pgbouncer;
mod psql;
mod server;
mod tls;

pub use binaries::{bindir_major, pg_bindir, pg_bindir_for};
pub use fixtures::Fixture;
pub use local::ServerOptions;
pub use pgbouncer::{ADMIN_USER, CLIENT_USER, PgBouncer, pgbouncer_bin};
pub use psql::{TableDigest, digest_database};
pub use server::{Backend, PgPair, PgServer};
pub use tls::{ServerCert, TestCa};

/// A password that is easy to search for in output, unique per server.
pub(crate) fn distinctive_password() -> String {
    use std::hash::{BuildHasher, RandomState};
    let n = RandomState::new().hash_one(std::time::SystemTime::now());
    format!("kitpw-{n:016x}")
}
pub use server::SEED_DB;
