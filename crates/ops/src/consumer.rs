//! Reading a consumer's configuration: where its connection is written, which
//! database it points at (by the server's identity when it can be reached
//! from here, by host, port and database name otherwise), and what it will
//! look like pointed at the target.

use std::path::{Path, PathBuf};
use std::time::Duration;

use cutover_core::endpoint::Endpoint;
use cutover_core::identity::ServerIdentity;
use cutover_core::loaded::LoadedPlan;
use cutover_core::plan_file::{
    ConsumerConfig, ConsumerKind, ConsumerSpec, Encoding, EndpointSpec, SplitKeys,
};
use cutover_core::redact::redact_text;
use cutover_core::{Error, Result};
use serde::Serialize;

use crate::conn::{ConnString, Destination, Field, same_host};
use crate::locate::{self, Occurrence};
use crate::{files, hooks};

/// One of the two databases, as consumers may write it.
#[derive(Debug, Clone)]
pub struct Side {
    pub identity: ServerIdentity,
    pub host: String,
    pub port: u16,
    pub dbname: String,
    pub aliases: Vec<(String, u16)>,
}

impl Side {
    pub fn new(identity: ServerIdentity, endpoint: &Endpoint, spec: &EndpointSpec) -> Result<Side> {
        let mut aliases = vec![];
        for a in &spec.aliases {
            let (h, p) = a.rsplit_once(':').unwrap_or((a.as_str(), "5432"));
            let port = p.parse().map_err(|_| {
                Error::bad_input(format!(
                    "[{}] aliases: {a:?} is not host:port",
                    endpoint.role.to_string().to_lowercase()
                ))
            })?;
            aliases.push((h.to_string(), port));
        }
        Ok(Side {
            identity,
            host: endpoint.host.clone(),
            port: endpoint.port,
            dbname: endpoint.dbname.clone(),
            aliases,
        })
    }

    fn matches_address(&self, c: &ConnString) -> bool {
        let (host, port, db) = (c.host(), c.port(), c.dbname().unwrap_or_default());
        db == self.dbname
            && ((same_host(&host, &self.host) && port == self.port)
                || self
                    .aliases
                    .iter()
                    .any(|(h, p)| same_host(&host, h) && port == *p))
    }
}

/// Both databases, and how to reach the target from a consumer.
#[derive(Debug, Clone)]
pub struct Servers {
    pub source: Side,
    pub target: Side,
    /// The target as the plan reaches it (host, port, database, user, password).
    pub target_destination: Destination,
    /// Seconds to wait when probing a consumer's connection.
    pub probe_timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Which {
    Source,
    Target,
    Other,
}

impl std::fmt::Display for Which {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Which::Source => "the source",
            Which::Target => "the target",
            Which::Other => "neither the source nor the target",
        })
    }
}

/// Where one connection points, and how that was established.
#[derive(Debug, Clone, Serialize)]
pub struct Located {
    pub which: Which,
    /// The server it reached, when it could be reached from here.
    pub reached: Option<ServerIdentity>,
    /// "reached 10.0.0.5:5432/app" or "by address (not reachable from here: …)".
    pub how: String,
}

/// What one value in a consumer's configuration holds.
#[derive(Debug, Clone)]
pub enum Holds {
    /// A whole connection (URL, JDBC URL, keyword or Npgsql string).
    Connection(ConnString),
    /// A `.pgpass` line.
    Pgpass,
    /// One part of a connection split over several keys.
    Field(Field),
    /// A host and its port in one value (`127.0.0.1:5432`: Grafana's `host`,
    /// Gitea's `HOST`, Nextcloud's `dbhost`).
    HostPort,
}

/// One value of a connection, where the file holds it.
#[derive(Debug, Clone)]
pub struct Part {
    /// The key it is at (empty in text files and command output).
    pub key: String,
    pub occurrence: Occurrence,
    pub holds: Holds,
}

/// One connection found in a consumer's configuration: one value, or the
/// keys that together make it.
#[derive(Debug, Clone)]
pub struct Found {
    pub parts: Vec<Part>,
    /// What the application connects with (the parts put together).
    pub conn: ConnString,
    pub located: Located,
}

impl Found {
    /// The line of its first part.
    pub fn line(&self) -> usize {
        self.parts[0].occurrence.line
    }

