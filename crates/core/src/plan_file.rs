//! The plan file: the operator's declaration of source, target, consumers,
//! decommission and options (TOML). Unknown keys are errors: a typo must not
//! silently disable a safety setting.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanFile {
    /// The database whose data wins.
    pub source: EndpointSpec,
    /// The database that becomes the single source of truth.
    pub target: EndpointSpec,
    #[serde(default)]
    pub options: Options,
    /// Applications and configurations that connect to a database.
    #[serde(default, rename = "consumer")]
    pub consumers: Vec<ConsumerSpec>,
    /// What to do with the source at the end; absent = leave it alone.
    pub decommission: Option<DecommissionSpec>,
    /// The roles the source's owners, privileges and policies name.
    #[serde(default)]
    pub roles: RolesSpec,
}

/// `[roles]`: what to do when the target server lacks roles the source's
/// objects name (roles are cluster objects: the copy does not bring them).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RolesSpec {
    /// Create the missing roles on the target from the source's attributes
    /// (LOGIN, INHERIT, CREATEDB…, memberships), without passwords.
    #[serde(default)]
    pub create_missing: bool,
    /// With `create_missing`: copy the roles' password hashes too (reading
    /// them needs a superuser on the source).
    #[serde(default)]
    pub copy_passwords: bool,
    /// Source role → target role (`app_owner = "tovplay_owner"`): owners,
    /// grants, policies and settings naming the source role name the target
    /// role instead. Mapping roles to the operator reproduces a copy without
    /// owners or grants.
    #[serde(default)]
    pub map: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointSpec {
    /// `postgresql://user[:password]@host:port/database[?sslmode=…]`
    pub url: Option<String>,
    /// Name of an environment variable holding the URL.
    pub url_env: Option<String>,
    /// Name of an environment variable holding the password.
    pub password_env: Option<String>,
    /// Target only: clear it even when it holds data the source lacks.
    #[serde(default)]
    pub allow_ahead: bool,
    /// Other `host:port` spellings of this server, as applications write them
    /// (`postgres:5432` on a Docker network): how a consumer's configuration is
    /// recognised when its server cannot be reached from here.
    #[serde(default)]
    pub aliases: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Options {
    /// Artefacts: backups, file backups, logs, reports.
    pub run_dir: PathBuf,
    /// Schema of the journal in the target database.
    pub journal_schema: String,
    /// Make the source read-only for the copy (off: a snapshot copy; later writes are lost).
    pub freeze_source: bool,
    /// Tables copied at once (0 = one per CPU, at least 2).
    pub jobs: usize,
    /// Seconds to wait for a connection.
    pub connect_timeout: u64,
    /// Seconds a single statement may run (0 = no limit).
    pub statement_timeout: u64,
    /// Seconds to wait for a table lock.
    pub lock_timeout: u64,
    /// Seconds a copy stream may move no data before it fails (0 = never):
    /// catches a server that stops answering without closing the connection.
    pub stall_timeout: u64,
    /// Tables larger than this (bytes on disk), and than a worker's share of
    /// the data, are copied as several block ranges in parallel (0 = never).
    pub split_bytes: u64,
    /// Tables at least this large (bytes on disk) get their indexes and keys
    /// built as soon as their data is in, while other tables still copy
    /// (0 = every index after the last table).
    pub early_index_bytes: u64,
    /// Most memory (MB) one index build or foreign-key check during the copy
    /// may use on the target (sized to its table below that; up to `jobs` at
    /// once).
    pub build_memory_mb: u64,
    /// Tables at least this large (bytes on disk on the source) get
    /// `ANALYZE` on the target at the end of the copy, so the planner has
    /// statistics before applications move; smaller ones are left to
    /// autovacuum (0 = none).
    pub analyze_bytes: u64,
    /// How verify hashes rows: `auto` (each value's own exact hash where
    /// both servers are PostgreSQL 14 or later) or `text` (every row's text
    /// form, any version; slower).
    pub row_hash: RowHashChoice,
    /// `offline` (the source read-only for the whole copy) or `online`
    /// (logical replication: the applications pause only for the switch).
    pub mode: Mode,
    /// `[options.online]`: the online mode's limits.
    pub online: OnlineOptions,
    /// Who the fence keeps off the source once it stops taking the
    /// applications' writes (the offline freeze, the online switch):
    /// `"all"` (every role but cutover's own), `"consumers"` (the roles the
    /// consumers log in as), or a list of role names.
    pub fence: FenceScope,
    /// discover restores the source's schema into a scratch database on the
    /// target server before anything destructive (false: the copy finds a
    /// schema the target cannot recreate only after clear-target).
    pub rehearse_schema: bool,
}

/// `options.mode`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    #[default]
    Offline,
    Online,
}

