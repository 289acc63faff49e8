//! `cutover init --scan`: the configuration files under a folder that name
//! the source or the target, in every form the consumer readers understand,
//! each offered as a consumer named after its application; and what was
//! passed over, with the reason.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use cutover_core::plan_file::{ConsumerKind, Encoding, SplitKeys};

use crate::conn::{ConnString, Field, same_host};
use crate::locate::{self, Leaf};

/// A connection to one of the databases, found in a file.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// After its application: the compose service, the service file's
    /// section, or the folder the file belongs to.
    pub name: String,
    pub path: PathBuf,
    pub kind: ConsumerKind,
    pub key: Option<String>,
    pub keys: SplitKeys,
    pub encoding: Option<Encoding>,
    /// "DB_HOST, DB_PORT, DB_DATABASE name 10.0.0.5:5432/app".
    pub reason: String,
}

/// A connection (or what looked like one) the scan did not offer, and why.
#[derive(Debug, Clone)]
pub struct Skipped {
    pub path: PathBuf,
    pub why: String,
}

/// Folders never entered.
const SKIP_DIRS: &[&str] = &[
    ".git",
    "node_modules",
    "target",
    "cutover-run",
    "__pycache__",
    ".venv",
    "vendor",
];
/// Folder names that say where a file sits, not which application it is.
const GENERIC_DIRS: &[&str] = &[
    "config",
    "conf",
    "configs",
    "settings",
    "src",
    "main",
    "resources",
    "etc",
    "env",
    "envs",
    "environments",
    "deploy",
    "deployment",
    "deployments",
    "k8s",
    "kubernetes",
    "manifests",
    "helm",
    "secrets",
    "base",
    "overlays",
];
/// File names that say what kind of file it is, not whose.
const GENERIC_STEMS: &[&str] = &[
    "",
    "app",
    "env",
    "application",
    "appsettings",
    "settings",
    "database",
    "databases",
    "secret",
    "secrets",
    "config",
    "configuration",
    "compose",
    "docker-compose",
    "values",
    "pg_service",
    "pgpass",
    "local",
    "default",
    "dotenv",
];

/// Files under `dir` (4 levels, text under 1 MiB) naming one of `wanted`.
pub fn scan(dir: &Path, wanted: &[ConnString]) -> std::io::Result<(Vec<Candidate>, Vec<Skipped>)> {
    let mut found = vec![];
    let mut skipped = vec![];
    let mut stack = vec![(dir.to_path_buf(), 0)];
    let mut files = vec![];
    while let Some((d, depth)) = stack.pop() {
        let mut entries: Vec<_> = std::fs::read_dir(&d)?.flatten().collect();
        entries.sort_by_key(|e| e.path());
        for e in entries {
            let p = e.path();
            let name = e.file_name().to_string_lossy().to_string();
            if p.is_dir() {
                if depth < 4 && !SKIP_DIRS.contains(&name.as_str()) {
                    stack.push((p, depth + 1));
                }
                continue;
            }
            if name.ends_with(".toml") && name.starts_with("cutover") {
                continue;
            }
            if e.metadata().map(|m| m.len() > 1 << 20).unwrap_or(true) {
                continue;
            }
            files.push((p, name));
        }
    }
    files.sort();
    for (p, name) in files {
        let Ok(text) = std::fs::read_to_string(&p) else {
            continue;
        };
        let (c, s) = file(dir, &p, &name, &text, wanted);
        found.extend(c);
        skipped.extend(s);
    }
    name_uniquely(&mut found);
    Ok((found, skipped))
}

