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
}

const SEED_CORE: &str = include_str!("../../../tests/fixtures/seed_core.sql");
const SEED_SOURCE: &str = include_str!("../../../tests/fixtures/seed_source.sql");
const SEED_TARGET: &str = include_str!("../../../tests/fixtures/seed_target.sql");
const TRICKY: &str = include_str!("../../../tests/fixtures/tricky.sql");

impl Fixture {
    /// The whole script, ready for `psql -f -`.
    pub fn sql(self) -> String {
        match self {
            Fixture::SeedSource => format!("{SEED_CORE}\n{SEED_SOURCE}"),
            Fixture::SeedTarget => format!("{SEED_CORE}\n{SEED_TARGET}"),
            Fixture::Tricky => TRICKY.to_string(),
        }
    }
}
