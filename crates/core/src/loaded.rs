//! A plan file loaded: its parsed text, where it came from, and what it
//! resolves to for every stage and command (its endpoints, resolved once
//! and shared; the session settings of every connection).

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use crate::endpoint::{Endpoint, Role};
use crate::error::{Error, Result};
use crate::plan_file::{PlanFile, fingerprint, parse};

/// A parsed plan file with where it came from and its fingerprint.
#[derive(Debug, Clone)]
pub struct LoadedPlan {
    pub path: PathBuf,
    pub file: PlanFile,
    /// sha256 of the file's bytes: a resume refuses when it changed.
    pub fingerprint: String,
    /// `[source]` and `[target]` resolved, each the first time it is asked
    /// for (a command that needs only the target does not read the
    /// source's environment), then shared: what the TLS negotiation of
    /// `sslmode=allow` learns holds for every connection after it.
    endpoints: [OnceLock<Arc<Endpoint>>; 2],
}

/// What every session cutover opens on a server is set up with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionSettings {
    /// Seconds a connection may take.
    pub connect_timeout: u64,
    /// Seconds a statement may run (0 = no limit).
    pub statement_timeout: u64,
    /// Seconds to wait for a lock.
    pub lock_timeout: u64,
}

impl SessionSettings {
    /// For a look at a server that may be gone (a retired source, in
    /// `status` and `report`): at most 5 s to connect, no statement limit.
    pub fn glance(self) -> SessionSettings {
        SessionSettings {
            connect_timeout: self.connect_timeout.min(5),
            ..self.without_statement_timeout()
        }
    }

    /// These settings without a statement timeout: for commands that only
    /// read (status, report, archive-journal), which must not fail half-way
    /// on a slow server.
    pub fn without_statement_timeout(self) -> SessionSettings {
        SessionSettings {
            statement_timeout: 0,
            ..self
        }
    }
}

impl LoadedPlan {
    pub fn load(path: &Path) -> Result<LoadedPlan> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::bad_input(format!(
                "cannot read the plan file {}: {e}; write one with `cutover init` or pass --plan FILE",
                path.display()
            ))
        })?;
        let file = parse(&text).map_err(|e| e.context(path.display()))?;
        Ok(LoadedPlan::new(
            path.to_path_buf(),
            file,
            fingerprint(text.as_bytes()),
        ))
    }

    /// A plan from its parts (tests, and plans built in memory).
    pub fn new(path: PathBuf, file: PlanFile, fingerprint: String) -> LoadedPlan {
        LoadedPlan {
            path,
            file,
            fingerprint,
            endpoints: Default::default(),
        }
    }

    /// `[source]` or `[target]`, resolved (the URL, its password, TLS) with
    /// the plan's connect timeout; the same value on every call.
    pub fn endpoint(&self, role: Role) -> Result<Arc<Endpoint>> {
        let (slot, spec) = match role {
            Role::Source => (&self.endpoints[0], &self.file.source),
            Role::Target => (&self.endpoints[1], &self.file.target),
        };
        if let Some(e) = slot.get() {
            return Ok(e.clone());
        }
        let resolved =
            Arc::new(Endpoint::resolve(role, spec)?.with_connect_timeout(self.file.options.connect_timeout));
        Ok(slot.get_or_init(|| resolved).clone())
    }

    /// The source's endpoint ([`LoadedPlan::endpoint`]).
    pub fn source(&self) -> Result<Arc<Endpoint>> {
        self.endpoint(Role::Source)
    }

    /// The target's endpoint ([`LoadedPlan::endpoint`]).
    pub fn target(&self) -> Result<Arc<Endpoint>> {
        self.endpoint(Role::Target)
    }

    /// The plan's session settings (`[options]`' timeouts).
    pub fn session(&self) -> SessionSettings {
        let o = &self.file.options;
        SessionSettings {
            connect_timeout: o.connect_timeout,
            statement_timeout: o.statement_timeout,
            lock_timeout: o.lock_timeout,
        }
    }

    /// The run directory, relative paths taken from the plan file's folder.
    pub fn run_dir(&self) -> PathBuf {
        let dir = &self.file.options.run_dir;
        if dir.is_absolute() {
            dir.clone()
        } else {
            let relative: PathBuf = dir
                .components()
                .filter(|c| !matches!(c, std::path::Component::CurDir))
                .collect();
            self.path.parent().unwrap_or(Path::new(".")).join(relative)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(extra: &str) -> LoadedPlan {
        let text = format!(
            "[source]\nurl = \"postgresql://ops@src.internal/app\"\n[target]\nurl_env = \"CUTOVER_LOADED_TEST_URL\"\n{extra}"
        );
        LoadedPlan::new("/plans/cutover.toml".into(), parse(&text).unwrap(), String::new())
    }

    #[test]
    fn an_endpoint_is_resolved_once_and_carries_the_connect_timeout() {
        let loaded = plan("[options]\nconnect_timeout = 3\n");
        let a = loaded.source().unwrap();
        let b = loaded.source().unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(a.connect_timeout(), std::time::Duration::from_secs(3));
        // The target's variable is not set: only asking for the target fails.
        let err = loaded.target().unwrap_err();
        assert!(err.to_string().contains("CUTOVER_LOADED_TEST_URL"), "{err}");
    }

    #[test]
    fn the_session_settings_come_from_the_options() {
        let loaded = plan("[options]\nconnect_timeout = 4\nstatement_timeout = 60\nlock_timeout = 7\n");
        let s = loaded.session();
        assert_eq!(
            (s.connect_timeout, s.statement_timeout, s.lock_timeout),
            (4, 60, 7)
        );
        assert_eq!(s.without_statement_timeout().statement_timeout, 0);
        assert_eq!(
            (
                s.glance().connect_timeout,
                s.glance().statement_timeout,
                s.glance().lock_timeout
            ),
            (4, 0, 7)
        );
        assert_eq!(loaded.run_dir(), PathBuf::from("/plans/cutover-run"));
    }
}