/// Which reader a file gets, by its name (and, for `.conf`, its shape).
pub fn kind_of(name: &str, text: &str) -> ConsumerKind {
    let lower = name.to_lowercase();
    let has_section = || {
        text.lines().any(|l| {
            let t = l.trim();
            t.len() > 2 && t.starts_with('[') && t.ends_with(']')
        })
    };
    if lower == "pg_service.conf" || lower == ".pg_service.conf" {
        ConsumerKind::PgService
    } else if lower == "pgbouncer.ini" {
        ConsumerKind::Pgbouncer
    } else if lower.ends_with(".yml") || lower.ends_with(".yaml") {
        ConsumerKind::Yaml
    } else if lower.ends_with(".json") {
        ConsumerKind::Json
    } else if lower.ends_with(".properties") {
        ConsumerKind::Properties
    } else if lower.ends_with(".py") {
        ConsumerKind::Python
    } else if lower.ends_with(".toml") {
        ConsumerKind::Toml
    } else if lower.ends_with(".php") {
        ConsumerKind::Php
    } else if lower.ends_with(".ini")
        || lower.ends_with(".cfg")
        || (lower.ends_with(".conf") && !lower.contains("pgpass") && has_section())
    {
        ConsumerKind::Ini
    } else if lower.ends_with(".conf") && !lower.contains("pgpass") && text.contains('=') {
        // Keys an environment cannot hold (`db-url`: Keycloak's, Quarkus's)
        // make it a properties file.
        let env_like = text.lines().all(|l| {
            let t = l.trim();
            t.is_empty()
                || t.starts_with('#')
                || t.split_once('=').is_none_or(|(k, _)| {
                    k.trim()
                        .trim_start_matches("export ")
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_')
                })
        });
        if env_like {
            ConsumerKind::Env
        } else {
            ConsumerKind::Properties
        }
    } else if lower.ends_with(".env") || lower.starts_with(".env") {
        ConsumerKind::Env
    } else {
        ConsumerKind::Text
    }
}

/// What a key saying which database software a group talks to says
/// (`type = postgres`, `DB_TYPE`, Keycloak's `db`, Laravel's
/// `DB_CONNECTION`, Rails' `adapter`, Django's `ENGINE`, Nextcloud's
/// `dbtype`): the prefix that groups it with its siblings (as
/// [`field_of`]'s), and `true` for PostgreSQL, `false` for another one.
fn vendor(last: &str, value: &str) -> Option<(String, bool)> {
    const WORDS: &[&str] = &[
        "database_type",
        "dbtype",
        "db_type",
        "dialect",
        "engine",
        "driver",
        "adapter",
        "connection",
        "vendor",
        "kind",
        "type",
        "db",
    ];
    let lower = last.to_lowercase();
    let (prefix, _) = WORDS.iter().find_map(|w| {
        let p = lower.strip_suffix(w)?;
        (p.is_empty() || p.ends_with(['_', '-', '.']) || p == "db").then_some((p, *w))
    })?;
    let prefix = if prefix == "db" { "" } else { &last[..prefix.len()] };
    let v = value.trim().to_lowercase();
    if v.is_empty() || v.contains("://") || v.contains([' ', '=', ';']) {
        return None;
    }
    const PG: &[&str] = &["postgres", "postgresql", "pgsql", "psql", "postgis", "pg"];
    const OTHER: &[&str] = &[
        "mysql",
        "mysqli",
        "mariadb",
        "sqlite",
        "sqlite3",
        "mssql",
        "sqlserver",
        "oracle",
        "mongodb",
        "redis",
    ];
    let last_word = v.rsplit(['.', '/', ':']).next().unwrap_or(&v);
    let pg = if PG.contains(&last_word) || v.contains("postgresql") || v.starts_with("org.postgresql") {
        true
    } else if OTHER.contains(&last_word) || OTHER.iter().any(|o| v.contains(o)) {
        false
    } else {
        return None;
    };
    Some((prefix.to_string(), pg))
}

fn names(c: &ConnString, wanted: &[ConnString]) -> bool {
    wanted
        .iter()
        .any(|w| same_host(&c.host(), &w.host()) && c.port() == w.port() && c.dbname() == w.dbname())
}