    /// The connection as the file writes it, passwords redacted.
    pub fn shown(&self) -> String {
        if let [p] = self.parts.as_slice()
            && !matches!(p.holds, Holds::Field(_))
        {
            return redact_lines(&p.occurrence.value);
        }
        self.parts
            .iter()
            .map(|p| {
                let v = match p.holds {
                    Holds::Field(Field::Password) => "***".to_string(),
                    _ => redact_lines(&p.occurrence.value),
                };
                format!("{}={v}", p.key)
            })
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Whether the file gives this connection a password.
    pub fn has_password(&self) -> bool {
        self.conn.password().is_some()
    }
}

/// A consumer's configuration as read now.
#[derive(Debug, Clone)]
pub struct Reading {
    pub spec: ConsumerSpec,
    /// The file (not for command consumers).
    pub path: Option<PathBuf>,
    /// The file's text, or the `get` command's output.
    pub content: String,
    pub found: Vec<Found>,
    /// Connections in a text file that point elsewhere (left alone).
    pub ignored: Vec<Found>,
}

/// The folder commands run in and relative paths start from.
pub fn base_dir(plan_path: &Path) -> PathBuf {
    plan_path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn consumer_error(spec: &ConsumerSpec, msg: impl std::fmt::Display) -> Error {
    Error::bad_input(format!("consumer {}: {msg}", spec.name))
}

/// The consumer's file, resolved against the plan file's folder.
pub fn file_path(spec: &ConsumerSpec, base: &Path) -> Option<PathBuf> {
    spec.config.path().map(|p| {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            base.join(p)
        }
    })
}

/// Reads the consumer's configuration and locates every connection in it.
pub async fn read(spec: &ConsumerSpec, base: &Path, servers: &Servers) -> Result<Reading> {
    let path = file_path(spec, base);
    let timeout = Duration::from_secs(spec.timeout.unwrap_or(60));
    let content = match (&spec.config, &path) {
        (ConsumerConfig::Command { get, .. }, _) => {
            hooks::run_command("the get command", get, base, &[], timeout)
                .await
                .map_err(|e| consumer_error(spec, e.message))?
                .trim_end_matches(['\n', '\r'])
                .to_string()
        }
        (_, Some(p)) => std::fs::read_to_string(p).map_err(|e| {
            consumer_error(
                spec,
                format!("cannot read {}: {e}; fix `path` in the plan file", p.display()),
            )
        })?,
        (_, None) => return Err(consumer_error(spec, "`path` is missing")),
    };
    let shown_path = path.as_ref().map(|p| p.display().to_string()).unwrap_or_default();
    let connections: Vec<(Vec<Part>, ConnString)> = match &spec.config {
        ConsumerConfig::Text { .. } => locate::text(&content)
            .into_iter()
            .filter_map(|occ| {
                let (conn, holds) = if occ.pgpass {
                    (pgpass_conn(&occ.value)?, Holds::Pgpass)
                } else {
                    let c = ConnString::parse(&occ.value)?;
                    (c.clone(), Holds::Connection(c))
                };
                Some((
                    vec![Part {
                        key: String::new(),
                        occurrence: occ,
                        holds,
                    }],
                    conn,
                ))
            })
            .collect(),
        ConsumerConfig::Command { .. } => {
            let occ = Occurrence {
                line: 1,
                start: 0,
                end: content.len(),
                value: content.clone(),
                // The whole value goes to the set command as $CUTOVER_VALUE.
                quoting: locate::Quoting::Raw,
                pgpass: false,
            };
            let conn = parse_connection(spec, &occ, "")?;
            vec![(
                vec![Part {
                    key: String::new(),
                    occurrence: occ,
                    holds: Holds::Connection(conn.clone()),
                }],
                conn,
            )]
        }
        ConsumerConfig::Keyed { .. }
        | ConsumerConfig::PgService { .. }
        | ConsumerConfig::Pgbouncer { .. } => {
            vec![keyed(spec, &content, &shown_path)?]
        }
    };
    let mut found = vec![];
    let mut ignored = vec![];
    for (parts, conn) in connections {
        let pgpass = matches!(parts[0].holds, Holds::Pgpass);
        let located = locate_conn(&conn, pgpass, servers).await;
        let f = Found { parts, conn, located };
        if spec.kind() == ConsumerKind::Text && f.located.which == Which::Other {
            ignored.push(f);
        } else {
            found.push(f);
        }
    }
    if found.is_empty() {
        return Err(consumer_error(
            spec,
            format!(
                "no connection to the source or the target found in {shown_path} ({} other connection(s) left \
                 alone); if the file names the source by another host name, add it to [source] aliases",
                ignored.len()
            ),
        ));
    }
    Ok(Reading {
        spec: spec.clone(),
        path,
        content,
        found,
        ignored,
    })
}

/// The value as a connection, or an error naming the key and what was expected.
fn parse_connection(spec: &ConsumerSpec, occ: &Occurrence, key: &str) -> Result<ConnString> {
    ConnString::parse(&occ.value).ok_or_else(|| {
        consumer_error(
            spec,
            format!(
                "line {}: {}{:?} is not a PostgreSQL connection (a postgresql:// or jdbc:postgresql:// URL, \
                 host=… dbname=…, or Host=…;Database=…); name its parts with `keys` if the file splits them",
                occ.line,
                if key.is_empty() {
                    String::new()
                } else {
                    format!("{key} = ")
                },
                redact_text(&occ.value)
            ),
        )
    })
}

/// The connection a keyed file holds at `key` and/or `keys` (for
/// pg_service: the service's lines), values decoded where `encoding` says.
fn keyed(spec: &ConsumerSpec, content: &str, shown_path: &str) -> Result<(Vec<Part>, ConnString)> {
    let leaves = locate::leaves(spec.kind(), content)
        .map_err(|e| consumer_error(spec, format!("{shown_path}: {e}")))?;
    let no_keys = SplitKeys::default();
    let (key, keys, encoding) = match &spec.config {
        ConsumerConfig::Keyed {
            key, keys, encoding, ..
        } => (key.clone(), keys, *encoding),
        ConsumerConfig::PgService { service, .. } => (Some(service.clone()), &no_keys, None),
        // The `[databases]` entry holds the whole connection.
        ConsumerConfig::Pgbouncer { database, .. } => (Some(format!("databases.{database}")), &no_keys, None),
        ConsumerConfig::Text { .. } | ConsumerConfig::Command { .. } => (None, &no_keys, None),
    };
    let lookup = |key: &str, fix: &str| -> Result<Option<Occurrence>> {
        let occ =
            locate::find(&leaves, key).map_err(|e| consumer_error(spec, format!("{shown_path}: {e}")))?;
        let Some(mut occ) = occ else {
            return if fix.is_empty() {
                Ok(None)
            } else {
                Err(consumer_error(
                    spec,
                    format!("{key} is not set in {shown_path}; fix {fix} in the plan file"),
                ))
            };
        };
        if encoding == Some(Encoding::Base64) {
            use base64::Engine;
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(occ.value.trim())
                .map_err(|e| consumer_error(spec, format!("line {}: {key} is not base64 ({e})", occ.line)))?;
            occ.value = String::from_utf8(bytes).map_err(|_| {
                consumer_error(spec, format!("line {}: {key} does not decode to text", occ.line))
            })?;
        }
        Ok(Some(occ))
    };
    let mut parts = vec![];
    let mut fields = vec![];
    let mut whole = None;
    if let ConsumerConfig::PgService { service, .. } = &spec.config {
        for f in Field::ALL {
            let key = format!("{service}.{}", f.keyword());
            if let Some(occ) = lookup(&key, "")? {
                fields.push((f, occ.value.clone()));
                parts.push(Part {
                    key: f.keyword().to_string(),
                    occurrence: occ,
                    holds: Holds::Field(f),
                });
            }
        }
        if parts.is_empty() {
            return Err(consumer_error(
                spec,
                format!(
                    "{shown_path} has no service [{service}] with host, port, dbname, user or password lines; fix \
                     `key` in the plan file"
                ),
            ));
        }
    } else {
        if let Some(key) = &key
            && let Some(occ) = lookup(key, "`key`")?
        {
            let conn = parse_connection(spec, &occ, key)?;
            whole = Some(conn.clone());
            parts.push(Part {
                key: key.clone(),
                occurrence: occ,
                holds: Holds::Connection(conn),
            });
        }
        for (name, key) in keys.named() {
            let f = Field::ALL.into_iter().find(|f| f.keyword() == name).unwrap();
            let occ = lookup(key, &format!("keys.{name}"))?.unwrap();
            let holds = match crate::conn::split_host_port(&occ.value) {
                Some((host, port)) if f == Field::Host => {
                    fields.push((Field::Host, host));
                    if keys.port.is_none() {
                        fields.push((Field::Port, port.to_string()));
                    }
                    Holds::HostPort
                }
                _ => {
                    fields.push((f, occ.value.clone()));
                    Holds::Field(f)
                }
            };
            parts.push(Part {
                key: key.to_string(),
                occurrence: occ,
                holds,
            });
        }
    }
    let conn = match whole {
        Some(w) => w.with_fields(&fields),
        None => ConnString::from_fields(&fields)
            .ok_or_else(|| consumer_error(spec, "its keys name neither a host nor a database".to_string()))?,
    };
    Ok((parts, conn))
}

/// host:port:database:user:password as a keyword connection.
pub fn pgpass_conn(line: &str) -> Option<ConnString> {
    let f: Vec<&str> = line.splitn(5, ':').collect();
    if f.len() < 5 || f[1] == "*" || f[2] == "*" {
        return None;
    }
    let q = |v: &str| format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"));
    ConnString::parse(&format!(
        "host={} port={} dbname={} user={} password={}",
        q(f[0]),
        f[1],
        q(f[2]),
        q(f[3]),
        q(f[4])
    ))
}

/// How a probe logs in with a consumer's connection, as the application
/// would: its own user and password; where the file holds no password, the
/// plan's password when the user is the plan's target user (and the probe
/// goes to the target), else whatever this machine offers (PGPASSWORD,
/// ~/.pgpass, trust). `note` says which, for the reports.
pub struct Login {
    pub url: String,
    pub note: Option<String>,
}

impl Login {
    pub fn new(conn: &ConnString, servers: &Servers, to_target: bool) -> Login {
        if conn.password().is_some() {
            return Login {
                url: conn.to_url(),
                note: None,
            };
        }
        let d = &servers.target_destination;
        let user = conn.user();
        if let Some(pw) = &d.password
            && to_target
            && user.as_deref() == Some(d.user.as_str())
        {
            return Login {
                url: conn.with_fields(&[(Field::Password, pw.clone())]).to_url(),
                note: Some(format!(
                    "the file holds no password: logged in as {} with the plan's password for that user",
                    d.user
                )),
            };
        }
        Login {
            url: conn.to_url(),
            note: Some(format!(
                "the file holds no password: logged in as {} with what this machine offers (PGPASSWORD, \
                 ~/.pgpass or a trust rule)",
                user.as_deref().unwrap_or("the operating-system user")
            )),
        }
    }
}

/// Which database a connection points at: the server's identity when it can
/// be reached from here, its address otherwise.
pub async fn locate_conn(conn: &ConnString, pgpass: bool, servers: &Servers) -> Located {
    let by_address = || {
        if servers.source.matches_address(conn) {
            Which::Source
        } else if servers.target.matches_address(conn) {
            Which::Target
        } else {
            Which::Other
        }
    };
    let which_by_address = by_address();
    let login = (!pgpass).then(|| Login::new(conn, servers, which_by_address == Which::Target));
    let attempt = match &login {
        Some(l) => Some(hooks::probe_sql(&l.url, None, servers.probe_timeout).await),
        None => None,
    };
    let note = login
        .as_ref()
        .and_then(|l| l.note.as_ref())
        .map(|n| format!("; {n}"))
        .unwrap_or_default();
    match attempt {
        Some(Ok(reached)) => {
            let which = if reached.identity.same_database_any_start(&servers.source.identity) {
                Which::Source
            } else if reached.identity.same_database_any_start(&servers.target.identity) {
                Which::Target
            } else {
                Which::Other
            };
            Located {
                which,
                how: format!("reached {}{note}", reached.identity.place()),
                reached: Some(reached.identity),
            }
        }
        Some(Err(e)) => Located {
            which: by_address(),
            reached: None,
            how: if e.sqlstate.as_deref() == Some(cutover_core::error::codes::INVALID_PASSWORD)
                && conn.password().is_none()
            {
                "by host, port and database (it names no password to log in with from here)".into()
            } else {
                format!(
                    "by host, port and database (not reachable from here: {})",
                    e.message
                )
            },
        },
        None => Located {
            which: by_address(),
            reached: None,
            how: "by address".into(),
        },
    }
}

impl Reading {
    /// Where the consumer points: the source, the target, or (a mix or elsewhere) other.
    pub fn points_at(&self) -> Which {
        let all = |w: Which| self.found.iter().all(|f| f.located.which == w);
        if all(Which::Target) {
            Which::Target
        } else if self.found.iter().any(|f| f.located.which == Which::Source) {
            Which::Source
        } else {
            Which::Other
        }
    }

