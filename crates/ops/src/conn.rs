//! A connection as a consumer writes it: a URL (`postgresql://…`), a JDBC
//! URL, a libpq keyword string (`host=… port=… dbname=…`), an Npgsql/ADO.NET
//! string (`Host=…;Port=…;Database=…`), or the parts of one spread over
//! several keys of a file. Rewriting one keeps its form: the same scheme,
//! the same query parameters (sslmode…), keywords in the same order and
//! spelling, a password only where there was one.

use url::Url;

/// Where a consumer should connect after the repoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    pub host: String,
    pub port: u16,
    pub dbname: String,
    pub user: String,
    /// Written only into values that carried a password before.
    pub password: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Form {
    Url(Url),
    /// `jdbc:postgresql://host:port/db?user=…&password=…`, held as the URL
    /// after `jdbc:`. The JDBC driver takes the user and password from the
    /// query (or separate properties), never from a userinfo part.
    Jdbc(Url),
    /// Pairs in their order; values unquoted.
    Keywords(Vec<(String, String)>),
    /// `Host=db;Port=5432;Database=app;Username=app;Password=…`: the text as
    /// written and its pairs, so that a rewrite changes values only.
    Npgsql(String, Vec<NpgsqlPair>),
}

/// One part of a connection, as a key of a split configuration holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Field {
    Host,
    Port,
    Dbname,
    User,
    Password,
}

impl Field {
    pub const ALL: [Field; 5] = [
        Field::Host,
        Field::Port,
        Field::Dbname,
        Field::User,
        Field::Password,
    ];