/// The part of a connection a key holds, by its last name (`DB_HOST`,
/// `host`, `PGPORT`, `spring.datasource.username`), and the prefix that
/// groups it with its siblings (`DB_`).
fn field_of(last: &str) -> Option<(String, Field)> {
    const SUFFIXES: &[(&str, Field)] = &[
        ("hostname", Field::Host),
        ("host", Field::Host),
        ("server", Field::Host),
        ("port", Field::Port),
        ("database_name", Field::Dbname),
        ("database", Field::Dbname),
        ("dbname", Field::Dbname),
        ("db_name", Field::Dbname),
        ("name", Field::Dbname),
        ("db", Field::Dbname),
        ("username", Field::User),
        ("user_name", Field::User),
        ("userid", Field::User),
        ("user", Field::User),
        ("login", Field::User),
        ("password", Field::Password),
        ("passwd", Field::Password),
        ("pass", Field::Password),
        ("pwd", Field::Password),
    ];
    let lower = last.to_lowercase();
    // The longest prefix wins: Mastodon's DB_NAME is DB_'s name, not a
    // db_name of its own.
    SUFFIXES
        .iter()
        .filter_map(|(suffix, f)| {
            let prefix = lower.strip_suffix(suffix)?;
            let ok =
                prefix.is_empty() || prefix.ends_with(['_', '-', '.']) || prefix == "pg" || prefix == "db";
            ok.then_some((prefix.len(), *f))
        })
        .max_by_key(|(len, _)| *len)
        .map(|(len, f)| {
            // Nextcloud's dbhost, dbname, dbuser: one group with host, dbname, user.
            let group = if lower[..len] == *"db" { "" } else { &last[..len] };
            (group.to_string(), f)
        })
}

/// A key whose value is a whole connection (`DATABASE_URL`, `url`,
/// `ConnectionStrings.Default`): the prefix that groups it with split keys
/// (Spring's `spring.datasource.` with its username and password).
fn url_prefix(last: &str) -> String {
    let lower = last.to_lowercase();
    for suffix in ["jdbc-url", "jdbc_url", "jdbcurl", "url", "uri", "dsn"] {
        if let Some(p) = lower.strip_suffix(suffix) {
            return last[..p.len()].to_string();
        }
    }
    format!("{last}\u{0}")
}

fn split_path(path: &str) -> (&str, &str) {
    match path.rsplit_once('.') {
        Some((parent, last)) => (parent, last),
        None => ("", path),
    }
}

#[derive(Default)]
struct Group {
    whole: Option<(String, ConnString)>,
    encoding: Option<Encoding>,
    fields: BTreeMap<Field, Vec<(String, String)>>,
}