/// `[options.online]`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct OnlineOptions {
    /// replicate is done once the target trails the source by less than
    /// this (bytes of WAL); the switch waits for the rest inside its pause.
    pub max_lag: u64,
    /// Seconds replicate waits for the target to come within `max_lag`
    /// before it stops (resumable; the applications keep running).
    pub lag_timeout: u64,
    /// Seconds the applications may stay paused while the other side
    /// catches up (the switch, and a rollback's way back); past it they
    /// resume where they were and the command stops, resumable. A number
    /// of seconds, above 0 and at most an hour.
    #[serde(with = "seconds::max_pause")]
    pub max_pause: Duration,
    /// Seconds a rollback waits, before pausing anything, for the reverse
    /// stream to bring the target's writes back (after it re-enabled a
    /// stream that had stopped); past it, it refuses with nothing paused.
    #[serde(with = "seconds::catch_up_timeout")]
    pub catch_up_timeout: Duration,
    /// `host:port` at which the target server reaches the source (its
    /// subscription connects there); default: the source's host and port.
    pub source_address: Option<String>,
    /// `host:port` at which the source server reaches the target (the
    /// reverse subscription); default: the target's host and port.
    pub target_address: Option<String>,
    /// Tables without a key (`schema.table`) to publish with `REPLICA
    /// IDENTITY FULL` (every UPDATE and DELETE then logs the whole row); the
    /// explicit choice for a keyless table, which the plan otherwise refuses.
    pub replica_identity_full: Vec<String>,
}

impl Default for OnlineOptions {
    fn default() -> OnlineOptions {
        OnlineOptions {
            max_lag: 16 << 20,
            lag_timeout: 3600,
            max_pause: Duration::from_secs(5),
            catch_up_timeout: Duration::from_secs(60),
            source_address: None,
            target_address: None,
            replica_identity_full: vec![],
        }
    }
}

/// `options.fence`: the roles kept off the source.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum FenceScope {
    /// Every role but cutover's own (the default).
    #[default]
    All,
    /// The roles the consumers log in as.
    Consumers,
    /// These roles.
    Roles(Vec<String>),
}

impl Serialize for FenceScope {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            FenceScope::All => s.serialize_str("all"),
            FenceScope::Consumers => s.serialize_str("consumers"),
            FenceScope::Roles(r) => r.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for FenceScope {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<FenceScope, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Word(String),
            Roles(Vec<String>),
        }
        let bad = || {
            serde::de::Error::custom(
                "options.fence: use \"all\" (every role but cutover's own), \"consumers\" (the consumers' \
                 roles) or a list of role names",
            )
        };
        match Raw::deserialize(d).map_err(|_| bad())? {
            Raw::Word(w) if w == "all" => Ok(FenceScope::All),
            Raw::Word(w) if w == "consumers" => Ok(FenceScope::Consumers),
            Raw::Word(_) => Err(bad()),
            Raw::Roles(r) if r.is_empty() || r.iter().any(|n| n.is_empty()) => Err(serde::de::Error::custom(
                "options.fence: the list names no role (or an empty name); to fence every role write \"all\"",
            )),
            Raw::Roles(r) => Ok(FenceScope::Roles(r)),
        }
    }
}

/// Durations in the plan file: a number of seconds (integer or not), finite,
/// above 0 and within the key's bound. Read once into a `Duration`; the key,
/// the value and the allowed range are in the message.
mod seconds {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn read<'de, D: Deserializer<'de>>(d: D, key: &str, max: f64) -> Result<Duration, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Num {
            Int(i64),
            Float(f64),
            Other(toml::Value),
        }
        let range = format!("a number of seconds above 0 and at most {max}");
        let v = match Num::deserialize(d)? {
            Num::Int(i) => i as f64,
            Num::Float(f) => f,
            Num::Other(v) => {
                return Err(serde::de::Error::custom(format!(
                    "{key} = {v}: must be {range}, written as a number (5 or 2.5, without quotes)"
                )));
            }
        };
        if !v.is_finite() || v <= 0.0 || v > max {
            return Err(serde::de::Error::custom(format!("{key} = {v}: must be {range}")));
        }
        Ok(Duration::from_secs_f64(v))
    }

    pub fn write<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }

    macro_rules! key {
        ($name:ident, $key:literal, $max:expr) => {
            pub mod $name {
                pub fn deserialize<'de, D: serde::Deserializer<'de>>(
                    d: D,
                ) -> Result<std::time::Duration, D::Error> {
                    super::read(d, $key, $max)
                }
                pub fn serialize<S: serde::Serializer>(
                    v: &std::time::Duration,
                    s: S,
                ) -> Result<S::Ok, S::Error> {
                    super::write(v, s)
                }
            }
        };
    }
    key!(max_pause, "options.online.max_pause", 3600.0);
    key!(catch_up_timeout, "options.online.catch_up_timeout", 86400.0);
}

