//! Resolving the source and target connections from the plan file, and keeping
//! passwords out of everything cutover prints, logs or stores.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::PgConnectOptions;
use url::Url;

use crate::error::{Error, Result};
use crate::plan_file::EndpointSpec;
use crate::redact::redact_text;
use crate::tls::{RootCert, TlsSettings};

/// Which side of the cutover a connection belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Source,
    Target,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Source => "source",
            Role::Target => "target",
        })
    }
}

/// A resolved database connection. Its `Debug` and `Display` never show the password.
#[derive(Clone)]
pub struct Endpoint {
    pub role: Role,
    pub host: String,
    pub port: u16,
    pub user: String,
    pub dbname: String,
    /// The URL with the password removed.
    url_without_password: String,
    password: Option<String>,
    query: Vec<(String, String)>,
    /// TLS as libpq would do it, for cutover's connections and its tools.
    pub tls: TlsSettings,
    /// How long a connection may take (the plan's `connect_timeout`), for
    /// the tools cutover runs against this endpoint (`PGCONNECT_TIMEOUT`).
    connect_timeout: Duration,
}

impl Endpoint {
    /// Reads `url` or the variable named by `url_env`, then the password from
    /// `password_env` when given (else the URL, `PGPASSWORD` or `~/.pgpass`,
    /// as libpq does).
    pub fn resolve(role: Role, spec: &EndpointSpec) -> Result<Endpoint> {
        let raw = match (&spec.url, &spec.url_env) {
            (Some(url), None) => url.clone(),
            (None, Some(var)) => std::env::var(var).map_err(|_| {
                Error::bad_input(format!(
                    "[{role}] url_env = {var:?}, but the environment variable {var} is not set: \
                     export it or put the URL in `url`"
                ))
            })?,
            (Some(_), Some(_)) => {
                return Err(Error::bad_input(format!(
                    "[{role}] has both `url` and `url_env`: keep one"
                )));
            }
            (None, None) => {
                return Err(Error::bad_input(format!("[{role}] needs `url` or `url_env`")));
            }
        };
        let mut url = Url::parse(&raw).map_err(|e| {
            Error::bad_input(format!(
                "[{role}] url {:?} is not a valid URL ({e}): write it as postgresql://user@host:port/database",
                redact_text(&raw)
            ))
        })?;
        if !matches!(url.scheme(), "postgres" | "postgresql") {
            return Err(Error::bad_input(format!(
                "[{role}] url must start with postgresql:// (found {}://)",
                url.scheme()
            )));
        }
        let mut password = url.password().map(percent_decode);
        if let Some(var) = &spec.password_env {
            password = Some(std::env::var(var).map_err(|_| {
                Error::bad_input(format!(
                    "[{role}] password_env = {var:?}, but the environment variable {var} is not set"
                ))
            })?);
        }
        let _ = url.set_password(None);
        let host = url
            .host_str()
            .unwrap_or("localhost")
            .trim_matches(['[', ']'])
            .to_string();
        let port = url.port().unwrap_or(5432);
        let user = match url.username() {
            "" => std::env::var("PGUSER").unwrap_or_else(|_| "postgres".into()),
            u => percent_decode(u),
        };
        let dbname = match url.path().trim_start_matches('/') {
            "" => {
                return Err(Error::bad_input(format!(
                    "[{role}] url names no database: add it after the port, as in postgresql://host:5432/app"
                )));
            }
            db => percent_decode(db),
        };
        let query: Vec<(String, String)> = url
            .query_pairs()
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        let tls = TlsSettings::resolve(&query, &format!("[{role}] url"))?;
        Ok(Endpoint {
            role,
            host,
            port,
            user,
            dbname,
            url_without_password: url.to_string(),
            password,
            query,
            tls,
            connect_timeout: Duration::from_secs(10),
        })
    }

    /// This endpoint with the plan's `connect_timeout` (seconds, at least 1).
    pub fn with_connect_timeout(mut self, seconds: u64) -> Endpoint {
        self.connect_timeout = Duration::from_secs(seconds.max(1));
        self
    }

    /// How long a connection to this endpoint may take.
    pub fn connect_timeout(&self) -> Duration {
        self.connect_timeout
    }