fn file(
    root: &Path,
    path: &Path,
    name: &str,
    text: &str,
    wanted: &[ConnString],
) -> (Vec<Candidate>, Vec<Skipped>) {
    let mut kind = kind_of(name, text);
    let leaves = if kind.is_keyed() {
        match locate::leaves(kind, text) {
            Ok(l) => l,
            Err(_) => {
                kind = ConsumerKind::Text;
                vec![]
            }
        }
    } else {
        vec![]
    };
    if kind == ConsumerKind::Text {
        return text_file(root, path, text, wanted);
    }
    let skip = |why: String| Skipped {
        path: path.to_path_buf(),
        why,
    };
    let mut candidates = vec![];
    let mut skipped = vec![];
    // A Kubernetes Secret's `data` holds base64.
    let secret = kind == ConsumerKind::Yaml
        && leaves
            .iter()
            .any(|l| l.path == "kind" && l.value.as_ref().is_ok_and(|o| o.value == "Secret"));
    let value_of = |l: &Leaf| -> Option<(String, Option<Encoding>)> {
        let occ = l.value.as_ref().ok()?;
        if secret && l.path.starts_with("data.") {
            use base64::Engine;
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(occ.value.trim())
                .ok()?;
            Some((String::from_utf8(bytes).ok()?, Some(Encoding::Base64)))
        } else {
            Some((occ.value.clone(), None))
        }
    };
    if kind == ConsumerKind::PgService {
        let mut services: BTreeMap<String, Vec<(Field, String)>> = BTreeMap::new();
        for l in &leaves {
            let (service, key) = split_path(&l.path);
            if let Some(f) = Field::ALL.into_iter().find(|f| f.keyword() == key)
                && let Ok(o) = &l.value
            {
                services
                    .entry(service.to_string())
                    .or_default()
                    .push((f, o.value.clone()));
            }
        }
        for (service, fields) in services {
            let Some(c) = ConnString::from_fields(&fields) else {
                continue;
            };
            if names(&c, wanted) {
                candidates.push(Candidate {
                    name: sanitize(&service),
                    path: path.to_path_buf(),
                    kind,
                    key: Some(service.clone()),
                    keys: SplitKeys::default(),
                    encoding: None,
                    reason: format!("service [{service}] names {}", c.address()),
                });
            } else {
                skipped.push(skip(format!(
                    "service [{service}] names {}, neither the source nor the target",
                    c.address()
                )));
            }
        }
        return (candidates, skipped);
    }
    if kind == ConsumerKind::Pgbouncer {
        // Each [databases] entry that names one of the two databases.
        for l in &leaves {
            let Some((section, entry)) = l.path.split_once('.') else {
                continue;
            };
            let (Ok(o), "databases") = (&l.value, section) else {
                continue;
            };
            let Some(c) = ConnString::parse(&o.value) else {
                continue;
            };
            if names(&c, wanted) {
                candidates.push(Candidate {
                    name: sanitize(&format!("pgbouncer-{entry}")),
                    path: path.to_path_buf(),
                    kind,
                    key: Some(entry.to_string()),
                    keys: SplitKeys::default(),
                    encoding: None,
                    reason: format!("PgBouncer's [databases] {entry} names {}", c.address()),
                });
            } else {
                skipped.push(skip(format!(
                    "PgBouncer's [databases] {entry} names {}, neither the source nor the target",
                    c.address()
                )));
            }
        }
        return (candidates, skipped);
    }
    let mut groups: BTreeMap<String, Group> = BTreeMap::new();
    // What each group's software key says (`type = mysql`), by the group.
    let mut vendors: BTreeMap<String, (String, bool)> = BTreeMap::new();
    for l in &leaves {
        let (parent, last) = split_path(&l.path);
        if let Some((value, _)) = value_of(l)
            && let Some((prefix, pg)) = vendor(last, &value)
        {
            vendors.insert(
                format!("{parent}\u{1}{prefix}"),
                (format!("{} = {value}", l.path), pg),
            );
            continue;
        }
        let Some((value, enc)) = value_of(l) else {
            if let Err(e) = &l.value
                && (field_of(last).is_some() || url_prefix(last) != format!("{last}\u{0}"))
            {
                skipped.push(skip(format!("line {}: {} {e}", l.line, l.path)));
            }
            continue;
        };
        if let Some(c) = ConnString::parse(&value) {
            let g = groups
                .entry(format!("{parent}\u{1}{}", url_prefix(last)))
                .or_default();
            g.whole = Some((l.path.clone(), c));
            g.encoding = g.encoding.or(enc);
        } else if let Some((prefix, f)) = field_of(last) {
            let g = groups.entry(format!("{parent}\u{1}{prefix}")).or_default();
            g.fields.entry(f).or_default().push((l.path.clone(), value));
            g.encoding = g.encoding.or(enc);
        }
    }
    let mut lone = vec![];
    for (group_key, g) in groups {
        let parent = group_key.split('\u{1}').next().unwrap_or_default();
        let said = vendors
            .get(&group_key)
            .or_else(|| vendors.get(&format!("{parent}\u{1}")));
        let one = |f: Field| g.fields.get(&f).filter(|v| v.len() == 1).map(|v| v[0].clone());
        let (key, keys, conn, shown) = match &g.whole {
            Some((path, c)) => {
                // Only the login may be given beside a whole connection.
                let keys = SplitKeys {
                    user: one(Field::User).map(|(k, _)| k),
                    password: one(Field::Password).map(|(k, _)| k),
                    ..Default::default()
                };
                let mut shown = vec![path.clone()];
                shown.extend(keys.named().map(|(_, k)| k.to_string()));
                (Some(path.clone()), keys, c.clone(), shown)
            }
            None => {
                let (Some(host), Some(db)) = (one(Field::Host), one(Field::Dbname)) else {
                    if let (Some((key, _)), None) = (one(Field::Host), one(Field::Dbname)) {
                        lone.push(key);
                    }
                    continue;
                };
                // Grafana's, Gitea's and Nextcloud's host holds the port too.
                let mut fields = match crate::conn::split_host_port(&host.1) {
                    Some((h, p)) if one(Field::Port).is_none() => {
                        vec![
                            (Field::Host, h),
                            (Field::Port, p.to_string()),
                            (Field::Dbname, db.1.clone()),
                        ]
                    }
                    _ => vec![(Field::Host, host.1.clone()), (Field::Dbname, db.1.clone())],
                };
                let keys = SplitKeys {
                    host: Some(host.0),
                    port: one(Field::Port).map(|(k, v)| {
                        fields.push((Field::Port, v));
                        k
                    }),
                    dbname: Some(db.0),
                    user: one(Field::User).map(|(k, v)| {
                        fields.push((Field::User, v));
                        k
                    }),
                    password: one(Field::Password).map(|(k, _)| k),
                };
                let Some(c) = ConnString::from_fields(&fields) else {
                    continue;
                };
                let shown = keys.named().map(|(_, k)| k.to_string()).collect();
                (None, keys, c, shown)
            }
        };
        let what = shown.join(", ");
        if let Some((said, false)) = said {
            skipped.push(skip(format!("{what}: not PostgreSQL ({said}), so not offered")));
            continue;
        }
        if !names(&conn, wanted) {
            skipped.push(skip(format!(
                "{what} name{} {}, neither the source nor the target",
                if shown.len() == 1 { "s" } else { "" },
                conn.address()
            )));
            continue;
        }
        let first = key.clone().or_else(|| keys.host.clone()).unwrap_or_default();
        candidates.push(Candidate {
            name: app_name(root, path, &first),
            path: path.to_path_buf(),
            kind,
            key,
            keys,
            encoding: g.encoding,
            reason: format!(
                "{what} name{} {}",
                if shown.len() == 1 { "s" } else { "" },
                conn.address()
            ),
        });
    }
    // In a file that configures a database, a host key alone (Keycloak's
    // `hostname`: the application's own address) is said to be passed over.
    if !candidates.is_empty() || !vendors.is_empty() {
        for key in lone {
            skipped.push(skip(format!(
                "{key}: a host with no database key beside it, not taken for a connection"
            )));
        }
    }
    (candidates, skipped)
}

