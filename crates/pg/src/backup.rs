//! backup-target: a `pg_dump` (custom format) of the target's application
//! schemas into the run directory, mode 0600, its sha256 in the journal, and
//! proven by restoring it into a scratch database and comparing row counts.
//! Nothing destructive touches the target before this stage is done.

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use cutover_core::artefacts::Artefacts;
use cutover_core::endpoint::Endpoint;
use cutover_core::journal::{Item, ItemKey};
use cutover_core::stage::{Check, Description, RunContext, Stage, Undo};
use cutover_core::{Error, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::inventory::{Inventory, quote_ident};
use crate::{target_objects, tools};

pub const STAGE: &str = cutover_core::stage::names::BACKUP_TARGET;

pub struct BackupTarget {
    pub description: Description,
    /// The target database, as the plan resolved it.
    target: std::sync::Arc<Endpoint>,
}

impl BackupTarget {
    pub fn new(target: &Inventory, run_dir: &Path, endpoint: std::sync::Arc<Endpoint>) -> BackupTarget {
        BackupTarget {
            target: endpoint,
            description: Description {
                summary: format!(
                    "pg_dump the target ({} tables, {} rows, {} on disk) into {}, then prove it by restoring \
                     it into a scratch database and comparing row counts",
                    target.tables.len(),
                    target.total_rows(),
                    cutover_core::units::bytes(target.database_bytes),
                    run_dir.join("backups").display()
                ),
                details: vec![],
                warnings: vec![],
                destructive: false,
            },
        }
    }
}

/// The journal's record of a proven backup (the detail of its item).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct BackupRecord {
    pub path: PathBuf,
    pub sha256: String,
    pub bytes: u64,
    /// How it was proven.
    pub proof: String,
}

/// backup-target: the proven backup, and how to restore it by hand.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct BackupResult {
    pub summary: String,
    pub path: PathBuf,
    pub sha256: String,
    pub bytes: u64,
    pub proof: String,
    /// The command that restores it into an empty database.
    pub restore: String,
}

cutover_core::artefacts!(BackupResult);

impl BackupResult {
    fn new(summary: String, rec: BackupRecord) -> BackupResult {
        BackupResult {
            summary,
            restore: format!(
                "pg_restore --single-transaction --exit-on-error --dbname=<target url> {}",
                rec.path.display()
            ),
            path: rec.path,
            sha256: rec.sha256,
            bytes: rec.bytes,
            proof: rec.proof,
        }
    }
}

/// The proven backup recorded for this run, checked against its file.
pub async fn recorded(ctx: &RunContext) -> Result<Option<BackupRecord>> {
    let row = ctx
        .journal
        .item_detail(ctx.run_id, STAGE, &ItemKey::Backup)
        .await?;
    Ok(row
        .and_then(|d| serde_json::from_value::<BackupRecord>(d).ok())
        .filter(|r| !r.sha256.is_empty()))
}

/// Fails unless a proven backup exists and its file still matches its checksum.
pub async fn require_proven(ctx: &RunContext) -> Result<BackupRecord> {
    let rec = recorded(ctx).await?.ok_or_else(|| {
        Error::refused("no proven backup of the target exists in this run: run the backup-target stage first")
    })?;
    verify_file(&rec)?;
    Ok(rec)
}

fn verify_file(rec: &BackupRecord) -> Result<()> {
    if !rec.path.exists() {
        return Err(Error::failure(format!(
            "the target's backup {} is missing (sha256 {}): copy it back from the machine where the run began",
            rec.path.display(),
            rec.sha256
        )));
    }
    let sum = sha256_file(&rec.path)?;
    if sum != rec.sha256 {
        return Err(Error::failure(format!(
            "the target's backup {} does not match its recorded checksum (sha256 {} expected, {sum} found): the \
             file was changed or replaced",
            rec.path.display(),
            rec.sha256
        )));
    }
    Ok(())
}

pub fn sha256_file(path: &Path) -> Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

fn free_bytes(dir: &Path) -> Option<u64> {
    let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).ok()?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    (unsafe { libc::statvfs(c.as_ptr(), &mut st) } == 0).then(|| st.f_bavail as u64 * st.f_frsize as u64)
}

