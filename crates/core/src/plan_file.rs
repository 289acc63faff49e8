//! The plan file: the operator's declaration of source, target, consumers,
//! decommission and options (TOML). Unknown keys are errors: a typo must not
//! silently disable a safety setting.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

#[derive(Debug, Clone, Deserialize, Serialize)]
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
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ConsumerSpec {
    pub name: String,
    pub kind: ConsumerKind,
    pub path: Option<PathBuf>,
    pub key: Option<String>,
    pub reload: Option<String>,
    pub health: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ConsumerKind {
    Env,
    Yaml,
    Text,
    Command,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DecommissionSpec {
    pub driver: DecommissionDriver,
    pub container: Option<String>,
    #[serde(default)]
    pub destroy: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DecommissionDriver {
    None,
    Postgres,
    Docker,
    Command,
}

/// A parsed plan file with where it came from and its fingerprint.
#[derive(Debug, Clone)]
pub struct LoadedPlan {
    pub path: PathBuf,
    pub file: PlanFile,
    /// sha256 of the file's bytes: a resume refuses when it changed.
    pub fingerprint: String,
}

impl LoadedPlan {
    pub fn load(path: &Path) -> Result<LoadedPlan> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::bad_input(format!(
                "cannot read the plan file {}: {e}; write one with `cutover init` or pass --plan FILE",
                path.display()
            ))
        })?;
        let file = parse(&text).map_err(|msg| Error::bad_input(format!("{}: {msg}", path.display())))?;
        Ok(LoadedPlan {
            path: path.to_path_buf(),
            file,
            fingerprint: fingerprint(text.as_bytes()),
        })
    }

    /// The run directory, relative paths taken from the plan file's folder.
    pub fn run_dir(&self) -> PathBuf {
        let dir = &self.file.options.run_dir;
        if dir.is_absolute() {
            dir.clone()
        } else {
            self.path.parent().unwrap_or(Path::new(".")).join(dir)
        }
    }
}

/// Parses and validates a plan file's text; the error names line and column.
pub fn parse(text: &str) -> std::result::Result<PlanFile, String> {
    let file: PlanFile = toml::from_str(text).map_err(|e| {
        let msg = e.message().to_string();
        match e.span() {
            Some(span) => {
                let (line, col) = line_col(text, span.start);
                format!("line {line}, column {col}: {msg}")
            }
            None => msg,
        }
    })?;
    validate(&file)?;
    Ok(file)
}

fn validate(file: &PlanFile) -> std::result::Result<(), String> {
    let schema = &file.options.journal_schema;
    if schema.is_empty()
        || !schema
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    {
        return Err(format!(
            "options.journal_schema = {schema:?}: use lower-case letters, digits and underscores"
        ));
    }
    if file.source.allow_ahead {
        return Err("allow_ahead belongs under [target], not [source]".into());
    }
    let mut names = std::collections::BTreeSet::new();
    for c in &file.consumers {
        if !names.insert(&c.name) {
            return Err(format!(
                "two [[consumer]] entries are named {:?}: names must be unique",
                c.name
            ));
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
        let err = parse(&format!("{MINIMAL}[options]\nfreeze_sorce = false\n")).unwrap_err();
        assert!(err.starts_with("line 6, column 1:"), "{err}");
        assert!(err.contains("unknown field `freeze_sorce`"), "{err}");
        assert!(
            err.contains("freeze_source"),
            "the message lists what was expected: {err}"
        );
    }

    #[test]
    fn wrong_type_and_missing_section() {
        let err = parse(&format!("{MINIMAL}[options]\njobs = \"four\"\n")).unwrap_err();
        assert!(err.contains("line 6") && err.contains("invalid type"), "{err}");
        let err = parse("[source]\nurl = \"postgresql://a@h/s\"\n").unwrap_err();
        assert!(err.contains("missing field `target`"), "{err}");
    }

    #[test]
    fn validation_rejects_bad_schema_and_duplicate_consumers() {
        let err = parse(&format!("{MINIMAL}[options]\njournal_schema = \"Bad-Name\"\n")).unwrap_err();
        assert!(err.contains("journal_schema"), "{err}");
        let c = "[[consumer]]\nname = \"a\"\nkind = \"env\"\n";
        let err = parse(&format!("{MINIMAL}{c}{c}")).unwrap_err();
        assert!(err.contains("unique"), "{err}");
    }
}