/// Scripts, crontabs, `.pgpass`: every connection in the file is one
/// consumer of kind text (each occurrence naming the source is rewritten).
fn text_file(root: &Path, path: &Path, text: &str, wanted: &[ConnString]) -> (Vec<Candidate>, Vec<Skipped>) {
    let mut reasons = vec![];
    let mut skipped = vec![];
    for o in locate::text(text) {
        let c = if o.pgpass {
            crate::consumer::pgpass_conn(&o.value)
        } else {
            ConnString::parse(&o.value)
        };
        let Some(c) = c else { continue };
        if names(&c, wanted) {
            reasons.push(format!("line {} names {}", o.line, c.address()));
        } else {
            skipped.push(Skipped {
                path: path.to_path_buf(),
                why: format!(
                    "line {} names {}, neither the source nor the target",
                    o.line,
                    c.address()
                ),
            });
        }
    }
    if reasons.is_empty() {
        return (vec![], skipped);
    }
    let candidate = Candidate {
        name: app_name(root, path, ""),
        path: path.to_path_buf(),
        kind: ConsumerKind::Text,
        key: None,
        keys: SplitKeys::default(),
        encoding: None,
        reason: reasons.join("; "),
    };
    (vec![candidate], vec![])
}

/// The application a file belongs to: a compose service's name, the
/// file's own name where it says whose it is (`backend.env`), else the
/// nearest folder that is not a generic one (`config`, `src/main/resources`…).
fn app_name(root: &Path, path: &Path, key: &str) -> String {
    let segments: Vec<&str> = key.split('.').collect();
    if segments.len() > 2 && segments[0] == "services" {
        return sanitize(segments[1]);
    }
    let file = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    let stem = file.trim_start_matches('.').split('.').next().unwrap_or_default();
    // superset_config.py is Superset's.
    let stem = ["_config", "-config", "_settings", "-settings"]
        .iter()
        .find_map(|s| stem.strip_suffix(s).filter(|r| !r.is_empty()))
        .unwrap_or(stem);
    if !GENERIC_STEMS.contains(&stem.to_lowercase().as_str()) {
        return sanitize(stem);
    }
    let mut dir = path.parent();
    while let Some(d) = dir {
        let name = d.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if !name.is_empty() && !GENERIC_DIRS.contains(&name.to_lowercase().as_str()) {
            return sanitize(name);
        }
        if d == root {
            break;
        }
        dir = d.parent();
    }
    let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or_default();
    sanitize(stem.trim_start_matches('.'))
}