    /// A short, redacted account of each connection found.
    pub fn describe_connections(&self) -> Vec<String> {
        self.found
            .iter()
            .map(|f| {
                format!(
                    "line {}: {} → {} ({})",
                    f.line(),
                    f.shown(),
                    f.located.which,
                    redact_text(&f.located.how)
                )
            })
            .chain(
                self.ignored
                    .iter()
                    .map(|f| format!("line {}: {} points elsewhere; left alone", f.line(), f.shown())),
            )
            .collect()
    }

    /// The content with every connection to the source pointed at `dest`:
    /// each value in its own form, encoding and quoting.
    pub fn rewritten(&self, dest: &Destination) -> Result<String> {
        Ok(locate::splice(
            &self.content,
            &self.replacements(Some(dest), false)?,
        ))
    }

    /// The values to splice in: pointed at `dest` (the connections to the
    /// source), or as they are (`None`); `shown`: for people (passwords as
    /// `***`, base64 decoded), else as the file must hold them.
    fn replacements(&self, dest: Option<&Destination>, shown: bool) -> Result<Vec<(Occurrence, String)>> {
        let base64 = matches!(
            self.spec.config,
            ConsumerConfig::Keyed {
                encoding: Some(Encoding::Base64),
                ..
            }
        );
        let mut replacements = vec![];
        for f in &self.found {
            let repoint = f.located.which == Which::Source;
            if !(shown || repoint && dest.is_some()) {
                continue;
            }
            for p in &f.parts {
                let occ = &p.occurrence;
                let value = match (dest.filter(|_| repoint), &p.holds) {
                    (None, _) => occ.value.clone(),
                    (Some(dest), Holds::Pgpass) => {
                        let old_pw = f.conn.password().unwrap_or_default();
                        format!(
                            "{}:{}:{}:{}:{}",
                            dest.host,
                            dest.port,
                            dest.dbname,
                            dest.user,
                            dest.password.as_deref().unwrap_or(&old_pw)
                        )
                    }
                    (Some(dest), Holds::Connection(c)) => c.rewrite(dest),
                    // A password key keeps its value where the target's is
                    // not known (removing the key would change the file's shape).
                    (Some(dest), Holds::Field(field)) => {
                        field.value_in(dest).unwrap_or_else(|| occ.value.clone())
                    }
                    (Some(dest), Holds::HostPort) if dest.host.contains(':') => {
                        format!("[{}]:{}", dest.host, dest.port)
                    }
                    (Some(dest), Holds::HostPort) => format!("{}:{}", dest.host, dest.port),
                };
                let written = if shown {
                    match p.holds {
                        Holds::Field(Field::Password) => "***".to_string(),
                        _ => redact_lines(&value),
                    }
                } else {
                    let value = if base64 {
                        use base64::Engine;
                        base64::engine::general_purpose::STANDARD.encode(value)
                    } else {
                        value
                    };
                    locate::encode(occ, &value)
                        .map_err(|e| consumer_error(&self.spec, format!("line {}: {e}", occ.line)))?
                };
                replacements.push((occ.clone(), written));
            }
        }
        Ok(replacements)
    }