    /// The libpq keyword (and plan-file key) for this part.
    pub fn keyword(self) -> &'static str {
        match self {
            Field::Host => "host",
            Field::Port => "port",
            Field::Dbname => "dbname",
            Field::User => "user",
            Field::Password => "password",
        }
    }

    /// This part's value in `to` (`None`: the password is not known).
    pub fn value_in(self, to: &Destination) -> Option<String> {
        match self {
            Field::Host => Some(to.host.clone()),
            Field::Port => Some(to.port.to_string()),
            Field::Dbname => Some(to.dbname.clone()),
            Field::User => Some(to.user.clone()),
            Field::Password => to.password.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NpgsqlPair {
    /// The key as written (`User Id`).
    key: String,
    /// What it means, where cutover cares: a part of the connection or `sslmode`.
    meaning: Option<NpgsqlKey>,
    value: String,
    /// Byte span of the value as written (with its quotes).
    span: (usize, usize),
    quote: Option<char>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NpgsqlKey {
    Field(Field),
    SslMode,
}

/// Npgsql's keywords and their aliases (case and spaces do not matter).
fn npgsql_key(key: &str) -> Option<NpgsqlKey> {
    let k: String = key
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect::<String>()
        .to_lowercase();
    Some(match k.as_str() {
        "host" | "server" => NpgsqlKey::Field(Field::Host),
        "port" => NpgsqlKey::Field(Field::Port),
        "database" | "db" => NpgsqlKey::Field(Field::Dbname),
        "username" | "user" | "userid" | "uid" => NpgsqlKey::Field(Field::User),
        "password" | "psw" | "pwd" => NpgsqlKey::Field(Field::Password),
        "sslmode" => NpgsqlKey::SslMode,
        _ => return None,
    })
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnString {
    form: Form,
}

const LIBPQ_KEYWORDS: &[&str] = &[
    "host",
    "hostaddr",
    "port",
    "dbname",
    "user",
    "password",
    "passfile",
    "sslmode",
    "sslrootcert",
    "sslcert",
    "sslkey",
    "connect_timeout",
    "application_name",
    "options",
    "target_session_attrs",
    "gssencmode",
    "channel_binding",
    "keepalives",
];

/// Keys PgBouncer's `[databases]` entries may carry beside libpq's: kept in
/// the text, never passed to a connection.
const PGBOUNCER_KEYWORDS: &[&str] = &[
    "pool_size",
    "min_pool_size",
    "reserve_pool",
    "max_db_connections",
    "pool_mode",
    "auth_user",
    "auth_dbname",
    "client_encoding",
    "datestyle",
    "timezone",
    "connect_query",
];

impl ConnString {
    /// Parses a URL or a keyword string; `None` when it is neither.
    pub fn parse(text: &str) -> Option<ConnString> {
        let text = text.trim();
        if let Some(rest) = text.strip_prefix("jdbc:")
            && rest.starts_with("postgresql://")
        {
            let url = Url::parse(rest).ok()?;
            return Some(ConnString {
                form: Form::Jdbc(url),
            });
        }
        if text.starts_with("postgres://") || text.starts_with("postgresql://") || sqlalchemy_scheme(text) {
            let url = Url::parse(text).ok()?;
            return Some(ConnString { form: Form::Url(url) });
        }
        if text.contains(';')
            && let Some(pairs) = parse_npgsql(text)
        {
            return Some(ConnString {
                form: Form::Npgsql(text.to_string(), pairs),
            });
        }
        let pairs = parse_keywords(text)?;
        let has = |k: &str| pairs.iter().any(|(key, _)| key == k);
        (has("host") || has("hostaddr") || has("dbname")).then_some(ConnString {
            form: Form::Keywords(pairs),
        })
    }

    /// A connection made of the parts a split configuration holds
    /// (`None` without a host or a database).
    pub fn from_fields(fields: &[(Field, String)]) -> Option<ConnString> {
        let has = |f: Field| fields.iter().any(|(g, _)| *g == f);
        if !has(Field::Host) && !has(Field::Dbname) {
            return None;
        }
        let mut pairs: Vec<(String, String)> = vec![];
        for f in Field::ALL {
            if let Some((_, v)) = fields.iter().find(|(g, _)| *g == f) {
                pairs.push((f.keyword().to_string(), v.clone()));
            }
        }
        Some(ConnString {
            form: Form::Keywords(pairs),
        })
    }

    /// This connection with some of its parts given elsewhere (Spring's
    /// `spring.datasource.username` beside the URL): what the application
    /// connects with, for locating and probing.
    pub fn with_fields(&self, fields: &[(Field, String)]) -> ConnString {
        if fields.is_empty() {
            return self.clone();
        }
        let mut pairs: Vec<(String, String)> = vec![];
        for f in Field::ALL {
            let v = match fields.iter().find(|(g, _)| *g == f) {
                Some((_, v)) => Some(v.clone()),
                None => match f {
                    Field::Host => Some(self.host()),
                    Field::Port => Some(self.port().to_string()),
                    Field::Dbname => self.dbname(),
                    Field::User => self.user(),
                    Field::Password => self.password(),
                },
            };
            if let Some(v) = v {
                pairs.push((f.keyword().to_string(), v));
            }
        }
        for k in ["sslmode", "sslrootcert", "sslcert", "sslkey", "application_name"] {
            if let Some(v) = self.query_param(k) {
                pairs.push((k.to_string(), v));
            }
        }
        ConnString {
            form: Form::Keywords(pairs),
        }
    }

    fn keyword(&self, key: &str) -> Option<&str> {
        match &self.form {
            Form::Keywords(pairs) => pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str()),
            Form::Url(_) | Form::Jdbc(_) | Form::Npgsql(..) => None,
        }
    }

    fn npgsql(&self, field: Field) -> Option<&str> {
        match &self.form {
            Form::Npgsql(_, pairs) => pairs
                .iter()
                .rev()
                .find(|p| p.meaning == Some(NpgsqlKey::Field(field)))
                .map(|p| p.value.as_str()),
            _ => None,
        }
    }

    fn query_param(&self, key: &str) -> Option<String> {
        match &self.form {
            Form::Url(url) | Form::Jdbc(url) => url
                .query_pairs()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.into_owned()),
            Form::Keywords(_) => self.keyword(key).map(str::to_string),
            Form::Npgsql(_, pairs) if key == "sslmode" => pairs
                .iter()
                .rev()
                .find(|p| p.meaning == Some(NpgsqlKey::SslMode))
                .map(|p| npgsql_sslmode(&p.value)),
            Form::Npgsql(..) => None,
        }
    }

    pub fn host(&self) -> String {
        match &self.form {
            Form::Url(url) | Form::Jdbc(url) => url
                .host_str()
                .map(|h| h.trim_start_matches('[').trim_end_matches(']').to_string())
                .filter(|h| !h.is_empty())
                .or_else(|| self.query_param("host"))
                .unwrap_or_else(|| "localhost".into()),
            Form::Keywords(_) => self
                .keyword("host")
                .or_else(|| self.keyword("hostaddr"))
                .unwrap_or("localhost")
                .to_string(),
            Form::Npgsql(..) => self
                .npgsql(Field::Host)
                .filter(|h| !h.is_empty())
                .unwrap_or("localhost")
                .to_string(),
        }
    }

    pub fn port(&self) -> u16 {
        match &self.form {
            Form::Url(url) | Form::Jdbc(url) => url.port().unwrap_or(5432),
            Form::Keywords(_) => self.keyword("port").and_then(|p| p.parse().ok()).unwrap_or(5432),
            Form::Npgsql(..) => self
                .npgsql(Field::Port)
                .and_then(|p| p.trim().parse().ok())
                .unwrap_or(5432),
        }
    }

    pub fn user(&self) -> Option<String> {
        match &self.form {
            Form::Url(url) => (!url.username().is_empty()).then(|| decode(url.username())),
            Form::Jdbc(_) => self.query_param("user"),
            Form::Keywords(_) => self.keyword("user").map(str::to_string),
            Form::Npgsql(..) => self.npgsql(Field::User).map(str::to_string),
        }
    }

    /// The database name; libpq defaults it to the user name.
    pub fn dbname(&self) -> Option<String> {
        match &self.form {
            Form::Url(url) | Form::Jdbc(url) => {
                let path = decode(url.path().trim_start_matches('/'));
                if path.is_empty() { self.user() } else { Some(path) }
            }
            Form::Keywords(_) => self.keyword("dbname").map(str::to_string).or_else(|| self.user()),
            Form::Npgsql(..) => self
                .npgsql(Field::Dbname)
                .map(str::to_string)
                .or_else(|| self.user()),
        }
    }

    pub fn password(&self) -> Option<String> {
        match &self.form {
            Form::Url(url) => url.password().map(decode),
            Form::Jdbc(_) => self.query_param("password"),
            Form::Keywords(_) => self.keyword("password").map(str::to_string),
            Form::Npgsql(..) => self.npgsql(Field::Password).map(str::to_string),
        }
    }

    /// `host:port/dbname`, for messages.
    pub fn address(&self) -> String {
        format!(
            "{}:{}/{}",
            self.host(),
            self.port(),
            self.dbname().unwrap_or_default()
        )
    }

    /// The same connection pointed at `to`, in the same form.
    pub fn rewrite(&self, to: &Destination) -> String {
        match &self.form {
            Form::Url(url) => {
                let mut url = url.clone();
                // Setting the host on a URL without one fails; such URLs
                // (host in the query) are rewritten through the query.
                if url.host_str().is_some_and(|h| !h.is_empty()) {
                    set_address(&mut url, to);
                }
                url.set_path(&format!("/{}", encode(&to.dbname)));
                let _ = url.set_username(&encode(&to.user));
                if url.password().is_some() {
                    let _ = url.set_password(to.password.as_deref().map(encode).as_deref());
                }
                let pairs: Vec<(String, String)> = url
                    .query_pairs()
                    .map(|(k, v)| {
                        let v = match k.as_ref() {
                            "host" => to.host.clone(),
                            "port" => to.port.to_string(),
                            "dbname" => to.dbname.clone(),
                            "user" => to.user.clone(),
                            _ => v.into_owned(),
                        };
                        (k.into_owned(), v)
                    })
                    .collect();
                if !pairs.is_empty() {
                    url.query_pairs_mut().clear().extend_pairs(pairs);
                }
                url.to_string()
            }
            Form::Jdbc(url) => {
                // Host, port and database in the URL; user and password only
                // where the query already held them (a JDBC URL has no
                // userinfo part: the driver rejects one).
                let mut url = url.clone();
                set_address(&mut url, to);
                url.set_path(&format!("/{}", encode(&to.dbname)));
                let pairs: Vec<(String, String)> = url
                    .query_pairs()
                    .filter_map(|(k, v)| {
                        let v = match k.as_ref() {
                            "user" => to.user.clone(),
                            "password" => to.password.clone()?,
                            _ => v.into_owned(),
                        };
                        Some((k.into_owned(), v))
                    })
                    .collect();
                if pairs.is_empty() {
                    url.set_query(None);
                } else {
                    url.query_pairs_mut().clear().extend_pairs(pairs);
                }
                format!("jdbc:{url}")
            }
            Form::Keywords(pairs) => {
                let mut out: Vec<(String, String)> = vec![];
                let mut seen_port = false;
                let mut seen_db = false;
                for (k, v) in pairs {
                    let v = match k.as_str() {
                        "host" => to.host.clone(),
                        // hostaddr would override host: drop it.
                        "hostaddr" => continue,
                        "port" => {
                            seen_port = true;
                            to.port.to_string()
                        }
                        "dbname" => {
                            seen_db = true;
                            to.dbname.clone()
                        }
                        "user" => to.user.clone(),
                        "password" => match &to.password {
                            Some(p) => p.clone(),
                            None => continue,
                        },
                        _ => v.clone(),
                    };
                    out.push((k.clone(), v));
                }
                if !pairs.iter().any(|(k, _)| k == "host") {
                    out.insert(0, ("host".into(), to.host.clone()));
                }
                if !seen_port && to.port != 5432 {
                    out.push(("port".into(), to.port.to_string()));
                }
                if !seen_db {
                    out.push(("dbname".into(), to.dbname.clone()));
                }
                out.iter()
                    .map(|(k, v)| format!("{k}={}", quote_keyword(v)))
                    .collect::<Vec<_>>()
                    .join(" ")
            }
            Form::Npgsql(text, pairs) => rewrite_npgsql(text, pairs, to),
        }
    }

    /// A URL sqlx can connect with (keyword strings converted; a
    /// SQLAlchemy URL's driver dropped from its scheme, asyncpg's `ssl`
    /// read as `sslmode`, the drivers' other options left out).
    pub fn to_url(&self) -> String {
        match &self.form {
            Form::Url(url) if url.scheme().contains('+') => {
                let mut out = Url::parse("postgresql://localhost/").unwrap();
                if let Some(h) = url.host_str() {
                    let _ = out.set_host(Some(h));
                }
                let _ = out.set_port(url.port());
                out.set_path(url.path());
                let _ = out.set_username(url.username());
                let _ = out.set_password(url.password());
                for (k, v) in url.query_pairs() {
                    match k.as_ref() {
                        "sslmode" | "sslrootcert" | "sslcert" | "sslkey" | "application_name" | "host"
                        | "port" | "user" | "dbname" => {
                            out.query_pairs_mut().append_pair(&k, &v);
                        }
                        "ssl" => {
                            let mode = match v.as_ref() {
                                "true" | "True" | "1" => "require",
                                "false" | "False" | "0" => "disable",
                                m => m,
                            };
                            out.query_pairs_mut().append_pair("sslmode", mode);
                        }
                        _ => {}
                    }
                }
                out.to_string()
            }
            Form::Url(url) => url.to_string(),
            Form::Jdbc(url) => {
                let mut out = Url::parse("postgresql://localhost/").unwrap();
                let _ = out.set_host(url.host_str());
                let _ = out.set_port(Some(self.port()));
                out.set_path(url.path());
                if let Some(u) = self.user() {
                    let _ = out.set_username(&encode(&u));
                }
                if let Some(p) = self.password() {
                    let _ = out.set_password(Some(&encode(&p)));
                }
                for (k, v) in url.query_pairs() {
                    if matches!(
                        k.as_ref(),
                        "sslmode" | "sslrootcert" | "sslcert" | "sslkey" | "application_name"
                    ) {
                        out.query_pairs_mut().append_pair(&k, &v);
                    }
                }
                out.to_string()
            }
            Form::Npgsql(..) | Form::Keywords(_) => {
                let mut url = Url::parse("postgresql://localhost/").unwrap();
                let _ = url.set_host(Some(&self.host()));
                let _ = url.set_port(Some(self.port()));
                url.set_path(&format!("/{}", encode(&self.dbname().unwrap_or_default())));
                if let Some(u) = self.user() {
                    let _ = url.set_username(&encode(&u));
                }
                if let Some(p) = self.password() {
                    let _ = url.set_password(Some(&encode(&p)));
                }
                let params: Vec<(String, String)> = match &self.form {
                    Form::Keywords(pairs) => pairs.clone(),
                    _ => self
                        .query_param("sslmode")
                        .map(|m| ("sslmode".into(), m))
                        .into_iter()
                        .collect(),
                };
                for (k, v) in params {
                    if matches!(
                        k.as_str(),
                        "sslmode" | "sslrootcert" | "sslcert" | "sslkey" | "application_name" | "options"
                    ) {
                        url.query_pairs_mut().append_pair(&k, &v);
                    }
                }
                url.to_string()
            }
        }
    }
}

/// `postgresql+psycopg2://`, `postgresql+asyncpg://`, `postgres+pg8000://`…:
/// a SQLAlchemy URL, whose scheme names the driver.
fn sqlalchemy_scheme(text: &str) -> bool {
    let Some((scheme, _)) = text.split_once("://") else {
        return false;
    };
    let Some((base, driver)) = scheme.split_once('+') else {
        return false;
    };
    matches!(base, "postgresql" | "postgres")
        && !driver.is_empty()
        && driver.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// A host and port written as one value (`127.0.0.1:5432`, `db:5433`,
/// `[::1]:5432`, as Grafana, Gitea and Nextcloud write them); `None` for a
/// host alone or a socket folder.
pub fn split_host_port(value: &str) -> Option<(String, u16)> {
    let v = value.trim();
    if v.starts_with('/') {
        return None;
    }
    let (host, port) = if let Some(rest) = v.strip_prefix('[') {
        let (h, p) = rest.split_once("]:")?;
        (h, p)
    } else {
        let (h, p) = v.rsplit_once(':')?;
        if h.contains(':') {
            return None;
        }
        (h, p)
    };
    let port = port.parse().ok()?;
    (!host.is_empty()).then(|| (host.to_string(), port))
}

/// The URL's host and port set to `to`'s (the port left out where the URL
/// had none and the target's is the default).
fn set_address(url: &mut Url, to: &Destination) {
    let _ = url.set_host(Some(&to.host));
    let _ = url.set_port(if url.port().is_none() && to.port == 5432 {
        None
    } else {
        Some(to.port)
    });
}

fn decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

/// What a URL's user, password or path component must not hold literally.
const COMPONENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

fn encode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, COMPONENT).to_string()
}

fn quote_keyword(v: &str) -> String {
    if !v.is_empty() && !v.contains([' ', '\'', '\\', '\t']) {
        return v.to_string();
    }
    format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// `key=value key='quoted value'`; `None` when any token is not a libpq keyword.
fn parse_keywords(text: &str) -> Option<Vec<(String, String)>> {
    let mut pairs = vec![];
    let mut chars = text.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            break;
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c.is_whitespace() {
                break;
            }
            key.push(c);
            chars.next();
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.next() != Some('=')
            || !(LIBPQ_KEYWORDS.contains(&key.as_str()) || PGBOUNCER_KEYWORDS.contains(&key.as_str()))
        {
            return None;
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut value = String::new();
        if chars.peek() == Some(&'\'') {
            chars.next();
            loop {
                match chars.next()? {
                    '\\' => value.push(chars.next()?),
                    '\'' => break,
                    c => value.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                value.push(c);
                chars.next();
            }
        }
        pairs.push((key, value));
    }
    // A connection names at least one of libpq's own keys.
    pairs
        .iter()
        .any(|(k, _)| LIBPQ_KEYWORDS.contains(&k.as_str()))
        .then_some(pairs)
}

/// `Key=value;Key="quoted; value";…` as DbConnectionStringBuilder reads it;
/// `None` unless it names a host (Host/Server) and every pair has a key.
fn parse_npgsql(text: &str) -> Option<Vec<NpgsqlPair>> {
    let bytes = text.as_bytes();
    let mut pairs = vec![];
    let mut at = 0;
    while at < text.len() {
        // key: up to '='
        let eq = at + text[at..].find('=')?;
        let key = text[at..eq].trim().trim_start_matches(';').trim();
        if key.is_empty()
            || !key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == ' ' || c == '_')
        {
            return None;
        }
        let mut v = eq + 1;
        while v < text.len() && bytes[v] == b' ' {
            v += 1;
        }
        let (value, span, quote, next) = match bytes.get(v) {
            Some(&q @ (b'"' | b'\'')) => {
                let q = q as char;
                let mut value = String::new();
                let mut i = v + 1;
                loop {
                    let c = text[i..].chars().next()?;
                    if c == q {
                        if text[i + 1..].starts_with(q) {
                            value.push(q);
                            i += 2;
                            continue;
                        }
                        break;
                    }
                    value.push(c);
                    i += c.len_utf8();
                }
                let end = i + 1;
                let rest = &text[end..];
                let next = end + rest.find(';').map(|s| s + 1).unwrap_or(rest.len());
                if !text[end..next].trim_end_matches(';').trim().is_empty() {
                    return None;
                }
                (value, (v, end), Some(q), next)
            }
            _ => {
                let end = v + text[v..].find(';').unwrap_or(text.len() - v);
                let raw = text[v..end].trim_end();
                (
                    raw.to_string(),
                    (v, v + raw.len()),
                    None,
                    (end + 1).min(text.len()),
                )
            }
        };
        pairs.push(NpgsqlPair {
            key: key.to_string(),
            meaning: npgsql_key(key),
            value,
            span,
            quote,
        });
        at = next;
        while at < text.len() && (bytes[at] == b' ' || bytes[at] == b';') {
            at += 1;
        }
    }
    pairs
        .iter()
        .any(|p| p.meaning == Some(NpgsqlKey::Field(Field::Host)))
        .then_some(pairs)
}

/// Npgsql's SSL Mode (`VerifyFull`) as libpq spells it (`verify-full`).
fn npgsql_sslmode(v: &str) -> String {
    match v.to_lowercase().replace(['-', '_'], "").as_str() {
        "verifyca" => "verify-ca".into(),
        "verifyfull" => "verify-full".into(),
        other => other.to_string(),
    }
}

fn quote_npgsql(v: &str, quote: Option<char>) -> String {
    let needs = v.contains([';', '"', '\'', '=']) || v.starts_with(' ') || v.ends_with(' ');
    match quote {
        Some(q) => format!("{q}{}{q}", v.replace(q, &format!("{q}{q}"))),
        None if needs => format!("\"{}\"", v.replace('"', "\"\"")),
        None => v.to_string(),
    }
}

/// The Npgsql string with host, port, database, user and password pointed
/// at `to`: only those values change (a password is dropped where `to` has
/// none); a port or database the string lacks is appended.
fn rewrite_npgsql(text: &str, pairs: &[NpgsqlPair], to: &Destination) -> String {
    let mut out = String::with_capacity(text.len() + 32);
    let mut at = 0;
    let mut seen = vec![];
    for p in pairs {
        let Some(NpgsqlKey::Field(f)) = p.meaning else {
            continue;
        };
        seen.push(f);
        match f.value_in(to) {
            Some(v) => {
                out.push_str(&text[at..p.span.0]);
                out.push_str(&quote_npgsql(&v, p.quote));
                at = p.span.1;
            }
            None => {
                // The whole `Password=…;` pair goes.
                let key_start = text[..p.span.0].rfind(';').map(|i| i + 1).unwrap_or(0);
                let key_start = key_start + (text[key_start..].len() - text[key_start..].trim_start().len());
                out.push_str(&text[at..key_start]);
                at = p.span.1;
                if text[at..].starts_with(';') {
                    at += 1;
                    while text[at..].starts_with(' ') {
                        at += 1;
                    }
                }
            }
        }
    }
    out.push_str(&text[at..]);
    for (f, needed) in [(Field::Port, to.port != 5432), (Field::Dbname, true)] {
        if needed && !seen.contains(&f) {
            let key = if f == Field::Port { "Port" } else { "Database" };
            if !out.is_empty() && !out.trim_end().ends_with(';') {
                out.push(';');
            }
            out.push_str(&format!(
                "{key}={}",
                quote_npgsql(&f.value_in(to).unwrap_or_default(), None)
            ));
            if text.trim_end().ends_with(';') {
                out.push(';');
            }
        }
    }
    out
}

/// Host names that mean this machine.
pub fn same_host(a: &str, b: &str) -> bool {
    let local = |h: &str| matches!(h, "localhost" | "127.0.0.1" | "::1" | "");
    a.eq_ignore_ascii_case(b) || (local(a) && local(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dest(password: Option<&str>) -> Destination {
        Destination {
            host: "db.example".into(),
            port: 6432,
            dbname: "TovPlay".into(),
            user: "raz@tovtech.org".into(),
            password: password.map(str::to_string),
        }
    }

    #[test]
    fn sqlalchemy_urls_keep_their_driver_and_connect_without_it() {
        for url in [
            "postgresql+psycopg2://airflow:pw@127.0.0.1:5432/airflow",
            "postgresql+psycopg://u:pw@h:5432/d",
            "postgresql+asyncpg://u:pw@h:5432/d?ssl=disable",
            "postgresql+pg8000://u:pw@h/d",
            "postgresql+psycopg2cffi://u:pw@h/d",
            "postgres+psycopg2://u:pw@h/d",
        ] {
            let c = ConnString::parse(url).unwrap_or_else(|| panic!("{url}"));
            assert_eq!(
                c.user().as_deref(),
                Some(url.split("://").nth(1).unwrap().split(':').next().unwrap())
            );
            let scheme = url.split("://").next().unwrap();
            let to = c.rewrite(&dest(Some("new")));
            assert!(to.starts_with(&format!("{scheme}://")), "{to}");
            assert!(c.to_url().starts_with("postgresql://"), "{}", c.to_url());
        }
        let c = ConnString::parse(
            "postgresql+asyncpg://u:pw@h:5432/d?ssl=disable&prepared_statement_cache_size=0",
        )
        .unwrap();
        assert_eq!(
            c.rewrite(&dest(Some("new"))),
            "postgresql+asyncpg://raz%40tovtech.org:new@db.example:6432/TovPlay?ssl=disable&prepared_statement_cache_size=0"
        );
        assert_eq!(c.to_url(), "postgresql://u:pw@h:5432/d?sslmode=disable");
        assert!(ConnString::parse("mysql+pymysql://u:pw@h/d").is_none());
        assert!(ConnString::parse("postgresql+://u@h/d").is_none());
    }

    #[test]
    fn a_host_and_port_in_one_value_are_told_apart_from_a_host() {
        assert_eq!(
            split_host_port("127.0.0.1:5432"),
            Some(("127.0.0.1".into(), 5432))
        );
        assert_eq!(split_host_port("db:5433"), Some(("db".into(), 5433)));
        assert_eq!(split_host_port("[::1]:5432"), Some(("::1".into(), 5432)));
        for host in ["localhost", "/var/run/postgresql", "::1", "db:", "db:x"] {
            assert_eq!(split_host_port(host), None, "{host}");
        }
    }

    #[test]
    fn url_keeps_its_form_and_query() {
        let c = ConnString::parse("postgresql://app:old%40pw@postgres:5432/app?sslmode=require").unwrap();
        assert_eq!(c.address(), "postgres:5432/app");
        assert_eq!(c.password().as_deref(), Some("old@pw"));
        assert_eq!(
            c.rewrite(&dest(Some("n:w"))),
            "postgresql://raz%40tovtech.org:n%3Aw@db.example:6432/TovPlay?sslmode=require"
        );
        let c = ConnString::parse("postgres://app@postgres/app").unwrap();
        assert_eq!(
            c.rewrite(&dest(Some("secret"))),
            "postgres://raz%40tovtech.org@db.example:6432/TovPlay"
        );
    }

    #[test]
    fn keywords_keep_order_and_quoting() {
        let c = ConnString::parse("host=postgres port=5432 dbname=app user=app sslmode=disable").unwrap();
        assert_eq!(c.address(), "postgres:5432/app");
        assert_eq!(
            c.rewrite(&dest(None)),
            "host=db.example port=6432 dbname=TovPlay user=raz@tovtech.org sslmode=disable"
        );
        let c = ConnString::parse("dbname='my db' host=h password='a b'").unwrap();
        assert_eq!(c.dbname().as_deref(), Some("my db"));
        assert_eq!(
            c.rewrite(&dest(Some("x y"))),
            "dbname=TovPlay host=db.example password='x y' port=6432"
        );
        assert!(ConnString::parse("hello=world").is_none());
        assert!(ConnString::parse("just text").is_none());
    }

    #[test]
    fn pgbouncer_entries_keep_their_own_keys_and_the_probe_drops_them() {
        let c = ConnString::parse("host=10.0.0.5 port=5432 dbname=app pool_size=20 pool_mode=transaction")
            .unwrap();
        assert_eq!(
            c.rewrite(&dest(None)),
            "host=db.example port=6432 dbname=TovPlay pool_size=20 pool_mode=transaction"
        );
        assert!(!c.to_url().contains("pool"), "{}", c.to_url());
        // PgBouncer's keys alone name no database.
        assert!(ConnString::parse("pool_size=20").is_none());
    }

    #[test]
    fn jdbc_urls_keep_their_form_and_never_get_userinfo() {
        let c =
            ConnString::parse("jdbc:postgresql://postgres:5432/app?user=app&password=old&ssl=false").unwrap();
        assert_eq!(c.address(), "postgres:5432/app");
        assert_eq!(
            (c.user().as_deref(), c.password().as_deref()),
            (Some("app"), Some("old"))
        );
        assert_eq!(
            c.rewrite(&dest(Some("n w"))),
            "jdbc:postgresql://db.example:6432/TovPlay?user=raz%40tovtech.org&password=n+w&ssl=false"
        );
        assert_eq!(c.to_url(), "postgresql://app:old@postgres:5432/app");
        // No user in the URL: none is added (the driver takes it from elsewhere).
        let c = ConnString::parse("jdbc:postgresql://postgres/app").unwrap();
        assert_eq!(
            c.rewrite(&dest(Some("x"))),
            "jdbc:postgresql://db.example:6432/TovPlay"
        );
    }

    #[test]
    fn npgsql_strings_keep_their_keys_spacing_and_quotes() {
        let t = "Server=postgres; Port=5432; Database=app; User Id=app; Password=\"o;ld\"; Pooling=true;";
        let c = ConnString::parse(t).unwrap();
        assert_eq!(c.address(), "postgres:5432/app");
        assert_eq!(
            (c.user().as_deref(), c.password().as_deref()),
            (Some("app"), Some("o;ld"))
        );
        assert_eq!(
            c.rewrite(&dest(Some("n;w"))),
            "Server=db.example; Port=6432; Database=TovPlay; User Id=raz@tovtech.org; Password=\"n;w\"; Pooling=true;"
        );
        assert_eq!(
            c.rewrite(&dest(None)),
            "Server=db.example; Port=6432; Database=TovPlay; User Id=raz@tovtech.org; Pooling=true;"
        );
        let c = ConnString::parse("host=h;database=d;username=u;SSL Mode=VerifyFull").unwrap();
        assert_eq!(c.to_url(), "postgresql://u@h:5432/d?sslmode=verify-full");
        assert_eq!(
            c.rewrite(&dest(None)),
            "host=db.example;database=TovPlay;username=raz@tovtech.org;SSL Mode=VerifyFull;Port=6432"
        );
        // No host: not a connection string cutover can repoint.
        assert!(ConnString::parse("Database=d;Username=u").is_none());
    }

    #[test]
    fn fields_make_a_connection() {
        let c = ConnString::from_fields(&[
            (Field::Host, "db".into()),
            (Field::Port, "6543".into()),
            (Field::Dbname, "app".into()),
            (Field::User, "u".into()),
        ])
        .unwrap();
        assert_eq!(c.to_url(), "postgresql://u@db:6543/app");
        let j = ConnString::parse("jdbc:postgresql://db:5433/app?sslmode=require").unwrap();
        let c = j.with_fields(&[(Field::User, "u".into()), (Field::Password, "p".into())]);
        assert_eq!(c.to_url(), "postgresql://u:p@db:5433/app?sslmode=require");
    }

    #[test]
    fn url_converts_for_connecting() {
        let c = ConnString::parse("host=h port=5433 dbname=d user=u password=p sslmode=disable").unwrap();
        assert_eq!(c.to_url(), "postgresql://u:p@h:5433/d?sslmode=disable");
    }
}
