//! The journal as `cutover archive-journal` keeps it in the run directory
//! (`journal-archive.json`), for `status`, `report` and a finished run's
//! check once the journal's schema was dropped from the target.

use std::path::PathBuf;

use cutover_core::journal::{RunRecord, StageState};
use cutover_core::loaded::LoadedPlan;
use serde::{Deserialize, Serialize};

use crate::exit::coded;

/// The journal as the run directory keeps it.
#[derive(Debug, Serialize, Deserialize)]
pub struct Archive {
    pub schema: String,
    pub archived_at: chrono::DateTime<chrono::Utc>,
    pub runs: Vec<ArchivedRun>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ArchivedRun {
    pub run: RunRecord,
    pub stages: Vec<StageState>,
    /// (stage, item, state, rows)
    pub items: Vec<(String, String, String, Option<i64>)>,
}

pub fn archive_path(loaded: &LoadedPlan) -> PathBuf {
    loaded.run_dir().join("journal-archive.json")
}

/// The archive, when the journal was archived.
pub fn read_archive(loaded: &LoadedPlan) -> anyhow::Result<Option<Archive>> {
    let path = archive_path(loaded);
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(Some(serde_json::from_str(&text).map_err(|e| {
            coded(
                cutover_core::ErrorKind::Failure,
                format!("{} cannot be read ({e}): it is damaged", path.display()),
            )
        })?)),
        Err(_) => Ok(None),
    }
}