/// `options.row_hash`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RowHashChoice {
    #[default]
    Auto,
    Text,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            run_dir: PathBuf::from("./cutover-run"),
            journal_schema: "cutover".into(),
            freeze_source: true,
            jobs: 0,
            connect_timeout: 10,
            statement_timeout: 0,
            lock_timeout: 30,
            split_bytes: 1 << 30,
            early_index_bytes: 32 << 20,
            build_memory_mb: 1024,
            stall_timeout: 300,
            row_hash: RowHashChoice::Auto,
            mode: Mode::Offline,
            online: OnlineOptions::default(),
            analyze_bytes: 8 << 20,
            rehearse_schema: true,
            fence: FenceScope::All,
        }
    }
}

/// `[[consumer]]` as the plan file writes it: the options of every kind.
/// Checked and turned into a [`ConsumerSpec`] when the plan is read.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConsumer {
    /// Unique name; the stage is `repoint:<name>`.
    name: String,
    kind: ConsumerKind,
    /// The file (every kind but command); relative to the plan file's folder.
    path: Option<PathBuf>,
    /// Where the whole connection is: env and properties: the key; yaml,
    /// json and python: the dotted key path; pg_service: the service's name.
    key: Option<String>,
    /// A connection split over several keys of the file, changed together
    /// (Laravel's DB_HOST, DB_PORT…; Rails' `production.host`…; beside
    /// `key`: Spring's `spring.datasource.username` next to its URL).
    #[serde(default)]
    keys: SplitKeys,
    /// How the file stores the values: `base64` (a Kubernetes Secret's `data`).
    encoding: Option<Encoding>,
    /// command: prints the consumer's connection on stdout.
    get: Option<String>,
    /// command: stores the connection given in `$CUTOVER_VALUE`.
    set: Option<String>,
    /// Name of an environment variable holding the exact connection this
    /// consumer gets on the target (its own user and password); default:
    /// the consumer's connection with the target's host, port, database and user.
    target_url_env: Option<String>,
    /// Run after the change (and after an undo), e.g. `docker compose up -d backend`.
    reload: Option<String>,
    /// SQL run through the consumer's new connection after the reload.
    health_sql: Option<String>,
    /// HTTP GET after the reload; must answer `health_expect`.
    health_url: Option<String>,
    /// An HTTP status (`200`, the default) or a text the body must contain.
    health_expect: Option<String>,
    /// Seconds the reload and the health probes may take (default 60).
    timeout: Option<u64>,
    /// pgbouncer: the admin console (`postgresql://admin@host:6432/pgbouncer`).
    admin_url: Option<String>,
    /// pgbouncer: an environment variable holding the admin console's URL.
    admin_url_env: Option<String>,
    /// pgbouncer: seconds `PAUSE` may take before it is abandoned (default 10).
    pause_timeout: Option<u64>,
}

/// An application that connects to a database: where its connection is
/// written (by kind), how to reload it and how to check it.
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "RawConsumer")]
pub struct ConsumerSpec {
    /// Unique name; the stage is `repoint:<name>`.
    pub name: String,
    /// Where its connection is written.
    pub config: ConsumerConfig,
    /// Name of an environment variable holding the exact connection this
    /// consumer gets on the target (its own user and password); default:
    /// the consumer's connection with the target's host, port, database and user.
    pub target_url_env: Option<String>,
    /// Run after the change (and after an undo), e.g. `docker compose up -d backend`.
    pub reload: Option<String>,
    /// SQL run through the consumer's new connection after the reload.
    pub health_sql: Option<String>,
    /// HTTP GET after the reload; must answer `health_expect`.
    pub health_url: Option<String>,
    /// An HTTP status (`200`, the default) or a text the body must contain.
    pub health_expect: Option<String>,
    /// Seconds the reload and the health probes may take (default 60).
    pub timeout: Option<u64>,
}