    /// A unified diff of what pointing at `dest` changes, passwords redacted
    /// (and base64 values shown decoded).
    pub fn diff(&self, dest: &Destination) -> Result<String> {
        let old = redact_lines(&locate::splice(&self.content, &self.replacements(None, true)?));
        let new = redact_lines(&locate::splice(
            &self.content,
            &self.replacements(Some(dest), true)?,
        ));
        let name = self
            .path
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| format!("{} (get command)", self.spec.name));
        Ok(similar::TextDiff::from_lines(&old, &new)
            .unified_diff()
            .context_radius(1)
            .header(&name, &name)
            .to_string())
    }
}

/// Redacts passwords in URLs, keyword strings and `.pgpass` lines.
pub fn redact_lines(text: &str) -> String {
    let text = redact_text(text);
    text.split_inclusive('\n')
        .map(|line| {
            let body = line.trim_end_matches(['\n', '\r']);
            let f: Vec<&str> = body.splitn(5, ':').collect();
            if f.len() == 5 && f[1].chars().all(|c| c.is_ascii_digit() || c == '*') && !body.contains(' ') {
                format!("{}:{}:{}:{}:***{}", f[0], f[1], f[2], f[3], &line[body.len()..])
            } else {
                line.to_string()
            }
        })
        .collect()
}

