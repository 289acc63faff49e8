//! The target database's own privileges and settings (`GRANT CONNECT`,
//! `ALTER DATABASE … SET`, per-role settings, the `public` schema's owner
//! and ACL), which pg_dump leaves out without `--create`: the source's are
//! carried, the target's saved first for undo.

use std::path::{Path, PathBuf};

use cutover_core::journal::ItemKey;
use cutover_core::stage::RunContext;
use cutover_core::{Error, Result};
use serde_json::json;

use super::{Pass, STAGE};
use crate::security::{RoleMap, Security};

/// STEP: carries the source's database settings, unless the journal has them.
pub(super) async fn step(pass: &Pass<'_>) -> Result<()> {
    let ctx = pass.ctx;
    if ctx
        .journal
        .items_done(ctx.run_id, STAGE)
        .await?
        .contains(&ItemKey::DatabaseSettings)
    {
        return Ok(());
    }
    carry(
        ctx,
        &pass.settings.role_map,
        &pass.settings.target.dbname,
        &pass.dir,
    )
    .await?;
    pass.mark_done(ItemKey::DatabaseSettings).await
}

/// The file holding the target database's privileges and settings from
/// before the copy changed them (for undo).
fn previous_settings_file(dir: &Path) -> PathBuf {
    dir.join("target-database-settings.json")
}

/// Gives the target database the source's database-level privileges and
/// settings (`GRANT CONNECT`, `ALTER DATABASE … SET search_path`, per-role
/// settings), which pg_dump leaves out without `--create`; the target's own
/// are saved first for undo.
async fn carry(ctx: &RunContext, map: &RoleMap, target_db: &str, dir: &Path) -> Result<()> {
    let journal_schema = ctx.journal.schema();
    let source = Security::read(&ctx.source, journal_schema)
        .await
        .map_err(|e| e.context("reading the source database's privileges and settings"))?
        .mapped(map);
    let target = Security::read(&ctx.target, journal_schema).await?;
    let file = previous_settings_file(dir);
    if !file.exists() {
        let saved = json!({ "acl": target.database_acl, "settings": target.database_settings,
                            "role_settings": target.role_settings });
        crate::tools::write_private(&file, &saved.to_string())?;
    }
    let public = crate::security::public_schema_statements(&ctx.source, &ctx.target, map).await?;
    for sql in source
        .database_statements(target_db, &target)
        .into_iter()
        .chain(public)
    {
        sqlx::query(&sql).execute(&ctx.target).await.map_err(|e| {
            Error::from(e).context(format!("carrying the source's database settings ({sql})"))
        })?;
    }
    Ok(())
}

/// Puts back the target database's own privileges and settings, as saved by
/// [`carry`]; false when there was nothing saved.
pub(super) async fn restore(ctx: &RunContext, target_db: &str, dir: &Path) -> Result<bool> {
    let file = previous_settings_file(dir);
    let Ok(text) = std::fs::read_to_string(&file) else {
        return Ok(false);
    };
    let saved: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| Error::failure(format!("{} is damaged ({e})", file.display())))?;
    let previous = Security {
        database_acl: serde_json::from_value(saved["acl"].clone()).unwrap_or_default(),
        database_settings: serde_json::from_value(saved["settings"].clone()).unwrap_or_default(),
        role_settings: serde_json::from_value(saved["role_settings"].clone()).unwrap_or_default(),
        ..Default::default()
    };
    let now = Security::read(&ctx.target, ctx.journal.schema()).await?;
    for sql in previous.database_statements(target_db, &now) {
        sqlx::query(&sql).execute(&ctx.target).await?;
    }
    let _ = std::fs::remove_file(&file);
    Ok(true)
}
