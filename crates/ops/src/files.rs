//! Backing up and replacing configuration files: the backup is written first
//! (mode 0600, in the run directory), the new content replaces the file
//! atomically (temporary file in the same folder, fsync, rename, folder
//! fsync) and keeps the file's mode and owner.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use cutover_core::{Error, Result};
use sha2::{Digest, Sha256};

pub fn sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes `bytes` to `path` with mode 0600, creating folders (0700) as needed.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(|e| io_error("create the folder", dir, e))?;
        let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o700));
    }
    let tmp = path.with_extension("partial");
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| io_error("write", &tmp, e))?;
    f.write_all(bytes).map_err(|e| io_error("write", &tmp, e))?;
    f.sync_all().map_err(|e| io_error("sync", &tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| io_error("rename into place", path, e))?;
    Ok(())
}

/// Replaces `path` with `bytes` atomically, keeping its mode and owner.
pub fn replace_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let meta = fs::metadata(path).map_err(|e| io_error("read", path, e))?;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{name}.cutover-{}.tmp", std::process::id()));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| io_error("create a temporary file beside", path, e))?;
        f.write_all(bytes).map_err(|e| io_error("write", &tmp, e))?;
        f.set_permissions(fs::Permissions::from_mode(meta.mode() & 0o7777))
            .map_err(|e| io_error("set the mode of", &tmp, e))?;
        // Keep the owner; only possible (and only needed) as root or the owner.
        let c = std::ffi::CString::new(tmp.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path; chown changes no memory.
        unsafe { libc::chown(c.as_ptr(), meta.uid(), meta.gid()) };
        f.sync_all().map_err(|e| io_error("sync", &tmp, e))?;
        fs::rename(&tmp, path).map_err(|e| io_error("rename into place", path, e))?;
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Whether `path` can be replaced: the file is writable and so is its folder
/// (the rename needs the folder).
pub fn check_writable(path: &Path) -> cutover_core::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let c = |p: &Path| std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: valid NUL-terminated paths; access() only reads.
    if unsafe { libc::access(c(path).as_ptr(), libc::W_OK) } != 0 {
        return Err(cutover_core::Error::bad_input(format!(
            "{} is not writable by this user",
            path.display()
        )));
    }
    if unsafe { libc::access(c(dir).as_ptr(), libc::W_OK) } != 0 {
        return Err(cutover_core::Error::bad_input(format!(
            "its folder {} is not writable (the atomic replace writes a temporary file there)",
            dir.display()
        )));
    }
    Ok(())
}

fn io_error(what: &str, path: &Path, e: std::io::Error) -> Error {
    Error::failure(format!("cannot {what} {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replace_keeps_mode_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("app.env");
        fs::write(&p, "A=1\r\n").unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o640)).unwrap();
        replace_atomically(&p, b"A=2\r\n").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"A=2\r\n");
        assert_eq!(fs::metadata(&p).unwrap().mode() & 0o777, 0o640);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);

        let b = dir.path().join("run/backups/app.env.orig");
        write_private(&b, b"x").unwrap();
        assert_eq!(fs::metadata(&b).unwrap().mode() & 0o777, 0o600);
    }
}