/// Where this consumer goes on the target: `target_url_env`'s connection, or
/// the plan's target (host, port, database, user, password).
pub fn destination(spec: &ConsumerSpec, servers: &Servers) -> Result<Destination> {
    let Some(var) = &spec.target_url_env else {
        return Ok(servers.target_destination.clone());
    };
    let value = std::env::var(var).map_err(|_| {
        consumer_error(
            spec,
            format!("target_url_env names {var}, which is not set in this environment; export it or remove the key"),
        )
    })?;
    let c = ConnString::parse(&value).ok_or_else(|| {
        consumer_error(
            spec,
            format!("${var} is not a PostgreSQL connection (postgresql://…)"),
        )
    })?;
    Ok(Destination {
        host: c.host(),
        port: c.port(),
        dbname: c.dbname().unwrap_or_default(),
        user: c
            .user()
            .unwrap_or_else(|| servers.target_destination.user.clone()),
        password: c.password(),
    })
}

/// The two databases as consumers may name them.
pub fn servers(loaded: &LoadedPlan, dbs: &cutover_pg::Databases) -> Result<Servers> {
    Ok(Servers {
        source: Side::new(dbs.source_identity.clone(), &dbs.source, &loaded.file.source)?,
        target: Side::new(dbs.target_identity.clone(), &dbs.target, &loaded.file.target)?,
        target_destination: Destination {
            host: dbs.target.host.clone(),
            port: dbs.target.port,
            dbname: dbs.target.dbname.clone(),
            user: dbs.target.user.clone(),
            password: dbs.target.password().map(str::to_string),
        },
        probe_timeout: Duration::from_secs(loaded.file.options.connect_timeout.min(5)),
    })
}

