//! A connection as a consumer writes it: a URL (`postgresql://…`) or a libpq
//! keyword string (`host=… port=… dbname=…`). Rewriting one keeps its form:
//! the same scheme, the same query parameters (sslmode…), keywords in the
//! same order, a password only where there was one.

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
        if text.starts_with("postgres://") || text.starts_with("postgresql://") {
            let url = Url::parse(text).ok()?;
            return Some(ConnString { form: Form::Url(url) });
        }
        let pairs = parse_keywords(text)?;
        let has = |k: &str| pairs.iter().any(|(key, _)| key == k);
        (has("host") || has("hostaddr") || has("dbname")).then_some(ConnString {
            form: Form::Keywords(pairs),
        })
    }

    fn keyword(&self, key: &str) -> Option<&str> {
        match &self.form {
            Form::Keywords(pairs) => pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str()),
            Form::Url(_) | Form::Jdbc(_) => None,
        }
    }

    fn query_param(&self, key: &str) -> Option<String> {
        match &self.form {
            Form::Url(url) | Form::Jdbc(url) => url
                .query_pairs()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.into_owned()),
            Form::Keywords(_) => self.keyword(key).map(str::to_string),
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
        }
    }

    pub fn port(&self) -> u16 {
        match &self.form {
            Form::Url(url) | Form::Jdbc(url) => url.port().unwrap_or(5432),
            Form::Keywords(_) => self.keyword("port").and_then(|p| p.parse().ok()).unwrap_or(5432),
        }
    }

    pub fn user(&self) -> Option<String> {
        match &self.form {
            Form::Url(url) => (!url.username().is_empty()).then(|| decode(url.username())),
            Form::Jdbc(_) => self.query_param("user"),
            Form::Keywords(_) => self.keyword("user").map(str::to_string),
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
        }
    }

    pub fn password(&self) -> Option<String> {
        match &self.form {
            Form::Url(url) => url.password().map(decode),
            Form::Jdbc(_) => self.query_param("password"),
            Form::Keywords(_) => self.keyword("password").map(str::to_string),
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
        }
    }

    /// A URL sqlx can connect with (keyword strings converted).
    pub fn to_url(&self) -> String {
        match &self.form {
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
            Form::Keywords(pairs) => {
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
                for (k, v) in pairs {
                    if matches!(k.as_str(), "sslmode" | "application_name" | "options") {
                        url.query_pairs_mut().append_pair(k, v);
                    }
                }
                url.to_string()
            }
        }
    }
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
        if chars.next() != Some('=') || !LIBPQ_KEYWORDS.contains(&key.as_str()) {
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
    (!pairs.is_empty()).then_some(pairs)
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
    fn url_converts_for_connecting() {
        let c = ConnString::parse("host=h port=5433 dbname=d user=u password=p sslmode=disable").unwrap();
        assert_eq!(c.to_url(), "postgresql://u:p@h:5433/d?sslmode=disable");
    }
}