    /// Options for sqlx; the password, when known, is set here and nowhere
    /// visible. How long connecting may take is the pool's acquire timeout
    /// (or the caller's own bound), not an option of the connection.
    pub fn connect_options(&self) -> Result<PgConnectOptions> {
        let mut opts = PgConnectOptions::from_str(&self.child_url())
            .map_err(|e| Error::bad_input(format!("{} url: {e}", self.role)))?;
        if let Some(pw) = &self.password {
            opts = opts.password(pw);
        }
        opts = self.tls.apply(opts);
        if self.tls.root_cert == Some(RootCert::System)
            && let Some(bundle) = crate::tls::system_ca_bundle()
        {
            // sqlx may have read PGSSLROOTCERT=system as a file name.
            opts = opts.ssl_root_cert(bundle);
        }
        Ok(opts.application_name(&format!(
            "cutover {} (pid {})",
            env!("CARGO_PKG_VERSION"),
            std::process::id()
        )))
    }

    /// The same server and credentials, another database (scratch databases).
    pub fn with_database(&self, dbname: &str) -> Endpoint {
        let mut e = self.clone();
        if let Ok(mut url) = Url::parse(&self.url_without_password) {
            url.set_path(&format!("/{dbname}"));
            e.url_without_password = url.to_string();
        }
        e.dbname = dbname.to_string();
        e
    }

    /// The URL without its password.
    pub fn url_without_password(&self) -> &str {
        &self.url_without_password
    }

    /// The URL for libpq tools (`pg_dump --dbname`): without its password and
    /// without TLS parameters, which [`Endpoint::libpq_env`] carries as
    /// resolved (a libpq before 16 does not know `sslrootcert=system`).
    pub fn child_url(&self) -> String {
        let Ok(mut url) = Url::parse(&self.url_without_password) else {
            return self.url_without_password.clone();
        };
        crate::tls::strip_tls_params(&mut url);
        url.to_string()
    }

    /// Environment for a libpq child process (pg_dump, pg_restore, psql): the
    /// password travels in `PGPASSWORD`, never on a command line; the TLS
    /// settings as cutover resolved them.
    pub fn libpq_env(&self) -> Vec<(&'static str, String)> {
        let mut env = self.tls.libpq_env();
        if let Some(pw) = &self.password {
            env.push(("PGPASSWORD", pw.clone()));
        }
        env
    }

    /// The password (for rewriting consumer configurations that carry one).
    pub fn password(&self) -> Option<&str> {
        self.password.as_deref()
    }

    /// Query parameters of the URL (sslmode and friends).
    pub fn query(&self) -> &[(String, String)] {
        &self.query
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}:{}/{}", self.user, self.host, self.port, self.dbname)
    }
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Endpoint({}: {})", self.role, self)
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(v) = s.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(url: &str) -> EndpointSpec {
        EndpointSpec {
            url: Some(url.into()),
            ..Default::default()
        }
    }

    #[test]
    fn resolves_without_keeping_the_password_visible() {
        let ep = Endpoint::resolve(
            Role::Source,
            &spec("postgresql://app:s%40cret@db.example:6543/shop?sslmode=require"),
        )
        .unwrap();
        assert_eq!(
            (ep.host.as_str(), ep.port, ep.user.as_str(), ep.dbname.as_str()),
            ("db.example", 6543, "app", "shop")
        );
        assert_eq!(ep.password(), Some("s@cret"));
        assert_eq!(
            ep.url_without_password(),
            "postgresql://app@db.example:6543/shop?sslmode=require"
        );
        assert!(!format!("{ep} {ep:?}").contains("cret"));
        assert_eq!(ep.query(), &[("sslmode".to_string(), "require".to_string())]);
        assert_eq!(ep.child_url(), "postgresql://app@db.example:6543/shop");
        assert!(ep.libpq_env().contains(&("PGSSLMODE", "require".to_string())));
    }

    #[test]
    fn bad_urls_say_what_to_write() {
        let err = Endpoint::resolve(Role::Target, &spec("postgresql://u:pw@host:5432")).unwrap_err();
        assert!(err.message.contains("names no database"), "{err}");
        let err = Endpoint::resolve(Role::Target, &spec("mysql://u:topsecret@host/db")).unwrap_err();
        assert!(
            err.message.contains("postgresql://") && !err.message.contains("topsecret"),
            "{err}"
        );
    }
}
