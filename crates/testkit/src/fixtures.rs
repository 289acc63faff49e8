//! The SQL fixtures under `tests/fixtures/`, embedded so the demo carries them.

/// A dataset a test (or the demo) loads into a database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fixture {
    /// The seed's "local" database: 17 tables (13 core + 4 protection), 22 users.
    SeedSource,
    /// The seed's "external" database: the 13 core tables, 1 stale user.
    SeedTarget,
    /// Identifiers, types and objects that break naive copy tools.
    Tricky,
    /// Three application roles' objects, grants, default privileges, a
    /// policy and database settings (roles `app_owner`, `app_rw`, `app_ro`
    /// must exist: [`Fixture::APP_ROLES`]).
    Apps,
    /// Types without binary I/O (isn, seg), an enum reached through the
    /// database's search_path, large objects small and large (database `app`).
    Special,
}

const SEED_CORE: &str = include_str!("../../../tests/fixtures/seed_core.sql");
const SEED_SOURCE: &str = include_str!("../../../tests/fixtures/seed_source.sql");
const SEED_TARGET: &str = include_str!("../../../tests/fixtures/seed_target.sql");
const TRICKY: &str = include_str!("../../../tests/fixtures/tricky.sql");
const APPS: &str = include_str!("../../../tests/fixtures/apps.sql");
const SPECIAL: &str = include_str!("../../../tests/fixtures/special.sql");

impl Fixture {
    /// The whole script, ready for `psql -f -`.
    pub fn sql(self) -> String {
        match self {
            Fixture::SeedSource => format!("{SEED_CORE}\n{SEED_SOURCE}"),
            Fixture::SeedTarget => format!("{SEED_CORE}\n{SEED_TARGET}"),
            Fixture::Tricky => TRICKY.to_string(),
            Fixture::Apps => APPS.to_string(),
            Fixture::Special => SPECIAL.to_string(),
        }
    }

    /// The roles [`Fixture::Apps`] names, with their logins' passwords.
    pub const APP_ROLES: &'static str = "CREATE ROLE app_owner NOLOGIN; \
        CREATE ROLE app_rw LOGIN PASSWORD 'app-rw-pw-5d2'; CREATE ROLE app_ro LOGIN PASSWORD 'app-ro-pw-8c4'";
}