/// Where a consumer's connection is written: one variant per kind of
/// configuration, with what that kind needs (paths relative to the plan
/// file's folder).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConsumerConfig {
    /// A file of keys (env, yaml, json, properties, python): `key` holds the
    /// whole connection, `keys` its parts (Laravel's DB_HOST, DB_PORT…;
    /// Rails' `production.host`…; beside `key`, Spring's
    /// `spring.datasource.username` next to its URL); at least one of them.
    Keyed {
        kind: KeyedKind,
        path: PathBuf,
        key: Option<String>,
        keys: SplitKeys,
        /// How the file stores the values: `base64` (a Kubernetes Secret's `data`).
        encoding: Option<Encoding>,
    },
    /// A service of a connection service file (`pg_service.conf`).
    PgService { path: PathBuf, service: String },
    /// Every PostgreSQL connection in a text file (and `.pgpass` lines).
    Text { path: PathBuf },
    /// `get` prints the connection on stdout; `set` stores the one given
    /// in `$CUTOVER_VALUE`.
    Command { get: String, set: String },
    /// A `[databases]` entry of a PgBouncer configuration, switched through
    /// its admin console: `PAUSE`, rewrite, `RELOAD`, `RESUME`.
    Pgbouncer {
        path: PathBuf,
        /// The entry's name (what the applications ask PgBouncer for).
        database: String,
        admin: AdminConsole,
        /// Seconds `PAUSE` may take before it is abandoned.
        pause_timeout: u64,
    },
}

/// Where PgBouncer's admin console is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminConsole {
    Url(String),
    /// An environment variable holding the URL.
    Env(String),
}

impl AdminConsole {
    /// The console's URL, or a message naming what is missing.
    pub fn url(&self) -> Result<String> {
        match self {
            AdminConsole::Url(u) => Ok(u.clone()),
            AdminConsole::Env(var) => std::env::var(var).map_err(|_| {
                Error::bad_input(format!(
                    "admin_url_env names {var}, which is not set in this environment; export it"
                ))
            }),
        }
    }
}

/// The kinds of files of keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyedKind {
    Env,
    Yaml,
    Json,
    Properties,
    Python,
    Ini,
    Toml,
    Php,
}

impl ConsumerConfig {
    pub fn kind(&self) -> ConsumerKind {
        match self {
            ConsumerConfig::Keyed { kind, .. } => match kind {
                KeyedKind::Env => ConsumerKind::Env,
                KeyedKind::Yaml => ConsumerKind::Yaml,
                KeyedKind::Json => ConsumerKind::Json,
                KeyedKind::Properties => ConsumerKind::Properties,
                KeyedKind::Python => ConsumerKind::Python,
                KeyedKind::Ini => ConsumerKind::Ini,
                KeyedKind::Toml => ConsumerKind::Toml,
                KeyedKind::Php => ConsumerKind::Php,
            },
            ConsumerConfig::PgService { .. } => ConsumerKind::PgService,
            ConsumerConfig::Pgbouncer { .. } => ConsumerKind::Pgbouncer,
            ConsumerConfig::Text { .. } => ConsumerKind::Text,
            ConsumerConfig::Command { .. } => ConsumerKind::Command,
        }
    }

    /// The file, for every kind but command.
    pub fn path(&self) -> Option<&Path> {
        match self {
            ConsumerConfig::Keyed { path, .. }
            | ConsumerConfig::PgService { path, .. }
            | ConsumerConfig::Pgbouncer { path, .. }
            | ConsumerConfig::Text { path } => Some(path),
            ConsumerConfig::Command { .. } => None,
        }
    }
}

impl ConsumerSpec {
    pub fn kind(&self) -> ConsumerKind {
        self.config.kind()
    }
}

