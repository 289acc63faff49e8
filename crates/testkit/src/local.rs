//! The `local` backend: a private PostgreSQL cluster made with `initdb` and run
//! with `pg_ctl`, in a temporary directory, on a free loopback port.
//!
//! PostgreSQL refuses to run as root; when the tests run as root the server
//! processes run as the `postgres` user.

use std::ffi::CString;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::binaries::{pg_bindir, run_checked};

/// How a test server differs from the kit's default one (local backend).
#[derive(Debug, Clone, Default)]
pub struct ServerOptions {
    /// Another PostgreSQL major (see [`crate::pg_bindir_for`]).
    pub major: Option<u32>,
    /// TLS on with this certificate; plain TCP connections refused.
    pub tls: Option<crate::ServerCert>,
    /// The language of the server's messages (`de_DE.UTF-8`).
    pub lc_messages: Option<String>,
    /// Another `wal_level` than the kit's `logical` (`replica`: a server
    /// not set up for logical replication, as many are).
    pub wal_level: Option<String>,
}

/// Settings for test speed and for the features cutover needs (logical WAL).
const SERVER_SETTINGS: &str = "
listen_addresses = '127.0.0.1'
wal_level = logical
fsync = off
synchronous_commit = off
full_page_writes = off
max_connections = 100
shared_buffers = 64MB
max_wal_senders = 4
max_replication_slots = 4
log_min_messages = warning
";

/// Settings for benchmarks: the server's defaults (fsync, synchronous
/// commit, full-page writes on), only the address, logging and the lock
/// table set.
/// The lock table is raised: pg_dump (and any single statement over every
/// table) takes a lock per table, and the many-tables case has 10,000.
const DURABLE_SETTINGS: &str = "
listen_addresses = '127.0.0.1'
max_connections = 100
max_locks_per_transaction = 256
log_min_messages = warning
";

pub(crate) struct LocalServer {
    // Kept for its Drop: the whole cluster lives in it.
    dir: tempfile::TempDir,
    pub(crate) port: u16,
    owner: Option<(u32, u32)>,
    bindir: PathBuf,
}

