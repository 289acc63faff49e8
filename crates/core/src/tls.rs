//! TLS settings the libpq way: `sslmode` (all six modes, `prefer` by
//! default), `sslrootcert` (a file, or `system`), `sslcert`/`sslkey`, from a
//! connection's parameters or else the `PGSSLMODE`, `PGSSLROOTCERT`,
//! `PGSSLCERT` and `PGSSLKEY` variables, resolved once and applied alike to
//! cutover's own connections (sqlx with rustls) and to the libpq tools it
//! runs (pg_dump, pg_restore, psql).
//!
//! Where rustls through sqlx cannot follow libpq exactly, the difference is
//! made safe here rather than left to chance:
//!
//! - `allow` (plain first, TLS when the server refuses plain) is tried in
//!   that order by the connection probe ([`TlsSettings::upgrade_allow`]).
//! - `verify-ca`/`verify-full` without a CA refuse, as libpq does, instead
//!   of silently trusting a built-in list.
//! - A CA file given with `require` makes it `verify-ca` (libpq's rule).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use sqlx::postgres::{PgConnectOptions, PgSslMode};

use crate::error::{Error, Result};

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SslMode {
    Disable,
    Allow,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    pub fn parse(text: &str) -> Option<SslMode> {
        Some(match text {
            "disable" => SslMode::Disable,
            "allow" => SslMode::Allow,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    /// Whether the server's certificate is checked against a CA.
    pub fn verifies(self) -> bool {
        matches!(self, SslMode::VerifyCa | SslMode::VerifyFull)
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where the CAs that sign the server's certificate come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootCert {
    File(PathBuf),
    /// `sslrootcert=system`: the operating system's trusted CAs.
    System,
}

/// The parameter names of a connection that carry TLS settings.
pub const TLS_PARAMS: &[&str] = &["sslmode", "sslrootcert", "sslcert", "sslkey"];

/// Removes the TLS parameters from a URL's query (they are resolved into
/// [`TlsSettings`], which apply them: sqlx would read `sslrootcert=system`
/// as a file name, and a libpq before 16 too).
pub fn strip_tls_params(url: &mut url::Url) {
    let kept: Vec<(String, String)> = url
        .query_pairs()
        .filter(|(k, _)| !TLS_PARAMS.contains(&k.as_ref()))
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    if kept.is_empty() {
        url.set_query(None);
    } else {
        url.query_pairs_mut().clear().extend_pairs(kept);
    }
}

/// A connection's resolved TLS settings.
#[derive(Debug, Clone)]
pub struct TlsSettings {
    pub mode: SslMode,
    pub root_cert: Option<RootCert>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// `allow` found the server refusing plain connections: TLS from now on.
    allow_upgraded: Arc<AtomicBool>,
}

impl TlsSettings {
    /// Resolves the settings from a connection's parameters (`params`, as
    /// `key=value` pairs: a URL's query or a keyword string's), else the
    /// environment, else libpq's defaults (`~/.postgresql/…` files when
    /// present). `what` names the connection in errors.
    pub fn resolve(params: &[(String, String)], what: &str) -> Result<TlsSettings> {
        Self::resolve_with(params, what, &|k| std::env::var(k).ok(), home().as_deref())
    }

    fn resolve_with(
        params: &[(String, String)],
        what: &str,
        env: &dyn Fn(&str) -> Option<String>,
        home: Option<&Path>,
    ) -> Result<TlsSettings> {
        let get = |key: &str, var: &str| {
            params
                .iter()
                .rev()
                .find(|(k, _)| k == key)
                .map(|(_, v)| (v.clone(), key.to_string()))
                .or_else(|| env(var).filter(|v| !v.is_empty()).map(|v| (v, var.to_string())))
        };
        let mode = match get("sslmode", "PGSSLMODE") {
            None => None,
            Some((text, from)) => Some(SslMode::parse(&text).ok_or_else(|| {
                Error::bad_input(format!(
                    "{what}: {from} = {text:?} is not an sslmode: use disable, allow, prefer, require, verify-ca or \
                     verify-full"
                ))
            })?),
        };
        let dot_pg = home.map(|h| h.join(".postgresql"));
        let root_cert = match get("sslrootcert", "PGSSLROOTCERT") {
            Some((v, _)) if v == "system" => Some(RootCert::System),
            Some((v, from)) => {
                let path = PathBuf::from(&v);
                readable(&path).map_err(|e| {
                    Error::bad_input(format!(
                        "{what}: the CA certificate {from} = {} cannot be read ({e}): point sslrootcert at the PEM \
                         file of the CA that signed the server's certificate, or use sslrootcert=system",
                        path.display()
                    ))
                })?;
                Some(RootCert::File(path))
            }
            None => dot_pg
                .as_ref()
                .map(|d| d.join("root.crt"))
                .filter(|p| p.is_file())
                .map(RootCert::File),
        };
        let mode = match (mode, &root_cert) {
            // libpq 16: sslrootcert=system defaults to, and demands, verify-full.
            (None, Some(RootCert::System)) => SslMode::VerifyFull,
            (Some(m), Some(RootCert::System)) if m != SslMode::VerifyFull => {
                return Err(Error::bad_input(format!(
                    "{what}: sslmode={m} may not be used with sslrootcert=system (the system's CAs sign \
                     certificates for host names): use sslmode=verify-full"
                )));
            }
            // libpq: with a CA file present, require checks the chain as verify-ca does.
            (Some(SslMode::Require), Some(RootCert::File(_))) => SslMode::VerifyCa,
            (Some(m), _) => m,
            (None, _) => SslMode::Prefer,
        };
        if mode.verifies() && root_cert.is_none() {
            return Err(Error::bad_input(format!(
                "{what}: sslmode={mode} checks the server's certificate, but no CA is given: set sslrootcert to the \
                 CA's PEM file (or sslrootcert=system for the system's CAs); libpq's default \
                 ~/.postgresql/root.crt does not exist"
            )));
        }
        let explicit_cert = get("sslcert", "PGSSLCERT");
        let explicit_key = get("sslkey", "PGSSLKEY");
        let (cert, key) = match (explicit_cert, explicit_key) {
            (None, None) => {
                // libpq sends ~/.postgresql/postgresql.crt when it exists.
                let cert = dot_pg
                    .as_ref()
                    .map(|d| d.join("postgresql.crt"))
                    .filter(|p| p.is_file());
                let key = dot_pg.as_ref().map(|d| d.join("postgresql.key"));
                match (cert, key) {
                    (Some(c), Some(k)) if k.is_file() => (Some(c), Some(k)),
                    _ => (None, None),
                }
            }
            (cert, key) => {
                let cert = cert.map(|(v, from)| (PathBuf::from(v), from));
                let key = key.map(|(v, from)| (PathBuf::from(v), from)).or_else(|| {
                    dot_pg
                        .as_ref()
                        .map(|d| (d.join("postgresql.key"), "the default sslkey".to_string()))
                });
                let Some((cert, cert_from)) = cert.or_else(|| {
                    dot_pg
                        .as_ref()
                        .map(|d| (d.join("postgresql.crt"), "the default sslcert".to_string()))
                }) else {
                    return Err(Error::bad_input(format!(
                        "{what}: sslkey is set without sslcert: give the client certificate too"
                    )));
                };
                let Some((key, key_from)) = key else {
                    return Err(Error::bad_input(format!(
                        "{what}: sslcert is set without sslkey: give the client certificate's private key too"
                    )));
                };
                readable(&cert).map_err(|e| {
                    Error::bad_input(format!(
                        "{what}: the client certificate {cert_from} = {} cannot be read ({e}): point sslcert at \
                         the PEM file of the certificate the server expects",
                        cert.display()
                    ))
                })?;
                readable(&key).map_err(|e| {
                    Error::bad_input(format!(
                        "{what}: the client key {key_from} = {} cannot be read ({e}): point sslkey at the PEM \
                         file of the certificate's private key",
                        key.display()
                    ))
                })?;
                check_key_mode(&key).map_err(|e| e.context(what))?;
                (Some(cert), Some(key))
            }
        };
        Ok(TlsSettings {
            mode,
            root_cert,
            cert,
            key,
            allow_upgraded: Arc::new(AtomicBool::new(false)),
        })
    }

    /// The mode cutover's own connections use now (`allow` becomes TLS once
    /// the server has refused a plain connection).
    pub fn effective_mode(&self) -> SslMode {
        if self.mode == SslMode::Allow && self.allow_upgraded.load(Ordering::Relaxed) {
            SslMode::Require
        } else {
            self.mode
        }
    }

    /// For `allow`: the server refused a plain connection; use TLS.
    /// Returns whether that changed anything (only for `allow`, once).
    pub fn upgrade_allow(&self) -> bool {
        self.mode == SslMode::Allow && !self.allow_upgraded.swap(true, Ordering::Relaxed)
    }

    /// The settings on sqlx's options (overriding what sqlx read itself).
    pub fn apply(&self, opts: PgConnectOptions) -> PgConnectOptions {
        let mode = match self.effective_mode() {
            SslMode::Disable | SslMode::Allow => PgSslMode::Disable,
            SslMode::Prefer => PgSslMode::Prefer,
            SslMode::Require => PgSslMode::Require,
            SslMode::VerifyCa => PgSslMode::VerifyCa,
            SslMode::VerifyFull => PgSslMode::VerifyFull,
        };
        let mut opts = opts.ssl_mode(mode);
        // With no root certificate set, sqlx (native roots) trusts the system's CAs.
        if let Some(RootCert::File(p)) = &self.root_cert {
            opts = opts.ssl_root_cert(p);
        }
        if let (Some(c), Some(k)) = (&self.cert, &self.key) {
            opts = opts.ssl_client_cert(c).ssl_client_key(k);
        }
        opts
    }

    /// The same settings for a libpq child process, as environment variables
    /// (the child's URL carries none of them). `sslrootcert=system` becomes
    /// the system's CA bundle file where one is found: libpq before 16 knows
    /// no `system`.
    pub fn libpq_env(&self) -> Vec<(&'static str, String)> {
        let mut env = vec![("PGSSLMODE", self.mode.as_str().to_string())];
        match &self.root_cert {
            Some(RootCert::File(p)) => env.push(("PGSSLROOTCERT", p.display().to_string())),
            Some(RootCert::System) => env.push((
                "PGSSLROOTCERT",
                system_ca_bundle()
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|| "system".into()),
            )),
            None => {}
        }
        if let (Some(c), Some(k)) = (&self.cert, &self.key) {
            env.push(("PGSSLCERT", c.display().to_string()));
            env.push(("PGSSLKEY", k.display().to_string()));
        }
        env
    }

    /// One line for the plan: "TLS verify-full (CA /etc/ca.pem)".
    pub fn describe(&self) -> String {
        let mut s = format!("sslmode={}", self.mode);
        match &self.root_cert {
            Some(RootCert::File(p)) => s.push_str(&format!(", CA {}", p.display())),
            Some(RootCert::System) => s.push_str(", the system's CAs"),
            None => {}
        }
        if let Some(c) = &self.cert {
            s.push_str(&format!(", client certificate {}", c.display()));
        }
        s
    }
}

/// The system's CA bundle: `$SSL_CERT_FILE`, else the usual places.
pub fn system_ca_bundle() -> Option<PathBuf> {
    std::env::var_os("SSL_CERT_FILE")
        .map(PathBuf::from)
        .into_iter()
        .chain(
            [
                "/etc/ssl/certs/ca-certificates.crt",
                "/etc/pki/tls/certs/ca-bundle.crt",
                "/etc/ssl/ca-bundle.pem",
                "/etc/ssl/cert.pem",
            ]
            .map(PathBuf::from),
        )
        .find(|p| p.is_file())
}

fn home() -> Option<PathBuf> {
    std::env::var_os("HOME").map(PathBuf::from)
}

fn readable(path: &Path) -> std::io::Result<()> {
    std::fs::File::open(path).map(drop)
}

/// libpq refuses a private key that others may read.
fn check_key_mode(key: &Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(key).map_err(|e| Error::bad_input(format!("{}: {e}", key.display())))?;
    let mode = meta.mode();
    if meta.uid() == unsafe { libc::geteuid() } && mode & 0o077 != 0 {
        return Err(Error::bad_input(format!(
            "the client key {} can be read by others (mode {:o}); libpq refuses it: chmod 600 {}",
            key.display(),
            mode & 0o777,
            key.display()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(params: &[(&str, &str)], env: &[(&str, &str)]) -> Result<TlsSettings> {
        let params: Vec<(String, String)> = params
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let lookup = move |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        TlsSettings::resolve_with(&params, "[source] url", &lookup, None)
    }

    #[test]
    fn prefer_by_default_and_the_url_beats_the_environment() {
        assert_eq!(resolve(&[], &[]).unwrap().mode, SslMode::Prefer);
        assert_eq!(
            resolve(&[], &[("PGSSLMODE", "disable")]).unwrap().mode,
            SslMode::Disable
        );
        assert_eq!(
            resolve(&[("sslmode", "require")], &[("PGSSLMODE", "disable")])
                .unwrap()
                .mode,
            SslMode::Require
        );
        let err = resolve(&[("sslmode", "on")], &[]).unwrap_err();
        assert!(err.message.contains("\"on\" is not an sslmode"), "{err}");
    }

    #[test]
    fn verification_needs_a_ca_and_system_needs_verify_full() {
        let err = resolve(&[("sslmode", "verify-full")], &[]).unwrap_err();
        assert!(
            err.message.contains("no CA is given") && err.message.contains("sslrootcert"),
            "{err}"
        );
        let system = resolve(&[("sslrootcert", "system")], &[]).unwrap();
        assert_eq!(
            (system.mode, system.root_cert),
            (SslMode::VerifyFull, Some(RootCert::System))
        );
        let err = resolve(&[("sslrootcert", "system"), ("sslmode", "require")], &[]).unwrap_err();
        assert!(err.message.contains("use sslmode=verify-full"), "{err}");
        let err = resolve(&[("sslrootcert", "/nonexistent/ca.pem")], &[]).unwrap_err();
        assert!(
            err.message.contains("/nonexistent/ca.pem cannot be read"),
            "{err}"
        );
    }

    #[test]
    fn require_with_a_ca_file_checks_the_chain() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "x").unwrap();
        let ca = ca.to_str().unwrap();
        let s = resolve(&[("sslmode", "require"), ("sslrootcert", ca)], &[]).unwrap();
        assert_eq!(s.mode, SslMode::VerifyCa);
        let env = s.libpq_env();
        assert!(
            env.contains(&("PGSSLMODE", "verify-ca".into())) && env.contains(&("PGSSLROOTCERT", ca.into()))
        );
    }

    #[test]
    fn client_certificates_must_be_readable_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("c.crt"), dir.path().join("c.key"));
        std::fs::write(&cert, "x").unwrap();
        let (c, k) = (cert.to_str().unwrap(), key.to_str().unwrap());
        let err = resolve(&[("sslcert", c), ("sslkey", k)], &[]).unwrap_err();
        assert!(
            err.message.contains("client key sslkey") && err.message.contains("cannot be read"),
            "{err}"
        );
        std::fs::write(&key, "x").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = resolve(&[("sslcert", c), ("sslkey", k)], &[]).unwrap_err();
        assert!(err.message.contains("chmod 600"), "{err}");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        let s = resolve(&[], &[("PGSSLCERT", c), ("PGSSLKEY", k)]).unwrap();
        assert_eq!(s.cert.as_deref(), Some(cert.as_path()));
    }

    #[test]
    fn allow_turns_to_tls_once() {
        let s = resolve(&[("sslmode", "allow")], &[]).unwrap();
        assert_eq!(s.effective_mode(), SslMode::Allow);
        let clone = s.clone();
        assert!(s.upgrade_allow());
        assert!(!s.upgrade_allow());
        assert_eq!(clone.effective_mode(), SslMode::Require);
        assert!(!resolve(&[], &[]).unwrap().upgrade_allow());
    }
}
