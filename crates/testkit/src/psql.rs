//! Admin helpers through `psql`: run SQL, load scripts, and digest a database's
//! contents independently of cutover's own code.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

use crate::binaries::pg_binary;

/// How to reach one database as the kit's superuser.
#[derive(Debug, Clone)]
pub(crate) struct Conn<'a> {
    pub host: &'a str,
    pub port: u16,
    pub user: &'a str,
    pub password: &'a str,
    pub dbname: &'a str,
    /// The server accepts only TLS connections.
    pub tls: bool,
}

impl Conn<'_> {
    fn command(&self) -> Result<Command> {
        let mut cmd = Command::new(pg_binary("psql")?);
        cmd.args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-F", "\t"])
            .args([
                "-h",
                self.host,
                "-p",
                &self.port.to_string(),
                "-U",
                self.user,
                "-d",
                self.dbname,
            ])
            .env("PGPASSWORD", self.password)
            .env("PGCONNECT_TIMEOUT", "10")
            .env("PGTZ", "UTC")
            .env_remove("PGSERVICE")
            .env("PGSSLMODE", if self.tls { "require" } else { "prefer" });
        Ok(cmd)
    }

    /// Runs a script (one or many statements) and returns what it printed,
    /// unaligned and tuples-only, fields separated by tabs.
    pub(crate) fn run(&self, sql: &str) -> Result<String> {
        let mut child = self
            .command()?
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("failed to start psql")?;
        child.stdin.take().unwrap().write_all(sql.as_bytes())?;
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "psql on {}:{}/{} failed: {}",
                self.host,
                self.port,
                self.dbname,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout)
            .trim_end_matches('\n')
            .to_string())
    }
}

/// One table's contents reduced to a row count and a digest of its rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableDigest {
    pub rows: i64,
    pub md5: String,
}

/// Digests every table (leaf partitions included, parents excluded) outside
/// the system schemas and `exclude_schemas`, plus the large objects under the
/// key `pg_largeobject`. Rows are compared as their text form, sorted, so two
/// databases with the same contents give the same map whatever the physical order.
pub(crate) fn digest(conn: &Conn<'_>, exclude_schemas: &[&str]) -> Result<BTreeMap<String, TableDigest>> {
    let excluded = exclude_schemas
        .iter()
        .map(|s| format!("'{}'", s.replace('\'', "''")))
        .chain([
            "'pg_catalog'".into(),
            "'information_schema'".into(),
            "'pg_toast'".into(),
        ])
        .collect::<Vec<_>>()
        .join(",");
    let tables = conn.run(&format!(
        "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE c.relkind = 'r' AND n.nspname NOT IN ({excluded}) AND n.nspname NOT LIKE 'pg_temp%' ORDER BY 1"
    ))?;
    let mut script =
        String::from("SET TimeZone = 'UTC'; SET extra_float_digits = 3; SET bytea_output = 'hex';\n");
    for table in tables.lines().filter(|l| !l.is_empty()) {
        script.push_str(&format!(
            "SELECT {name}, count(*), md5(coalesce(string_agg(r, E'\\n' ORDER BY r), '')) FROM (SELECT t::text AS r FROM {table} t) s;\n",
            name = quote_literal(table),
        ));
    }
    script.push_str(
        "SELECT 'pg_largeobject', count(*), md5(coalesce(string_agg(oid::text || ':' || md5(lo_get(oid)), ',' ORDER BY oid), '')) FROM pg_largeobject_metadata;\n",
    );
    let mut map = BTreeMap::new();
    for line in conn.run(&script)?.lines().filter(|l| !l.is_empty()) {
        let mut f = line.split('\t');
        let (Some(name), Some(rows), Some(md5)) = (f.next(), f.next(), f.next()) else {
            bail!("unexpected psql output: {line}");
        };
        map.insert(
            name.to_string(),
            TableDigest {
                rows: rows.parse()?,
                md5: md5.to_string(),
            },
        );
    }
    Ok(map)
}

/// Digests the database at `url` (see [`PgServer::digest`](crate::PgServer::digest)).
pub fn digest_database(
    server: &crate::PgServer,
    dbname: &str,
    exclude_schemas: &[&str],
) -> Result<BTreeMap<String, TableDigest>> {
    digest(&server.conn(dbname), exclude_schemas)
}

pub(crate) fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}