/// Restores the recorded backup into the target (after dropping what is there).
pub async fn restore(ctx: &RunContext, target: &Endpoint) -> Result<PathBuf> {
    let rec = require_proven(ctx).await?;
    target_objects::drop_application_objects(&ctx.target, ctx.journal.schema()).await?;
    let version = crate::connect::server_version(&ctx.target).await?;
    let (_, pg_restore) = tools::for_backup(version).await?;
    let args = [
        // With the target's own owners and grants, as it had them.
        "--single-transaction".to_string(),
        "--exit-on-error".into(),
        rec.path.display().to_string(),
    ];
    tools::restore(
        &pg_restore,
        target,
        (version / 10000) as u32,
        &args,
        &[],
        &Default::default(),
        "pg_restore of the target's backup",
    )
    .await?;
    Ok(rec.path)
}

#[async_trait]
impl Stage for BackupTarget {
    fn name(&self) -> String {
        STAGE.into()
    }
    fn describe(&self) -> &Description {
        &self.description
    }
    fn undo_kind(&self) -> Undo {
        Undo::Nothing
    }

    async fn run(&self, ctx: &RunContext) -> Result<serde_json::Value> {
        if let Some(rec) = recorded(ctx).await?
            && verify_file(&rec).is_ok()
        {
            let summary = format!("reused the proven backup {}", rec.path.display());
            return Ok(BackupResult::new(summary, rec).to_value());
        }
        let target = &self.target;
        let journal_schema = ctx.journal.schema().to_string();
        let inventory = Inventory::read(&ctx.target, &journal_schema, true).await?;
        let (pg_dump, _) = tools::for_backup(inventory.identity.version_num).await?;
        let dir = ctx.run_dir.join("backups");
        std::fs::create_dir_all(&dir).map_err(|e| {
            Error::failure(format!(
                "cannot create {} ({e}): make the run directory writable",
                dir.display()
            ))
        })?;
        if let Some(free) = free_bytes(&dir)
            && free < inventory.database_bytes as u64
        {
            return Err(Error::failure(format!(
                "too little disk space for the backup: {} has {} MB free, the target database takes {} MB; free \
                 space or set options.run_dir to a larger disk",
                dir.display(),
                free / 1_000_000,
                inventory.database_bytes / 1_000_000
            )));
        }
        let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%SZ");
        let path = dir.join(format!("target-{}-{stamp}.dump", target.dbname));
        let partial = path.with_extension("dump.partial");
        // Created 0600 first: pg_dump truncates an existing file and keeps its mode.
        drop(
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&partial)?,
        );
        let mut cmd = tools::command(&pg_dump, target);
        // Owners and grants included: a rollback gives the target's own
        // applications back what they could do.
        cmd.args(["--format=custom"])
            .arg(format!("--exclude-schema={}", quote_ident(&journal_schema)))
            .arg(format!("--file={}", partial.display()));
        if let Err(e) = tools::run(cmd, "pg_dump of the target").await {
            let _ = std::fs::remove_file(&partial);
            return Err(e);
        }
        std::fs::File::open(&partial)?.sync_all()?;
        std::fs::rename(&partial, &path)?;
        if let Ok(d) = std::fs::File::open(&dir) {
            let _ = d.sync_all();
        }
        let sha256 = sha256_file(&path)?;
        let bytes = std::fs::metadata(&path)?.len();
        let proof = match prove(ctx, target, &path, &inventory).await {
            Ok(p) => p,
            Err(e) => {
                // An unproven backup must not be mistaken for a good one later.
                let _ = std::fs::remove_file(&path);
                return Err(e);
            }
        };
        let rec = BackupRecord {
            path: path.clone(),
            sha256: sha256.clone(),
            bytes,
            proof: proof.clone(),
        };
        let detail = serde_json::to_value(&rec).expect("a backup record serialises");
        let item = Item {
            bytes: Some(bytes as i64),
            detail: Some(&detail),
            ..Item::new(STAGE, &ItemKey::Backup)
        };
        ctx.journal.item_done(ctx.run_id, &item).await?;
        let summary = format!(
            "{} ({}, sha256 {}…), {}",
            path.display(),
            cutover_core::units::bytes(bytes as i64),
            &sha256[..12],
            proof
        );
        Ok(BackupResult::new(summary, rec).to_value())
    }

    async fn check(&self, ctx: &RunContext) -> Result<Check> {
        Ok(match recorded(ctx).await? {
            None => Check::Fails("no backup recorded".into()),
            Some(rec) => match verify_file(&rec) {
                Ok(()) => Check::Holds,
                Err(e) => Check::Fails(e.message),
            },
        })
    }

    async fn undo(&self, _ctx: &RunContext) -> Result<String> {
        Ok("nothing to undo (the backup file is kept)".into())
    }
}