impl TryFrom<RawConsumer> for ConsumerSpec {
    type Error = Error;
    /// Checks and types a `[[consumer]]` in one pass: what a kind needs is
    /// taken from the entry or named as missing, never assumed.
    fn try_from(c: RawConsumer) -> Result<ConsumerSpec> {
        let name = &c.name;
        if name.is_empty()
            || !name
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || "-_.".contains(ch))
        {
            return Err(Error::bad_input(format!(
                "[[consumer]] name {name:?}: use letters, digits, '-', '_' and '.' (it names a stage and a backup file)"
            )));
        }
        let missing = |what: &str| {
            Error::bad_input(format!(
                "[[consumer]] {name:?} (kind = {}) needs `{what}`",
                as_toml(&c.kind)
            ))
        };
        let unused = |what: &str| {
            Err(Error::bad_input(format!(
                "[[consumer]] {name:?}: `{what}` does not apply to kind = {}",
                as_toml(&c.kind)
            )))
        };
        let path = || c.path.clone().ok_or_else(|| missing("path"));
        let key = || c.key.clone().ok_or_else(|| missing("key"));
        let config = match c.kind {
            ConsumerKind::PgService => {
                let (path, service) = (path()?, key()?);
                if !c.keys.is_empty() {
                    return Err(Error::bad_input(format!(
                        "[[consumer]] {name:?}: `keys` does not apply to kind = \"pg_service\" (the service's host, \
                         port, dbname, user and password lines are its keys)"
                    )));
                }
                ConsumerConfig::PgService { path, service }
            }
            ConsumerKind::Env
            | ConsumerKind::Yaml
            | ConsumerKind::Json
            | ConsumerKind::Properties
            | ConsumerKind::Python
            | ConsumerKind::Ini
            | ConsumerKind::Toml
            | ConsumerKind::Php => {
                let path = path()?;
                if c.key.is_none() && c.keys.is_empty() {
                    return Err(Error::bad_input(format!(
                        "[[consumer]] {name:?} (kind = {}) needs `key` (the key holding the whole connection) or `keys` \
                         (the keys holding its host, port, dbname, user and password)",
                        as_toml(&c.kind)
                    )));
                }
                if c.key.is_none() && c.keys.host.is_none() && c.keys.dbname.is_none() {
                    return Err(Error::bad_input(format!(
                        "[[consumer]] {name:?}: keys names neither a host nor a database key, so it names no database"
                    )));
                }
                ConsumerConfig::Keyed {
                    kind: match c.kind {
                        ConsumerKind::Env => KeyedKind::Env,
                        ConsumerKind::Yaml => KeyedKind::Yaml,
                        ConsumerKind::Json => KeyedKind::Json,
                        ConsumerKind::Properties => KeyedKind::Properties,
                        ConsumerKind::Ini => KeyedKind::Ini,
                        ConsumerKind::Toml => KeyedKind::Toml,
                        ConsumerKind::Php => KeyedKind::Php,
                        _ => KeyedKind::Python,
                    },
                    path,
                    key: c.key.clone(),
                    keys: c.keys.clone(),
                    encoding: c.encoding,
                }
            }
            ConsumerKind::Text => {
                let path = path()?;
                if c.key.is_some() {
                    return unused("key");
                }
                ConsumerConfig::Text { path }
            }
            ConsumerKind::Pgbouncer => {
                let (path, database) = (path()?, key()?);
                let admin = match (&c.admin_url, &c.admin_url_env) {
                    (None, None) => {
                        return Err(Error::bad_input(format!(
                            "[[consumer]] {name:?} (kind = \"pgbouncer\") needs `admin_url` or `admin_url_env`: the \
                             entry is switched through PgBouncer's admin console (PAUSE, RELOAD, RESUME)"
                        )));
                    }
                    (Some(_), Some(_)) => {
                        return Err(Error::bad_input(format!(
                            "[[consumer]] {name:?}: give `admin_url` or `admin_url_env`, not both"
                        )));
                    }
                    (Some(u), None) => AdminConsole::Url(u.clone()),
                    (None, Some(v)) => AdminConsole::Env(v.clone()),
                };
                let pause_timeout = match c.pause_timeout {
                    Some(0) => {
                        return Err(Error::bad_input(format!(
                            "[[consumer]] {name:?}: pause_timeout must be at least 1 second"
                        )));
                    }
                    t => t.unwrap_or(10),
                };
                ConsumerConfig::Pgbouncer {
                    path,
                    database,
                    admin,
                    pause_timeout,
                }
            }
            ConsumerKind::Command => ConsumerConfig::Command {
                get: c.get.clone().ok_or_else(|| missing("get"))?,
                set: c.set.clone().ok_or_else(|| missing("set"))?,
            },
        };
        if (!c.kind.is_keyed() || c.kind == ConsumerKind::Pgbouncer) && !c.keys.is_empty() {
            return unused("keys");
        }
        if c.encoding.is_some()
            && !matches!(
                c.kind,
                ConsumerKind::Env | ConsumerKind::Yaml | ConsumerKind::Json
            )
        {
            return unused("encoding");
        }
        if c.kind != ConsumerKind::Command && (c.get.is_some() || c.set.is_some()) {
            return unused("get/set");
        }
        if c.kind != ConsumerKind::Pgbouncer
            && (c.admin_url.is_some() || c.admin_url_env.is_some() || c.pause_timeout.is_some())
        {
            return unused("admin_url/admin_url_env/pause_timeout");
        }
        if c.health_expect.is_some() && c.health_url.is_none() {
            return Err(Error::bad_input(format!(
                "[[consumer]] {name:?}: health_expect needs health_url"
            )));
        }
        Ok(ConsumerSpec {
            name: c.name,
            config,
            target_url_env: c.target_url_env,
            reload: c.reload,
            health_sql: c.health_sql,
            health_url: c.health_url,
            health_expect: c.health_expect,
            timeout: c.timeout,
        })
    }
}