impl LocalServer {
    /// `initdb` a new cluster with a password-protected superuser and start it.
    pub(crate) fn start(
        user: &str,
        password: &str,
        durable: bool,
        opts: &ServerOptions,
    ) -> Result<LocalServer> {
        let owner = server_owner()?;
        let bindir = match opts.major {
            Some(major) => crate::binaries::pg_bindir_for(major)?,
            None => pg_bindir()?,
        };
        let dir = tempfile::Builder::new()
            .prefix("cutover-testkit-")
            .tempdir()
            .context("failed to create a temporary directory for the test server")?;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
        let pwfile = dir.path().join("pwfile");
        std::fs::write(&pwfile, format!("{password}\n"))?;
        std::fs::create_dir(dir.path().join("socket"))?;
        if let Some((uid, gid)) = owner {
            chown(dir.path(), uid, gid)?;
            chown(&pwfile, uid, gid)?;
            chown(&dir.path().join("socket"), uid, gid)?;
        }
        let mut server = LocalServer {
            dir,
            port: 0,
            owner,
            bindir,
        };
        run_checked(
            server
                .command("initdb")?
                .arg("-D")
                .arg(server.data_dir())
                .args(["-U", user, "--auth-local=trust", "--auth-host=scram-sha-256"])
                .arg(format!("--pwfile={}", pwfile.display()))
                .args(["-E", "UTF8", "--locale=C", "-N"]),
        )
        .context("initdb failed")?;
        std::fs::remove_file(&pwfile)?;
        let mut extra = String::new();
        if let Some(tls) = &opts.tls {
            // TLS on, and plain TCP connections refused (as a managed service does).
            for (from, name) in [(&tls.cert, "server.crt"), (&tls.key, "server.key")] {
                let to = server.data_dir().join(name);
                std::fs::copy(from, &to)?;
                std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o600))?;
                if let Some((uid, gid)) = owner {
                    chown(&to, uid, gid)?;
                }
            }
            extra.push_str("ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n");
            std::fs::write(
                server.data_dir().join("pg_hba.conf"),
                "local all all trust\nhostssl all all 127.0.0.1/32 scram-sha-256\nhostssl all all ::1/128 scram-sha-256\n\
                 hostnossl all all 0.0.0.0/0 reject\nhostnossl all all ::/0 reject\n",
            )?;
        }
        if let Some(lc) = &opts.lc_messages {
            extra.push_str(&format!("lc_messages = '{lc}'\n"));
        }
        if let Some(level) = &opts.wal_level {
            extra.push_str(&format!("wal_level = {level}\n"));
        }
        // A free port can be taken by someone else between our probe and the
        // server's bind: try a few.
        let mut last_err = None;
        for _ in 0..5 {
            server.port = free_port()?;
            let settings = if durable {
                DURABLE_SETTINGS
            } else {
                SERVER_SETTINGS
            };
            let conf = format!(
                "{settings}{extra}port = {}\nunix_socket_directories = '{}'\n",
                server.port,
                server.dir.path().join("socket").display()
            );
            std::fs::write(server.data_dir().join("postgresql.auto.conf"), conf)?;
            match server.pg_ctl_start() {
                Ok(()) => return Ok(server),
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.unwrap())
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// A command for one of the server binaries, run as the cluster's owner.
    fn command(&self, binary: &str) -> Result<Command> {
        let path = self.bindir.join(binary);
        if !path.exists() {
            bail!("{} not found", path.display());
        }
        let mut cmd = Command::new(path);
        cmd.current_dir(self.dir.path());
        cmd.env_remove("PGDATA");
        if let Some((uid, gid)) = self.owner {
            cmd.uid(uid).gid(gid);
        }
        Ok(cmd)
    }

    fn pg_ctl_start(&self) -> Result<()> {
        let log = self.dir.path().join("server.log");
        run_checked(
            self.command("pg_ctl")?
                .arg("-D")
                .arg(self.data_dir())
                .arg("-l")
                .arg(&log)
                .args(["-w", "-t", "60", "start"]),
        )
        .with_context(|| {
            let tail = std::fs::read_to_string(&log).unwrap_or_default();
            format!(
                "the test server did not start; its log says:\n{}",
                tail.lines().rev().take(10).collect::<Vec<_>>().join("\n")
            )
        })?;
        Ok(())
    }

    fn pg_ctl_stop(&self, mode: &str) -> Result<()> {
        run_checked(
            self.command("pg_ctl")?
                .arg("-D")
                .arg(self.data_dir())
                .args(["-m", mode, "-w", "-t", "60", "stop"]),
        )?;
        Ok(())
    }

    /// Clean shutdown.
    pub(crate) fn stop(&self) -> Result<()> {
        self.pg_ctl_stop("fast")
    }

    /// Crash-like shutdown: no checkpoint; the next start runs recovery.
    pub(crate) fn kill(&self) -> Result<()> {
        self.pg_ctl_stop("immediate")
    }

    pub(crate) fn restart(&self) -> Result<()> {
        if self.postmaster_pid().is_some() {
            self.stop()?;
        }
        self.pg_ctl_start()
    }

    /// The postmaster's pid while the server runs.
    pub(crate) fn postmaster_pid(&self) -> Option<u32> {
        let text = std::fs::read_to_string(self.data_dir().join("postmaster.pid")).ok()?;
        let pid: u32 = text.lines().next()?.trim().parse().ok()?;
        Path::new(&format!("/proc/{pid}")).exists().then_some(pid)
    }

    /// What the server wrote to its log file.
    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    pub(crate) fn data_dir_path(&self) -> PathBuf {
        self.data_dir()
    }
}

impl Drop for LocalServer {
    fn drop(&mut self) {
        if let Some(pid) = self.postmaster_pid() {
            if self.pg_ctl_stop("immediate").is_err() {
                // pg_ctl could not do it; make sure nothing outlives the test.
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            }
            for _ in 0..100 {
                if !Path::new(&format!("/proc/{pid}")).exists() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        }
        // TempDir removes the cluster directory after this.
    }
}

/// The uid and gid to run the server as: `None` when not root, the `postgres`
/// user's when root.
pub(crate) fn server_owner() -> Result<Option<(u32, u32)>> {
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    let name = CString::new("postgres").unwrap();
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    if pw.is_null() {
        bail!(
            "running as root, and PostgreSQL refuses to run as root: create a `postgres` user \
             (the PostgreSQL server package does) or run the tests as a normal user"
        );
    }
    let (uid, gid) = unsafe { ((*pw).pw_uid, (*pw).pw_gid) };
    Ok(Some((uid, gid)))
}

fn chown(path: &Path, uid: u32, gid: u32) -> Result<()> {
    std::os::unix::fs::chown(path, Some(uid), Some(gid))
        .with_context(|| format!("failed to chown {}", path.display()))
}

pub(crate) fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("failed to find a free port")?;
    Ok(listener.local_addr()?.port())
}