/// Restores the dump into a scratch database on the target server and compares
/// row counts with the target; falls back to reading the archive's table of
/// contents when the target user may not create databases.
async fn prove(ctx: &RunContext, target: &Endpoint, path: &Path, inventory: &Inventory) -> Result<String> {
    let (_, pg_restore) = tools::for_backup(inventory.identity.version_num).await?;
    let target_major = (inventory.identity.version_num / 10000) as u32;
    if inventory.storage_tables().next().is_none() && inventory.large_objects == 0 {
        // Nothing to count after a restore: reading the whole archive proves
        // it is complete and readable, without the scratch database (whose
        // DROP forces a checkpoint on the target server).
        let mut cmd = tools::offline(&pg_restore);
        cmd.arg("--file=/dev/null").arg(path);
        tools::run(cmd, "pg_restore of the target's backup (read through)").await?;
        return Ok("the target holds no tables: proven by reading the whole archive back".into());
    }
    let scratch = format!("cutover_proof_{}", &ctx.run_id.simple().to_string()[..12]);
    // A run killed during an earlier proof may have left its scratch database.
    let drop_scratch = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", quote_ident(&scratch));
    let _ = sqlx::query(&drop_scratch).execute(&ctx.target).await;
    let create = sqlx::query(&format!("CREATE DATABASE {}", quote_ident(&scratch)))
        .execute(&ctx.target)
        .await;
    if let Err(e) = create {
        // No scratch database (the user may not create one): read the whole
        // archive's data back and count each table's rows.
        let counted = count_archive_rows(&pg_restore, path).await?;
        let mut mismatches = vec![];
        for t in inventory.storage_tables() {
            let got = counted.get(&(t.schema.clone(), t.name.clone())).copied();
            if got != Some(t.rows) {
                mismatches.push(format!(
                    "{}: {} rows on the target, {:?} in the backup",
                    t.display(),
                    t.rows,
                    got
                ));
            }
        }
        if !mismatches.is_empty() {
            return Err(Error::failure(format!(
                "the backup does not hold what the target holds: {}; if applications write to the target, stop \
                 them and run again",
                mismatches.join("; ")
            )));
        }
        let reason = cutover_core::redact::redact_text(&e.to_string());
        return Ok(format!(
            "proven by reading its data back: {} tables, {} rows match (the target user may not create a scratch \
             database: {reason})",
            inventory.storage_tables().count(),
            inventory.total_rows()
        ));
    }
    let result = async {
        let scratch_ep = target.with_database(&scratch);
        let args = [
            "--no-owner".to_string(),
            "--no-privileges".into(),
            "--exit-on-error".into(),
            path.display().to_string(),
        ];
        tools::restore(
            &pg_restore,
            &scratch_ep,
            target_major,
            &args,
            &[],
            &Default::default(),
            "pg_restore of the backup into a scratch database",
        )
        .await?;
        let session = cutover_core::loaded::SessionSettings {
            connect_timeout: scratch_ep.connect_timeout().as_secs(),
            statement_timeout: 0,
            lock_timeout: 30,
        };
        let pool = crate::connect::pool(&scratch_ep, session, 1).await?;
        let restored = Inventory::read(&pool, ctx.journal.schema(), true).await?;
        pool.close().await;
        let mut mismatches = vec![];
        for t in inventory.storage_tables() {
            let got = restored.table(&t.schema, &t.name).map(|r| r.rows);
            if got != Some(t.rows) {
                mismatches.push(format!(
                    "{}: {} rows on the target, {} restored",
                    t.display(),
                    t.rows,
                    got.map_or("none".to_string(), |n| n.to_string())
                ));
            }
        }
        if !mismatches.is_empty() {
            return Err(Error::failure(format!(
                "the backup does not restore to what the target holds: {}; if applications write to the target, \
                 stop them and run again",
                mismatches.join("; ")
            )));
        }
        Ok(format!(
            "proven by a restore into a scratch database: {} tables, {} rows match",
            inventory.storage_tables().count(),
            inventory.total_rows()
        ))
    }
    .await;
    sqlx::query(&drop_scratch).execute(&ctx.target).await?;
    result
}