/// Reads and checks every consumer; the first problem stops everything.
pub async fn preflight(loaded: &LoadedPlan, servers: &Servers) -> Result<Vec<Reading>> {
    let base = base_dir(&loaded.path);
    let mut readings = vec![];
    for spec in &loaded.file.consumers {
        let reading = read(spec, &base, servers).await?;
        let fail = |msg: String| Err(Error::bad_input(format!("consumer {}: {msg}", spec.name)));
        if reading.points_at() == Which::Source
            && spec.kind() != ConsumerKind::Command
            && let Some(path) = &reading.path
            && let Err(e) = files::check_writable(path)
        {
            return fail(format!("{e}; cutover must replace the file to repoint it"));
        }
        let (get, set) = match &spec.config {
            ConsumerConfig::Command { get, set } => (Some(get.clone()), Some(set.clone())),
            _ => (None, None),
        };
        for (what, cmd) in [("reload", &spec.reload), ("get", &get), ("set", &set)] {
            if let Some(cmd) = cmd
                && !hooks::command_exists(cmd, &base)
            {
                return fail(format!(
                    "its {what} command `{}` cannot be found; fix `{what}` in the plan file",
                    cmd.split_whitespace().next().unwrap_or_default()
                ));
            }
        }
        if let ConsumerConfig::Pgbouncer { database, admin, .. } = &spec.config {
            // The console must answer and know the entry before anything changes.
            let console =
                crate::pgbouncer::Console::new(&admin.url().map_err(|e| consumer_error(spec, e))?).await?;
            if console
                .entry(database)
                .await
                .map_err(|e| e.context(format!("consumer {}", spec.name)))?
                .is_none()
            {
                return fail(format!(
                    "PgBouncer's admin console lists no database {database:?} (SHOW DATABASES); fix `key`, or \
                     RELOAD PgBouncer if its file was changed by hand"
                ));
            }
        }
        destination(spec, servers)?;
        readings.push(reading);
    }
    Ok(readings)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pgpass_lines_are_redacted() {
        assert_eq!(
            redact_lines("db:5432:app:u:secret\r\nx\n"),
            "db:5432:app:u:***\r\nx\n"
        );
        assert_eq!(
            redact_lines("postgresql://u:pw@h/d\n"),
            "postgresql://u:***@h/d\n"
        );
    }
}
