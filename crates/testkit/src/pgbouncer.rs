//! A real PgBouncer for tests (Debian package `pgbouncer`), on a free
//! loopback port, set up as production ones are: an `auth_file` with the
//! clients' and the admin's passwords, `admin_users`, a `[databases]`
//! section whose entries carry the server login. As root it runs as the
//! `postgres` user. Stopped on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// A running PgBouncer.
pub struct PgBouncer {
    dir: tempfile::TempDir,
    port: u16,
    child: Child,
    admin_password: String,
    client_password: String,
}

/// The user applications log in to PgBouncer as.
pub const CLIENT_USER: &str = "app_client";
/// The user of the admin console.
pub const ADMIN_USER: &str = "bouncer_admin";

/// Where the `pgbouncer` program is.
pub fn pgbouncer_bin() -> Option<PathBuf> {
    [
        "/usr/sbin/pgbouncer",
        "/usr/bin/pgbouncer",
        "/usr/local/bin/pgbouncer",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.is_file())
}

impl PgBouncer {
    /// Starts PgBouncer with `databases` (entry name, connection string) in
    /// `pool_mode` (`transaction` or `session`).
    pub fn start(databases: &[(&str, String)], pool_mode: &str) -> Result<PgBouncer> {
        let bin = pgbouncer_bin().context(
            "pgbouncer is not installed (Debian: apt-get install pgbouncer; bash tests/prepare.sh installs every test prerequisite)",
        )?;
        let dir = tempfile::Builder::new().prefix("cutover-pgbouncer-").tempdir()?;
        let admin_password = crate::distinctive_password();
        let client_password = crate::distinctive_password();
        let port = crate::local::free_port()?;
        std::fs::write(
            dir.path().join("userlist.txt"),
            format!("\"{ADMIN_USER}\" \"{admin_password}\"\n\"{CLIENT_USER}\" \"{client_password}\"\n"),
        )?;
        let entries: String = databases
            .iter()
            .map(|(name, conn)| format!("{name} = {conn}\n"))
            .collect();
        let d = dir.path().display();
        std::fs::write(
            dir.path().join("pgbouncer.ini"),
            format!(
                ";; written as a framework's deployment writes it\n\
                 [databases]\n{entries}\n\
                 [pgbouncer]\n\
                 listen_addr = 127.0.0.1\n\
                 listen_port = {port}\n\
                 unix_socket_dir =\n\
                 auth_type = md5\n\
                 auth_file = {d}/userlist.txt\n\
                 admin_users = {ADMIN_USER}\n\
                 pool_mode = {pool_mode}\n\
                 max_client_conn = 200\n\
                 default_pool_size = 10\n\
                 ignore_startup_parameters = extra_float_digits,options\n\
                 logfile = {d}/pgbouncer.log\n\
                 pidfile = {d}/pgbouncer.pid\n"
            ),
        )?;
        let mut cmd = Command::new(bin);
        cmd.arg(dir.path().join("pgbouncer.ini"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some((uid, gid)) = crate::local::server_owner()? {
            for f in ["", "userlist.txt", "pgbouncer.ini"] {
                std::os::unix::fs::chown(dir.path().join(f), Some(uid), Some(gid))?;
            }
            use std::os::unix::process::CommandExt;
            cmd.uid(uid).gid(gid);
        }
        let child = cmd.spawn().context("failed to start pgbouncer")?;
        let bouncer = PgBouncer {
            dir,
            port,
            child,
            admin_password,
            client_password,
        };
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if started.elapsed() > Duration::from_secs(15) {
                bail!("pgbouncer did not listen on {port}: {}", bouncer.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(bouncer)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its configuration file.
    pub fn ini(&self) -> PathBuf {
        self.dir.path().join("pgbouncer.ini")
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The admin console's URL.
    pub fn admin_url(&self) -> String {
        format!(
            "postgresql://{ADMIN_USER}:{}@127.0.0.1:{}/pgbouncer",
            self.admin_password, self.port
        )
    }

    /// An application's URL for database entry `db`.
    pub fn url(&self, db: &str) -> String {
        format!(
            "postgresql://{CLIENT_USER}:{}@127.0.0.1:{}/{db}",
            self.client_password, self.port
        )
    }

    pub fn admin_password(&self) -> &str {
        &self.admin_password
    }

    pub fn client_password(&self) -> &str {
        &self.client_password
    }

    /// Runs one admin-console command with psql; its output (unaligned).
    pub fn admin(&self, sql: &str) -> Result<String> {
        self.console(sql, &["-t"])
    }

    /// One admin-console command's rows, each as column name -> value.
    pub fn admin_rows(&self, sql: &str) -> Result<Vec<std::collections::BTreeMap<String, String>>> {
        let text = self.console(sql, &["-P", "footer=off"])?;
        let mut lines = text.lines();
        let header: Vec<String> = lines
            .next()
            .unwrap_or_default()
            .split('|')
            .map(str::to_string)
            .collect();
        Ok(lines
            .map(|l| {
                header
                    .iter()
                    .cloned()
                    .zip(l.split('|').map(str::to_string))
                    .collect()
            })
            .collect())
    }

    fn console(&self, sql: &str, format: &[&str]) -> Result<String> {
        let psql = crate::pg_bindir()?.join("psql");
        let out = Command::new(psql)
            .args(["-X", "-q", "-A", "-F", "|"])
            .args(format)
            .args(["-c", sql])
            .env("PGHOST", "127.0.0.1")
            .env("PGPORT", self.port.to_string())
            .env("PGUSER", ADMIN_USER)
            .env("PGPASSWORD", &self.admin_password)
            .env("PGDATABASE", "pgbouncer")
            .output()?;
        if !out.status.success() {
            bail!("{sql}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Its log, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("pgbouncer.log")).unwrap_or_default()
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