/// Rows per table in a custom archive's data, counted from `pg_restore
/// --data-only --file=-` as it streams (one line per row in COPY's text
/// form, which escapes newlines), in constant memory.
async fn count_archive_rows(
    pg_restore: &tools::Tool,
    path: &Path,
) -> Result<std::collections::HashMap<(String, String), i64>> {
    use tokio::io::AsyncBufReadExt;
    let mut cmd = tools::offline(pg_restore);
    cmd.args(["--data-only", "--file=-"])
        .arg(path)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|e| Error::failure(format!("cannot start pg_restore to read the backup back: {e}")))?;
    let stdout = child.stdout.take().expect("piped");
    // Bytes, not text: the data may be in any server encoding. stderr is
    // drained beside it (a full pipe would stop pg_restore).
    let mut stderr = child.stderr.take().expect("piped");
    let drain = tokio::spawn(async move {
        use tokio::io::AsyncReadExt;
        let mut text = Vec::new();
        let _ = stderr.read_to_end(&mut text).await;
        text
    });
    let mut reader = tokio::io::BufReader::new(stdout);
    let mut counts = std::collections::HashMap::new();
    let mut current: Option<((String, String), i64)> = None;
    let mut raw = Vec::new();
    loop {
        raw.clear();
        if reader.read_until(b'\n', &mut raw).await? == 0 {
            break;
        }
        let line = String::from_utf8_lossy(&raw);
        let line = line.trim_end_matches(['\n', '\r']);
        match &mut current {
            Some((table, n)) => {
                if line == "\\." {
                    let (table, n) = (table.clone(), *n);
                    *counts.entry(table).or_insert(0) += n;
                    current = None;
                } else {
                    *n += 1;
                }
            }
            None => {
                if let Some(rest) = line.strip_prefix("COPY ")
                    && line.ends_with(" FROM stdin;")
                    && let Some(table) = split_qualified(rest)
                {
                    current = Some((table, 0));
                }
            }
        }
    }
    let status = child.wait().await?;
    let stderr = drain.await.unwrap_or_default();
    if !status.success() || current.is_some() {
        return Err(Error::failure(format!(
            "reading the backup back failed ({status}): {}",
            cutover_core::redact::redact_text(String::from_utf8_lossy(&stderr).trim())
        )));
    }
    Ok(counts)
}

/// `schema.name` as pg_dump writes it (each part quoted only where needed),
/// from the start of a COPY line.
fn split_qualified(text: &str) -> Option<(String, String)> {
    fn ident(s: &str) -> Option<(String, &str)> {
        if let Some(rest) = s.strip_prefix('"') {
            let mut out = String::new();
            let mut chars = rest.char_indices();
            while let Some((i, c)) = chars.next() {
                if c == '"' {
                    if rest[i + 1..].starts_with('"') {
                        out.push('"');
                        chars.next();
                    } else {
                        return Some((out, &rest[i + 1..]));
                    }
                } else {
                    out.push(c);
                }
            }
            None
        } else {
            let end = s.find(['.', ' ', '(']).unwrap_or(s.len());
            Some((s[..end].to_string(), &s[end..]))
        }
    }
    let (schema, rest) = ident(text)?;
    let (name, _) = ident(rest.strip_prefix('.')?)?;
    Some((schema, name))
}

#[cfg(test)]
mod archive_tests {
    #[test]
    fn copy_lines_name_their_table() {
        assert_eq!(
            super::split_qualified("public.users (id, email) FROM stdin;"),
            Some(("public".into(), "users".into()))
        );
        assert_eq!(
            super::split_qualified("\"My \"\"Schema\".\"T.1\" (a) FROM stdin;"),
            Some(("My \"Schema".into(), "T.1".into()))
        );
    }
}