/// The keys that each hold one part of a split connection.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SplitKeys {
    pub host: Option<String>,
    pub port: Option<String>,
    pub dbname: Option<String>,
    pub user: Option<String>,
    pub password: Option<String>,
}

impl SplitKeys {
    pub fn is_empty(&self) -> bool {
        self.named().next().is_none()
    }

    /// (`host`, `DB_HOST`), … for the keys given, in libpq's order.
    pub fn named(&self) -> impl Iterator<Item = (&'static str, &str)> {
        [
            ("host", &self.host),
            ("port", &self.port),
            ("dbname", &self.dbname),
            ("user", &self.user),
            ("password", &self.password),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.as_deref().map(|v| (k, v)))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Encoding {
    Base64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ConsumerKind {
    #[default]
    Env,
    Yaml,
    /// A JSON document (appsettings.json): `key` is a dotted path.
    Json,
    /// A Java `.properties` file (Spring's application.properties).
    Properties,
    /// A Python settings module (Django's settings.py): literal values of
    /// top-level assignments, `key` a dotted path (`DATABASES.default.HOST`).
    Python,
    /// An INI file (airflow.cfg, grafana.ini, Gitea's app.ini): `key` is
    /// `section.key` (`database.sql_alchemy_conn`).
    Ini,
    /// A TOML file: `key` is a dotted path (`database.dsn`).
    Toml,
    /// A PHP configuration array (Nextcloud's config.php): `key` is the
    /// array's key path (`dbhost`).
    Php,
    /// A connection service file (`pg_service.conf`): `key` names the service.
    PgService,
    /// PgBouncer's configuration (`pgbouncer.ini`): `key` names the
    /// `[databases]` entry; switched through the admin console.
    Pgbouncer,
    Text,
    Command,
}

impl ConsumerKind {
    /// A file of keys, where `key`/`keys` say which.
    pub fn is_keyed(self) -> bool {
        !matches!(self, ConsumerKind::Text | ConsumerKind::Command)
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DecommissionSpec {
    pub driver: DecommissionDriver,
    /// docker: the source's container (name or id).
    pub container: Option<String>,
    /// command: retires the source.
    pub stop: Option<String>,
    /// command: brings it back (the undo).
    pub start: Option<String>,
    /// command: destroys it (only with `destroy = true` and `--destroy`).
    pub destroy_command: Option<String>,
    /// Destroy instead of quarantine: drop the database / remove the
    /// container. Also needs `--destroy` on the command line. Irreversible.
    #[serde(default)]
    pub destroy: bool,
    /// docker, with destroy: also remove the container's volumes.
    #[serde(default)]
    pub remove_volumes: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DecommissionDriver {
    None,
    Postgres,
    Docker,
    Command,
}

/// Parses and validates a plan file's text; the error names line and column.
pub fn parse(text: &str) -> Result<PlanFile> {
    let file: PlanFile = toml::from_str(text)
        .map_err(|e| {
            let msg = e.message().to_string();
            match e.span() {
                Some(span) => {
                    let (line, col) = line_col(text, span.start);
                    format!("line {line}, column {col}: {msg}")
                }
                None => msg,
            }
        })
        .map_err(Error::bad_input)?;
    validate(&file)?;
    Ok(file)
}

fn validate(file: &PlanFile) -> Result<()> {
    let schema = &file.options.journal_schema;
    if schema.is_empty()
        || !schema
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    {
        return Err(Error::bad_input(format!(
            "options.journal_schema = {schema:?}: use lower-case letters, digits and underscores"
        )));
    }
    if file.source.allow_ahead {
        return Err(Error::bad_input(
            "allow_ahead belongs under [target], not [source]",
        ));
    }
    let o = &file.options;
    let o2 = &o.online;
    for (key, value, min, max) in [
        ("options.jobs", o.jobs as u64, 0, 256),
        ("options.connect_timeout", o.connect_timeout, 1, 3600),
        ("options.statement_timeout", o.statement_timeout, 0, 30 * 86400),
        ("options.lock_timeout", o.lock_timeout, 1, 86400),
        ("options.stall_timeout", o.stall_timeout, 0, 86400),
        ("options.build_memory_mb", o.build_memory_mb, 1, 2 << 20),
        ("options.online.lag_timeout", o2.lag_timeout, 1, 30 * 86400),
        ("options.online.max_lag", o2.max_lag, 0, 1 << 40),
    ] {
        if value < min || value > max {
            return Err(Error::bad_input(format!(
                "{key} = {value}: must be between {min} and {max}; nothing was changed"
            )));
        }
    }

    let mut names = std::collections::BTreeSet::new();
    for c in &file.consumers {
        if !names.insert(&c.name) {
            return Err(Error::bad_input(format!(
                "two [[consumer]] entries are named {:?}: names must be unique",
                c.name
            )));
        }
    }
    if let Some(d) = &file.decommission {
        let need = |what: &str, v: &Option<String>| match v {
            Some(_) => Ok(()),
            None => Err(Error::bad_input(format!(
                "[decommission] driver = {} needs `{what}`",
                as_toml(&d.driver)
            ))),
        };
        match d.driver {
            DecommissionDriver::Docker => need("container", &d.container)?,
            DecommissionDriver::Command => {
                need("stop", &d.stop)?;
                need("start", &d.start)?;
                if d.destroy {
                    need("destroy_command", &d.destroy_command)?;
                }
            }
            DecommissionDriver::None if d.destroy => {
                return Err(Error::bad_input(
                    "[decommission] destroy = true needs a driver (postgres, docker or command)",
                ));
            }
            _ => {}
        }
    }
    Ok(())
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map(|l| l.chars().count()).unwrap_or(0) + 1;
    (line, col)
}

pub fn fingerprint(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// A value as the plan file spells it (`"command"`, not `Command`).
fn as_toml<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "[source]\nurl = \"postgresql://a@h/s\"\n[target]\nurl = \"postgresql://a@h/t\"\n";

    #[test]
    fn minimal_plan_gets_defaults() {
        let plan = parse(MINIMAL).unwrap();
        assert_eq!(plan.options.journal_schema, "cutover");
        assert!(plan.options.freeze_source);
        assert!(plan.consumers.is_empty() && plan.decommission.is_none());
    }

    #[test]
    fn unknown_key_names_line_and_column() {
        let err = parse(&format!("{MINIMAL}[options]\nfreeze_sorce = false\n"))
            .unwrap_err()
            .message;
        assert!(err.starts_with("line 6, column 1:"), "{err}");
        assert!(err.contains("unknown field `freeze_sorce`"), "{err}");
        assert!(
            err.contains("freeze_source"),
            "the message lists what was expected: {err}"
        );
    }

    #[test]
    fn durations_are_finite_positive_numbers_read_once() {
        let online = |v: &str| parse(&format!("{MINIMAL}[options.online]\nmax_pause = {v}\n"));
        assert_eq!(
            online("2.5").unwrap().options.online.max_pause,
            Duration::from_millis(2500)
        );
        assert_eq!(
            online("3").unwrap().options.online.max_pause,
            Duration::from_secs(3)
        );
        for bad in ["-1", "-1.0", "0", "0.0", "nan", "inf", "-inf", "3601"] {
            let err = online(bad).unwrap_err().message;
            assert!(
                err.contains("options.online.max_pause") && err.contains("above 0 and at most 3600"),
                "{bad}: {err}"
            );
        }
        let err = online("\"5\"").unwrap_err().message;
        assert!(
            err.contains("without quotes") && err.contains("max_pause"),
            "{err}"
        );
        let err = parse(&format!("{MINIMAL}[options]\nconnect_timeout = 0\n"))
            .unwrap_err()
            .message;
        assert!(
            err.contains("options.connect_timeout = 0") && err.contains("between 1 and"),
            "{err}"
        );
        let err = parse(&format!("{MINIMAL}[options]\njobs = -2\n"))
            .unwrap_err()
            .message;
        assert!(err.contains("line 6"), "{err}");
    }

    #[test]
    fn the_fence_is_every_role_unless_narrowed() {
        assert_eq!(parse(MINIMAL).unwrap().options.fence, FenceScope::All);
        let fence = |v: &str| parse(&format!("{MINIMAL}[options]\nfence = {v}\n"));
        assert_eq!(
            fence("\"consumers\"").unwrap().options.fence,
            FenceScope::Consumers
        );
        assert_eq!(
            fence("[\"app_rw\", \"cron\"]").unwrap().options.fence,
            FenceScope::Roles(vec!["app_rw".into(), "cron".into()])
        );
        for bad in ["\"some\"", "[]", "3"] {
            let err = fence(bad).unwrap_err().message;
            assert!(err.contains("options.fence"), "{bad}: {err}");
        }
    }

    #[test]
    fn wrong_type_and_missing_section() {
        let err = parse(&format!("{MINIMAL}[options]\njobs = \"four\"\n"))
            .unwrap_err()
            .message;
        assert!(err.contains("line 6") && err.contains("invalid type"), "{err}");
        let err = parse("[source]\nurl = \"postgresql://a@h/s\"\n")
            .unwrap_err()
            .message;
        assert!(err.contains("missing field `target`"), "{err}");
    }

    #[test]
    fn validation_rejects_bad_schema_and_duplicate_consumers() {
        let err = parse(&format!("{MINIMAL}[options]\njournal_schema = \"Bad-Name\"\n"))
            .unwrap_err()
            .message;
        assert!(err.contains("journal_schema"), "{err}");
        let c = "[[consumer]]\nname = \"a\"\nkind = \"env\"\npath = \"x\"\nkey = \"K\"\n";
        let err = parse(&format!("{MINIMAL}{c}{c}")).unwrap_err().message;
        assert!(err.contains("unique"), "{err}");
        let err = parse(&format!(
            "{MINIMAL}[[consumer]]\nname = \"a\"\nkind = \"yaml\"\npath = \"x\"\n"
        ))
        .unwrap_err()
        .message;
        assert!(err.contains("needs `key`"), "{err}");
        let err = parse(&format!("{MINIMAL}[decommission]\ndriver = \"docker\"\n"))
            .unwrap_err()
            .message;
        assert!(err.contains("needs `container`"), "{err}");
    }

    #[test]
    fn each_kind_of_consumer_reads_as_its_variant() {
        let plan = parse(&format!(
            "{MINIMAL}\
             [[consumer]]\nname = \"laravel\"\nkind = \"env\"\npath = \".env\"\nkeys = {{ host = \"DB_HOST\", dbname = \"DB_DATABASE\" }}\n\
             [[consumer]]\nname = \"secret\"\nkind = \"yaml\"\npath = \"s.yaml\"\nkey = \"data.URL\"\nencoding = \"base64\"\n\
             [[consumer]]\nname = \"svc\"\nkind = \"pg_service\"\npath = \"pg_service.conf\"\nkey = \"analytics\"\n\
             [[consumer]]\nname = \"cron\"\nkind = \"text\"\npath = \"crontab\"\n\
             [[consumer]]\nname = \"vault\"\nkind = \"command\"\nget = \"vault read\"\nset = \"vault write\"\nreload = \"true\"\n"
        ))
        .unwrap();
        let c = &plan.consumers;
        assert!(matches!(
            &c[0].config,
            ConsumerConfig::Keyed { kind: KeyedKind::Env, key: None, keys, encoding: None, .. }
                if keys.host.as_deref() == Some("DB_HOST")
        ));
        assert!(matches!(
            &c[1].config,
            ConsumerConfig::Keyed { kind: KeyedKind::Yaml, key: Some(k), encoding: Some(Encoding::Base64), .. }
                if k == "data.URL"
        ));
        assert_eq!(
            c[2].config,
            ConsumerConfig::PgService {
                path: "pg_service.conf".into(),
                service: "analytics".into()
            }
        );
        assert_eq!(
            c[3].config,
            ConsumerConfig::Text {
                path: "crontab".into()
            }
        );
        assert_eq!(
            c[4].config,
            ConsumerConfig::Command {
                get: "vault read".into(),
                set: "vault write".into()
            }
        );
        assert_eq!(c[4].reload.as_deref(), Some("true"));
        assert_eq!(c[4].config.path(), None);
        assert_eq!(c[3].kind(), ConsumerKind::Text);
        // An option of another kind is refused, naming the consumer and its line.
        let err = parse(&format!(
            "{MINIMAL}[[consumer]]\nname = \"cron\"\nkind = \"text\"\npath = \"crontab\"\nget = \"x\"\n"
        ))
        .unwrap_err()
        .message;
        assert!(
            err.starts_with("line 5") && err.contains("`get/set` does not apply to kind = \"text\""),
            "{err}"
        );
    }
}