fn sanitize(s: &str) -> String {
    let s: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    let s = s.trim_matches('-').to_string();
    if s.is_empty() { "consumer".into() } else { s }
}

/// Two consumers of one application get its name and what tells them apart
/// (the file's name, then a number).
fn name_uniquely(found: &mut [Candidate]) {
    let mut taken: Vec<String> = vec![];
    for i in 0..found.len() {
        let base = found[i].name.clone();
        let clash = found.iter().filter(|c| c.name == base).count() > 1;
        let mut name = base.clone();
        if clash || taken.contains(&name) {
            let file = found[i]
                .path
                .file_name()
                .and_then(|n| n.to_str())
                .map(|n| sanitize(n.trim_start_matches('.')))
                .unwrap_or_default();
            let section = found[i]
                .key
                .as_deref()
                .or(found[i].keys.host.as_deref())
                .and_then(|k| k.split('.').next())
                .filter(|s| s.len() < 24 && !s.contains('_') && *s != "services")
                .map(sanitize);
            name = format!("{base}-{file}");
            if taken.contains(&name)
                && let Some(s) = section
            {
                name = format!("{base}-{s}");
            }
        }
        let mut n = 2;
        let stem = name.clone();
        while taken.contains(&name) {
            name = format!("{stem}-{n}");
            n += 1;
        }
        taken.push(name.clone());
        found[i].name = name;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wanted() -> Vec<ConnString> {
        vec![ConnString::parse("postgresql://u@db.internal:5433/app").unwrap()]
    }

    type Found = (String, ConsumerKind, Option<String>, Option<String>);

    /// `got` (name, kind, key, host key of each candidate) has this one.
    fn expect_found(got: &[Found], name: &str, kind: ConsumerKind, key: Option<&str>, host: Option<&str>) {
        let want = (
            name.to_string(),
            kind,
            key.map(str::to_string),
            host.map(str::to_string),
        );
        assert!(got.contains(&want), "{name}: {got:?}");
    }

    fn scan_files(files: &[(&str, &str)]) -> (Vec<Candidate>, Vec<Skipped>) {
        let dir = tempfile::tempdir().unwrap();
        for (p, text) in files {
            let p = dir.path().join(p);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
        scan(dir.path(), &wanted()).unwrap()
    }

    /// The configuration files of widely used applications, written as
    /// their documentation writes them.
    pub(crate) const APPS: &[(&str, &str)] = &[
        (
            "airflow/airflow.cfg",
            "[core]\ndags_folder = /opt/airflow/dags\n\n[database]\n# The SQLAlchemy connection string\n\
             sql_alchemy_conn = postgresql+psycopg2://u:pw@db.internal:5433/app\nsql_alchemy_pool_size = 5\n",
        ),
        (
            "superset/superset_config.py",
            "ROW_LIMIT = 5000\nSQLALCHEMY_DATABASE_URI = \"postgresql+psycopg2://u:pw@db.internal:5433/app\"\n",
        ),
        (
            "api/.env",
            "APP_ENV=prod\nDATABASE_URL=postgresql+asyncpg://u:pw@db.internal:5433/app?ssl=disable\n",
        ),
        (
            "grafana/grafana.ini",
            "[server]\nhttp_port = 3000\n\n[database]\n;type = sqlite3\ntype = postgres\nhost = db.internal:5433\n\
             name = app\nuser = u\n# If the password contains # or ; you have to wrap it with triple quotes.\n\
             password = \"\"\"p#w\"\"\"\n",
        ),
        (
            "gitea/app.ini",
            "APP_NAME = Gitea\n\n[database]\nDB_TYPE  = postgres\nHOST     = db.internal:5433\nNAME     = app\n\
             USER     = u\nPASSWD   = `pw`\nSSL_MODE = disable\n\n[mailer]\nENABLED = false\n",
        ),
        (
            "mastodon/.env.production",
            "LOCAL_DOMAIN=example.com\nDB_HOST=db.internal\nDB_PORT=5433\nDB_NAME=app\nDB_USER=u\nDB_PASS=pw\n",
        ),
        (
            "keycloak/conf/keycloak.conf",
            "# Database\ndb=postgres\ndb-username=u\ndb-password=pw\ndb-url=jdbc:postgresql://db.internal:5433/app\n\
             hostname=auth.example.com\nhttp-enabled=true\n",
        ),
        (
            "nextcloud/config/config.php",
            "<?php\n$CONFIG = array (\n  'instanceid' => 'oc8c0fd71e03',\n  'trusted_domains' =>\n  array (\n    \
             0 => 'cloud.example.com',\n  ),\n  'dbtype' => 'pgsql',\n  'dbname' => 'app',\n  \
             'dbhost' => 'db.internal:5433',\n  'dbuser' => 'u',\n  'dbpassword' => 'pw',\n);\n",
        ),
        (
            "gosvc/config.toml",
            "[server]\nlisten = \":8080\"\n\n[database]\ndsn = \"host=db.internal port=5433 dbname=app user=u\"\n",
        ),
        (
            "stack/compose.yaml",
            "services:\n  web:\n    environment:\n      POSTGRES_HOST: db.internal\n      POSTGRES_PORT: 5433\n      \
             POSTGRES_DB: app\n      POSTGRES_USER: u\n",
        ),
    ];

    #[test]
    fn the_configuration_files_of_widely_used_applications_are_found() {
        let mut files = APPS.to_vec();
        files.push((
            "wiki/wiki.ini",
            "[database]\ntype = mysql\nhost = db.internal:5433\nname = app\nuser = u\n",
        ));
        let (found, skipped) = scan_files(&files);
        let got: Vec<(String, ConsumerKind, Option<String>, Option<String>)> = found
            .iter()
            .map(|c| (c.name.clone(), c.kind, c.key.clone(), c.keys.host.clone()))
            .collect();
        for (name, kind, key, host) in [
            (
                "airflow",
                ConsumerKind::Ini,
                Some("database.sql_alchemy_conn"),
                None,
            ),
            (
                "superset",
                ConsumerKind::Python,
                Some("SQLALCHEMY_DATABASE_URI"),
                None,
            ),
            ("api", ConsumerKind::Env, Some("DATABASE_URL"), None),
            ("grafana", ConsumerKind::Ini, None, Some("database.host")),
            ("gitea", ConsumerKind::Ini, None, Some("database.HOST")),
            ("mastodon", ConsumerKind::Env, None, Some("DB_HOST")),
            ("keycloak", ConsumerKind::Properties, Some("db-url"), None),
            ("nextcloud", ConsumerKind::Php, None, Some("dbhost")),
            ("gosvc", ConsumerKind::Toml, Some("database.dsn"), None),
            (
                "web",
                ConsumerKind::Yaml,
                None,
                Some("services.web.environment.POSTGRES_HOST"),
            ),
        ] {
            expect_found(&got, name, kind, key, host);
        }
        assert_eq!(found.len(), 10, "{got:?} {skipped:?}");
        let grafana = found.iter().find(|c| c.name == "grafana").unwrap();
        assert_eq!(grafana.keys.password.as_deref(), Some("database.password"));
        assert_eq!(grafana.keys.port, None);
        let keycloak = found.iter().find(|c| c.name == "keycloak").unwrap();
        assert_eq!(keycloak.keys.user.as_deref(), Some("db-username"));
        let why: Vec<&str> = skipped.iter().map(|s| s.why.as_str()).collect();
        assert!(
            why.iter()
                .any(|w| w.contains("not PostgreSQL (database.type = mysql)")),
            "{why:?}"
        );
        assert!(
            why.iter()
                .any(|w| w.starts_with("hostname: a host with no database key")),
            "{why:?}"
        );
    }

    #[test]
    fn every_form_is_found_grouped_and_named_after_its_application() {
        let (found, skipped) = scan_files(&[
            (
                "billing/.env",
                "APP_NAME=Billing\nexport DB_HOST=db.internal\nDB_PORT=\"5433\"\nDB_DATABASE=app\nDB_USERNAME=u\n\
                 DB_PASSWORD='p'\nREDIS_HOST=cache\n",
            ),
            (
                "shop/config/database.yml",
                "development:\n  adapter: postgresql\n  host: localhost\n  database: shop_dev\nproduction:\n  \
                 adapter: postgresql\n  host: db.internal\n  port: 5433\n  database: app\n  username: u\n",
            ),
            (
                "reports/src/main/resources/application.properties",
                "spring.datasource.url=jdbc:postgresql://db.internal:5433/app\nspring.datasource.username=u\n\
                 spring.datasource.password=p\n",
            ),
            (
                "ledger/appsettings.json",
                "{\n  // .NET\n  \"ConnectionStrings\": { \"Default\": \"Host=db.internal;Port=5433;Database=app;Username=u\" }\n}\n",
            ),
            (
                "blog/blog/settings.py",
                "DATABASES = {\n    'default': {'NAME': 'app', 'HOST': 'db.internal', 'PORT': 5433, 'USER': 'u'},\n}\n",
            ),
            (
                "stack/compose.yml",
                "services:\n  dashboard:\n    environment:\n      - DATABASE_URL=postgresql://u@db.internal:5433/app\n  \
                 other:\n    environment:\n      - DATABASE_URL=postgresql://u@elsewhere/app\n",
            ),
            (
                "k8s/worker/secret.yaml",
                "apiVersion: v1\nkind: Secret\nmetadata:\n  name: worker-db\ndata:\n  DATABASE_URL: \
                 cG9zdGdyZXNxbDovL3VAZGIuaW50ZXJuYWw6NTQzMy9hcHA=\n",
            ),
            (
                "etc/pg_service.conf",
                "[analytics]\nhost=db.internal\nport=5433\ndbname=app\n[other]\nhost=x\ndbname=y\n",
            ),
            ("cron/.pgpass", "db.internal:5433:app:u:secret\n"),
            (
                "bouncer/pgbouncer.ini",
                ";; pgbouncer\n[databases]\napp = host=db.internal port=5433 dbname=app pool_size=5\n\
                 other = host=elsewhere dbname=legacy\n[pgbouncer]\nlisten_port = 6432\n",
            ),
        ]);
        let got: Vec<(String, ConsumerKind, Option<String>, Option<String>)> = found
            .iter()
            .map(|c| (c.name.clone(), c.kind, c.key.clone(), c.keys.host.clone()))
            .collect();
        let expect = |name, kind, key, host| expect_found(&got, name, kind, key, host);
        expect("billing", ConsumerKind::Env, None, Some("DB_HOST"));
        expect("shop", ConsumerKind::Yaml, None, Some("production.host"));
        expect(
            "reports",
            ConsumerKind::Properties,
            Some("spring.datasource.url"),
            None,
        );
        expect(
            "ledger",
            ConsumerKind::Json,
            Some("ConnectionStrings.Default"),
            None,
        );
        expect("blog", ConsumerKind::Python, None, Some("DATABASES.default.HOST"));
        expect(
            "dashboard",
            ConsumerKind::Yaml,
            Some("services.dashboard.environment.DATABASE_URL"),
            None,
        );
        expect("worker", ConsumerKind::Yaml, Some("data.DATABASE_URL"), None);
        expect("analytics", ConsumerKind::PgService, Some("analytics"), None);
        expect("cron", ConsumerKind::Text, None, None);
        expect("pgbouncer-app", ConsumerKind::Pgbouncer, Some("app"), None);
        assert_eq!(found.len(), 10, "{got:?}");
        let billing = found.iter().find(|c| c.name == "billing").unwrap();
        assert_eq!(billing.keys.password.as_deref(), Some("DB_PASSWORD"));
        let reports = found.iter().find(|c| c.name == "reports").unwrap();
        assert_eq!(reports.keys.user.as_deref(), Some("spring.datasource.username"));
        let worker = found.iter().find(|c| c.name == "worker").unwrap();
        assert_eq!(worker.encoding, Some(Encoding::Base64));
        let why: Vec<&str> = skipped.iter().map(|s| s.why.as_str()).collect();
        assert!(
            why.iter()
                .any(|w| w.contains("development.host") && w.contains("localhost:5432/shop_dev")),
            "{why:?}"
        );
        assert!(
            why.iter()
                .any(|w| w.contains("[databases] other names elsewhere:5432/legacy")),
            "{why:?}"
        );
        assert!(why.iter().any(|w| w.contains("elsewhere:5432/app")), "{why:?}");
        assert!(why.iter().any(|w| w.contains("[other]")), "{why:?}");
    }
}
